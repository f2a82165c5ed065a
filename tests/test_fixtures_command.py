"""`streamfsm fixtures --rerecord`: the fixtures recorded again in one step after a rule changed
on purpose, the built-in ones from their source, the others from their own recorded inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import attrs
import pytest

from engine import replay
from engine.cli import main
from engine.testing.fixtures import rederive, rerecord
from machines import stream_attempt
from machines.stream_attempt import failure_is_retryable

from support import patch_rows

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "replay_fixtures"
EXHAUSTED = "retryable_failure_exhausted_keeps_provider_words.jsonl"


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, target)
    return target


def test_a_trace_derived_again_by_the_same_machines_is_the_same_file(tmp_path: Path) -> None:
    copied = _copy(tmp_path)
    traces = sorted(copied.rglob("*.jsonl"))
    assert len(traces) > 60
    for path in traces:
        before = path.read_bytes()
        assert rederive(path) is not None, path.name
        assert path.read_bytes() == before, path.name


def test_a_changed_rule_is_derived_from_the_recorded_inputs(tmp_path: Path, monkeypatch) -> None:
    """Recorded: server_error retried (the policy said so) until the budget ran out. With the
    retry rows gone, the first response.failed is the outcome; the file says so and replays
    identically under the changed machines, and differs from the recording of the old rule."""
    copied = _copy(tmp_path)
    path = copied / EXHAUSTED
    assert not replay(path).divergence
    patch_rows(monkeypatch, stream_attempt,
               lambda row: attrs.evolve(row, guards=(lambda _: False,))
               if failure_is_retryable in row.guards else row)
    assert replay(path).divergence is not None
    assert rederive(path) == "failed"
    assert not replay(path).divergence
    assert replay(FIXTURES / EXHAUSTED).divergence is not None


def test_a_rule_that_needs_inputs_never_recorded_leaves_the_trace(tmp_path: Path, monkeypatch) -> None:
    """An error frame made retryable: today's machines ask for a second attempt the recording
    never made, so the trace must be recorded again from its source."""
    copied = _copy(tmp_path)
    path = copied / "error_first_top_level.jsonl"
    before = path.read_bytes()

    def retried(row):
        if row.trigger != "error_frame":
            return row
        return attrs.evolve(row, dest=stream_attempt.State.RETIRE,
                            decides=attrs.evolve(row.decides, retry="stream"))

    patch_rows(monkeypatch, stream_attempt, retried)
    assert rederive(path) is None
    assert path.read_bytes() == before


@pytest.mark.timeout(240)
def test_the_command_lists_and_rerecords_a_folder(tmp_path: Path, capsys) -> None:
    copied = _copy(tmp_path)
    assert main(["fixtures", str(copied)]) == 0
    listed = capsys.readouterr().out.split()
    assert str(copied / "happy_text.jsonl") in listed and len(listed) > 60
    (copied / "happy_text.jsonl").unlink()  # a built-in one missing: recorded
    broken = copied / "codex_app_server" / "text_answer.jsonl"  # a decision altered: derived
    broken.write_bytes(broken.read_bytes().replace(b'"dest":"streaming"', b'"dest":"tool_call"', 1))
    before = (copied / "http_429.jsonl").read_bytes()
    assert main(["fixtures", "--rerecord", str(copied)]) == 0
    hows = {line.split()[-1]: line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert hows.pop(str(copied / "happy_text.jsonl")) == "recorded"
    assert hows.pop(str(broken)) == "derived"
    assert set(hows.values()) == {"kept"} and len(hows) > 60
    assert (copied / "http_429.jsonl").read_bytes() == before
    assert all(replay(path).identical for path in copied.rglob("*.jsonl"))
    assert {item.how for item in rerecord(copied)} == {"kept"}


def test_the_command_refuses_what_is_not_a_folder(tmp_path: Path, capsys) -> None:
    assert main(["fixtures", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("streamfsm: error: ")
