"""`run_turn`: one turn over the network with a synchronous `openai.OpenAI` client.

Each attempt is a real request made with the openai client; the driver reads the response body as
raw bytes (stream attempts through `responses.with_streaming_response.create`, the fallback through
`responses.create(stream=True)` and that stream's HTTP response), so the machines see exactly the
bytes and chunk boundaries the server sent.

The request is sent and its body read on a small reader thread that hands every observation,
stamped with its arrival time, over a queue; the caller's thread carries out the shared turn loop
(`engine.drivers.turn_loop`), waiting on that queue with a short timeout, so an interrupt is
honoured within ~20 ms and an idle timeout fires on time while the server is silent, before or
after the response headers. Callbacks run on the caller's thread. The queue holds at most
`READ_AHEAD` reads: a reader faster than the turn waits for it (the rest stays in the socket, and
the server is held back by TCP), so a long answer from a fast server is never held in memory
whole.

Theory of operation: the reader's socket
========================================

No reader outlives its attempt. When the attempt ends on what the server sent (a terminal event),
the reader gets a moment to read the body to its end, so the connection goes back to the client's
pool; otherwise (an interrupt, an idle timeout, a server that keeps the body open) the caller's
thread shuts the connection's socket down, which ends the reader's blocked read at once and tells
the server the connection is closed, and joins the reader.

The socket is the one the HTTP library hands over through its documented hooks, never looked for
in another thread's frames:

* once the response headers are in, the response's `network_stream` extension names it;
* before that, the request carries httpcore's `trace` extension: `connect_tcp` / `start_tls`
  (and their proxy forms) hand over each network stream as soon as the connection is made. The
  extension is set by an httpx `request` event hook (`_trace_reader_requests`) installed once on
  the openai client's HTTP client; it does nothing for a request that is not sent from one of
  these reader threads (a context variable names the reader), and chains a trace callback the
  request already had, so the user's own hooks, extensions, proxies and transports keep working;
* every step of the trace before the request is answered (connecting, TLS, sending the headers
  and the body, starting to wait for the answer) is also a point where an attempt already given
  up stops its request: nothing more is sent, and a socket made after the attempt was given up
  is shut down at once.

What no hook hands over is a socket whose TCP connect is still under way (the caller waits a
moment for it, and the reader shuts it down as soon as the connect completes), and a kept-alive
connection taken from the pool, until its answer's headers come: its request is stopped if the
attempt was given up before it was sent, and otherwise left to end by itself (the reader then
closes the response, and with it the connection, as soon as the headers come; the attempt itself
ended on time). A transport without a socket (a mock, a custom transport) is left to end by
itself after the same short wait.
"""

from __future__ import annotations

import contextvars
import os
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from engine.drivers.arguments import TurnOptions
from engine.drivers.background import cancel_arguments, resume_arguments
from engine.drivers.recording import AttemptFeed
from engine.log.eventlog import Callbacks
from engine.drivers.transport import observation_of, shut_down, socket_of
from engine.drivers.turn_loop import Reply, Stamped, drive, stamped, start_turn
from engine.drivers.watchdog import next_within
from machines.records import Chunk, EndOfStream, TurnPolicy, TurnResult

if TYPE_CHECKING:
    import openai

__all__ = ["run_turn"]

#: How long the caller waits for a reader it has stopped, or that stops by itself (seconds).
JOIN_S = 1.0

#: Network reads a reader may hand over before the turn has taken them: the window of the body
#: held in memory (a read is at most 64 KiB).
READ_AHEAD = 32

#: How often a reader waiting for room in a full queue looks whether it is still wanted (s).
_ROOM_POLL_S = 0.02

#: The steps of httpcore's trace at which a request of an abandoned attempt is stopped: each is
#: announced (`.started`) before it does anything on the network.
_STOP_POINTS = frozenset(
    {
        "connect_tcp",
        "connect_unix_socket",
        "start_tls",
        "setup_socks5_connection",
        "retry",
        "send_connection_init",
        "send_request_headers",
        "send_request_body",
        "receive_response_headers",
    }
)

#: The reader whose thread is sending the current request (unset on every other thread).
_READER: contextvars.ContextVar[_AttemptReader] = contextvars.ContextVar("streamfsm_reader")
_HOOK_LOCK = threading.Lock()


class _AttemptAbandoned(Exception):
    """Raised inside the HTTP library to stop the request of an attempt already given up."""


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
        self.items: queue.Queue[Stamped] = queue.Queue(READ_AHEAD)
        self._lock = threading.Lock()
        #: the caller has given the attempt up
        self._abandoned = False
        #: the caller takes nothing more (the attempt is over): what is read is dropped
        self._discarding = False
        #: the socket the request travels on, once the HTTP library has handed it over
        self._socket: socket.socket | None = None
        #: the request went out on a connection whose socket was not handed over (a kept-alive
        #: connection from the pool, before its answer's headers)
        self._unseen = False
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
        _READER.set(self)  # this thread's context only: its requests get the trace extension
        put = self._hand_over
        try:
            body, close, http_response = _open_stream(client, request, kind, resume_point)
        except BaseException as error:  # handed to the caller's thread, classified there
            put(stamped(observation_of(error, opening=True) or error))
            return
        try:
            with self._lock:
                if self._abandoned:
                    return  # the caller gave up while the headers were on their way
                named = socket_of(http_response.extensions.get("network_stream"))
                self._socket = named or self._socket
            for chunk in body:
                if chunk and not put(stamped(Chunk(chunk))):
                    return  # given up while the queue was full
            put(stamped(EndOfStream()))
        except BaseException as error:
            put(stamped(observation_of(error, opening=False) or error))
        finally:
            with self._lock:
                self._socket = None
            # the body's iterator first (one left unfinished would hold the stream until the
            # garbage collector came), then the response
            _close_quietly(getattr(body, "close", _nothing))
            _close_quietly(close)

    def _hand_over(self, item: Stamped) -> bool:
        """Put `item` on the queue, waiting while it is full; False when the attempt was given
        up meanwhile (the reader then stops)."""
        items = self.items
        while True:
            if self._discarding:
                return not self._abandoned
            try:
                items.put(item, timeout=_ROOM_POLL_S)
                return True
            except queue.Full:
                if self._abandoned:
                    return False

    def _discard(self) -> None:
        """The caller takes nothing more: drop what is queued, and what is read from now on."""
        self._discarding = True
        while True:
            try:
                self.items.get_nowait()
            except queue.Empty:
                return

    def traced(self, theirs: Callable[[str, dict[str, Any]], Any] | None) -> Callable[..., None]:
        """The `trace` extension for this reader's request, after the one it had (`theirs`)."""

        def trace(event: str, info: dict[str, Any]) -> None:
            if theirs is not None:
                theirs(event, info)
            self._traced(event, info)

        return trace

    def _traced(self, event: str, info: dict[str, Any]) -> None:
        """One step of the request inside httpcore (`<part>.<step>.started|complete|failed`)."""
        where, _, phase = event.rpartition(".")  # "http11.send_request_headers", "started"
        step = where.rpartition(".")[2]
        sock = socket_of(info.get("return_value")) if phase == "complete" else None
        with self._lock:
            if sock is not None:
                self._socket = sock
            elif step == "send_request_headers" and self._socket is None:
                self._unseen = True
            abandoned = self._abandoned
        if abandoned:
            if sock is not None:
                shut_down(sock)
            if phase == "started" and step in _STOP_POINTS:
                raise _AttemptAbandoned()

    def finish(self, grace_s: float) -> None:
        """End the reader: after `grace_s` for it to read the body to its end, give the attempt
        up, shut its connection down (ending a blocked read, or a request still waiting for its
        headers) and join it. A request that has no socket yet stops at its next step; one sent
        on a connection no hook named is left to end by itself."""
        thread = self._thread
        self._discard()
        if grace_s > 0:
            thread.join(grace_s)
        if not thread.is_alive():
            return
        with self._lock:
            self._abandoned = True
            sock = self._socket
            unseen = self._unseen and sock is None
        if sock is not None:
            shut_down(sock)
        if not unseen:
            thread.join(JOIN_S)


def _trace_reader_requests(request: Any) -> None:
    """httpx `request` event hook: a request sent from a reader thread gets the reader's trace
    callback as its `trace` extension; every other request is left as it is."""
    reader = _READER.get(None)
    if reader is not None:
        extensions = request.extensions
        extensions["trace"] = reader.traced(extensions.get("trace"))


def _watch_requests(client: Any) -> None:
    """Install `_trace_reader_requests` on the client's HTTP client, once. Without an httpx
    client there (a client of another make) the readers find their socket only in the response."""
    hooks = getattr(getattr(client, "_client", None), "event_hooks", None)
    if not isinstance(hooks, dict):
        return
    with _HOOK_LOCK:
        requests = hooks.get("request")
        if isinstance(requests, list) and _trace_reader_requests not in requests:
            requests.append(_trace_reader_requests)


def _nothing() -> None:
    """Nothing to close."""


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
    client: openai.OpenAI,
    request: dict[str, Any],
    *,
    callbacks: Callbacks | None = None,
    policy: TurnPolicy | None = None,
    trace: str | os.PathLike[str] | None = None,
    interrupt: threading.Event | Callable[[], bool] | None = None,
) -> TurnResult:
    """Run one turn: stream attempts with retries, then a fallback, as the policy allows.

    `request`: the keyword arguments of `client.responses.create` (the engine sets `stream`).
    `callbacks` hear the answer as it streams; `policy` says how hard the turn tries (default
    `TurnPolicy()`); `trace` is a path the turn is recorded to; `interrupt` (a
    `threading.Event`, or a zero-argument callable) stops the turn promptly when set. Returns a
    `TurnResult` for anything the server or network does; raises `TypeError` / `ValueError`
    only for a wrong call."""
    options = TurnOptions(callbacks=callbacks, policy=policy, trace=trace, interrupt=interrupt)
    turn = start_turn(client, request, options, entry="run_turn")
    _watch_requests(turn.client)
    return drive(turn.steps(), _ThreadDriver(turn.client, turn.request))
