"""Traces of app-server turns: every fixture replays identically, tampering is a divergence,
a broken file is invalid (exit 2, one line), and the command line shows the new machines.

replay_fixtures/codex_app_server/ holds traces recorded from the real codex app-server 0.169.0
(tests/test_app_server_real.py and tests/test_app_server_real_protocol.py, one per rule) and
from the scripted fake for the cases the real one cannot be made to produce (`fake_*`). The pytest plugin replays them too (addopts).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

import engine
from engine import cli
from engine.log.trace import read_trace

FIXTURES = Path(__file__).resolve().parent.parent / "replay_fixtures" / "codex_app_server"
TRACES = sorted(FIXTURES.glob("*.jsonl"))

#: One real-binary fixture per rule (the `fake_*` ones beside them cover the rest).
RULES = {
    "text_answer": "completed", "second_turn_same_process": "completed",
    "command_runs_sandboxed": "completed", "approval_accepted_exit_3": "completed",
    "approval_declined": "completed", "approval_cancelled": "interrupted",
    "interrupt_during_approval": "interrupted", "interrupt_mid_answer": "interrupted",
    "failed_then_recovered": "failed", "auth_failure_retires": "failed",
    "stream_retry_no_double_text": "completed", "failed_keeps_partial_text": "failed",
    "sigkill_retires": "error", "sigterm_exit_0_retires": "error",
    "idle_timeout_retires": "error", "silence_after_tool_result": "completed",
    "file_change_accept": "completed", "file_change_decline": "completed",
    # the rest of the protocol (tests/test_app_server_real_protocol.py)
    "thread_resumed": "completed", "thread_resume_refused": "completed",
    "developer_instructions": "completed", "instructions_changed_new_thread": "completed",
    "client_tool_answered": "completed", "client_tool_raises": "completed",
    "client_tool_repeated_call_id": "completed", "usage_second_turn": "completed",
    "compaction": "completed", "compaction_inside_turn": "completed",
    "steer_mid_answer": "completed",
    "turn_timeout_after_answer": "completed", "turn_timeout_before_answer": "error",
    "close_during_turn": "error",
}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    import sys

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        status = cli.main(list(argv))
    finally:
        sys.stdout, sys.stderr = saved
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("path", TRACES, ids=[p.stem for p in TRACES])
def test_every_fixture_replays_identically(path: Path) -> None:
    report = engine.replay(path)
    assert report.identical, report.divergence.describe() if report.divergence else ""
    assert report.records == len(read_trace(path).records)


@pytest.mark.parametrize("name, outcome", sorted(RULES.items()))
def test_each_rule_has_a_real_binary_fixture(name: str, outcome: str) -> None:
    trace = read_trace(FIXTURES / f"{name}.jsonl")
    assert trace.records[-1]["outcome"] == outcome
    assert any(r.get("input") == "line" for r in trace.records)


def test_no_fixture_holds_the_loopback_key() -> None:
    from engine.simulator.codex_app import LOOPBACK_KEY

    for path in TRACES:
        assert LOOPBACK_KEY not in path.read_text(), path


def test_the_command_line_replays_them() -> None:
    status, out, _ = run_cli("replay", *map(str, TRACES))
    assert status == 0 and out.count("identical") == len(TRACES)


def test_an_altered_record_is_a_divergence_naming_its_seq(tmp_path: Path) -> None:
    records = lines(FIXTURES / "stream_retry_no_double_text.jsonl")
    target = next(r for r in records if r.get("effect") == "text_delta")
    target["data"] = target["data"] + target["data"]  # as if text had been doubled
    status, out, _ = run_cli("replay", str(write(tmp_path / "altered.jsonl", records)))
    assert status == 1 and f"first difference at seq {target['seq']}" in out


def test_a_changed_input_changes_the_decisions(tmp_path: Path) -> None:
    records = lines(FIXTURES / "failed_then_recovered.jsonl")
    for record in records:
        if record.get("input") == "line" and '"turn/completed"' in record["data"]:
            record["data"] = record["data"].replace('"status":"failed"', '"status":"completed"')
    report = engine.replay(write(tmp_path / "changed.jsonl", records))
    assert not report.identical


@pytest.mark.parametrize("damage", ["truncated", "bad_session", "bad_input", "bad_config"])
def test_a_broken_app_trace_is_invalid(tmp_path: Path, damage: str) -> None:
    records = lines(FIXTURES / "text_answer.jsonl")
    if damage == "truncated":
        records = records[:-1]
    elif damage == "bad_session":
        records[0]["session"]["next_id"] = "one"
    elif damage == "bad_input":
        next(r for r in records if r.get("input") == "line")["data"] = 3
    else:
        records[0]["config"] = {"cwd": 7}
    status, _, err = run_cli("replay", str(write(tmp_path / f"{damage}.jsonl", records)))
    assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("machine, states", [
    ("app_turn", ["awaiting_created", "streaming", "tool_call", "awaiting_tool", "terminal",
                  "retire"]),
    ("app_session", ["spawned", "initializing", "resuming_thread", "ready", "turn_running",
                     "retired"]),
])
def test_diagram_draws_the_app_server_machines(machine: str, states: list[str]) -> None:
    status, out, _ = run_cli("diagram", machine)
    assert status == 0 and out.startswith("stateDiagram-v2\n")
    for state in states:
        assert state in out
    assert "failed [auth_failed]" in out or machine == "app_session"


def test_the_diagrams_show_the_rest_of_the_protocol() -> None:
    turn = run_cli("diagram", "app_turn")[1].splitlines()
    for edge in ("streaming --> awaiting_tool: tool_requested",
                 "awaiting_tool --> streaming: tool_answer [none_pending]",
                 "streaming --> interrupting: interrupt, turn_timeout [answer_arrived], turn_timeout",
                 "interrupting --> terminal: rejected [is_compaction], completed, "
                 "interrupted [timed_out_after_answer]"):
        assert any(line.strip().startswith(edge) for line in turn), edge
    assert any(line.strip().startswith("streaming --> retire: rejected, close") for line in turn)
    (note,) = [line for line in turn if line.strip().startswith("note right of streaming:")]
    for stay in ("usage", "compacted", "tool_requested [call_known]", "steer [id_known]",
                 "steered", "malformed_completion", "foreign_completion"):
        assert stay in note
    session = run_cli("diagram", "app_session")[1]
    assert "initializing --> resuming_thread: initialized [resumes_a_thread]" in session
    assert "resuming_thread --> starting_thread: resume_refused" in session
    assert "ready --> starting_thread: new_thread [instructions_changed]" in session


def test_demo_codex_without_a_binary_says_how_to_install_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFSM_CODEX", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    status, out, _ = run_cli("demo", "--codex")
    assert status == 0 and len(out.strip().splitlines()) == 1
    assert "npm install" in out and "@openai/codex@0.169.0" in out


@pytest.mark.slow
def test_demo_codex_runs_the_real_app_server(tmp_path: Path) -> None:
    from engine.drivers.codex import find_codex

    if find_codex() is None:
        pytest.skip("no codex binary: set STREAMFSM_CODEX or install @openai/codex@0.169.0")
    status, out, _ = run_cli("demo", "--codex", "--traces", str(tmp_path))
    assert status == 0
    assert out.count("outcome   completed") == 4 and out.count("outcome   interrupted") == 1
    assert "-> accept" in out and "-> decline" in out and "[declined]" in out
    assert len({line.rsplit("pid ", 1)[1] for line in out.splitlines() if "pid " in line}) == 1
    written = sorted(tmp_path.glob("*.jsonl"))
    assert len(written) == 5 and all(engine.replay(p).identical for p in written)
    assert os.path.exists(written[0])


def _recorded_turn(name: str) -> tuple[Any, list[Any]]:
    """The session a fixture's turn started from, and its recorded inputs (decoded)."""
    from engine.log.codec import decode_input
    from machines.app_records import SessionConfig
    from machines.app_session import AppSession

    records = lines(FIXTURES / f"{name}.jsonl")
    header = records[0]
    session = AppSession.restore(SessionConfig.from_json(header["config"]), header["session"])
    return session, [(r.get("t"), decode_input(r)) for r in records[1:] if r.get("kind") == "input"]


def test_a_turn_cut_short_is_traced_as_abandoned_and_replays(tmp_path: Path) -> None:
    """An app-server turn whose driver broke gets the `abandoned` record every trace gets; the
    records up to it replay identically."""
    from engine.drivers.app_recording import AppTurnRecording

    session, inputs = _recorded_turn("text_answer")
    recording = AppTurnRecording(session, None)
    for t, item in inputs[: len(inputs) // 2]:
        recording.feed(item, t)
    trace = tmp_path / "cut.jsonl"
    recording.abandon(trace, error=KeyboardInterrupt())
    written = lines(trace)
    assert written[-1] == {"seq": len(written) - 1, "kind": "abandoned", "exception": "KeyboardInterrupt"}
    report = engine.replay(trace)
    assert report.identical and report.abandoned == "KeyboardInterrupt"


def test_stdout_lines_are_masked_as_one_stream_and_replay(tmp_path: Path) -> None:
    """A secret codex echoes on stdout is masked, length for length, in every line and record
    that holds it (the lines of a turn masked as one stream, like an attempt's chunks), and the
    turn replays identically from the masked lines."""
    from engine.drivers.app_recording import AppTurnRecording

    session, inputs = _recorded_turn("text_answer")
    recording = AppTurnRecording(session, None)
    for t, item in inputs:
        recording.feed(item, t)
    assert recording.finished
    secret = recording.result().thread_id
    assert secret is not None and len(secret) > 8
    trace = tmp_path / "masked.jsonl"
    result = recording.finish(trace, [secret])
    assert result.outcome == "completed"
    raw = trace.read_text()
    assert secret not in raw and secret[:8] not in raw
    masked = [r for r in lines(trace) if r.get("input") == "line" and "*" * len(secret) in r["data"]]
    assert masked  # the lines that held it keep their length
    assert engine.replay(trace).identical


def test_serving_an_app_server_trace_is_one_clear_error() -> None:
    """`streamfsm serve` plays Responses-API traces; an app-server trace reads as a valid trace
    but holds no replies, which it says in one line (exit 2)."""
    status, out, err = run_cli("serve", str(FIXTURES / "text_answer.jsonl"), "--port", "0")
    assert status == 2 and out == ""
    assert err.strip().endswith("a codex_app_server trace holds no Responses-API replies")
    assert len(err.strip().splitlines()) == 1
