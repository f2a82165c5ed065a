"""`run_turn`: one turn over the network with a synchronous `openai.OpenAI` client.

Each attempt is a real request made with the openai client; the driver reads the response body as
raw bytes (stream attempts through `responses.with_streaming_response.create`, the fallback through
`responses.create(stream=True)` and that stream's HTTP response), so the machines see exactly the
bytes and chunk boundaries the server sent.

The request is sent and its body read on a small reader thread that hands every observation,
stamped with its arrival time, over a queue; the caller's thread runs the shared attempt loop (`engine.drivers.attempt_loop`), waiting
on that queue with a short timeout, so an interrupt is honoured within ~20 ms and an idle timeout
fires on time while the server is silent, before or after the response headers. On either, the
response is closed and the reader thread ends with it. Callbacks run on the caller's thread.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable, Iterator

import openai

from engine.drivers.arguments import check_turn_call
from engine.drivers.attempt_loop import Stamped, Watchdog, attempt_loop, stamped, turn_clock
from engine.drivers.recording import AttemptFeed, TurnRecording
from engine.drivers.transport import observation_of
from engine.log.eventlog import Callbacks
from engine.log.redaction import client_secrets
from machines.records import Chunk, EndOfStream, Interrupt, TurnPolicy, TurnResult

__all__ = ["run_turn"]


class _AttemptReader:
    """Sends one attempt's request and iterates its body on a daemon thread.

    Everything it observes goes to `items`, stamped with its arrival time: chunks, the clean end, what an exception from opening
    or reading stands for. The caller's thread waits on that queue, so it can stop the attempt
    (interrupt, idle timeout) at any moment, even before the response headers arrive; `abandon()`
    then closes the response, or makes the thread close it as soon as the request returns."""

    def __init__(self, client: Any, request: dict[str, Any], kind: str) -> None:
        self.items: queue.SimpleQueue[Stamped] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._close: Callable[[], None] | None = None
        self._abandoned = False
        self._thread = threading.Thread(
            target=self._run, args=(client, request, kind), name="streamfsm-body", daemon=True
        )
        self._thread.start()

    def _run(self, client: Any, request: dict[str, Any], kind: str) -> None:
        put = self.items.put
        try:
            body, close = _open_stream(client, request, kind)
        except BaseException as error:  # handed to the caller's thread, classified there
            put(stamped(observation_of(error, opening=True) or error))
            return
        with self._lock:
            if not self._abandoned:
                self._close = close
        if self._close is None:
            _close_quietly(close)
            return
        try:
            for chunk in body:
                if chunk:
                    put(stamped(Chunk(chunk)))
            put(stamped(EndOfStream()))
        except BaseException as error:
            put(stamped(observation_of(error, opening=False) or error))

    def abandon(self) -> None:
        """Stop reading: close the response now, or as soon as the request returns."""
        with self._lock:
            self._abandoned = True
            close = self._close
        if close is not None:
            _close_quietly(close)


def _close_quietly(close: Callable[[], Any]) -> None:
    try:
        close()
    except Exception:  # closing a broken stream may fail again; nothing left to save
        pass


def _open_stream(
    client: Any, request: dict[str, Any], kind: str
) -> tuple[Iterator[bytes], Callable[[], None]]:
    """Send the request; return (body byte iterator, close function)."""
    if kind == "fallback":
        stream = client.responses.create(**request, stream=True)
        return stream.response.iter_bytes(), stream.close
    manager = client.responses.with_streaming_response.create(**request, stream=True)
    response = manager.__enter__()
    return response.iter_bytes(), lambda: manager.__exit__(None, None, None)


def _run_attempt(
    client: Any,
    request: dict[str, Any],
    feed: AttemptFeed,
    now: Callable[[], float],
    interrupted: Callable[[], bool],
    idle_timeout_s: float | None,
) -> None:
    if interrupted():
        feed.fail(Interrupt(), now())
        return
    loop = attempt_loop(feed, Watchdog(time.monotonic, interrupted, idle_timeout_s), now)
    reader = _AttemptReader(client, request, feed.kind)
    get = reader.items.get
    try:
        wait_s = next(loop)
        while True:
            try:
                item: Stamped | None = get(timeout=wait_s)
            except queue.Empty:
                item = None
            wait_s = loop.send(item)
    except StopIteration:
        pass
    finally:
        reader.abandon()


def run_turn(
    client: openai.OpenAI,
    request: dict[str, Any],
    *,
    callbacks: Callbacks | None = None,
    policy: TurnPolicy | None = None,
    trace: str | os.PathLike[str] | None = None,
    interrupt: threading.Event | Callable[[], bool] | None = None,
) -> TurnResult:
    """Run one turn: stream attempts with retries, then a fallback, as the policy allows.

    Returns a `TurnResult` for anything the server or network does; raises `TypeError` /
    `ValueError` only for a wrong call."""
    request, policy, interrupted = check_turn_call(
        client, request, callbacks, policy, trace, interrupt, asynchronous=False
    )
    secrets = client_secrets(client)
    now = turn_clock()
    recording = TurnRecording(policy, callbacks, entry="run_turn", request=request)
    try:
        for feed in recording.attempts():
            _run_attempt(client, request, feed, now, interrupted, policy.idle_timeout_s)
    except BaseException:
        recording.abandon(trace, secrets)
        raise
    return recording.finish(trace, secrets)
