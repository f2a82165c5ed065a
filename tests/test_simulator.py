"""The simulator against the real openai client, over real loopback sockets (no mocks)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx2
import openai
import orjson
import pytest

from engine.simulator.replies import Reply, Script, error_body
from engine.simulator.server import ResponsesSimulator
from machines.records import Chunk, EndOfStream, Stall, TransportFault
from support import within

CHUNKS = (
    b'event: response.created\ndata: {"type":"response.created"}\n\n',
    b"event: response.output_text.delta\n",
    b'data: {"delta":"h\xc3',
    b'\xa9llo"}\n\n',
)


def _client(sim: ResponsesSimulator, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test-secret", max_retries=0, **options)


def _stream_bytes(client: openai.OpenAI) -> list[bytes]:
    """Open one streaming request and collect ``iter_bytes()`` pieces (raises what it raises)."""
    received: list[bytes] = []
    with client.responses.with_streaming_response.create(
        model="m", input="hi", stream=True
    ) as response:
        for piece in response.iter_bytes():
            received.append(piece)
    return received


def test_send_steps_arrive_as_separate_chunks() -> None:
    script = Script((Reply(steps=tuple(Chunk(c) for c in CHUNKS)),))
    with ResponsesSimulator(script) as sim:
        with _client(sim).responses.with_streaming_response.create(
            model="m", input="hi", stream=True
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["transfer-encoding"] == "chunked"
            received = list(response.iter_bytes())
        assert sim.server_errors == []
    assert received == list(CHUNKS)


def test_drop_surfaces_as_remote_protocol_error_after_the_sent_chunks() -> None:
    script = Script((Reply(steps=(Chunk(CHUNKS[0]), Chunk(CHUNKS[1]), TransportFault("drop"), Chunk(b"never"))),))
    received: list[bytes] = []
    with ResponsesSimulator(script) as sim:
        with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):
            with _client(sim).responses.with_streaming_response.create(
                model="m", input="hi", stream=True
            ) as response:
                for piece in response.iter_bytes():
                    received.append(piece)
    assert received == [CHUNKS[0], CHUNKS[1]]


def test_drop_through_the_sdk_stream_is_an_api_connection_error() -> None:
    script = Script((Reply(steps=(Chunk(CHUNKS[0]), TransportFault("drop"))),))
    with ResponsesSimulator(script) as sim:
        stream = _client(sim).responses.create(model="m", input="hi", stream=True)
        with pytest.raises(openai.APIConnectionError) as caught:
            for _ in stream:
                pass
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)


def test_stall_beyond_the_read_timeout_raises_read_timeout() -> None:
    script = Script((Reply(steps=(Chunk(CHUNKS[0]), Stall(3.0), Chunk(b"late"))),))
    received: list[bytes] = []
    with ResponsesSimulator(script) as sim:
        client = _client(sim).with_options(timeout=openai.Timeout(5, read=0.3))
        started = time.monotonic()
        with pytest.raises(httpx2.ReadTimeout):
            with client.responses.with_streaming_response.create(
                model="m", input="hi", stream=True
            ) as response:
                for piece in response.iter_bytes():
                    received.append(piece)
        assert time.monotonic() - started < within(2.0)
    assert received == [CHUNKS[0]]


def test_stall_through_the_sdk_stream_is_an_api_timeout_error() -> None:
    script = Script((Reply(steps=(Chunk(CHUNKS[0]), Stall(3.0))),))
    with ResponsesSimulator(script) as sim:
        client = _client(sim).with_options(timeout=openai.Timeout(5, read=0.3))
        stream = client.responses.create(model="m", input="hi", stream=True)
        with pytest.raises(openai.APITimeoutError):
            for _ in stream:
                pass


def test_stall_shorter_than_the_read_timeout_delays_but_delivers() -> None:
    script = Script((Reply(steps=(Chunk(b"a"), Stall(0.2), Chunk(b"b"))),))
    with ResponsesSimulator(script) as sim:
        started = time.monotonic()
        received = _stream_bytes(_client(sim))
        elapsed = time.monotonic() - started
    assert received == [b"a", b"b"]
    assert 0.2 <= elapsed < within(2.0)


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (500, openai.InternalServerError, None),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (401, openai.AuthenticationError, "invalid_api_key"),
    ],
)
def test_http_error_status_is_an_api_status_error_with_the_body(
    status: int, error_class: type[openai.APIStatusError], code: str | None
) -> None:
    with ResponsesSimulator(Script((Reply(status=status),))) as sim:
        with pytest.raises(error_class) as caught:
            _stream_bytes(_client(sim))
    error = caught.value
    assert isinstance(error, openai.APIStatusError)
    assert error.status_code == status
    assert isinstance(error.body, dict)
    assert error.body["code"] == code
    assert set(error.body) == {"message", "type", "param", "code"}


def test_custom_error_body_and_headers_reach_the_client_verbatim() -> None:
    body = error_body(
        "You exceeded your current quota, please check your plan and billing details.",
        type="insufficient_quota",
        code="insufficient_quota",
    )
    reply = Reply(status=429, body=body, headers=(("retry-after", "20"), ("x-request-id", "req_1")))
    with ResponsesSimulator(Script((reply,))) as sim:
        with pytest.raises(openai.RateLimitError) as caught:
            _client(sim).responses.create(model="m", input="hi", stream=True)
    error = caught.value
    assert error.body == orjson.loads(body)["error"]
    assert error.response.headers["retry-after"] == "20"
    assert error.request_id == "req_1"


def test_requests_are_recorded_with_json_body_and_secrets_redacted() -> None:
    script = Script((Reply(steps=(Chunk(b"x"),)),))
    with ResponsesSimulator(script) as sim:
        client = _client(
            sim,
            default_headers={"x-session-token": "tok-123", "cookie": "sid=1", "x-trace": "visible"},
        )
        _stream_bytes(client)
        (request,) = sim.requests
    assert request.method == "POST"
    assert request.path == "/v1/responses"
    assert request.body == {"model": "m", "input": "hi", "stream": True}
    assert request.reply_index == 0
    assert request.headers["authorization"] == "[redacted]"
    assert request.headers["x-session-token"] == "[redacted]"
    assert request.headers["cookie"] == "[redacted]"
    assert request.headers["x-trace"] == "visible"
    assert request.headers["content-type"] == "application/json"
    assert "sk-test-secret" not in repr(sim.requests)


def test_requests_beyond_the_script_get_500_script_exhausted() -> None:
    script = Script((Reply(steps=(Chunk(b"x"),)),), name="one-shot")
    with ResponsesSimulator(script) as sim:
        client = _client(sim)
        assert _stream_bytes(client) == [b"x"]
        with pytest.raises(openai.InternalServerError) as caught:
            _stream_bytes(client)
        assert [r.reply_index for r in sim.requests] == [0, None]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "script_exhausted"
    assert "'one-shot' is exhausted" in caught.value.body["message"]


def test_other_paths_get_404_and_leave_the_script_alone() -> None:
    script = Script((Reply(steps=(Chunk(b"x"),)),))
    with ResponsesSimulator(script) as sim:
        client = _client(sim)
        with pytest.raises(openai.NotFoundError):
            client.models.list()
        assert _stream_bytes(client) == [b"x"]
        assert [(r.method, r.path, r.reply_index) for r in sim.requests] == [
            ("GET", "/v1/models", None),
            ("POST", "/v1/responses", 0),
        ]


def test_path_without_v1_prefix_is_accepted() -> None:
    script = Script((Reply(steps=(Chunk(b"x"),)),))
    with ResponsesSimulator(script) as sim:
        base = sim.base_url.removesuffix("/v1")
        client = openai.OpenAI(base_url=base, api_key="k", max_retries=0)
        assert _stream_bytes(client) == [b"x"]
        assert sim.requests[0].path == "/responses"


def test_replies_are_taken_in_order_and_repeat_cycles() -> None:
    script = Script((Reply(steps=(Chunk(b"first"),)), Reply(steps=(Chunk(b"second"),))))
    with ResponsesSimulator(script, repeat=True) as sim:
        client = _client(sim)
        got = [_stream_bytes(client) for _ in range(3)]
        assert [r.reply_index for r in sim.requests] == [0, 1, 0]
    assert got == [[b"first"], [b"second"], [b"first"]]


def test_close_returns_quickly_during_a_stall() -> None:
    script = Script((Reply(steps=(Chunk(b"before"), Stall(10.0), Chunk(b"after"))),))
    outcome: list[object] = []
    sim = ResponsesSimulator(script).start()
    client = _client(sim)

    def read() -> None:
        try:
            outcome.append(_stream_bytes(client))
        except Exception as error:  # noqa: BLE001 - the test inspects whatever was raised
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 5
    while not sim.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    started = time.monotonic()
    sim.close()
    assert time.monotonic() - started < within(1.0)
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx2.RemoteProtocolError)


def test_serve_forever_blocks_until_closed() -> None:
    sim = ResponsesSimulator(Script((Reply(steps=(Chunk(b"x"),)),)))
    server = threading.Thread(target=sim.serve_forever, daemon=True)
    server.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            base_url = sim.base_url
            break
        except RuntimeError:
            time.sleep(0.01)
    assert _stream_bytes(openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)) == [b"x"]
    assert server.is_alive()
    sim.close()
    server.join(timeout=2)
    assert not server.is_alive()


def test_async_client_sees_chunks_and_drop() -> None:
    script = Script(
        (
            Reply(steps=tuple(Chunk(c) for c in CHUNKS)),
            Reply(steps=(Chunk(CHUNKS[0]), TransportFault("drop"))),
        )
    )

    async def run(base_url: str) -> tuple[list[bytes], list[bytes], BaseException | None]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
        first: list[bytes] = []
        async with client.responses.with_streaming_response.create(
            model="m", input="hi", stream=True
        ) as response:
            async for piece in response.iter_bytes():
                first.append(piece)
        second: list[bytes] = []
        failure: BaseException | None = None
        try:
            async with client.responses.with_streaming_response.create(
                model="m", input="hi", stream=True
            ) as response:
                async for piece in response.iter_bytes():
                    second.append(piece)
        except httpx2.RemoteProtocolError as error:
            failure = error
        await client.close()
        return first, second, failure

    with ResponsesSimulator(script) as sim:
        first, second, failure = asyncio.run(run(sim.base_url))
        assert [r.headers["x-stainless-async"] for r in sim.requests] == ["async:asyncio"] * 2
    assert first == list(CHUNKS)
    assert second == [CHUNKS[0]]
    assert isinstance(failure, httpx2.RemoteProtocolError)


def test_script_records_validate_their_inputs() -> None:
    with pytest.raises(ValueError):
        Reply(steps=[Chunk(b"")])  # a zero-length chunk would end the body
    with pytest.raises(TypeError):
        Reply(steps=[Chunk("text")])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Reply(steps=[EndOfStream()])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Stall(-1.0)
    with pytest.raises(TypeError):
        ResponsesSimulator(Reply())  # type: ignore[arg-type]
    reply = Reply(steps=[Chunk(b"x")], headers=[("a", "b")])  # type: ignore[arg-type]
    assert reply.steps == (Chunk(b"x"),)
    assert reply.headers == (("a", "b"),)
