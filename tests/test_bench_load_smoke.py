"""The load benchmark (bench/bench_load.py) runs at a tiny concurrency and its checks hold: every
turn completes with exactly the answer text, no false timeouts, every cut turn retried, no
socket left open after `client.close()` (cut with a FIN or a reset).
Correctness only: nothing here asserts a throughput."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "bench_load.py"
WAYS = {"streamfsm", "streamfsm+idle", "sdk"}
#: The benchmark starts its own servers and clients in subprocesses.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("cut", ["fin", "rst"])
def test_the_load_benchmark_runs_and_its_checks_hold(cut: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--concurrency", "3,6", "--deltas", "20", "--drop-rate", "0.5",
         "--cut", cut],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["ok"] is True and result["problems"] == []
    assert set(result["results"]) == {"3", "6"}
    for n, row in result["results"].items():
        assert set(row) == WAYS
        for way, figures in row.items():
            assert figures["turns"] == figures["completed"] == int(n), (n, way)
            assert figures["text_errors"] == 0 and figures["false_timeouts"] == 0, (n, way)
            assert figures["retried"] == figures["planned_cuts"], (n, way)
            if way != "sdk":  # no connection left for the garbage collector to close
                assert figures["sockets_left"] == 0, (n, way)
            assert figures["turns_per_s"] > 0
        assert row["streamfsm"]["vs_sdk"] > 0 and row["streamfsm+idle"]["vs_sdk"] > 0
