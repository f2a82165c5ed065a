"""`arun_turn`: one turn over the network with an `openai.AsyncOpenAI` client.

The same machines, event log, trace and attempt loop as `run_turn` (`engine.drivers.attempt_loop`);
only the waiting differs. The body is read by a task that hands observations over an
`asyncio.Queue`; the turn's task waits on that queue with a short timeout, so interrupts and idle
timeouts are honoured while the socket is silent. On either, the reader task is cancelled and the
response closed.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from typing import Any, AsyncIterator, Awaitable, Callable

import openai

from engine.drivers.arguments import check_turn_call
from engine.drivers.attempt_loop import (
    Observation,
    Watchdog,
    attempt_loop,
    http_policy,
    pause_slices,
    turn_clock,
)
from engine.drivers.recording import AttemptFeed, TurnRecording
from engine.drivers.transport import observation_of
from engine.log.eventlog import Callbacks
from engine.log.redaction import client_secrets
from machines.records import Chunk, EndOfStream, Interrupt, TurnPolicy, TurnResult

__all__ = ["arun_turn"]


async def _read_attempt(
    client: Any, request: dict[str, Any], kind: str, items: asyncio.Queue[Observation]
) -> None:
    """Send the request and read its body, putting every observation on `items`; cancelling
    the task (interrupt, idle timeout) stops it at any point, even before the headers."""
    try:
        body, close = await _open_stream(client, request, kind)
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # handed to the turn's task
        items.put_nowait(observation_of(error, opening=True) or error)
        return
    try:
        async for chunk in body:
            if chunk:
                items.put_nowait(Chunk(chunk))
        items.put_nowait(EndOfStream())
    except asyncio.CancelledError:
        raise
    except BaseException as error:
        items.put_nowait(observation_of(error, opening=False) or error)
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
    loop = attempt_loop(feed, Watchdog(now, interrupted, idle_timeout_s), now)
    items: asyncio.Queue[Observation] = asyncio.Queue()
    reader = asyncio.ensure_future(_read_attempt(client, request, feed.kind, items))
    try:
        wait_s = next(loop)
        while True:
            try:
                item: Observation | None = await asyncio.wait_for(items.get(), wait_s)
            except asyncio.TimeoutError:
                item = None
            wait_s = loop.send(item)
    except StopIteration:
        pass
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
    policy = http_policy(policy, client)
    client = client.with_options(max_retries=0)  # the engine owns every retry
    now = turn_clock()
    seed = random.SystemRandom().getrandbits(32)  # the retry jitter's seed, kept in the trace
    recording = TurnRecording(policy, callbacks, entry="arun_turn", request=request, seed=seed)
    try:
        for feed in recording.attempts():
            for pause in pause_slices(recording.wait_s, interrupted, now):
                await asyncio.sleep(pause)
            await _run_attempt(client, request, feed, now, interrupted, policy.idle_timeout_s)
    except BaseException:
        recording.abandon(trace, secrets)
        raise
    return recording.finish(trace, secrets)
