"""A scripted stand-in for `codex app-server`, for what the real one cannot be made to do.

    python engine/testing/fake_app_server.py SCRIPT.json [LOG.jsonl]

The real server (tests/test_app_server_real.py) is the reference; this one plays the cases it
never produces on demand: a request left unanswered, a refused handshake, requests it has no
reason to send (permissions, MCP elicitation, user input, unknown methods), lines that are not
JSON, secrets echoed in its output. The script is a JSON list of steps, played in order:

    {"expect": "turn/start"}      read client lines until one with this method (a request or a
                                  notification; "response" matches any response); its id is
                                  kept as $id:<method> ("$id:response" for a response)
    {"send": {...}}               write one JSON line; a string "$id:<method>" becomes that id,
                                  "$env:NAME" in a string the environment variable's value
    {"raw": "text"}               write the text as a line as it is (not JSON, say)
    {"stderr": "text"}            write a line to stderr ($env: substituted)
    {"sleep": 0.2}                wait
    {"exit": 3}                   exit at once with that status
    {"close_stdout": true}        close stdout (the client sees the end of output) and go on

After the last step it reads stdin until the client closes it, then exits 0. With a LOG path
every client line is appended there (one JSON value per line), for tests to check what the
client answered.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, TextIO

__all__ = ["main", "script_command"]

_ENV = re.compile(r"\$env:([A-Za-z_][A-Za-z0-9_]*)")


def script_command(script_path: str, log_path: str | None = None) -> list[str]:
    """The argv that runs this fake with `script_path` (for `CodexSession(command=...)`). The
    file runs as a script, so the fake starts without importing streamfsm."""
    argv = [sys.executable, os.path.abspath(__file__), script_path]
    return argv + ([log_path] if log_path else [])


class _Fake:
    def __init__(self, log: TextIO | None) -> None:
        self.ids: dict[str, Any] = {}
        self.log = log

    def substitute(self, value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("$id:"):
                return self.ids.get(value[4:])
            return _ENV.sub(lambda m: os.environ.get(m.group(1), ""), value)
        if isinstance(value, dict):
            return {key: self.substitute(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.substitute(item) for item in value]
        return value

    def read(self) -> Any:
        line = sys.stdin.readline()
        if not line:
            return None
        if self.log is not None:
            self.log.write(line if line.endswith("\n") else line + "\n")
            self.log.flush()
        try:
            return json.loads(line)
        except ValueError:
            return {}

    def expect(self, method: str) -> bool:
        while True:
            message = self.read()
            if message is None:
                return False
            if not isinstance(message, dict):
                continue
            if method == "response" and "method" not in message and "id" in message:
                self.ids["response"] = message.get("id")
                return True
            if message.get("method") == method:
                self.ids[method] = message.get("id")
                return True

    def write(self, text: str) -> None:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass

    def play(self, steps: list[dict[str, Any]]) -> int:
        for step in steps:
            if "expect" in step:
                if not self.expect(step["expect"]):
                    return 0
            elif "send" in step:
                self.write(json.dumps(self.substitute(step["send"])))
            elif "raw" in step:
                self.write(str(step["raw"]))
            elif "stderr" in step:
                sys.stderr.write(str(self.substitute(step["stderr"])) + "\n")
                sys.stderr.flush()
            elif "sleep" in step:
                time.sleep(float(step["sleep"]))
            elif "exit" in step:
                return int(step["exit"])
            elif step.get("close_stdout"):
                sys.stdout.close()
                os.close(1)
        while self.read() is not None:
            pass
        return 0


def main(argv: list[str] | None = None) -> int:
    """Play the script named by `argv[0]`, logging client lines to `argv[1]` if given."""
    args = sys.argv[1:] if argv is None else argv
    with open(args[0], encoding="utf-8") as source:
        steps = json.load(source)
    log = open(args[1], "a", encoding="utf-8") if len(args) > 1 else None
    try:
        return _Fake(log).play(steps)
    finally:
        if log is not None:
            log.close()


if __name__ == "__main__":
    os._exit(main())
