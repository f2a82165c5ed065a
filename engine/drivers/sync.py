"""`run_turn`: one turn over the network with a synchronous `openai.OpenAI` client.

Each attempt is a real request made with the openai client; the driver reads the response body as
raw bytes (stream attempts through `responses.with_streaming_response.create`, the fallback through
`responses.create(stream=True)` and that stream's HTTP response), so the machines see exactly the
bytes and chunk boundaries the server sent.

The request is sent and its body read on a small reader thread that hands every observation,
stamped with its arrival time, over a queue; the caller's thread runs the shared attempt loop
(`engine.drivers.attempt_loop`), waiting on that queue with a short timeout, so an interrupt is
honoured within ~20 ms and an idle timeout fires on time while the server is silent, before or
after the response headers. Callbacks run on the caller's thread.

No reader outlives its attempt. When the attempt ends on what the server sent (a terminal event),
the reader gets a moment to read the body to its end, so the connection goes back to the client's
pool; otherwise (an interrupt, an idle timeout, a server that keeps the body open) the caller's
thread shuts the connection's socket down, which ends the reader's blocked read at once and
tells the server the connection is closed, and joins the reader. A request still waiting for its
response headers is aborted the same way: its socket is the one the reader thread is blocked on.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator

import openai

from engine.drivers.attempt_loop import (
    Stamped,
    attempt_loop,
    pause_slices,
    stamped,
    start_turn,
)
from engine.drivers.watchdog import Watchdog
from engine.drivers.background import cancel_arguments, resume_arguments
from engine.drivers.recording import AttemptFeed
from engine.drivers.transport import observation_of
from engine.log.eventlog import Callbacks
from machines.records import Chunk, EndOfStream, Interrupt, TurnPolicy, TurnResult

__all__ = ["run_turn"]

#: How long a reader may take to read the rest of a body after its terminal event (seconds).
FINISH_GRACE_S = 0.1
#: How long the caller keeps shutting a reader's connection down and waiting for it (seconds).
JOIN_S = 1.0
#: How often it looks again for the socket of a request that has none yet (seconds).
SHUT_DOWN_POLL_S = 0.01


class _AttemptReader:
    """Sends one attempt's request and iterates its body on a daemon thread.

    Everything it observes goes to `items`, stamped with its arrival time: chunks, the clean end,
    what an exception from opening or reading stands for. The caller's thread waits on that
    queue, so it can stop the attempt (interrupt, idle timeout) at any moment, even before the
    response headers arrive; `finish()` then makes sure the thread ends and the connection is
    either back in the pool with its body read, or closed."""

    def __init__(
        self,
        client: Any,
        request: dict[str, Any],
        kind: str,
        resume_point: tuple[str, int] | None = None,
    ) -> None:
        self.items: queue.SimpleQueue[Stamped] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._abandoned = False
        #: "opening" until the response headers arrive, "reading" the body, then "done"
        self._phase = "opening"
        #: the socket of the response being read, when the HTTP library names it
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(client, request, kind, resume_point),
            name="streamfsm-body",
            daemon=True,
        )
        self._thread.start()

    def _run(
        self,
        client: Any,
        request: dict[str, Any],
        kind: str,
        resume_point: tuple[str, int] | None,
    ) -> None:
        put = self.items.put
        try:
            body, close, http_response = _open_stream(client, request, kind, resume_point)
        except BaseException as error:  # handed to the caller's thread, classified there
            with self._lock:
                self._phase = "done"
            put(stamped(observation_of(error, opening=True) or error))
            return
        try:
            with self._lock:
                self._phase = "reading"
                if self._abandoned:
                    return  # the caller gave up while the headers were on their way
                self._socket = _socket_of_response(http_response)
            for chunk in body:
                if chunk:
                    put(stamped(Chunk(chunk)))
            put(stamped(EndOfStream()))
        except BaseException as error:
            put(stamped(observation_of(error, opening=False) or error))
        finally:
            with self._lock:
                self._phase = "done"
                self._socket = None
            _close_quietly(close)

    def finish(self, grace_s: float) -> None:
        """End the reader: after `grace_s` for it to read the body to its end, shut its
        connection down (ending a blocked read, or a request still waiting for its headers) and
        join it. A request still being built has no socket yet: it is shut down as soon as it
        has one."""
        thread = self._thread
        if grace_s > 0:
            thread.join(grace_s)
        if not thread.is_alive():
            return
        with self._lock:
            self._abandoned = True
        deadline = time.monotonic() + JOIN_S
        while thread.is_alive() and time.monotonic() < deadline:
            with self._lock:
                sock = self._socket
                opening = self._phase == "opening"
            if sock is None and opening:
                sock = _socket_in_use(thread)
            if sock is not None:
                _shut_down(sock)
            thread.join(SHUT_DOWN_POLL_S)


def _socket_of_response(http_response: Any) -> socket.socket | None:
    """The socket an httpx response is read from (the `network_stream` extension), if any."""
    try:
        stream = http_response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:  # a transport without a network stream (a mock, a custom transport)
        return None
    return sock if isinstance(sock, socket.socket) else None


def _socket_in_use(thread: threading.Thread) -> socket.socket | None:
    """The socket `thread` is connecting, writing or reading on (a request still waiting for
    its response headers has no response to ask): found in its innermost frames, as a local
    socket or an HTTP library network stream that names its socket. None if there is none
    (resolving a host name, or not in the network at all)."""
    frame = sys._current_frames().get(thread.ident or -1)
    depth = 0
    while frame is not None and depth < 64:
        for value in list(frame.f_locals.values()):
            if isinstance(value, socket.socket):
                return value
            module = type(value).__module__
            if module.startswith(("httpcore", "httpx")) and hasattr(value, "get_extra_info"):
                try:
                    sock = value.get_extra_info("socket")
                except Exception:  # not a network stream after all
                    continue
                if isinstance(sock, socket.socket):
                    return sock
        frame = frame.f_back
        depth += 1
    return None


def _shut_down(sock: socket.socket) -> None:
    """End both directions of `sock`: a read blocked on it returns, the server sees a FIN."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed or never connected
        pass


def _close_quietly(close: Callable[[], Any]) -> None:
    try:
        close()
    except Exception:  # closing a broken stream may fail again; nothing left to save
        pass


def _open_stream(
    client: Any, request: dict[str, Any], kind: str, resume_point: tuple[str, int] | None
) -> tuple[Iterator[bytes], Callable[[], None], Any]:
    """Send the request (a resume: the GET that continues the response); return (body byte
    iterator, close function, httpx response)."""
    if kind == "fallback":
        stream = client.responses.create(**request, stream=True)
        return stream.response.iter_bytes(), stream.close, stream.response
    if resume_point is not None:
        response_id, arguments = resume_arguments(request, resume_point)
        manager = client.responses.with_streaming_response.retrieve(response_id, **arguments)
    else:
        manager = client.responses.with_streaming_response.create(**request, stream=True)
    response = manager.__enter__()
    return (
        response.iter_bytes(),
        lambda: manager.__exit__(None, None, None),
        response.http_response,
    )


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
    watchdog = Watchdog(time.monotonic, interrupted, idle_timeout_s)
    loop = attempt_loop(feed, watchdog, now)
    reader = _AttemptReader(client, request, feed.kind, feed.resume_point)
    get = reader.items.get
    grace_s = 0.0
    try:
        wait_s = next(loop)
        while True:
            try:
                item: Stamped | None = get(timeout=wait_s)
            except queue.Empty:
                item = None
            wait_s = loop.send(item)
    except StopIteration as ended:
        # ended by what the server sent: its body should end right away
        grace_s = 0.0 if ended.value else FINISH_GRACE_S
    finally:
        reader.finish(grace_s)


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
    turn = start_turn(client, request, callbacks, policy, trace, interrupt, entry="run_turn")
    recording = turn.recording
    try:
        for feed in recording.attempts():
            for pause in pause_slices(recording.wait_s, turn.interrupted, turn.now):
                time.sleep(pause)
            _run_attempt(
                turn.client, turn.request, feed, turn.now, turn.interrupted,
                turn.policy.idle_timeout_s,
            )
        for response_id in recording.cancels:
            _cancel(turn.client, turn.request, response_id)
    except BaseException:
        recording.abandon(trace, turn.secrets)
        raise
    return recording.finish(trace, turn.secrets)


def _cancel(client: Any, request: dict[str, Any], response_id: str) -> None:
    """Cancel a background response the turn gave up (best effort: the turn has its outcome
    already, and a cancel that fails changes nothing of it)."""
    try:
        client.responses.cancel(response_id, **cancel_arguments(request))
    except Exception:  # the network's or the server's doing; the response may be gone already
        pass
