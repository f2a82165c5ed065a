"""The SSE decoder against the WHATWG event-stream parsing rules, fed the way networks deliver
bytes: in arbitrary chunks, with every line-ending style, split anywhere."""

from __future__ import annotations

import pytest

from engine.drivers.sse import SseDecoder
from machines.records import SseEvent


def decode(*chunks: bytes) -> list[SseEvent]:
    """The events the chunks dispatch; what is left when they end is never dispatched."""
    decoder = SseDecoder()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def ev(data: str, event: str = "message", id: str | None = None) -> SseEvent:
    return SseEvent(event, data, id)


# -- line endings --------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_each_line_ending_style(eol: bytes) -> None:
    stream = eol.join([b"event: a", b"data: 1", b"", b"data: 2", b"", b""])
    assert decode(stream) == [ev("1", "a"), ev("2")]


def test_mixed_line_endings_in_one_stream() -> None:
    assert decode(b"data: 1\r\n\ndata: 2\r\rdata: 3\n\r\n") == [ev("1"), ev("2"), ev("3")]


def test_cr_at_chunk_end_and_lf_at_next_chunk_start_are_one_line_end() -> None:
    # were they two line ends, "data: x\r" + "\n" would dispatch here with a blank line
    assert decode(b"data: x\r", b"\ndata: y\r", b"\n\r", b"\n") == [ev("x\ny")]


def test_cr_at_chunk_end_then_other_text_is_a_line_end() -> None:
    assert decode(b"data: x\r", b"\r", b"data: y\r", b"\r") == [ev("x"), ev("y")]


def test_trailing_cr_at_end_of_stream_ends_the_line() -> None:
    # the final CR completes the blank line that dispatches the event
    assert decode(b"data: x\n\r") == [ev("x")]


# -- fields ----------------------------------------------------------------------------------


def test_bom_at_stream_start_is_dropped() -> None:
    assert decode(b"\xef\xbb\xbfdata: a\n\n") == [ev("a")]


def test_bom_split_across_chunks_is_dropped() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == [ev("a")]


def test_bom_later_in_the_stream_is_kept_as_text() -> None:
    # only the stream's first character is a BOM; elsewhere it is part of a field name
    assert decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [ev("a")]


def test_comments_are_ignored() -> None:
    assert decode(b": keepalive\n\n:\ndata: a\n: inside\n\n") == [ev("a")]


def test_multi_line_data_is_joined_with_lf() -> None:
    assert decode(b"data: one\ndata: two\ndata:\ndata: four\n\n") == [ev("one\ntwo\n\nfour")]


def test_data_with_and_without_a_space_after_the_colon() -> None:
    # only one leading space is removed
    assert decode(b"data:a\n\ndata: b\n\ndata:  c\n\n") == [ev("a"), ev("b"), ev(" c")]


def test_field_without_a_colon_has_an_empty_value() -> None:
    assert decode(b"data\n\n") == [ev("")]
    assert decode(b"data\ndata\n\n") == [ev("\n")]
    assert decode(b"event\ndata: x\n\n") == [ev("x")]  # empty event name means "message"


def test_an_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: ping\n\nid: 7\n\nretry: 10\n\n") == []


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"foo: bar\ndata: a\nDATA: b\nEvent: c\n\n") == [ev("a")]


def test_event_name_applies_to_its_own_event_only() -> None:
    assert decode(b"event: one\ndata: 1\n\ndata: 2\n\n") == [ev("1", "one"), ev("2")]


def test_id_is_remembered_across_events() -> None:
    decoder = SseDecoder()
    events = decoder.feed(b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n")
    assert events == [ev("a", id="1"), ev("b", id="1"), ev("c", id="")]
    assert decoder.last_event_id == ""


def test_id_with_nul_is_ignored() -> None:
    decoder = SseDecoder()
    events = decoder.feed(b"id: 5\ndata: a\n\nid: 6\x007\ndata: b\n\n")
    assert events == [ev("a", id="5"), ev("b", id="5")]
    assert decoder.last_event_id == "5"


def test_retry_takes_ascii_digits_only() -> None:
    decoder = SseDecoder()
    decoder.feed(b"retry: 1500\n\n")
    assert decoder.retry_ms == 1500
    for bad in (b"retry: 15s\n\n", b"retry: -1\n\n", b"retry:\n\n", b"retry: \xd9\xa3\n\n"):
        decoder.feed(bad)
        assert decoder.retry_ms == 1500


def test_event_cut_off_by_the_end_of_the_stream_is_not_dispatched() -> None:
    assert decode(b"data: a\n\ndata: b\n") == [ev("a")]
    assert decode(b"data: a\n\ndata: b") == [ev("a")]
    assert decode(b"data: a\r\n\r\ndata: b\r\n") == [ev("a")]


def test_events_are_returned_by_the_chunk_that_completes_them() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\ndata: c") == [ev("a"), ev("b")]
    assert decoder.feed(b"\n\n") == [ev("c")]


# -- bytes that are not UTF-8 ------------------------------------------------------------------


def test_invalid_utf8_becomes_replacement_characters_without_raising() -> None:
    assert decode(b"data: a\xffb\xc3(\n\n") == [ev("a\ufffdb\ufffd(")]


def test_truncated_utf8_at_end_of_stream_does_not_raise() -> None:
    assert decode(b"data: ok\n\ndata: \xe6\x9d") == [ev("ok")]


def test_multibyte_character_split_across_chunks() -> None:
    text = "Grüße 東京 🚀".encode()
    chunks = [bytes([b]) for b in b"data: " + text + b"\n\n"]
    assert decode(*chunks) == [ev("Grüße 東京 🚀")]


# -- split anywhere ----------------------------------------------------------------------------

SAMPLE = (
    b"\xef\xbb\xbf: keepalive\r\n\r\n"
    b"event: response.created\r\ndata: {\"type\":\"response.created\"}\r\n\r\n"
    b"id: 42\rdata: {\"delta\":\"Gr\xc3\xbc\xc3\x9fe \xf0\x9f\x9a\x80\"}\r\r"
    b"data:first\ndata: second\n\n"
    b"retry: 300\nevent: x\ndata\n\n"
    b"data: cut off at the end"
)
SAMPLE_EVENTS = [
    ev('{"type":"response.created"}', "response.created"),
    ev('{"delta":"Grüße 🚀"}', id="42"),
    ev("first\nsecond", id="42"),
    ev("", "x", id="42"),
]


def test_sample_decodes_to_its_events() -> None:
    assert decode(SAMPLE) == SAMPLE_EVENTS


def test_every_split_point_gives_the_same_events() -> None:
    for cut in range(len(SAMPLE) + 1):
        assert decode(SAMPLE[:cut], SAMPLE[cut:]) == SAMPLE_EVENTS, f"split at byte {cut}"


def test_every_pair_of_split_points_gives_the_same_events() -> None:
    size = len(SAMPLE)
    for first in range(0, size + 1, 3):
        for second in range(first, size + 1, 5):
            chunks = (SAMPLE[:first], SAMPLE[first:second], SAMPLE[second:])
            assert decode(*chunks) == SAMPLE_EVENTS, f"split at bytes {first} and {second}"


def test_byte_by_byte_gives_the_same_events() -> None:
    assert decode(*(bytes([b]) for b in SAMPLE)) == SAMPLE_EVENTS


def test_empty_chunks_change_nothing() -> None:
    pieces = [SAMPLE[i : i + 7] for i in range(0, len(SAMPLE), 7)]
    with_empties = [p for piece in pieces for p in (piece, b"")]
    assert decode(b"", *with_empties) == SAMPLE_EVENTS
