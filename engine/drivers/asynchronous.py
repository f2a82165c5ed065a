"""`arun_turn`: one turn over the network with an `openai.AsyncOpenAI` client.

The same machines, event log, trace and turn loop as `run_turn` (`engine.drivers.turn_loop`);
only the carrying out of its steps differs. The body is read by a task on the same event loop
that hands observations, stamped with their arrival time, to an `_Inbox`; the turn's task waits
on it with a short timeout, so interrupts and idle timeouts are honoured while the socket is
silent. The reader only sees bytes arrive while the loop is free, so the watchdog counts as
silence only the time the reader could look (`Watchdog(blind_while_busy=True)`): a slow callback
or a busy loop is not a silent server.

The inbox holds at most `READ_AHEAD` reads: a reader that is ahead of the turn waits for room
(the rest of the body stays in the socket), so a long answer from a fast server is never held in
memory whole.

When the attempt ends on what the server sent, the reader gets a moment to read the body to its
end (the connection goes back to the client's pool; what it reads then is dropped); otherwise,
or if it takes longer, the reader task is cancelled, which closes the response and its
connection, wherever it was (connecting, waiting for the headers, reading the body).
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Generator

from engine.drivers.background import cancel_arguments, resume_arguments
from engine.drivers.recording import AttemptFeed
from engine.log.eventlog import Callbacks
from engine.drivers.transport import observation_of
from engine.drivers.arguments import TurnOptions
from engine.drivers.turn_loop import (
    Finished,
    Observation,
    Reply,
    Stamped,
    Step,
    advance,
    carry_out,
    start_turn,
)
from machines.records import Chunk, EndOfStream, TurnPolicy, TurnResult

if TYPE_CHECKING:
    import openai

__all__ = ["arun_turn"]
#: How long the turn waits for a cancelled reader to close its response (seconds).
CANCEL_WAIT_S = 1.0

#: Network reads the reader may hand over before the turn has taken them (the window of the
#: body held in memory).
READ_AHEAD = 32


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Inbox:
    """Stamped observations from the reader task, and the turn task's timed wait for the next
    one: a deque and one future, lighter than `asyncio.Queue` + `wait_for` on the hot path (a
    chunk already there is taken without a pass through the loop). At most `READ_AHEAD` wait:
    the reader then waits for room (`room`); once the turn takes nothing more (`discard`), what
    the reader hands over is dropped."""

    __slots__ = ("_items", "_waiter", "_loop", "_room", "_discarding")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._items: collections.deque[Stamped] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop
        self._room: asyncio.Future[None] | None = None
        self._discarding = False

    def put(self, observation: Observation) -> None:
        """Hand over one observation, stamped now (the reader's side)."""
        if self._discarding:
            return
        self._items.append((time.monotonic(), observation))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def room(self) -> None:
        """Wait (the reader's side) while `READ_AHEAD` observations are waiting."""
        while len(self._items) >= READ_AHEAD and not self._discarding:
            room = self._room = self._loop.create_future()
            try:
                await room
            finally:
                self._room = None

    def discard(self) -> None:
        """The turn takes nothing more: drop what waits, and what is handed over from now."""
        self._discarding = True
        self._items.clear()
        self._made_room()

    def _made_room(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    @property
    def ready(self) -> bool:
        """An observation is waiting."""
        return bool(self._items)

    def take(self) -> Stamped:
        """The observation waiting (`ready`)."""
        if self._room is not None:
            self._made_room()
        return self._items.popleft()

    async def get(self, wait_s: float) -> Stamped | None:
        """The next observation, waiting at most `wait_s` (0: one pass through the loop), or
        None after a silent wait."""
        items = self._items
        if items:
            return self.take()
        if wait_s <= 0:
            await asyncio.sleep(0)
        else:
            waiter = self._loop.create_future()
            self._waiter = waiter
            timer = self._loop.call_later(wait_s, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self.take() if items else None


async def _read_attempt(
    client: Any,
    request: dict[str, Any],
    kind: str,
    resume_point: tuple[str, int] | None,
    inbox: _Inbox,
) -> None:
    """Send the request and read its body, handing every observation to `inbox`; cancelling
    the task (interrupt, idle timeout) stops it at any point, even before the headers."""
    put = inbox.put
    try:
        body, close = await _open_stream(client, request, kind, resume_point)
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # handed to the turn's task
        put(observation_of(error, opening=True) or error)
        return
    try:
        async for chunk in body:
            if chunk:
                put(Chunk(chunk))
                await inbox.room()
        put(EndOfStream())
    except asyncio.CancelledError:
        raise
    except BaseException as error:
        put(observation_of(error, opening=False) or error)
    finally:
        await _closed(body, close)


async def _closed(body: AsyncIterator[bytes], close: Callable[[], Awaitable[Any]]) -> None:
    """Close the body's iterator and the response, to their end even when the reader is
    cancelled again meanwhile (the close runs shielded): no connection is left for the garbage
    collector to close, a reset one included."""

    async def both() -> None:
        finish = getattr(body, "aclose", None)
        for step in (finish, close):
            if callable(step):
                try:
                    await step()
                except Exception:  # closing a broken stream may fail again; nothing to save
                    pass

    await asyncio.shield(both())


async def _open_stream(
    client: Any, request: dict[str, Any], kind: str, resume_point: tuple[str, int] | None
) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[Any]]]:
    if kind == "fallback":
        stream = await client.responses.create(**request, stream=True)
        return stream.response.aiter_bytes(), stream.close
    if resume_point is not None:
        response_id, arguments = resume_arguments(request, resume_point)
        manager = client.responses.with_streaming_response.retrieve(response_id, **arguments)
    else:
        manager = client.responses.with_streaming_response.create(**request, stream=True)
    response = await manager.__aenter__()
    return response.iter_bytes(), lambda: manager.__aexit__(None, None, None)


class _LoopDriver:
    """Carries out a turn's steps on the event loop, one reader task per attempt."""

    __slots__ = ("_client", "_request", "_reader", "inbox")

    def __init__(self, client: Any, request: dict[str, Any]) -> None:
        self._client = client
        self._request = request
        self._reader: asyncio.Future[None] | None = None
        self.inbox = _Inbox(asyncio.get_running_loop())

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def open(self, feed: AttemptFeed) -> None:
        inbox = self.inbox = _Inbox(asyncio.get_running_loop())
        self._reader = asyncio.ensure_future(
            _read_attempt(self._client, self._request, feed.kind, feed.resume_point, inbox)
        )

    async def close(self, grace_s: float) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        self.inbox.discard()
        if not reader.done() and grace_s > 0:
            await asyncio.wait([reader], timeout=grace_s)
        if not reader.done():
            reader.cancel()
            await asyncio.wait([reader], timeout=CANCEL_WAIT_S)

    async def cancel(self, response_id: str) -> None:
        """Cancel a background response the turn gave up (best effort, like `run_turn`'s)."""
        try:
            await self._client.responses.cancel(response_id, **cancel_arguments(self._request))
        except Exception:  # the network's or the server's doing; the response may be gone already
            pass


async def _drive(steps: Generator[Step, Reply, TurnResult], driver: _LoopDriver) -> TurnResult:
    """`turn_loop.drive` on the event loop: an observation already in the inbox is taken without
    a pass through the loop; an exception a step raises goes back into the turn."""
    step = advance(steps, None)
    while not isinstance(step, Finished):
        reply: Reply
        try:
            if not isinstance(step, float):
                reply = await carry_out(step, driver)
            elif driver.inbox.ready:
                reply = driver.inbox.take()
            else:
                reply = await driver.inbox.get(step)
        except BaseException as error:  # the turn records it and raises it again
            reply = error
        step = advance(steps, reply)
    return step.result


async def arun_turn(
    client: openai.AsyncOpenAI,
    request: dict[str, Any],
    *,
    callbacks: Callbacks | None = None,
    policy: TurnPolicy | None = None,
    trace: str | os.PathLike[str] | None = None,
    interrupt: threading.Event | Callable[[], bool] | None = None,
) -> TurnResult:
    """`run_turn` for `openai.AsyncOpenAI`: same arguments, same machines, same result, same
    trace format."""
    options = TurnOptions(callbacks=callbacks, policy=policy, trace=trace, interrupt=interrupt)
    turn = start_turn(client, request, options, entry="arun_turn")
    driver = _LoopDriver(turn.client, turn.request)
    return await _drive(turn.steps(blind_while_busy=True), driver)
