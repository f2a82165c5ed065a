"""`streamfsm show TRACE` (and `--json`): the turn as steps, checked against the trace itself.

Every state change and every delivery the trace recorded appears once, in order, in the steps;
each step's attempt and kind are the ones the turn machine opened; stalls, retry waits, resumes
and an app-server turn's lines, approvals and exit show up as such. Run as the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "replay_fixtures"


def streamfsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]


def steps_of(path: Path) -> list[dict[str, Any]]:
    done = streamfsm("show", str(path), "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("name", [
    "drop_then_retry.jsonl", "drop_every_attempt.jsonl", "background_drop_then_resume.jsonl",
    "http_503_then_ok.jsonl", "stall_then_retry.jsonl", "function_call.jsonl",
    "consume_happy_text.jsonl", "background_interrupted_cancelled.jsonl",
    "codex_app_server/approval_declined.jsonl", "codex_app_server/sigkill_retires.jsonl",
])
def test_the_steps_hold_every_change_and_delivery_of_the_trace_in_order(name: str) -> None:
    path = FIXTURES / name
    *steps, last = steps_of(path)
    recorded = records(path)
    moves = [(r["machine"], r["source"], r["trigger"], r["dest"])
             for r in recorded if r["kind"] == "transition"]
    shown = [(m["machine"], m["source"], m["trigger"], m["dest"]) for s in steps for m in s["moves"]]
    assert shown == moves
    effects = [r["effect"] for r in recorded if r["kind"] == "effect"]
    assert [d["effect"] for s in steps for d in s["delivered"]] == effects
    inputs = [r for r in recorded if r["kind"] == "input"]
    arrived = [s for s in steps if s["arrived"] is not None]
    assert [s["arrived"]["input"] for s in arrived] == [r["input"] for r in inputs]
    assert [s["seq"] for s in arrived] == [r["seq"] for r in inputs]
    assert [s["t"] for s in arrived] == [r.get("t") for r in inputs]
    chunks = [r for r in inputs if r["input"] == "chunk"]
    assert sum(s["arrived"]["bytes"] for s in arrived if s["arrived"]["input"] == "chunk") == sum(
        len(r["data"].encode()) for r in chunks)
    result = recorded[-1]
    assert last == {"result": {k: v for k, v in result.items() if k != "kind"}}
    if "attempts" in result:  # each step of an attempt names the attempt's kind
        kinds = {a["number"]: a["kind"] for a in result["attempts"]}
        assert all(s["kind"] == kinds[s["attempt"]] for s in steps)
    else:
        assert {s["kind"] for s in steps} == {"app_turn"}


def test_a_retried_turn_in_the_terminal() -> None:
    done = streamfsm("show", str(FIXTURES / "drop_then_retry.jsonl"))
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    drop = next(line for line in lines if "fault drop" in line)
    assert "#1 stream" in drop and "→ streaming -drop-> retire" in drop
    retry = next(line for line in lines if "-retry->" in line)
    assert "#2 stream" in retry and "turn: stream_attempt -retry-> stream_attempt" in retry
    assert any("response.output_text.delta" in line and "⇒ text 'The capital of Fr'" in line
               for line in lines)
    assert lines[-4:-1] == ["result    completed after 2 attempt(s)",
                            "attempt 1 stream   retire    drop",
                            "attempt 2 stream   terminal  completed"]
    assert lines[-1].startswith("text      'The capital of France is Paris.")


def test_waits_stalls_and_resumes_are_named() -> None:
    waited = streamfsm("show", str(FIXTURES / "http_503_then_ok.jsonl")).stdout
    assert "HTTP 503 server_error" in waited and "⇒ retry wait 0.05 s" in waited
    stalled = [s for s in steps_of(FIXTURES / "stall_then_retry.jsonl") if s.get("arrived")]
    stall = next(s for s in stalled if s["arrived"]["input"] == "idle_timeout")
    assert stall["silence_s"] >= 0.2 and "stall" in stall["arrived"]["text"]
    resumed = steps_of(FIXTURES / "background_drop_then_resume.jsonl")
    assert {s["kind"] for s in resumed[:-1] if s["attempt"] == 2} == {"resume"}
    cancelled = streamfsm("show", str(FIXTURES / "background_interrupted_cancelled.jsonl")).stdout
    assert "] interrupt (the caller" in cancelled  # after a silence
    assert "⇒ cancel resp_sim_background_0001" in cancelled


def test_an_app_server_turn_shows_lines_approvals_and_the_exit() -> None:
    approval = streamfsm("show", str(FIXTURES / "codex_app_server/approval_declined.jsonl")).stdout
    assert "turn 1" in approval
    assert "line request item/commandExecution/requestApp" in approval
    assert "approval asked: command" in approval and "approval answered decline" in approval
    assert "sent request turn/start" in approval
    assert "result    completed" in approval
    killed = streamfsm("show", str(FIXTURES / "codex_app_server/sigkill_retires.jsonl")).stdout
    assert "process exit" in killed and "retire" in killed


def test_a_trace_without_a_clock_numbers_its_steps() -> None:
    done = streamfsm("show", str(FIXTURES / "consume_happy_text.jsonl"))
    assert done.returncode == 0
    assert "#2  #1 stream" in done.stdout  # record 2, attempt 1


def test_an_abandoned_turn_says_so(tmp_path: Path) -> None:
    lines = (FIXTURES / "drop_then_retry.jsonl").read_text().splitlines()[:13]
    lines.append(json.dumps({"seq": 13, "kind": "abandoned", "exception": "KeyboardInterrupt"}))
    path = tmp_path / "abandoned.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = streamfsm("show", str(path))
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1].startswith("abandoned: the driver raised KeyboardInterrupt")
    assert steps_of(path)[-1] == {"abandoned": "KeyboardInterrupt"}


@pytest.mark.parametrize("content, words", [
    (b"", "empty file"),
    (b"not json\n", "line 1 is not JSON"),
    (b'{"format": "streamfsm-trace", "version": 2, "entry": "run_turn", "policy": {}}\n',
     "without its final result record"),
])
def test_an_invalid_trace_is_one_line_and_exit_2(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    for extra in ((), ("--json",), ("--html", str(tmp_path / "out.html"))):
        done = streamfsm("show", str(path), *extra)
        assert done.returncode == 2
        (line,) = done.stderr.splitlines()
        assert line.startswith("streamfsm: error: ") and words in line
        assert "Traceback" not in done.stderr
