"""The trace writer's fast ways give the bytes the general way gives.

The writer formats the lines of text effects and chunks without building a dict (`record_line`,
and the same format inline in `TraceWriter`), and scrubs text-effect lines without looking for
credential-named fields (their only field names are the writer's own). Both are shortcuts: a
line must come out byte for byte as `dumps(record_to_json(...))` and the full scrub make it.
"""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.log.codec import record_to_json
from engine.log.eventlog import InputRecord
from engine.log.redaction import Scrubber
from engine.log.trace import TraceWriter, dumps, record_line
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
