"""What `streamfsm replay` accepts as a trace (contract v2, "Trace files", and the `replay` row):

- a trace lacks its final `result` record only when the file was cut short: invalid (exit 2,
  `TraceError`), at every line boundary; a turn cut short by an exception in its driver ends with
  an `abandoned` record instead, and replays as far as it went;
- a header field of the wrong type is invalid, for every field, with one clear line;
- (v3) so is every field of every record of the wrong type or range: a boolean is no number (an
  `attempt` of `true` no longer compares equal to 1), a clock reading is finite, never negative
  and never goes back within an attempt, an effect's data is what its effect holds, the result's
  fields are what `TurnResult` holds; a huge number fits its field while its type holds it;
- no input file makes `streamfsm replay` print a traceback (Hypothesis: random bytes, random JSON
  lines, valid traces with one field's type changed, truncations);
- replay streams: the first divergence is reported as before, the rest of the file is still
  checked, and memory stays far below the file's size.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import engine
from engine.cli import main
from engine.drivers.replay import REPLAYERS
from engine.log.trace import loads as read_line  # what the trace reader reads: a lone surrogate too
from engine.fuzz.invariants import trace_mutation_violations
from engine.strategies import Session, run_session, sessions, trace_mutations
from engine.simulator.shapes import SHAPES, assemble, completed, created, output_items, text_message, to_reply
from engine.simulator.replies import Reply, Script
from machines.records import Chunk

from support import (
    assert_replays_identically,
    peak_memory,
    run_over_http,
    trace_lines,
    write_trace_lines,
)


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Recorded traces as lists of JSON lines (header first): over HTTP, and through consume."""
    folder = tmp_path_factory.mktemp("recorded")
    found = {
        name: trace_lines(run_over_http(SHAPES[name], folder).trace)
        for name in ("happy_text", "drop_then_retry", "http_429")
    }
    consumed = folder / "consume.jsonl"
    reply = SHAPES["function_call"].replies[0]
    engine.consume([step.data for step in reply.steps if isinstance(step, Chunk)], trace=consumed)
    found["consume"] = trace_lines(consumed)
    return found


def run_cli(*args: str) -> tuple[int, str, str]:
    """`streamfsm ARGS` in this process: exit status, stdout, stderr. An exception escaping it
    is a traceback the user would have seen, and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue(), err.getvalue()


def assert_invalid(path: Path, words: str = "") -> str:
    """`engine.replay` raises a one-line `TraceError`, and the CLI exits 2 with one line."""
    with pytest.raises(engine.TraceError) as caught:
        engine.replay(path)
    message = str(caught.value)
    assert words in message
    assert "\n" not in message and str(path) in message
    status, out, err = run_cli("replay", str(path))
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("streamfsm: error: invalid trace: ")
    return message


# -- truncated files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["happy_text", "drop_then_retry", "http_429", "consume"])
def test_cut_at_every_line_boundary_is_invalid(
    name: str, traces: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    lines = traces[name]
    for keep in range(1, len(lines)):
        path = tmp_path / f"{name}-{keep}.jsonl"
        write_trace_lines(path, lines[:keep])
        assert_invalid(path, "without its final result record")


def test_cut_inside_a_line_is_invalid(traces: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    whole = tmp_path / "whole.jsonl"
    write_trace_lines(whole, traces["drop_then_retry"])
    raw = whole.read_bytes()
    for size in range(1, len(raw) - 1, 97):
        cut = tmp_path / "cut.jsonl"
        cut.write_bytes(raw[:size])
        with pytest.raises(engine.TraceError):
            engine.replay(cut)


def test_invalid_after_a_divergence_is_still_invalid(
    traces: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The file is read to its end even when an early record diverges."""
    lines = copy.deepcopy(traces["happy_text"])
    delta = next(r for r in lines[1:] if r.get("effect") == "text_delta")
    delta["data"] = "tampered"
    path = tmp_path / "t.jsonl"
    write_trace_lines(path, lines)
    report = engine.replay(path)
    assert report.divergence is not None and report.divergence.seq == delta["seq"]
    write_trace_lines(path, lines[:-1])
    assert_invalid(path, "without its final result record")
    path.write_bytes(path.read_bytes() + b'{"seq": 9999, "kind": "result"\n')
    assert_invalid(path, "is not JSON")


# -- abandoned turns -------------------------------------------------------------------------


def test_abandoned_turn_is_recorded_and_replays_as_far_as_it_went(tmp_path: Path) -> None:
    """A callback raising KeyboardInterrupt (which the engine never swallows) cuts the turn short
    in the middle of the stream: the trace ends with an `abandoned` record naming it."""

    def stop(text: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_over_http(SHAPES["happy_text"], tmp_path, callbacks=engine.Callbacks(on_text_delta=stop))
    [path] = tmp_path.glob("*.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    lines = trace_lines(path)
    assert lines[-1] == {"seq": len(lines) - 1, "kind": "abandoned", "exception": "KeyboardInterrupt"}
    report = engine.replay(path)
    assert report.identical and report.abandoned == "KeyboardInterrupt"
    assert report.records == len(lines) - 1
    status, out, _ = run_cli("replay", str(path))
    assert status == 0 and "abandoned (KeyboardInterrupt)" in out
    # without its final record it is a truncated file like any other
    write_trace_lines(path, lines[:-1])
    assert_invalid(path, "without its final result record")
    # a record after the abandoned one is a divergence: the recording stopped there
    write_trace_lines(path, [*lines, {**lines[-2], "seq": len(lines)}])
    report = engine.replay(path)
    assert report.divergence is not None and report.divergence.seq == len(lines)
    assert report.divergence.replayed is None


def test_version_1_has_no_abandoned_record(traces: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    lines = copy.deepcopy(traces["happy_text"])
    lines[0]["version"] = 1
    lines[-1] = {"seq": lines[-1]["seq"], "kind": "abandoned", "exception": "RuntimeError"}
    path = tmp_path / "v1.jsonl"
    write_trace_lines(path, lines)
    assert_invalid(path, "unknown kind 'abandoned'")


# -- header fields of the wrong type ---------------------------------------------------------

_VALUES: dict[str, Any] = {
    "null": None, "boolean": True, "integer": 3, "float": 1.5, "string": "x", "list": [1],
    "object": {"a": 1},
}
#: For each header field, the kinds of value it may hold.
_HEADER_TYPES = {
    "format": set(), "version": set(), "entry": set(), "policy": {"object"},
    "request": {"null", "object"},
}
#: For each policy field, the kinds of value it may hold.
_POLICY_TYPES = {
    "max_stream_retries": {"integer"},
    "fallback": {"boolean"},
    "idle_timeout_s": {"null", "integer", "float"},
    "retry_failed_codes": {"null", "list"},
}


def _header_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for field, allowed in _HEADER_TYPES.items():
        for kind, value in _VALUES.items():
            if kind not in allowed:
                cases.append((field, kind, value))
    for field, allowed in _POLICY_TYPES.items():
        for kind, value in _VALUES.items():
            if kind not in allowed:
                cases.append((f"policy.{field}", kind, value))
    cases.append(("policy.retry_failed_codes", "list of numbers", [1, 2]))
    cases.append(("policy.retry_failed_codes", "list of lists", [["a"]]))
    cases.append(("policy.surprise", "unknown field", 1))
    return cases


@pytest.mark.parametrize(("field", "kind", "value"), _header_cases(), ids=lambda v: str(v)[:20])
def test_header_field_of_the_wrong_type_is_invalid(
    field: str, kind: str, value: Any, traces: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    lines = copy.deepcopy(traces["drop_then_retry"])
    if field.startswith("policy."):
        lines[0]["policy"][field.removeprefix("policy.")] = value
    else:
        lines[0][field] = value
    path = tmp_path / "t.jsonl"
    write_trace_lines(path, lines)
    message = assert_invalid(path)
    assert "line 1" in message or "header" in message or "version" in message


@pytest.mark.parametrize("field", sorted(_HEADER_TYPES))
def test_header_missing_a_field_is_invalid(field: str, traces: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    lines = copy.deepcopy(traces["happy_text"])
    del lines[0][field]
    path = tmp_path / "t.jsonl"
    write_trace_lines(path, lines)
    if field == "request":
        assert_replays_identically(path)  # an absent request is a request of None
    else:
        assert_invalid(path)


def test_record_fields_of_the_wrong_type(traces: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """A record field of the wrong type: an input that cannot be fed is invalid; a decision or
    result that differs is a divergence."""
    lines = traces["drop_then_retry"]
    path = tmp_path / "t.jsonl"
    for index, record in enumerate(lines[1:], 1):
        for key in record:
            for value in (None, "x", [1]):
                if type(record[key]) is type(value):
                    continue
                edited = copy.deepcopy(lines)
                edited[index][key] = value
                write_trace_lines(path, edited)
                try:
                    report = engine.replay(path)
                except engine.TraceError as error:
                    assert "\n" not in str(error)
                    continue
                assert not report.identical or (key == "t" and value is None), (index, key, value)


# -- every field of every record has its type and range checked (contract v3) ------------------


def _first(lines: list[dict[str, Any]], **fields: Any) -> int:
    return next(i for i, r in enumerate(lines) if all(r.get(k) == v for k, v in fields.items()))


#: (where: a record found by its fields, a path to the field, the value put there); every one
#: makes the trace invalid.
_TYPED: list[tuple[dict[str, Any], tuple[Any, ...], Any]] = [
    # an attempt number is a whole number, never a boolean (`true` used to compare equal to 1)
    ({"kind": "effect", "effect": "text_delta"}, ("attempt",), True),
    ({"kind": "transition", "trigger": "created"}, ("attempt",), True),
    ({"kind": "transition", "trigger": "created"}, ("attempt",), 1.0),
    ({"kind": "transition", "trigger": "created"}, ("attempt",), -1),
    ({"kind": "input", "input": "fault"}, ("attempt",), True),
    ({"kind": "transition", "trigger": "created"}, ("machine",), 1),
    ({"kind": "transition", "trigger": "created"}, ("dest",), None),
    ({"kind": "transition", "trigger": "created"}, ("trigger",), ["created"]),
    ({"kind": "effect", "effect": "text_delta"}, ("effect",), "teleport"),
    ({"kind": "effect", "effect": "text_delta"}, ("data",), 12),
    ({"kind": "effect", "effect": "text_delta"}, ("data",), False),
    ({"kind": "effect", "effect": "first_delta"}, ("data",), "first"),
    # clock readings: finite, never negative
    ({"kind": "input", "input": "fault"}, ("t",), -1),
    ({"kind": "input", "input": "fault"}, ("t",), -0.5),
    ({"kind": "input", "input": "fault"}, ("t",), True),
    ({"kind": "input", "input": "fault"}, ("t",), "0.1"),
    ({"kind": "input", "input": "fault"}, ("t",), float("inf")),
    ({"kind": "input", "input": "fault"}, ("seconds",), 1.0),  # no such field: a drop is no stall
    # the result's own fields
    ({"kind": "result"}, ("outcome",), "done"),
    ({"kind": "result"}, ("outcome",), 1),
    ({"kind": "result"}, ("output_text",), 5),
    ({"kind": "result"}, ("tool_calls",), {}),
    ({"kind": "result"}, ("attempts", 0, "number"), True),
    ({"kind": "result"}, ("attempts", 0, "kind"), "sideways"),
    ({"kind": "result"}, ("attempts", 0, "final_state"), None),
    ({"kind": "result"}, ("rate_limits",), "none"),
    ({"kind": "result"}, ("error",), "no error"),
    ({"kind": "abandoned"}, ("exception",), 7),
]


def _put(record: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        record = record[key]
    record[path[-1]] = value


def _with_abandoned(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*lines[:-1], {"seq": lines[-1]["seq"], "kind": "abandoned", "exception": "Exit"}]


@pytest.mark.parametrize(("where", "path", "value"), _TYPED, ids=lambda v: repr(v)[:30])
def test_a_record_field_of_the_wrong_type_or_range_is_invalid(
    where: dict[str, Any], path: tuple[Any, ...], value: Any,
    traces: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    lines = copy.deepcopy(traces["drop_then_retry"])
    if where.get("kind") == "abandoned":
        lines = _with_abandoned(lines)
    if path == ("seconds",):  # a field a fault does not have is no field of the record
        lines[_first(lines, **where)]["seconds"] = value
        path_, value = ("t",), {"x": 1}
    else:
        path_ = path
    _put(lines[_first(lines, **where)], path_, value)
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(dumps_any(line) + b"\n" for line in lines))
    assert_invalid(path)


def dumps_any(value: Any) -> bytes:
    """A line as the standard library writes it, infinity as `1e999` (a number too large for a
    double, which a JSON reader takes for infinity)."""
    import json

    return json.dumps(value, allow_nan=True).replace("Infinity", "1e999").encode()


def test_a_clock_going_backwards_within_an_attempt_is_invalid(
    traces: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    lines = copy.deepcopy(traces["drop_then_retry"])
    inputs = [i for i, r in enumerate(lines) if r.get("kind") == "input" and r["attempt"] == 1]
    lines[inputs[2]]["t"] = lines[inputs[1]]["t"] - 0.0001
    path = tmp_path / "t.jsonl"
    write_trace_lines(path, lines)
    assert "goes back" in assert_invalid(path)


def test_a_clock_reading_may_start_again_in_the_next_attempt(
    traces: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Only within an attempt must the readings not go back; equal readings are fine."""
    lines = copy.deepcopy(traces["drop_then_retry"])
    second = [r for r in lines if r.get("kind") == "input" and r["attempt"] == 2]
    first = [r for r in lines if r.get("kind") == "input" and r["attempt"] == 1]
    for record in second:
        record["t"] = first[0]["t"]
    path = tmp_path / "t.jsonl"
    write_trace_lines(path, lines)
    assert_replays_identically(path)


@pytest.mark.parametrize("value", [float("inf"), -1.0, True, 1e999])
def test_a_header_policy_number_that_is_not_finite_or_in_range_is_invalid(
    value: Any, traces: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    lines = copy.deepcopy(traces["drop_then_retry"])
    lines[0]["policy"]["max_retry_wait_s"] = value
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(dumps_any(line) + b"\n" for line in lines))
    assert_invalid(path)


@pytest.mark.parametrize(
    ("where", "path", "value", "valid"),
    [
        ({"kind": "input", "input": "http_error"}, ("status",), 2**63 - 1, True),
        ({"kind": "input", "input": "http_error"}, ("t",), 1e308, True),
        ({"kind": "transition", "trigger": "begin"}, ("attempt",), 2**62, True),
        # beyond 64 bits a trace's JSON reader gives a float: no longer a whole number
        ({"kind": "input", "input": "http_error"}, ("status",), 10**30, False),
        ({"kind": "transition", "trigger": "begin"}, ("attempt",), 10**25, False),
        ({"kind": "result"}, ("attempts", 0, "number"), 2**64, False),
        # too large for a double: infinity, no clock reading
        ({"kind": "input", "input": "http_error"}, ("t",), 1e999, False),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_huge_numbers_are_read_as_what_they_are(
    where: dict[str, Any], path: tuple[Any, ...], value: Any, valid: bool,
    traces: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    """A number near the largest of its type reads, and replays (a divergence where it changes
    what the machines decide); one beyond it does not fit its field: the trace is invalid."""
    lines = copy.deepcopy(traces["http_429"])
    _put(lines[_first(lines, **where)], path, value)
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b"".join(dumps_any(line) + b"\n" for line in lines))
    if valid:
        assert engine.replay(trace).records == len(lines) - 1
        assert run_cli("replay", str(trace))[0] in (0, 1)
    else:
        assert_invalid(trace)


# -- typed-field mutations of any played trace (engine.fuzz.strategies.trace_mutations) -------


@given(session=sessions(), data=st.data())
def test_typed_field_mutations_of_any_played_trace(
    fuzz_file: Path, session: Session, data: st.DataObject
) -> None:
    """A session played and traced, one field given a value of another type or range (a
    boolean for a number, a clock reading negative, infinite or going back, a number beyond 64
    bits, a huge one that still fits): invalid exactly when the contract says so."""
    run_session(session, trace=fuzz_file, reraise=False)
    lines = [read_line(line) for line in fuzz_file.read_bytes().splitlines()]
    mutation = data.draw(trace_mutations(lines))
    assert trace_mutation_violations(str(fuzz_file), mutation) == []


def test_a_reader_that_checks_only_inputs_is_caught(
    monkeypatch: pytest.MonkeyPatch, fuzz_file: Path
) -> None:
    """The reader before v3 checked inputs only: a mutated transition, effect or result record
    read and replayed. The mutations find it."""
    from engine.log import trace

    monkeypatch.setattr(trace, "check_record", lambda record, result=None: None)
    found: list[str] = []

    @settings(database=None, max_examples=400, phases=[Phase.generate])
    @given(session=sessions(), data=st.data())
    def prop(session: Session, data: st.DataObject) -> None:
        run_session(session, trace=fuzz_file, reraise=False)
        lines = [read_line(line) for line in fuzz_file.read_bytes().splitlines()]
        found.extend(v.rule for v in trace_mutation_violations(
            str(fuzz_file), data.draw(trace_mutations(lines))))
        assert not found

    with pytest.raises(AssertionError):
        prop()
    assert set(found) == {"typed_fields"}


# -- no file makes the CLI print a traceback --------------------------------------------------

def dumps(value: Any) -> bytes:
    from engine.log.trace import dumps as write  # writes what orjson cannot (integers > 64 bits)

    return write(value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
header_keys = st.sampled_from(["format", "version", "entry", "policy", "request", "seed"])
record_keys = st.sampled_from(
    ["seq", "kind", "attempt", "t", "input", "data", "data_b64", "status", "body", "fault",
     "detail", "seconds", "effect", "machine", "source", "dest", "trigger", "outcome", "response",
     "output_text", "tool_calls", "error", "attempts", "rate_limits", "exception"]
)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file the fuzzing tests overwrite for each example."""
    return tmp_path_factory.mktemp("fuzz") / "t.jsonl"


def _check_cli_on(path: Path) -> int:
    status, out, err = run_cli("replay", str(path))
    assert status in (0, 1, 2)
    assert "Traceback" not in out + err
    if status == 2:
        assert out == "" and err.count("\n") == 1
    return status


@given(st.binary(max_size=400))
def test_random_bytes(fuzz_file: Path, data: bytes) -> None:
    path = fuzz_file
    path.write_bytes(data)
    assert _check_cli_on(path) == 2


@given(st.lists(st.one_of(json_values, st.dictionaries(record_keys, json_values, max_size=6)), min_size=1, max_size=6))
def test_random_json_lines(fuzz_file: Path, lines: list[Any]) -> None:
    path = fuzz_file
    path.write_bytes(b"".join(dumps(line) + b"\n" for line in lines))
    assert _check_cli_on(path) == 2


@given(st.data())
def test_valid_trace_with_one_field_changed(
    traces: dict[str, list[dict[str, Any]]], fuzz_file: Path, data: st.DataObject
) -> None:
    lines = copy.deepcopy(traces[data.draw(st.sampled_from(sorted(traces)))])
    index = data.draw(st.integers(0, len(lines) - 1))
    key = data.draw(header_keys if index == 0 else (st.sampled_from(sorted(lines[index])) | record_keys))
    value = data.draw(json_values)
    lines[index][key] = value
    if data.draw(st.booleans()):
        lines = lines[: data.draw(st.integers(1, len(lines)))]
    fuzz_file.write_bytes(b"".join(dumps(line) + b"\n" for line in lines))
    _check_cli_on(fuzz_file)


@pytest.mark.slow
@given(st.data())
def test_valid_trace_cut_anywhere(
    traces: dict[str, list[dict[str, Any]]], fuzz_file: Path, data: st.DataObject
) -> None:
    path = fuzz_file
    write_trace_lines(path, traces[data.draw(st.sampled_from(sorted(traces)))])
    raw = path.read_bytes()
    path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 2))])  # the last line loses at least its end
    assert _check_cli_on(path) == 2


def test_unexpected_error_while_replaying_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Even a bug of streamfsm's own (here: a replayer that raises outside the machines) ends
    in one line and exit 2, not a traceback."""
    path = tmp_path / "t.jsonl"
    engine.consume(b"data: {}\n\n", trace=path)

    def broken(header: dict[str, Any]) -> Any:
        raise RuntimeError("broken\nreplayer")

    monkeypatch.setitem(REPLAYERS, "consume", broken)
    status, out, err = run_cli("replay", str(path))
    assert (status, out) == (2, "")
    assert err == f"streamfsm: error: cannot replay {path}: RuntimeError: broken replayer\n"


# -- streaming ----------------------------------------------------------------------------------


def _long_stream(deltas: int) -> list[bytes]:
    text = "four" * deltas
    message = text_message(text, deltas=deltas)
    reply = to_reply(assemble(created(), message, completed(output_items(message))), chunking=4096)
    return [step.data for step in reply.steps if isinstance(step, Chunk)]


def _long_trace(path: Path, deltas: int) -> None:
    engine.consume(_long_stream(deltas), trace=path)


def test_replay_holds_no_more_than_the_turn_itself(tmp_path: Path) -> None:
    """Replay memory is what the machines hold while running the turn (here the answer's 10,000
    pieces), not the file: reading, feeding and comparing keep one record at a time."""
    chunks = _long_stream(10_000)
    path = tmp_path / "long.jsonl"
    engine.consume(chunks, trace=path)
    turn = peak_memory(lambda: engine.consume(chunks))
    replayed = peak_memory(lambda: engine.replay(path))
    assert replayed < 1.25 * turn + 2**19, (replayed, turn)
    assert replayed < path.stat().st_size / 1.5


def test_divergence_deep_in_a_long_trace_names_its_record(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    _long_trace(path, 5_000)
    lines = path.read_bytes().splitlines()
    target = max(i for i, line in enumerate(lines) if b'"text_delta"' in line) - 10
    record = orjson.loads(lines[target])
    lines[target] = orjson.dumps({**record, "data": "xxxx"})
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = engine.replay(path)
    assert report.divergence is not None
    assert report.divergence.seq == record["seq"]
    assert report.divergence.recorded == {**record, "data": "xxxx"}
    assert report.divergence.replayed == record
    assert report.records == len(lines) - 1


def test_a_run_the_file_writes_otherwise_is_compared_line_by_line(tmp_path: Path) -> None:
    """The replay takes a run of text effects whole only when the file holds it byte for byte
    as it renders it; the same records written another way (spaces after the separators) are
    read and compared one by one, and are the same records."""
    path = tmp_path / "long.jsonl"
    _long_trace(path, 500)
    lines = path.read_bytes().splitlines()
    spaced = [json.dumps(orjson.loads(line)).encode() for line in lines]
    assert spaced != lines
    path.write_bytes(b"\n".join(spaced) + b"\n")
    report = engine.replay(path)
    assert report.identical and report.records == len(lines) - 1


def test_a_record_missing_inside_a_run_names_its_seq(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    _long_trace(path, 500)
    lines = path.read_bytes().splitlines()
    deltas = [i for i, line in enumerate(lines) if b'"text_delta"' in line]
    target = next(i for i in deltas[len(deltas) // 2 :] if i - 1 in deltas and i + 1 in deltas)
    removed = orjson.loads(lines.pop(target))
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = engine.replay(path)
    assert report.divergence is not None
    assert report.divergence.seq == removed["seq"]
    assert report.divergence.recorded == orjson.loads(lines[target])
    assert report.divergence.replayed == removed


def test_a_run_first_in_a_step_is_compared_record_by_record(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A replayer that leaves out the input a step begins with when a run of text effects
    follows it: the file's input line meets the run, and the report names the run's first
    record alone, as every other replayed record."""
    path = tmp_path / "long.jsonl"
    _long_trace(path, 200)
    replay_turn = REPLAYERS["consume"]

    def dropping_inputs(header: dict[str, Any]) -> Any:
        session = replay_turn(header)
        sent = None
        try:
            while True:
                made = session.send(sent)
                if isinstance(made, list) and len(made) > 1 and isinstance(made[1], bytes):
                    made = made[1:]
                sent = yield made
        except StopIteration:
            return

    monkeypatch.setitem(REPLAYERS, "consume", dropping_inputs)
    lines = path.read_bytes().splitlines()
    at = next(
        i for i, line in enumerate(lines)
        if b'"input":"chunk"' in line and b'"text_delta"' in lines[i + 1] and b'"text_delta"' in lines[i + 2]
    )
    report = engine.replay(path)
    assert report.divergence is not None
    assert report.divergence.seq == orjson.loads(lines[at])["seq"]
    assert report.divergence.recorded == orjson.loads(lines[at])
    assert report.divergence.replayed == orjson.loads(lines[at + 1])


def test_input_missing_in_the_middle_names_the_replayed_input(
    traces: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The replay wants an input where the recording has a decision: the report shows the
    recorded decision against the input the replay was fed next."""
    lines = copy.deepcopy(traces["drop_then_retry"])
    inputs = [i for i, r in enumerate(lines) if r.get("kind") == "input"]
    moved = lines.pop(inputs[1])
    path = tmp_path / "t.jsonl"
    write_trace_lines(path, lines)
    report = engine.replay(path)
    assert report.divergence is not None
    assert report.divergence.seq == moved["seq"]
    assert report.divergence.replayed is not None
    assert report.divergence.replayed["kind"] == "input"
    assert report.divergence.replayed["seq"] == moved["seq"]


def test_replay_of_a_read_trace_agrees_with_the_streaming_replay(
    traces: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from engine.drivers.replay import replay_trace
    from engine.log.trace import read_trace

    for name, lines in traces.items():
        edited = copy.deepcopy(lines)
        edited[len(edited) // 2]["seq"] += 100
        for variant in (lines, edited):
            path = tmp_path / f"{name}.jsonl"
            write_trace_lines(path, variant)
            assert replay_trace(read_trace(path)) == engine.replay(path)


def test_http_429_script_still_replays(tmp_path: Path) -> None:
    run = run_over_http(Script((Reply(status=429),)), tmp_path)
    assert run.result.outcome == "error"
