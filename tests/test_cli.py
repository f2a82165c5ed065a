"""The `streamfsm` command, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

import engine

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "replay_fixtures"


def streamfsm(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=input is None,
        input=input,
        timeout=timeout,
        cwd=ROOT,
    )


def test_demo_runs_offline_and_shows_each_path(tmp_path: Path) -> None:
    done = streamfsm("demo", "--traces", str(tmp_path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "awaiting_created -created-> streaming -completed-> terminal" in out
    assert "-in_progress-> streaming" in out
    assert "-drop-> retire" in out and "-drop-> fallback" in out
    assert "-idle_timeout-> retire" in out
    assert "outcome   interrupted" in out
    assert "permission_denied" in out
    traces = sorted(tmp_path.glob("*.jsonl"))
    assert len(traces) >= 15
    assert all(engine.replay(t).identical for t in traces)
    assert done.stderr == ""


def test_replay_identical_fixtures_exit_zero() -> None:
    paths = [str(p) for p in sorted(FIXTURES.glob("*.jsonl"))[:5]]
    done = streamfsm("replay", *paths)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("identical") == 5


def test_replay_divergence_exit_one_names_first_differing_record(tmp_path: Path) -> None:
    lines = (FIXTURES / "happy_text.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    target = next(r for r in records if r.get("kind") == "effect" and r["effect"] == "text_delta")
    target["data"] = "tampered"
    altered = tmp_path / "altered.jsonl"
    altered.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    done = streamfsm("replay", str(altered))
    assert done.returncode == 1
    assert f"first difference at seq {target['seq']}" in done.stdout
    assert '"tampered"' in done.stdout  # the recorded side
    assert "recorded:" in done.stdout and "replayed:" in done.stdout


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"not json at all\n", "line 1 is not JSON"),
        (b'{"format": "streamfsm-trace", "version": 99, "entry": "run_turn"}\n', "version 99"),
        (b'{"format": "other"}\n', "not a streamfsm-trace header"),
    ],
)
def test_replay_invalid_trace_exit_two_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    done = streamfsm("replay", str(bad))
    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_replay_truncated_trace_exit_two(tmp_path: Path) -> None:
    data = (FIXTURES / "happy_text.jsonl").read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[: len(data) // 2])
    done = streamfsm("replay", str(cut))
    assert done.returncode == 2, done.stdout
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_replay_missing_file_exit_two() -> None:
    done = streamfsm("replay", "no/such/trace.jsonl")
    assert done.returncode == 2
    assert "cannot read" in done.stderr and "Traceback" not in done.stderr


def test_consume_file_prints_transitions_and_outcome(tmp_path: Path) -> None:
    from engine.simulator.shapes import SHAPES
    from machines.records import Chunk

    raw = b"".join(s.data for s in SHAPES["happy_text"].replies[0].steps if isinstance(s, Chunk))
    capture = tmp_path / "capture.sse"
    capture.write_bytes(raw)
    trace = tmp_path / "t.jsonl"
    done = streamfsm("consume", str(capture), "--trace", str(trace))
    assert done.returncode == 0, done.stderr
    assert "awaiting_created -created-> streaming" in done.stdout
    assert "outcome   completed" in done.stdout
    assert engine.replay(trace).identical


def test_consume_from_stdin_cut_short_is_an_error_outcome() -> None:
    done = streamfsm("consume", "-", input=b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n')
    assert done.returncode == 0
    assert b"outcome   error" in done.stdout and b"eof" in done.stdout


def test_consume_missing_file_is_one_line() -> None:
    done = streamfsm("consume", "nope.sse")
    assert done.returncode == 2 and "cannot read nope.sse" in done.stderr
    assert "Traceback" not in done.stderr


def test_diagram_is_generated_from_the_table() -> None:
    from machines import stream_attempt

    done = streamfsm("diagram")
    assert done.returncode == 0
    assert done.stdout.startswith("stateDiagram-v2\n    [*] --> awaiting_created\n")
    for row in stream_attempt.TABLE.rows:
        if row.dest is None:  # stays are not drawn
            continue
        for source in row.source:
            assert any(
                line.strip().startswith(f"{source} --> {row.dest}:") and row.label in line
                and all(guard.__name__ in line for guard in row.guards)
                for line in done.stdout.splitlines()
            ), row
    turn = streamfsm("diagram", "turn")
    assert "stream_attempt --> fallback_attempt: fall_back" in turn.stdout


def test_help_lists_every_command() -> None:
    done = streamfsm("--help")
    assert done.returncode == 0
    for command in ("demo", "replay", "consume", "serve", "diagram"):
        assert command in done.stdout


def test_serve_a_fixture_for_a_real_client(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", str(FIXTURES / "drop_then_retry.jsonl"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        first = process.stdout.readline()
        assert "serving" in first, first + process.stderr.read()
        base_url = first.split(" at ")[1].split()[0]
        client = openai.OpenAI(base_url=base_url, api_key="any", max_retries=0)
        trace = tmp_path / "served.jsonl"
        result = engine.run_turn(client, {"model": "m", "input": "hi"}, trace=trace)
        assert result.outcome == "completed"
        assert [(a.final_state, a.reason) for a in result.attempts] == [
            ("retire", "drop"), ("terminal", "completed")
        ]
        assert result.output_text.startswith("The capital of France is Paris")
        assert engine.replay(trace).identical
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_unknown_fixture_is_one_line() -> None:
    done = streamfsm("serve", "nonexistent_thing")
    assert done.returncode == 2 and "not a built-in shape" in done.stderr
