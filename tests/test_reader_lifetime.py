"""No reader outlives its turn: when `run_turn` / `arun_turn` returns, no reader thread or task is
left blocked on a socket, and the server sees every connection the turn gave up on closed at
once (one whose body was read to its end may stay in the client's pool, as HTTP keep-alive
does, and closes with the client). And (contract v3) no connection of a finished turn, a reset
one included, stays open waiting for the garbage collector: after the client is closed, with the
collector off, no socket to the server is left."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import httpx2
import openai
import pytest

import engine
from engine.simulator import shapes
from engine.simulator.shapes import (
    SHAPES,
    assemble,
    completed,
    created,
    in_progress,
    output_items,
    text_message,
    to_reply,
)
from engine.simulator.replies import Reply, Script
from engine.simulator.scenarios import reshape
from engine.simulator.server import ResponsesSimulator
from machines.records import Chunk, Stall
from support import bench_module, wait_for, within

REQUEST = {"model": "m", "input": "hi"}
ANSWER = shapes._ANSWER


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "streamfsm-body" and t.is_alive()]


def _open_connections(sim: ResponsesSimulator) -> int:
    """How many connections the simulator still holds open (its handlers forget a connection
    once the client has closed it)."""
    with sim._lock:
        return len(sim._connections)


def _slow_headers() -> Script:
    good = SHAPES["happy_text"].replies[0]
    return Script((Reply(steps=good.steps, headers_after_s=5.0),))


def _body_left_open() -> Script:
    """A complete answer whose body stays open for 5 s after `response.completed`."""
    message = text_message(ANSWER, deltas=4)
    events = assemble(created(), in_progress(), message, completed(output_items(message)))
    return Script((to_reply([*events, Stall(5.0)]),))


# -- the sync driver ---------------------------------------------------------------------------


def _interrupted_turn(
    stop: threading.Event, http: httpx2.Client | None = None
) -> tuple[engine.TurnResult, float, float | None]:
    """One turn against a server slow to send its headers, `stop` its interrupt: its result, how
    long it took, and how soon after it the server saw every connection closed (None: not
    within `within(1.0)`). No reader is left when the turn returns."""
    with ResponsesSimulator(_slow_headers()) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0, http_client=http)
        began = time.monotonic()
        result = engine.run_turn(client, REQUEST, interrupt=stop)
        elapsed = time.monotonic() - began
        assert _readers() == []  # no thread left waiting for the 5 s headers
        closed = wait_for(lambda: _open_connections(sim) == 0, within_s=within(1.0))
        client.close()
    return result, elapsed, closed


def test_an_interrupt_before_the_headers_ends_the_reader_and_closes_the_connection() -> None:
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    result, elapsed, closed = _interrupted_turn(stop)
    timer.cancel()
    assert result.outcome == "interrupted"
    assert elapsed < within(1.0, before=5.0)
    assert closed is not None and closed < within(0.5, before=5.0)


def test_an_interrupt_while_the_request_is_still_being_built_stops_it_once_it_has_a_socket() -> None:
    """The request has no socket yet when the turn gives up (a slow request hook stands for a
    slow first request: TLS setup, a proxy lookup); it is shut down as soon as it opens one."""
    stop = threading.Event()

    def slow_hook(request: httpx2.Request) -> None:
        stop.set()  # the caller gives up while the request is being built
        time.sleep(0.3)

    http = httpx2.Client(event_hooks={"request": [slow_hook]})
    result, elapsed, closed = _interrupted_turn(stop, http)
    assert result.outcome == "interrupted"
    assert elapsed < within(1.0, before=5.0)
    assert closed is not None and closed < within(0.5, before=5.0)


def test_a_request_given_up_before_it_is_sent_never_reaches_the_server() -> None:
    """The trace extension is a stopping point at every step before the request is answered:
    given up while a (slow) request hook ran, the request is never sent at all."""
    stop = threading.Event()

    def slow_hook(request: httpx2.Request) -> None:
        stop.set()
        time.sleep(0.2)

    http = httpx2.Client(event_hooks={"request": [slow_hook]})
    with ResponsesSimulator(_slow_headers()) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0, http_client=http)
        result = engine.run_turn(client, REQUEST, interrupt=stop)
        assert _readers() == []
        time.sleep(0.1)
        received = sim.requests
        client.close()
    assert result.outcome == "interrupted"
    assert received == []


def test_the_callers_own_hooks_and_trace_extension_keep_working() -> None:
    """The driver's trace callback is chained after one the request already has, and its
    request hook leaves the caller's in place: both see the request, and the interrupt before
    the headers still closes the connection at once."""
    stop = threading.Event()
    seen: list[str] = []
    hooked: list[str] = []

    def their_trace(event: str, info: dict[str, Any]) -> None:
        seen.append(event)

    def their_hook(request: httpx2.Request) -> None:
        hooked.append(request.url.path)
        request.extensions["trace"] = their_trace

    threading.Timer(0.2, stop.set).start()
    result, elapsed, closed = _interrupted_turn(stop, httpx2.Client(event_hooks={"request": [their_hook]}))
    assert result.outcome == "interrupted" and elapsed < within(1.0, before=5.0)
    assert closed is not None and closed < within(0.5, before=5.0)
    assert hooked == ["/v1/responses"]
    assert "connection.connect_tcp.complete" in seen
    assert "http11.receive_response_headers.started" in seen


def test_requests_not_sent_by_a_reader_are_left_alone() -> None:
    """The request hook is installed once on the client's HTTP client and does nothing for a
    request sent from any other thread."""
    extensions: list[dict[str, Any]] = []

    def keep(response: httpx2.Response) -> None:
        extensions.append(dict(response.request.extensions))

    http = httpx2.Client(event_hooks={"response": [keep]})
    with ResponsesSimulator(SHAPES["happy_text"], repeat=True) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0, http_client=http)
        for _ in range(3):
            assert engine.run_turn(client, REQUEST).outcome == "completed"
        http.get(sim.base_url + "/models")
        client.close()
    hooks = http.event_hooks["request"]
    assert len(hooks) == 1  # one hook, however many turns
    assert ["trace" in seen for seen in extensions] == [True, True, True, False]


def test_a_kept_alive_connection_waiting_for_its_headers_is_closed_when_they_come() -> None:
    """No hook names the socket of a connection taken from the pool before its answer's
    headers: an interrupt then still ends the turn at once, and the reader, left to end by
    itself, closes the connection as soon as the headers come."""
    good = SHAPES["happy_text"].replies[0]
    headers_after_s = within(1.0)
    script = Script((good, Reply(steps=good.steps, headers_after_s=headers_after_s)))
    stop = threading.Event()
    with ResponsesSimulator(script) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        assert engine.run_turn(client, REQUEST).outcome == "completed"  # its connection is pooled
        threading.Timer(0.2, stop.set).start()
        began = time.monotonic()
        result = engine.run_turn(client, REQUEST, interrupt=stop)
        elapsed = time.monotonic() - began
        ended = wait_for(lambda: _readers() == [] and _open_connections(sim) == 0,
                          within_s=headers_after_s + within(2.0))
        requests = len(sim.requests)
        client.close()
    assert result.outcome == "interrupted"
    assert elapsed < within(0.6, before=headers_after_s)  # the turn did not wait for the reader
    assert requests == 2  # the pooled connection was reused: the request had gone out
    assert ended is not None and ended < headers_after_s + within(0.5)


def test_an_idle_timeout_before_the_headers_ends_the_reader_and_closes_the_connection() -> None:
    with ResponsesSimulator(_slow_headers()) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        result = engine.run_turn(
            client, REQUEST,
            policy=engine.TurnPolicy(max_stream_retries=0, fallback=False, idle_timeout_s=0.2),
        )
        assert _readers() == []
        closed = wait_for(lambda: _open_connections(sim) == 0, within_s=within(1.0))
        client.close()
    assert [a.reason for a in result.attempts] == ["idle_timeout"]
    assert closed is not None and closed < within(0.5, before=5.0)


def test_a_body_left_open_after_the_terminal_event_does_not_keep_the_reader() -> None:
    with ResponsesSimulator(_body_left_open()) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        began = time.monotonic()
        result = engine.run_turn(client, REQUEST)
        elapsed = time.monotonic() - began
        assert _readers() == []
        closed = wait_for(lambda: _open_connections(sim) == 0, within_s=within(1.0))
        client.close()
    assert result.outcome == "completed" and result.output_text == ANSWER
    assert elapsed < within(1.0, before=5.0)
    assert closed is not None and closed < within(0.5, before=5.0)


def test_back_to_back_turns_leave_no_reader_and_no_connection_behind() -> None:
    with ResponsesSimulator(SHAPES["happy_text"], repeat=True) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        for _ in range(8):
            result = engine.run_turn(client, REQUEST)
            assert result.outcome == "completed"
            assert _readers() == []
        # bodies read to their end: at most the one pooled keep-alive connection stays open
        assert _open_connections(sim) <= 1
        client.close()
        closed = wait_for(lambda: _open_connections(sim) == 0, within_s=within(1.0))
    assert closed is not None and closed < within(0.5)


def test_an_interrupt_mid_body_shuts_the_connection_at_once() -> None:
    message = text_message(ANSWER, deltas=4)
    events = assemble(created(), in_progress(), message[:4], Stall(5.0), message[4:])
    stop = threading.Event()

    def on_text(delta: str) -> None:
        threading.Timer(0.1, stop.set).start()

    with ResponsesSimulator(Script((to_reply(events),))) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        result = engine.run_turn(
            client, REQUEST, interrupt=stop, callbacks=engine.Callbacks(on_text_delta=on_text)
        )
        assert _readers() == []
        closed = wait_for(lambda: _open_connections(sim) == 0, within_s=within(1.0))
        client.close()
    assert result.outcome == "interrupted"
    assert closed is not None and closed < within(0.5, before=5.0)


# -- the async driver --------------------------------------------------------------------------


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


@pytest.mark.parametrize("script", [_slow_headers, _body_left_open], ids=["headers", "body"])
def test_arun_turn_leaves_no_reader_task_and_closes_the_connection(script: Any) -> None:
    async def run() -> tuple[engine.TurnResult, set[Any], float | None]:
        stop = threading.Event()
        with ResponsesSimulator(script()) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
            asyncio.get_running_loop().call_later(0.3, stop.set)
            result = await engine.arun_turn(client, REQUEST, interrupt=stop)
            left = _other_tasks()
            began = time.monotonic()
            while _open_connections(sim) and time.monotonic() - began < within(1.0):
                await asyncio.sleep(0.01)
            closed = None if _open_connections(sim) else time.monotonic() - began
            await client.close()
            return result, left, closed

    result, left, closed = asyncio.run(run())
    assert result.outcome in ("interrupted", "completed")
    assert left == set()
    assert closed is not None and closed < within(0.5, before=5.0)


# -- no connection waits for the garbage collector ---------------------------------------------


#: Every socket object of this process still open to a port (the garbage collector off, one
#: nothing closed is still there), as the load benchmark counts them.
_open_sockets_to = bench_module("bench_load").open_sockets_to


def _broken_answers() -> list[Reply]:
    """First attempts that break every way a connection ends badly, each then healed: cut with
    FIN or reset (RST) before the headers' body, in the middle of an event, between events;
    silent past the idle timeout; an HTTP error. Each is followed by a good answer."""
    good = SHAPES["function_call"].replies[-1]
    body = b"".join(step.data for step in good.steps if isinstance(step, Chunk))
    cuts = [reshape(good, drop_after_bytes=offset, drop=drop)
            for offset in (0, 7, len(body) // 3, len(body) - 5) for drop in ("fin", "rst")]
    stall = Reply(steps=(*good.steps[:3], Stall(2.0), *good.steps[3:]))
    replies: list[Reply] = []
    for first in (*cuts, stall, Reply(status=503)):
        replies += [first, good]
    return replies


_POLICY = engine.TurnPolicy(idle_timeout_s=0.3, max_http_retries=1, turn_timeout_s=10.0)


@pytest.mark.parametrize("driver", ["run_turn", "arun_turn", "compat"])
def test_no_connection_of_a_finished_turn_waits_for_the_garbage_collector(driver: str) -> None:
    """Turns whose first attempt breaks (FIN, a reset, a silence, an error status), then one
    given up at the turn's limit and one interrupted, then `close()`: with the garbage collector
    off, no socket to the server is left open, so none waits for it to be closed."""
    replies = _broken_answers()
    turns = len(replies) // 2
    message = text_message(ANSWER, deltas=4)
    dripping = to_reply(assemble(created(), in_progress(), message[:4], Stall(3.0), message[4:]))
    replies += [dripping, dripping]
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with ResponsesSimulator(Script(replies)) as sim:
            port = int(sim.base_url.rsplit(":", 1)[1].split("/")[0])
            outcomes = _turns_then_close(driver, sim.base_url, turns)
            left = _open_sockets_to(port)
            closed = wait_for(lambda: _open_connections(sim) == 0 and not _any_reader(), within(2.0))
    finally:
        if was_enabled:
            gc.enable()
    if driver != "compat":  # the seed's policy has no idle timeout: its turns go otherwise
        assert outcomes[:turns] == ["completed"] * turns
        assert outcomes[turns:] == ["error", "interrupted"]
    assert left == []
    assert closed is not None  # the server saw every connection closed, no reader is left


def _any_reader() -> bool:
    """A reader thread of any driver is still alive (one blocked on a socket closed under it)."""
    names = ("streamfsm-body", "streamfsm-sdk-events")
    return any(t.name in names and t.is_alive() for t in threading.enumerate())


def _turns_then_close(driver: str, base_url: str, turns: int) -> list[str]:
    """`turns` turns, then one past its limit and one interrupted (both mid-body), then the
    client closed; the outcomes."""
    stop = threading.Event()
    late = engine.TurnPolicy(turn_timeout_s=0.5)  # no idle timeout: the drip is cut by the limit
    if driver == "arun_turn":
        async def run() -> list[str]:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
            out = [(await engine.arun_turn(client, REQUEST, policy=_POLICY)).outcome
                   for _ in range(turns)]
            out.append((await engine.arun_turn(client, REQUEST, policy=late)).outcome)
            asyncio.get_running_loop().call_later(0.4, stop.set)
            out.append((await engine.arun_turn(client, REQUEST, interrupt=stop)).outcome)
            await client.close()
            return out

        return asyncio.run(run())
    client = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)
    if driver == "compat":
        from engine.compat import run_codex_stream

        agent = _CompatAgent(client)
        out = []
        for _ in range(turns + 2):  # the seed's own policy: one retry, then the fallback
            try:
                run_codex_stream(agent, dict(REQUEST))
                out.append("completed")
            except Exception as error:  # the seed raises for a turn that did not complete
                out.append(type(error).__name__)
    else:
        out = [engine.run_turn(client, REQUEST, policy=_POLICY).outcome for _ in range(turns)]
        out.append(engine.run_turn(client, REQUEST, policy=late).outcome)
        threading.Timer(0.4, stop.set).start()
        out.append(engine.run_turn(client, REQUEST, interrupt=stop).outcome)
    client.close()
    return out


class _CompatAgent:
    """What `engine.compat` asks of the seed's agent, and nothing more."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._interrupt_requested = False

    def _touch_activity(self, message: str) -> None:
        pass

    def _fire_stream_delta(self, text: str) -> None:
        pass

    def _fire_reasoning_delta(self, text: str) -> None:
        pass

    def _ensure_primary_openai_client(self, *, reason: str) -> Any:
        return self.client

    def _get_transport(self) -> "_CompatAgent":
        return self

    def preflight_kwargs(self, kwargs: dict[str, Any], *, allow_stream: bool) -> dict[str, Any]:
        return kwargs

    def _client_log_context(self) -> str:
        return ""
