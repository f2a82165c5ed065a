"""A benchmark's own server in a child process, on a free loopback port.

The benchmarks that serve their own answers (`bench_load.py`, `bench_memory.py`) run their server
as a child process (`SCRIPT --serve ...`), so it shares neither the measured client's event loop
nor its interpreter; the child prints `PORT <n>` once it listens, and ends on SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys

__all__ = ["ServerProcess"]


class ServerProcess:
    """`python ARGV...` as a server child: its port and base URL once it said `PORT <n>`."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.process.kill()
            raise SystemExit(f"the benchmark server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
