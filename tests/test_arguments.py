"""A wrong call raises TypeError/ValueError with one clear line, before any HTTP request; nothing
the server does ever raises."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import openai
import pytest

import engine
from engine.simulator.shapes import SHAPES

from support import REQUEST, assert_replays_identically, simulated_client


@pytest.fixture
def client_and_sim():
    with simulated_client(SHAPES["happy_text"]) as pair:
        yield pair


def _refused(client_and_sim: Any, error: type[Exception], words: str, *args: Any, **kwargs: Any) -> str:
    client, sim = client_and_sim
    call_args = args or (client, dict(REQUEST))
    with pytest.raises(error) as caught:
        engine.run_turn(*call_args, **kwargs)
    message = str(caught.value)
    assert words in message
    assert "\n" not in message
    assert sim.requests == []  # refused before anything was sent
    return message


@pytest.mark.parametrize(
    ("client", "words"),
    [
        ("https://api.openai.com", "client must be an openai client, not str"),
        (None, "client must be an openai client, not NoneType"),
        (object(), "client must be an openai client, not object"),
    ],
)
def test_client_that_is_not_an_openai_client(client: Any, words: str, client_and_sim: Any) -> None:
    _refused(client_and_sim, TypeError, words, client, dict(REQUEST))


def test_async_client_is_refused_by_run_turn(client_and_sim: Any) -> None:
    _, sim = client_and_sim
    async_client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-x", max_retries=0)
    _refused(client_and_sim, TypeError, "run_turn needs a synchronous openai.OpenAI client; use arun_turn",
             async_client, dict(REQUEST))


@pytest.mark.parametrize(
    ("request_", "error", "words"),
    [
        ([("model", "gpt-5")], TypeError, "request must be a dict of responses.create arguments, not list"),
        ("hi", TypeError, "request must be a dict of responses.create arguments, not str"),
        (None, TypeError, "request must be a dict of responses.create arguments, not NoneType"),
        ({**REQUEST, "stream": False}, ValueError, "turns always stream"),
        ({**REQUEST, "stream": "yes"}, ValueError, "turns always stream"),
        ({**REQUEST, "stream": 1}, ValueError, "turns always stream"),
        ({**REQUEST, "bogus_option": 1}, TypeError, "unexpected keyword argument 'bogus_option'"),
    ],
    ids=["list", "str", "none", "stream-false", "stream-str", "stream-1", "unknown-option"],
)
def test_bad_request(request_: Any, error: type[Exception], words: str, client_and_sim: Any) -> None:
    client, _ = client_and_sim
    _refused(client_and_sim, error, words, client, request_)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"callbacks": {"on_text_delta": print}}, TypeError, "callbacks must be engine.Callbacks or None, not dict"),
        ({"callbacks": print}, TypeError, "callbacks must be engine.Callbacks or None"),
        ({"policy": {"max_stream_retries": 0}}, TypeError, "policy must be engine.TurnPolicy or None, not dict"),
        ({"policy": 3}, TypeError, "policy must be engine.TurnPolicy or None, not int"),
        ({"trace": 123}, TypeError, "trace must be a path or None, not int"),
        ({"trace": ["t.jsonl"]}, TypeError, "trace must be a path or None, not list"),
        ({"trace": b"t.jsonl"}, TypeError, "trace must be a path or None, not bytes"),
        ({"trace": "/no/such/folder/t.jsonl"}, ValueError, "trace directory does not exist: /no/such/folder"),
        ({"interrupt": "stop"}, TypeError, "interrupt must be a threading.Event, a zero-argument callable or None, not str"),
        ({"interrupt": True}, TypeError, "not bool"),
        ({"interrupt": threading.Lock()}, TypeError, "interrupt must be a threading.Event"),
    ],
    ids=lambda value: str(value)[:40] if not isinstance(value, type) else value.__name__,
)
def test_bad_keyword(options: dict[str, Any], error: type[Exception], words: str, client_and_sim: Any) -> None:
    _refused(client_and_sim, error, words, **options)


def test_trace_path_that_is_a_directory(client_and_sim: Any, tmp_path: Path) -> None:
    _refused(client_and_sim, ValueError, "trace path is a directory", trace=tmp_path)


def test_options_are_keyword_only(client_and_sim: Any) -> None:
    client, sim = client_and_sim
    with pytest.raises(TypeError):
        engine.run_turn(client, dict(REQUEST), engine.Callbacks())  # type: ignore[misc]
    assert sim.requests == []


def test_explicit_stream_true_and_every_option_accepted(client_and_sim: Any, tmp_path: Path) -> None:
    client, sim = client_and_sim
    result = engine.run_turn(
        client,
        {**REQUEST, "stream": True},
        callbacks=engine.Callbacks(),
        policy=engine.TurnPolicy(),
        trace=tmp_path / "t.jsonl",
        interrupt=lambda: False,
    )
    assert result.outcome == "completed"
    assert len(sim.requests) == 1
    assert sim.requests[0].body == {**REQUEST, "stream": True}
    assert_replays_identically(tmp_path / "t.jsonl")


def test_the_callers_request_is_not_changed(client_and_sim: Any) -> None:
    client, _ = client_and_sim
    request = {**REQUEST, "stream": True, "metadata": {"api_key": "meta-credential-1234"}}
    before = {**request, "metadata": dict(request["metadata"])}
    engine.run_turn(client, request)
    assert request == before


# -- consume ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "words"),
    [
        ((123,), {}, TypeError, "consume() takes bytes or an iterable of bytes, got int"),
        ((None,), {}, TypeError, "consume() takes bytes or an iterable of bytes, got NoneType"),
        (([b"data: x\n\n", 5],), {}, TypeError, "consume() takes bytes chunks, got int"),
        ((b"",), {"callbacks": print}, TypeError, "callbacks must be engine.Callbacks or None"),
        ((b"",), {"trace": 1.5}, TypeError, "trace must be a path or None, not float"),
        ((b"",), {"trace": "/no/such/folder/t.jsonl"}, ValueError, "trace directory does not exist"),
    ],
)
def test_consume_refuses_a_wrong_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        engine.consume(*args, **kwargs)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "chunks",
    [b"", "", [], [b"\x00\xff garbage"], "data: {not json}\n\n", [bytearray(b"data: x\n\n"), memoryview(b": hi\n\n")]],
    ids=["empty-bytes", "empty-str", "no-chunks", "garbage", "bad-json", "bytearray-memoryview"],
)
def test_consume_never_raises_for_what_the_bytes_say(chunks: Any) -> None:
    result = engine.consume(chunks)
    assert result.outcome == "error"
    assert result.error is not None and result.error["code"] == "eof"
