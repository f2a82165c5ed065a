"""Traces and replay: a recorded turn replays record for record; any change to a record is a
divergence naming the first differing seq; a file that is not a valid trace raises `TraceError`
with one line; raw bytes, chunk boundaries included, survive the round trip."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.simulator import shapes
from engine.simulator.shapes import SHAPES, split_text
from machines.records import Chunk
from engine.log.trace import read_trace

from support import assert_replays_identically, run_over_http, trace_lines, write_trace_lines

ANSWER = shapes._ANSWER


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Traces of real turns over HTTP, as lists of JSON lines (header first)."""
    folder = tmp_path_factory.mktemp("recorded")
    return {
        name: trace_lines(run_over_http(SHAPES[name], folder).trace)
        for name in ("happy_text", "drop_then_retry")
    }


def _replay(lines: list[dict[str, Any]], tmp_path: Path) -> engine.ReplayReport:
    path = tmp_path / "edited.jsonl"
    write_trace_lines(path, lines)
    return engine.replay(path)


def _renumber(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [lines[0]] + [{**record, "seq": seq} for seq, record in enumerate(lines[1:], 1)]


def _first(lines: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in lines[1:] if all(r.get(k) == v for k, v in match.items()))


def test_unchanged_traces_replay_identically(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    for lines in recorded.values():
        report = _replay(lines, tmp_path)
        assert report.identical and report.divergence is None
        assert report.records == len(lines) - 1


def test_trace_records_are_numbered_and_end_with_the_result(recorded: dict[str, list[dict[str, Any]]]) -> None:
    lines = recorded["drop_then_retry"]
    assert lines[0]["format"] == "streamfsm-trace" and lines[0]["version"] == 2
    assert lines[0]["entry"] == "run_turn"
    assert [r["seq"] for r in lines[1:]] == list(range(1, len(lines)))
    assert lines[-1]["kind"] == "result" and lines[-1]["outcome"] == "completed"
    kinds = {r["kind"] for r in lines[1:]}
    assert kinds == {"input", "transition", "effect", "result"}
    faults = [r for r in lines if r.get("input") == "fault"]
    assert faults == [{**faults[0], "fault": "drop", "attempt": 1}]
    assert all(isinstance(r["t"], float) for r in lines if r.get("kind") == "input")


# -- divergences ----------------------------------------------------------------------------


def test_altered_text_delta_effect(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    lines = copy.deepcopy(recorded["happy_text"])
    target = _first(lines, kind="effect", effect="text_delta")
    original = dict(target)
    target["data"] = "The capital of Germany"
    report = _replay(lines, tmp_path)
    assert not report.identical
    assert report.divergence.seq == target["seq"]
    assert report.divergence.recorded == target
    assert report.divergence.replayed == original
    assert f"seq {target['seq']}:" in report.divergence.describe()
    assert "\n" not in report.divergence.describe()


def test_altered_transition_dest(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    lines = copy.deepcopy(recorded["drop_then_retry"])
    target = _first(lines, kind="transition", dest="retire")
    target["dest"] = "fallback"
    report = _replay(lines, tmp_path)
    assert report.divergence.seq == target["seq"]
    assert report.divergence.replayed["dest"] == "retire"


def test_altered_chunk_diverges_at_the_first_decision_it_changes(
    recorded: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    lines = copy.deepcopy(recorded["happy_text"])
    first_piece = split_text(ANSWER, 4)[0]
    chunk = next(
        r for r in lines[1:]
        if r.get("input") == "chunk" and f'"delta":"{first_piece}"' in r.get("data", "")
    )
    chunk["data"] = chunk["data"].replace(first_piece, "Berlin is ")
    delivered = _first(lines, kind="effect", effect="text_delta")
    report = _replay(lines, tmp_path)
    # the edited input is replayed as recorded; what today's machines decide from it is not
    assert report.divergence.seq == delivered["seq"]
    assert report.divergence.replayed["data"] == "Berlin is "


@pytest.mark.parametrize(
    "match",
    [
        {"kind": "transition", "trigger": "retry"},
        {"kind": "effect", "effect": "text_delta"},
        {"kind": "input", "input": "fault"},
        {"kind": "input", "input": "chunk"},
    ],
    ids=["transition", "effect", "fault-input", "chunk-input"],
)
def test_deleted_record_names_its_seq(
    match: dict[str, str], recorded: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    lines = copy.deepcopy(recorded["drop_then_retry"])
    target = _first(lines, **match)
    lines.remove(target)
    report = _replay(lines, tmp_path)
    assert not report.identical
    assert report.divergence.seq == target["seq"]
    assert report.divergence.recorded["seq"] == target["seq"] + 1


def test_deleted_transition_renumbered_names_its_seq(
    recorded: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """A careful forger renumbers the records: the decision is still missing."""
    lines = copy.deepcopy(recorded["drop_then_retry"])
    target = _first(lines, kind="transition", trigger="retry")
    lines.remove(target)
    report = _replay(_renumber(lines), tmp_path)
    assert report.divergence.seq == target["seq"]
    assert report.divergence.replayed == target


def test_reordered_records(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    lines = copy.deepcopy(recorded["happy_text"])
    at = lines.index(_first(lines, kind="effect", effect="first_delta"))
    lines[at], lines[at + 1] = lines[at + 1], lines[at]
    report = _replay(lines, tmp_path)
    assert report.divergence.seq == at
    assert report.divergence.recorded == lines[at]


def test_deleted_result_is_a_truncated_trace(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Without its final result record a trace is a truncated file: invalid, not a divergence."""
    lines = copy.deepcopy(recorded["happy_text"])
    lines.pop()
    path = tmp_path / "edited.jsonl"
    write_trace_lines(path, lines)
    with pytest.raises(engine.TraceError, match="without its final result record"):
        engine.replay(path)


@pytest.mark.parametrize("renumbered", [False, True])
def test_added_record(renumbered: bool, recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    lines = copy.deepcopy(recorded["happy_text"])
    at = lines.index(_first(lines, kind="effect", effect="text_delta"))
    lines.insert(at, {"seq": at, "kind": "effect", "attempt": 1, "effect": "text_delta", "data": "extra"})
    if renumbered:
        lines = _renumber(lines)
    report = _replay(lines, tmp_path)
    assert report.divergence.seq == at
    assert report.divergence.recorded["data"] == "extra"


def test_added_record_after_the_result(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    lines = copy.deepcopy(recorded["happy_text"])
    error = {"message": "added", "code": None, "type": "server_error"}
    lines.append({"seq": len(lines), "kind": "effect", "attempt": 1, "effect": "error", "data": error})
    report = _replay(lines, tmp_path)
    assert report.divergence.seq == len(lines) - 1
    assert report.divergence.replayed is None


def test_altered_result(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    lines = copy.deepcopy(recorded["happy_text"])
    lines[-1]["output_text"] = ANSWER + " (edited)"
    report = _replay(lines, tmp_path)
    assert report.divergence.seq == lines[-1]["seq"]


def test_policy_changed_in_the_header(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Replay runs today's machines under the recorded policy: with no retries allowed, attempt 1
    of the recorded turn ends in `fallback` instead of `retire`."""
    lines = copy.deepcopy(recorded["drop_then_retry"])
    lines[0]["policy"]["max_stream_retries"] = 0
    report = _replay(lines, tmp_path)
    retire = _first(lines, kind="transition", dest="retire")
    assert report.divergence.seq == retire["seq"]
    assert report.divergence.replayed["dest"] == "fallback"


# -- invalid files ---------------------------------------------------------------------------


def _header(**changes: Any) -> dict[str, Any]:
    header = {
        "format": "streamfsm-trace", "version": 1, "entry": "consume",
        "policy": {"max_stream_retries": 0, "fallback": False, "idle_timeout_s": None,
                   "retry_failed_codes": []},
        "request": None,
    }
    header.update(changes)
    return header


CHUNK = {"seq": 1, "kind": "input", "attempt": 1, "t": None, "input": "chunk", "data": "data: x\n\n"}

INVALID: dict[str, tuple[bytes | list[dict[str, Any]], str]] = {
    "empty": (b"", "empty file, not a trace"),
    "blank-lines": (b"\n\n  \n", "empty file, not a trace"),
    "garbage": (b"\x00\xff\xfe garbage \x89PNG\r\n", "line 1 is not JSON"),
    "not-json": (b"this is not a trace\n", "line 1 is not JSON"),
    "json-array": (b"[1, 2, 3]\n", "line 1 is not a JSON object"),
    "other-format": ([{"format": "har", "version": 1}], "line 1 is not a streamfsm-trace header"),
    "wrong-version": ([_header(version=3)], "trace format version 3 is not supported"),
    "no-version": ([_header(version=None)], "trace format version None is not supported"),
    "unknown-entry": ([_header(entry="telnet")], "unknown entry 'telnet' in header"),
    "bad-policy": ([_header(policy={"max_stream_retries": -1})], "bad policy in header"),
    "unknown-kind": ([_header(), {**CHUNK, "kind": "thought"}], "line 2 has unknown kind 'thought'"),
    "bad-seq": ([_header(), {**CHUNK, "seq": "1"}], "line 2 has no valid seq number ('1')"),
    "no-seq": ([_header(), {k: v for k, v in CHUNK.items() if k != "seq"}], "line 2 has no valid seq number"),
    "no-attempt": ([_header(), {**CHUNK, "attempt": 0}], "line 2 input has no valid attempt number"),
    "unknown-input": ([_header(), {**CHUNK, "input": "telepathy"}], "unknown input kind 'telepathy'"),
    "bad-chunk": ([_header(), {**CHUNK, "data": 5}], "bad chunk input"),
    "bad-base64": (
        [_header(), {k: v for k, v in CHUNK.items() if k != "data"} | {"data_b64": "@@not base64@@"}],
        "bad chunk input",
    ),
    "unknown-fault": ([_header(), {**CHUNK, "input": "fault", "fault": "gremlins"}], "unknown fault 'gremlins'"),
    "bad-http-error": ([_header(), {**CHUNK, "input": "http_error", "status": "five hundred"}], "bad http_error input"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_trace_raises_a_one_line_trace_error(case: str, tmp_path: Path) -> None:
    content, words = INVALID[case]
    path = tmp_path / f"{case}.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_trace_lines(path, content)
    with pytest.raises(engine.TraceError) as caught:
        engine.replay(path)
    message = str(caught.value)
    assert words in message
    assert str(path) in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_truncated_trace(recorded: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    path = tmp_path / "whole.jsonl"
    write_trace_lines(path, recorded["happy_text"])
    raw = path.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(raw[: len(raw) - 40])  # the last line loses its end
    with pytest.raises(engine.TraceError, match=rf"line {len(recorded['happy_text'])} is not JSON"):
        engine.replay(cut)


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_unreadable_path(where: str, tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl" if where == "missing" else tmp_path
    with pytest.raises(engine.TraceError, match="cannot read") as caught:
        engine.replay(path)
    assert "\n" not in str(caught.value)


# -- raw bytes round trip -------------------------------------------------------------------


def test_chunks_that_are_not_utf8_on_their_own_round_trip_as_base64(tmp_path: Path) -> None:
    whole = 'data: {"type":"response.output_text.delta","delta":"Grüße 🚀"}\n\n'.encode()
    cut = whole.index("ü".encode()) + 1  # inside the two bytes of ü
    chunks = [whole[:cut], whole[cut:], b"data: \xff\xfe\n\n"]
    trace = tmp_path / "bytes.jsonl"
    delivered: list[str] = []
    result = engine.consume(chunks, engine.Callbacks(on_text_delta=delivered.append), trace=trace)
    assert delivered == ["Grüße 🚀"]
    assert result.output_text == "Grüße 🚀"
    inputs = [r for r in trace_lines(trace) if r.get("input") == "chunk"]
    assert all("data_b64" in r and "data" not in r for r in inputs)
    assert [base64.b64decode(r["data_b64"]) for r in inputs] == chunks
    assert_replays_identically(trace)


def test_trace_keeps_the_servers_chunk_boundaries(tmp_path: Path) -> None:
    """7-byte chunks with CRLF pairs and UTF-8 characters split between them: the trace holds
    exactly the pieces the server sent, text or base64 as each piece allows."""
    script = SHAPES["crlf_split_chunks"]
    run = run_over_http(script, tmp_path)
    sent = [step.data for step in script.replies[0].steps if isinstance(step, Chunk)]
    recorded = [
        base64.b64decode(r["data_b64"]) if "data_b64" in r else r["data"].encode()
        for r in read_trace(run.trace).inputs() if r["input"] == "chunk"
    ]
    assert recorded == sent
    assert any("data_b64" in r for r in read_trace(run.trace).inputs())
    assert run.result.output_text == shapes._UTF8_ANSWER


def _sse_bytes(name: str) -> list[bytes]:
    return [step.data for step in SHAPES[name].replies[0].steps if isinstance(step, Chunk)]


def test_consume_traces_replay(tmp_path: Path) -> None:
    happy = b"".join(_sse_bytes("happy_text"))
    cases = {"whole": [happy], "bytewise-cut-short": [bytes([b]) for b in happy[:300]]}
    for name, chunks in cases.items():
        trace = tmp_path / f"{name}.jsonl"
        engine.consume(chunks, trace=trace)
        assert_replays_identically(trace)


def test_trace_is_written_whole(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    engine.consume(_sse_bytes("happy_text"), trace=trace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]  # no partial file left
    assert trace.read_bytes().endswith(b"\n")
