"""bench/bench_resume.py runs and its streamfsm rows say what resuming saves: the same cut healed
with one GET and no text sent twice, against a second POST that sends the shown text again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_resume_sends_nothing_twice_and_asking_again_resends_what_was_shown() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_resume.py", "--deltas", "20", "--cut", "12", "--no-codex"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(next(line for line in done.stdout.splitlines()
                             if line.startswith("RESULT ")).removeprefix("RESULT "))
    resumed = result["rows"]["streamfsm, resume"]
    again = result["rows"]["streamfsm, resume=False"]
    assert resumed["ok"] and again["ok"]
    assert [r.split(" ")[0] for r in resumed["requests"]] == ["POST", "GET"]
    assert again["requests"] == ["POST /v1/responses", "POST /v1/responses"]
    assert resumed["text_resent"] == 0
    assert again["text_resent"] > 0  # the deltas shown before the cut came again
    assert resumed["bytes_sent"] < again["bytes_sent"]
