"""The trace writer's fast ways give the bytes the general way gives.

The writer formats the lines of text effects and chunks without building a dict (`record_line`,
and the same format inline in `TraceWriter`), makes the lines of a run of text effects decided
together at once (`text_effect_lines`), and scrubs text-effect lines without looking for
credential-named fields (their only field names are the writer's own). All are shortcuts: a
line must come out byte for byte as `dumps(record_to_json(...))` and the full scrub make it.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.log.codec import record_to_json
from engine.log.eventlog import EventLog, InputRecord
from engine.log.redaction import Scrubber
from engine.log.trace import (
    TraceWriter,
    dumps,
    record_line,
    text_effect_line,
    text_effect_lines,
    text_effect_runs,
)
from machines.records import Chunk, Effect, EndOfStream, Transition

_TEXT_KINDS = st.sampled_from(["text_delta", "reasoning_delta", "commentary_delta", "refusal_delta"])
#: Text with what JSON escapes, credential shapes and names, and lone surrogates.
_TEXT = st.text(
    st.characters(codec=None) | st.sampled_from(['"', "\\", "\n", "\t", "\u2028", "\ud800", "é"]),
    max_size=40,
) | st.sampled_from(["sk-" + "A" * 20, 'api_key": "x', "Bearer abcdefghijkl", "my key", "key"])
_CLOCK = st.none() | st.floats(min_value=0, allow_nan=False, allow_infinity=False) | st.integers(0, 10)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.builds(Effect, _TEXT_KINDS, st.integers(1, 5) | st.booleans(), _TEXT),
        st.builds(Effect, st.sampled_from(["first_delta", "wait", "tool_call"]), st.integers(1, 5),
                  st.none() | st.just("commentary_apart") | st.floats(0, 9) | st.dictionaries(_TEXT, _TEXT)),
        st.builds(InputRecord, st.integers(1, 5) | st.booleans(), _CLOCK,
                  st.builds(Chunk, st.binary(max_size=40) | _TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))),
        st.builds(InputRecord, st.integers(1, 5), _CLOCK, st.just(EndOfStream())),
        st.builds(Transition, st.just("stream_attempt"), st.integers(1, 5), st.just("a"), st.just("b"), st.just("t")),
    ),
    st.integers(1, 10**9),
)
def test_a_record_line_is_the_general_line(record: object, seq: int) -> None:
    assert record_line(record, seq) == dumps(record_to_json(record, seq))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_TEXT_KINDS, _TEXT), min_size=1, max_size=5),
       st.lists(st.text(min_size=1, max_size=20), max_size=2))
def test_text_effect_lines_need_no_search_for_credential_fields(
    effects: list[tuple[str, str]], secrets: list[str]
) -> None:
    lines = b"\n".join(record_line(Effect(kind, 1, text), seq)  # type: ignore[arg-type]
                       for seq, (kind, text) in enumerate(effects, 1))
    scrubber = Scrubber(secrets)
    assert scrubber.scrub(lines, fields=False) == scrubber.scrub(lines)


def test_the_writer_writes_what_the_general_way_writes() -> None:
    records = [
        InputRecord(1, 0.5, Chunk(b'data: {"type":"response.output_text.delta","delta":"hi"}\n\n')),
        Effect("first_delta", 1, None),
        Effect("text_delta", 1, "hi \"there\" sk-" + "A" * 20),
        Effect("reasoning_delta", 1, "lone \ud800 surrogate"),
        InputRecord(1, 0.75, Chunk(b"\xff\xfe not utf-8")),
        InputRecord(1, 1.0, EndOfStream()),
    ]
    out = io.BytesIO()
    TraceWriter("unused.jsonl", ["AAAAAAAAAAAA"])._write(out, {"format": "x"}, records, {"outcome": "error"}, None)
    scrubber = Scrubber(["AAAAAAAAAAAA"])
    expected = [dumps({"format": "x"})]
    expected += [dumps(record_to_json(record, seq)) for seq, record in enumerate(records, 1)]
    expected.append(dumps({"seq": len(records) + 1, "kind": "result", "outcome": "error"}))
    # chunks are masked with their stream; every other line as it is written
    assert out.getvalue().split(b"\n")[:-1] == [
        line if b'"input":"chunk"' in line else scrubber.scrub(line) for line in expected
    ]


# -- runs of text effects ------------------------------------------------------------------------
#
# The text effects a network read brought are decided together, and the writer and replay make
# their lines at once (`text_effect_lines`): one orjson call for every seq number and text of
# the run, the fields put between them by replacing bytes. It must give, byte for byte, what
# `text_effect_line` gives for each record, or nothing (then each record is written on its own).

#: Text with every escape JSON has, the bytes the run's replacements look for, and more.
_RUN_TEXT = st.lists(
    st.characters(exclude_categories=("Cs",))
    | st.sampled_from(['"', "\\", "\n", "\x00", "\x1f", "\u2028", "é", "😀", '","', '",', ',"',
                       '"}\n{"seq":', '",\n  ', ',\n  "', "sk-" + "A" * 20]),
    max_size=8,
).map("".join)
_ATTEMPT = st.integers(0, 5) | st.booleans() | st.just(-1) | st.just(1.0) | st.just(2**70)


@settings(max_examples=300, deadline=None)
@given(st.lists(_RUN_TEXT, min_size=1, max_size=30), _TEXT_KINDS, _ATTEMPT, st.integers(1, 10**9))
def test_a_run_of_text_effects_is_the_lines_of_each(
    texts: list[str], kind: str, attempt: int, seq: int
) -> None:
    effects = [Effect(kind, attempt, text) for text in texts]  # type: ignore[arg-type]
    each = [text_effect_line(effect, seq + index) for index, effect in enumerate(effects)]
    assert None not in each or type(attempt) is not int or attempt < 0
    assert text_effect_lines(effects, seq) == (None if None in each else b"\n".join(each))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=12), _TEXT_KINDS, st.integers(1, 10**9))
def test_a_lone_surrogate_leaves_the_run_to_each_record(texts: list[str], kind: str, seq: int) -> None:
    effects = [Effect(kind, 1, text) for text in texts]  # type: ignore[arg-type]
    each = [text_effect_line(effect, seq + index) for index, effect in enumerate(effects)]
    assert text_effect_lines(effects, seq) == (None if None in each else b"\n".join(each))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            Effect,
            st.sampled_from(["text_delta", "reasoning_delta", "first_delta", "tool_call"]),
            st.sampled_from([1, 2, True, 1.0]),
            st.sampled_from(["a", '"', "", None, 5, {"a": "b"}]),
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 1000),
)
def test_effects_that_are_not_one_run_are_left_to_each_record(effects: list[Effect], seq: int) -> None:
    """One run is text effects of one kind and one attempt, with text: else no lines at all."""
    each = [text_effect_line(effect, seq + index) for index, effect in enumerate(effects)]
    one_run = (
        len({(effect.kind, effect.attempt, type(effect.attempt)) for effect in effects}) == 1
        and all(type(effect.data) is str for effect in effects)
        and None not in each
    )
    assert text_effect_lines(effects, seq) == (b"\n".join(each) if one_run else None)  # type: ignore[arg-type]


def test_what_a_run_replaces_is_the_lists_own_bytes_only() -> None:
    """A text may hold the very bytes the run's replacements look for (`",\\n  `, `,\\n  "`),
    or the separators of the compact JSON (`","`): orjson writes its line end escaped, so they
    are left as they are."""
    texts = ['",\n  ', ',\n  "', '","', '",', ',"', '"}\n{"seq":', "\\", '\\"', "", "😀é\u2028\x00"]
    effects = [Effect("text_delta", 3, text) for text in texts]
    lines = text_effect_lines(effects, 41)
    assert lines == b"\n".join(text_effect_line(effect, 41 + i) for i, effect in enumerate(effects))  # type: ignore[misc]
    assert [orjson.loads(line)["data"] for line in lines.split(b"\n")] == texts  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.lists(_RUN_TEXT, min_size=1, max_size=8), st.integers(0, 3)), min_size=1, max_size=8),
    st.lists(_TEXT_KINDS, min_size=1, max_size=2),
    st.integers(1, 10**6),
)
def test_runs_made_at_once_are_the_lines_of_each_run(
    shapes: list[tuple[list[str], int]], kinds: list[str], first: int
) -> None:
    """Several runs (records between them: gaps in their seq numbers) made in one go are each
    run's `text_effect_lines`, cut where the next run's first line begins; runs of different
    kinds are not one go."""
    runs, firsts = [], []
    for index, (texts, gap) in enumerate(shapes):
        runs.append([Effect(kinds[index % len(kinds)], 1, text) for text in texts])
        firsts.append(first)
        first += len(texts) + gap
    each = [text_effect_lines(run, seq) for run, seq in zip(runs, firsts)]  # type: ignore[arg-type]
    made = text_effect_runs(runs, firsts)  # type: ignore[arg-type]
    if len({run[0].kind for run in runs}) > 1:
        assert made is None
    else:
        assert made == each


def _log_of(steps: list[list[Effect] | bytes]) -> EventLog:
    """An event log that took `steps`: a read (bytes), or a machine's list of decisions."""
    log = EventLog()
    for step in steps:
        if isinstance(step, bytes):
            log.input(1, Chunk(step), None)
        else:
            log.decide(list(step))
    return log


def _written(records: list[Any], secrets: list[str], effect_runs: Any = ()) -> bytes:
    out = io.BytesIO()
    TraceWriter("unused.jsonl", secrets)._write(out, {"format": "x"}, records, {"outcome": "x"}, None, effect_runs)
    return out.getvalue()


_DECISIONS = st.lists(
    st.builds(Effect, _TEXT_KINDS, st.just(1), _RUN_TEXT | _TEXT)
    | st.builds(Effect, st.sampled_from(["first_delta", "tool_call"]), st.just(1), st.none() | st.just({"k": "v"}))
    | st.builds(Effect, _TEXT_KINDS, st.just(2) | st.just(True), _RUN_TEXT),
    max_size=8,
) | st.lists(st.builds(Effect, st.just("text_delta"), st.just(1), _RUN_TEXT), min_size=2, max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=20) | _DECISIONS, max_size=12),
    st.lists(st.sampled_from(["sk-" + "A" * 20, "AAAAAAAAAAAA", "lo world", "😀é\u2028"]), max_size=2),
)
def test_the_writer_writes_runs_as_it_writes_each_record(
    steps: list[list[Effect] | bytes], secrets: list[str]
) -> None:
    """Where the log noted effects decided together, the writer makes their lines at once (and
    masks secrets in them: a mask keeps lengths, so a run is cut out again where it was): the
    same bytes as writing each record on its own."""
    log = _log_of(steps)
    assert _written(log.records, secrets, log.effect_runs) == _written(log.records, secrets)


def test_a_run_longer_than_the_writers_window_comes_in_pieces() -> None:
    from engine.log.trace import _WINDOW

    texts = [f"w{index} sk-{'B' * 20} " for index in range(2 * _WINDOW + 7)]
    log = _log_of([b"data: x\n\n", [Effect("text_delta", 1, text) for text in texts], b"data: y\n\n"])
    assert log.effect_runs == [(1, 1 + len(texts))]
    written = _written(log.records, [], log.effect_runs)
    assert written == _written(log.records, [])
    assert b"sk-B" not in written and written.count(b'"text_delta"') == len(texts)


def test_the_log_notes_where_effects_were_decided_together() -> None:
    effects = [Effect("text_delta", 1, "a"), Effect("text_delta", 1, "b")]
    log = _log_of([b"x", effects, [Effect("text_delta", 1, "c")], b"y", effects,
                   [Transition("stream_attempt", 1, "a", "b", "t"), *effects]])
    assert log.effect_runs == [(1, 3), (5, 7)]  # not one effect alone, nor a list with a transition
    assert len(log.records) == 10
    unkept = EventLog(keep=False)
    unkept.decide(effects)
    assert unkept.effect_runs == [] and unkept.records == []


def test_windows_of_runs_of_several_kinds_are_written_as_each_record() -> None:
    """Many reads, each a run, over several of the writer's windows: runs of one kind are made a
    window at once, a window that mixes kinds run by run, a secret split between two runs is
    masked; the bytes are those of writing each record on its own."""
    steps: list[list[Effect] | bytes] = []
    for read in range(600):
        kind = "reasoning_delta" if 200 <= read < 260 and read % 3 else "text_delta"
        texts = [f"r{read}d{delta} " for delta in range(5)]
        if read == 300:
            texts[-1] = "sk-" + "C" * 10
        if read == 301:
            texts[0] = "C" * 10 + " "
        steps += [b"data: {}\n\n", [Effect(kind, 1, text) for text in texts]]
    log = _log_of(steps)
    assert len(log.effect_runs) == 600
    written = _written(log.records, ["sk-" + "C" * 20], log.effect_runs)
    assert written == _written(log.records, ["sk-" + "C" * 20])
    assert b"sk-CCCCCCCCCC" not in written and written.count(b'"reasoning_delta"') == 5 * 40


def test_a_run_holding_a_record_that_is_no_effect_is_no_run() -> None:
    effects = [Effect("text_delta", 1, "a"), Transition("stream_attempt", 1, "a", "b", "t")]
    assert text_effect_lines(effects, 1) is None  # type: ignore[arg-type]
    assert text_effect_runs([effects[:1], effects[1:]], [1, 2]) is None  # type: ignore[list-item]


def test_the_writer_holds_a_window_of_lines_with_runs_or_without() -> None:
    """A turn of one delta a read has no runs: its lines are still written a window at a time,
    never all held at once."""
    from engine.log.trace import _WINDOW

    for per_read in (1, 5):
        steps: list[list[Effect] | bytes] = []
        for read in range(3 * _WINDOW // per_read):
            steps += [b"data: x\n\n", [Effect("text_delta", 1, f"r{read}d{i}") for i in range(per_read)]]
        log = _log_of(steps)
        assert bool(log.effect_runs) == (per_read > 1)
        written: list[int] = []

        class Sink(io.BytesIO):
            def write(self, data: Any) -> int:
                written.append(bytes(data).count(b"\n"))
                return super().write(data)

        sink = Sink()
        TraceWriter("unused.jsonl", [])._write(sink, {"format": "x"}, log.records, {"outcome": "x"}, None, log.effect_runs)
        assert sum(written) == len(log.records) + 2
        assert len(written) >= 3 and max(written) < 2 * _WINDOW + 2
