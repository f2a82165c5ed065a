"""Property tests: responses mixing client and server tool calls of every kind
(`engine.fuzz.tool_items`), cut into arbitrary chunks, through `engine.consume`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import engine
from engine.fuzz.tool_items import ToolItemStream, to_body, tool_item_streams


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:]) if b > a]


def _consume(chunks: list[bytes]) -> tuple[engine.TurnResult, str]:
    delivered: list[str] = []
    result = engine.consume(chunks, callbacks=engine.Callbacks(on_text_delta=delivered.append))
    return result, "".join(delivered)


def _cuts(body: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(body)), max_size=8)


@given(tool_item_streams(), st.data())
def test_whole_responses_list_exactly_the_clients_calls_and_hide_no_other_text(
    stream: ToolItemStream, data: st.DataObject
) -> None:
    body = to_body(stream)
    result, delivered = _consume(_split(body, data.draw(_cuts(body))))
    assert result.outcome == "completed"
    listed = [call["call_id"] for call in result.tool_calls]
    # client calls listed, in output order; server-executed ones never
    assert listed == stream.client_call_ids
    assert not set(listed) & set(stream.server_call_ids)
    assert all(call["status"] == "completed" for call in result.tool_calls)
    # no text delivered after a client call; without one, every piece of the answer is
    assert stream.text_before_first_client_call.startswith(delivered)
    if not stream.client_call_ids:
        assert delivered == stream.text
    assert result.output_text == stream.text
    assert result.answer_text == stream.answer_text
    assert result.commentary == stream.commentary


@given(tool_item_streams(), st.data())
def test_commentary_with_its_own_callback_stops_at_the_first_client_call_too(
    stream: ToolItemStream, data: st.DataObject
) -> None:
    """A preamble before the calls reaches `on_commentary_delta`; nothing of either kind of text
    after the first client call reaches the user."""
    heard: list[tuple[str, str]] = []
    callbacks = engine.Callbacks(on_text_delta=lambda s: heard.append(("text", s)),
                                 on_commentary_delta=lambda s: heard.append(("commentary", s)))
    body = to_body(stream)
    result = engine.consume(_split(body, data.draw(_cuts(body))), callbacks=callbacks)
    assert result.outcome == "completed"
    assert stream.text_before_first_client_call.startswith("".join(s for _, s in heard))
    if not stream.client_call_ids:
        assert "".join(s for kind, s in heard if kind == "text") == stream.answer_text
        assert "".join(s for kind, s in heard if kind == "commentary") == "".join(stream.commentary)
    assert result.commentary == stream.commentary


@given(tool_item_streams(), st.data())
def test_a_response_cut_anywhere_never_raises_or_delivers_text_after_a_client_call(
    stream: ToolItemStream, data: st.DataObject
) -> None:
    body = to_body(stream)
    end = data.draw(st.integers(0, len(body) - 1))
    cut = body[:end]
    result, delivered = _consume(_split(cut, data.draw(_cuts(cut))))
    assert result.outcome == "error"
    assert stream.text_before_first_client_call.startswith(delivered)
    assert result.output_text.startswith(delivered)
    # whatever is listed is a call of the stream, in output order (call ids number the output
    # index), at most once
    listed = [call["call_id"] for call in result.tool_calls]
    assert listed == sorted(listed)
    assert len(set(listed)) == len(listed)
    assert set(listed) <= set(stream.client_call_ids) | set(stream.server_call_ids)
