"""`run_turn`: one turn over the network with a synchronous `openai.OpenAI` client.

Each attempt is a real request made with the openai client; the driver reads the response body as
raw bytes (stream attempts through `responses.with_streaming_response.create`, the fallback through
`responses.create(stream=True)` and that stream's HTTP response), so the machines see exactly the
bytes and chunk boundaries the server sent.

The request is sent and its body read on a small reader thread that hands every observation,
stamped with its arrival time, over a queue; the caller's thread carries out the shared turn loop
(`engine.drivers.turn_loop`), waiting on that queue with a short timeout, so an interrupt is
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

import queue
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator, Unpack

import openai

from engine.drivers.arguments import TurnOptions
from engine.drivers.background import cancel_arguments, resume_arguments
from engine.drivers.recording import AttemptFeed
from engine.drivers.transport import observation_of
from engine.drivers.turn_loop import Reply, Stamped, drive, stamped, start_turn
from engine.drivers.watchdog import next_within
from machines.records import Chunk, EndOfStream, TurnResult

__all__ = ["run_turn"]

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


class _ThreadDriver:
    """Carries out a turn's steps on the caller's thread, one reader thread per attempt."""

    __slots__ = ("_client", "_request", "_reader")

    def __init__(self, client: Any, request: dict[str, Any]) -> None:
        self._client = client
        self._request = request
        self._reader: _AttemptReader | None = None

    def wait(self, seconds: float) -> Reply:
        reader = self._reader
        return next_within(reader.items, seconds) if reader is not None else None

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def open(self, feed: AttemptFeed) -> None:
        self._reader = _AttemptReader(self._client, self._request, feed.kind, feed.resume_point)

    def close(self, grace_s: float) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.finish(grace_s)

    def cancel(self, response_id: str) -> None:
        """Cancel a background response the turn gave up (best effort: the turn has its
        outcome already, and a cancel that fails changes nothing of it)."""
        try:
            self._client.responses.cancel(response_id, **cancel_arguments(self._request))
        except Exception:  # the network's or the server's doing; the response may be gone already
            pass


def run_turn(
    client: openai.OpenAI, request: dict[str, Any], **options: Unpack[TurnOptions]
) -> TurnResult:
    """Run one turn: stream attempts with retries, then a fallback, as the policy allows.

    Options (keyword only, `engine.drivers.arguments.TurnOptions`): `callbacks`, `policy`,
    `trace`, `interrupt`. Returns a `TurnResult` for anything the server or network does;
    raises `TypeError` / `ValueError` only for a wrong call (an unknown option too)."""
    turn = start_turn(client, request, options, entry="run_turn")
    return drive(turn.steps(), _ThreadDriver(turn.client, turn.request))
