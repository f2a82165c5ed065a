"""`arun_turn`: one turn over the network with an `openai.AsyncOpenAI` client.

The same machines, event log and trace as `run_turn` (engine/recording.py); only the I/O differs.
The body is read by a task that hands chunks over an `asyncio.Queue`; the turn's task waits on
that queue with a short timeout, so interrupts and idle timeouts are honoured while the socket is
silent. On either, the response is closed and the reader task cancelled.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, AsyncIterator, Awaitable, Callable

import openai

from engine.drivers.arguments import check_turn_call
from engine.log.eventlog import Callbacks
from engine.drivers.recording import AttemptFeed, TurnRecording
from engine.log.redaction import client_secrets
from engine.drivers.transport import (
    CHUNK,
    END,
    ERROR,
    OPEN_ERROR,
    Watchdog,
    feed_body_item,
    feed_silence,
    turn_clock,
)
from machines.records import Interrupt, TurnPolicy, TurnResult

__all__ = ["arun_turn"]

POLL_S = 0.02


async def _read_attempt(
    client: Any, request: dict[str, Any], kind: str, items: asyncio.Queue[tuple[int, Any]]
) -> None:
    """Send the request and read its body, putting every observation on `items`; cancelling
    the task (interrupt, idle timeout) stops it at any point, even before the headers."""
    try:
        body, close = await _open_stream(client, request, kind)
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # handed to the turn's task, classified there
        items.put_nowait((OPEN_ERROR, error))
        return
    try:
        async for chunk in body:
            if chunk:
                items.put_nowait((CHUNK, chunk))
        items.put_nowait((END, None))
    except asyncio.CancelledError:
        raise
    except BaseException as error:
        items.put_nowait((ERROR, error))
    finally:
        try:
            await close()
        except Exception:  # closing a broken stream may fail again; nothing left to save
            pass


async def _open_stream(
    client: Any, request: dict[str, Any], kind: str
) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[Any]]]:
    if kind == "fallback":
        stream = await client.responses.create(**request, stream=True)
        return stream.response.aiter_bytes(), stream.close
    manager = client.responses.with_streaming_response.create(**request, stream=True)
    response = await manager.__aenter__()
    return response.iter_bytes(), lambda: manager.__aexit__(None, None, None)


async def _run_attempt(
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
    watchdog = Watchdog(now, interrupted, idle_timeout_s, POLL_S)
    items: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    reader = asyncio.ensure_future(_read_attempt(client, request, feed.kind, items))
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(items.get(), watchdog.wait_s())
            except asyncio.TimeoutError:
                if feed_silence(feed, watchdog, now):
                    return
                continue
            if feed_body_item(feed, watchdog, kind, value, now):
                return
    finally:
        reader.cancel()
        await asyncio.wait([reader], timeout=1.0)


async def arun_turn(
    client: openai.AsyncOpenAI,
    request: dict[str, Any],
    *,
    callbacks: Callbacks | None = None,
    policy: TurnPolicy | None = None,
    trace: str | os.PathLike[str] | None = None,
    interrupt: threading.Event | Callable[[], bool] | None = None,
) -> TurnResult:
    """`run_turn` for `openai.AsyncOpenAI`: same machines, same result, same trace format."""
    request, policy, interrupted = check_turn_call(
        client, request, callbacks, policy, trace, interrupt, asynchronous=True
    )
    secrets = client_secrets(client)
    now = turn_clock()
    recording = TurnRecording(policy, callbacks, entry="arun_turn", request=request)
    try:
        for feed in recording.attempts():
            await _run_attempt(client, request, feed, now, interrupted, policy.idle_timeout_s)
    except BaseException:
        recording.abandon(trace, secrets)
        raise
    return recording.finish(trace, secrets)
