"""The decoder's hot path (a run of usual blocks, `event:` and one `data:` line, taken apart by
position) gives the events the WHATWG parsing rules give, wherever the reads cut the stream and
whatever unusual blocks (ids, comments, data without a space, several data lines, extra blank
lines, an empty event name) are mixed in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.drivers.sse import SseDecoder


def reference(stream: str) -> list[tuple[str, str, str | None]]:
    """The events of an LF-only stream, line by line as the WHATWG rules say."""
    events: list[tuple[str, str, str | None]] = []
    name, data, last = "", None, None
    for line in stream.split("\n")[:-1]:  # the text after the last line end is no line yet
        if line == "":
            if data is not None:
                events.append((name or "message", "\n".join(data), last))
            name, data = "", None
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data = [*(data or []), value]
            elif field == "event":
                name = value
            elif field == "id" and "\0" not in value:
                last = value
    return events


_TEXT = st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=12)
_USUAL = st.builds(lambda n, d: f"event: {n}\ndata: {d}", _TEXT, _TEXT)
_BLOCK = st.one_of(
    _USUAL, _USUAL, _USUAL,
    st.builds(lambda d: f"data: {d}", _TEXT),
    st.builds(lambda d: f"data:{d}", _TEXT),
    st.builds(lambda i, n, d: f"id: {i}\nevent: {n}\ndata: {d}", _TEXT, _TEXT, _TEXT),
    st.builds(lambda c: f": {c}", _TEXT),
    st.builds(lambda n, a, b: f"event: {n}\ndata: {a}\ndata: {b}", _TEXT, _TEXT, _TEXT),
    st.just("\nevent: x\ndata: after an extra blank line"),
    st.just("event:\ndata: empty name"),
    st.just("event: only a name"),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_BLOCK, max_size=12), st.booleans(), st.data())
def test_any_cut_gives_the_events_of_the_rules(blocks: list[str], ended: bool, data: st.DataObject) -> None:
    stream = "\n\n".join(blocks) + ("\n\n" if ended else "")
    raw = stream.encode("utf-8")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=6)))
    decoder = SseDecoder()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(raw)]):
        got += [(event.event, event.data, event.id) for event in decoder.feed(raw[start:end])]
    assert got == reference(stream)


@settings(max_examples=300, deadline=None)
@given(st.lists(_BLOCK, max_size=12), st.booleans(), st.data())
def test_the_fields_of_any_cut_are_those_of_the_rules(
    blocks: list[str], ended: bool, data: st.DataObject
) -> None:
    """`feed_fields`, what a stream attempt is fed, names and data the same events as the rules
    (and `feed`), usual blocks or not."""
    stream = "\n\n".join(blocks) + ("\n\n" if ended else "")
    raw = stream.encode("utf-8")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=6)))
    decoder = SseDecoder()
    names: list[str] = []
    datas: list[str] = []
    for start, end in zip([0, *cuts], [*cuts, len(raw)]):
        more_names, more_datas = decoder.feed_fields(raw[start:end])
        assert len(more_names) == len(more_datas)
        names += more_names
        datas += more_datas
    assert list(zip(names, datas)) == [(name, text) for name, text, _ in reference(stream)]
