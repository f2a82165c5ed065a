"""The seed runtime's streaming functions, with the same signatures, driven by streamfsm's machines.

Agent runtimes that call the seed's `run_codex_stream(agent, api_kwargs, client=None,
on_first_delta=None)` and `run_codex_create_stream_fallback(agent, api_kwargs, client=None)` switch
by changing one import:

    from engine.compat import run_codex_stream, run_codex_create_stream_fallback

The seed's third function, `run_codex_app_server_turn(agent, *, user_message, ...)`, hands a
whole turn to a `codex app-server` subprocess (`engine.CodexSession`); it lives in
`engine.compat.app_server` and is re-exported here.

Theory of operation
===================

A call is one turn, run like every other turn (`engine.drivers.recording.TurnRecording`): the turn machine
decides the attempts, each attempt's observations go through `AttemptFeed`, and the event log is
written as a standard trace when one is asked for, which `engine.replay` replays like a native
turn. Only the I/O is the seed's:

* a stream attempt calls `client.responses.stream(**api_kwargs)` and enters it, as the seed does;
* a resume attempt (a background request, `background=True`, whose stream broke after the
  response's id and a sequence number came) calls `client.responses.retrieve(id, stream=True,
  starting_after=N)`; an interrupted background call then calls `client.responses.cancel(id)`;
* the fallback attempt copies the kwargs, sets `stream=True`, runs the agent transport's
  `preflight_kwargs(..., allow_stream=True)` and calls `client.responses.create(**kwargs)`;
* whatever the SDK hands back (its stream over HTTP, typed events, plain dicts, a final or
  concrete response, exceptions) becomes observations through `engine.compat.sdk_events`, the one
  normalisation; the machines never see an SDK object.

`run_codex_stream` is a turn with the seed's policy (`TurnPolicy()`: two stream attempts, then one
fallback attempt, all in the same turn and the same trace). `run_codex_create_stream_fallback` on
its own is a turn of exactly one attempt (`max_stream_retries=0, fallback=False`) whose request is
the fallback's; the turn machine numbers it as its one stream attempt.

The turn runs the shared turn loop (`engine.drivers.turn_loop`, the same steps as `run_turn`):
the request is sent on the caller's thread, as the seed sends it, then its observations are read
on a small thread that hands them over a queue, and the caller's thread polls the agent's
interrupt flag every 20 ms while waiting. Callbacks, activity refreshes and the machines run on
the caller's thread.

What the call returns or raises follows from the turn's outcome:

    completed / incomplete / failed   the response: the SDK-level object that carried it (the
                                      terminal event's `response`, `get_final_response()`, or a
                                      concrete response from `create`, the last passed through
                                      untouched), its empty output backfilled from what streamed;
                                      built as an `openai.types.responses.Response` when the
                                      response came as bytes
    error, from an `error` frame      `ProviderStreamError` (message, code, param, API-error body)
    error, from an HTTP status        the SDK's `APIStatusError`, as the SDK raised it
    error, from a transport fault     the SDK's exception for it (the fallback's, as in the seed)
    error, no terminal event          `RuntimeError("Responses create(stream=True) fallback did
                                      not emit a terminal response.")`
    interrupted                       `InterruptedError`

An exception that is not a stream condition (any other `RuntimeError`, an error from the agent's
`_touch_activity` or preflight, ...) propagates at once, as in the seed; the trace then holds what
was recorded up to that point and no result. Delta callbacks are fenced like every streamfsm
callback: one that raises is logged and the stream goes on.

Differences from the seed (its known defects, fixed): text already delivered is never delivered
again by a retry; an `error` frame read from the wire ends the turn at once with the provider's
words instead of costing three requests; `response.incomplete` / `response.failed` read from the
wire are returned from the attempt that produced them; an interrupt stops reading within ~20 ms
instead of draining the stream, and raises `InterruptedError`; text stops streaming after every
kind of call the agent must execute (custom tool, local shell, shell and apply_patch calls, as
function calls always did), not after calls the server ran itself; the text of a message labelled
`phase: "commentary"` (a preamble before tool calls) is not streamed as the answer: it goes to the
agent's `_fire_commentary_delta(text)` when it has one, else to `_fire_reasoning_delta(text)`,
else nowhere (it stays in the returned response, phase and all) (docs/migration.md).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable, Protocol, runtime_checkable

import attrs

from engine.drivers.background import cancel_arguments, resume_arguments
from engine.log.eventlog import Callbacks
from engine.log.logs import log
from engine.drivers.recording import AttemptFeed, TurnRecording
from engine.drivers.transport import shut_down, socket_of_response
from engine.log.redaction import client_secrets
from engine.compat.agent_traces import TRACE_DIR_ATTRIBUTE, trace_path
from engine.compat.app_server import run_codex_app_server_turn
from engine.compat.sdk_events import Observation, SdkEventSource, input_of, terminal_frame_of
from engine.drivers.turn_loop import Observation as LoopObservation
from engine.drivers.turn_loop import Reply, drive, turn_steps
from engine.drivers.watchdog import next_within, turn_clock
from machines.output import join_output_text
from machines.records import (
    Chunk,
    EndOfStream,
    Fault,
    InputKind,
    RetryNotice,
    TransportFault,
    TurnPolicy,
    TurnResult,
)
from machines.stream_attempt import StreamAttempt

__all__ = [
    "AgentTransport",
    "CodexAgent",
    "CompatCall",
    "NO_TERMINAL_MESSAGE",
    "ProviderStreamError",
    "TRACE_DIR_ATTRIBUTE",
    "create_stream_fallback_call",
    "run_codex_app_server_turn",
    "run_codex_create_stream_fallback",
    "run_codex_stream",
    "stream_call",
]

#: The seed's policy for `run_codex_stream`: one retry, then the fallback.
STREAM_POLICY = TurnPolicy()
#: `run_codex_create_stream_fallback` on its own: exactly one attempt.
FALLBACK_POLICY = TurnPolicy(max_stream_retries=0, fallback=False)

NO_TERMINAL_MESSAGE = "Responses create(stream=True) fallback did not emit a terminal response."

_ACTIVITY = "receiving stream response"


# -- the agent, as the seed's functions use it -------------------------------------------------
class AgentTransport(Protocol):
    """What `agent._get_transport()` returns: the request preflight of the agent's transport."""

    def preflight_kwargs(self, kwargs: dict[str, Any], *, allow_stream: bool) -> dict[str, Any]:
        """Adjust the request's kwargs before it is sent, as the agent's transport does."""
        ...


@runtime_checkable
class CodexAgent(Protocol):
    """The agent the seed's functions take as first argument: exactly what they use of it.

    Read: `_interrupt_requested` (checked before each attempt and while reading). Called:
    `_touch_activity("receiving stream response")` per event (per chunk when reading bytes),
    `_fire_stream_delta(text)` / `_fire_reasoning_delta(text)` for deltas that reach the user
    (and, when the agent has it, `_fire_commentary_delta(text)` for commentary),
    `_ensure_primary_openai_client(reason=...)` when no client is passed,
    `_get_transport().preflight_kwargs(kwargs, allow_stream=True)` before the fallback request,
    `_client_log_context()` in warnings. Written, as the seed writes them:
    `_codex_stream_last_event_ts` (time of the latest event) and `_codex_streamed_text_parts` (the
    text delivered this turn).

    `_get_transport`, `_client_log_context` and `_fire_commentary_delta` may be missing (no
    preflight, no log context, commentary to the reasoning callback); everything else is
    required, as in the seed."""

    _interrupt_requested: bool

    def _touch_activity(self, message: str) -> None:
        ...

    def _fire_stream_delta(self, text: str) -> None:
        ...

    def _fire_reasoning_delta(self, text: str) -> None:
        ...

    def _ensure_primary_openai_client(self, *, reason: str) -> Any:
        ...

    def _get_transport(self) -> AgentTransport:
        ...

    def _client_log_context(self) -> str:
        ...


# -- what a call raises for an error frame -----------------------------------------------------
class ProviderStreamError(Exception):
    """The provider's error, sent as an `error` frame in the stream.

    Shaped like the openai SDK's API errors so existing summarisers read it: `message`, `code`,
    `param`, `status_code` (None: the HTTP status was 200) and `body`
    (`{"error": {"message", "code", "param", "type"}}`)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = "error",
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.status_code = status_code
        self.body: dict[str, Any] = {
            "error": {"message": message, "code": code, "param": param, "type": type}
        }

    @classmethod
    def from_error(cls, error: dict[str, Any] | None) -> "ProviderStreamError":
        """The exception for a turn's error dict (the provider's own words)."""
        error = error or {}
        message = error.get("message")
        text = message.strip() if isinstance(message, str) else ""
        return cls(
            text or "stream emitted error event",
            code=_str_or_none(error.get("code")),
            param=_str_or_none(error.get("param")),
            type=_str_or_none(error.get("type")) or "error",
        )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else (None if value is None else str(value))


# -- what a call did --------------------------------------------------------------------------
@attrs.frozen(slots=True)
class CompatCall:
    """One compat call: the turn as every driver reports it, and what the seed's function returns
    (`value`) or raises (`raised`). `unwrap()` does the seed's thing."""

    result: TurnResult
    value: Any = None
    raised: BaseException | None = None
    trace: str | None = None

    def unwrap(self) -> Any:
        """What the seed's function returns: the response, or the exception it raises."""
        if self.raised is not None:
            raise self.raised
        return self.value


# -- public functions -------------------------------------------------------------------------
def run_codex_stream(
    agent: CodexAgent,
    api_kwargs: dict[str, Any],
    client: Any = None,
    on_first_delta: Callable[[], Any] | None = None,
    *,
    trace: str | os.PathLike[str] | None = None,
    on_retry: Callable[[RetryNotice], Any] | None = None,
) -> Any:
    """Stream one Responses request (retry once, then fall back) and return the final response.

    The seed's signature and return shape; `trace=` (keyword only) records the call, and
    `on_retry=` (keyword only) hears an `engine.RetryNotice` before each attempt after the
    first (a UI's "Reconnecting... 2/3")."""
    return stream_call(agent, api_kwargs, client, on_first_delta, trace=trace,
                       on_retry=on_retry).unwrap()


def run_codex_create_stream_fallback(
    agent: CodexAgent,
    api_kwargs: dict[str, Any],
    client: Any = None,
    *,
    trace: str | os.PathLike[str] | None = None,
    on_retry: Callable[[RetryNotice], Any] | None = None,
) -> Any:
    """The seed's fallback: one `responses.create(stream=True)` request, its terminal response
    (`on_retry=` hears each HTTP retry of it)."""
    return create_stream_fallback_call(agent, api_kwargs, client, trace=trace,
                                       on_retry=on_retry).unwrap()


def stream_call(
    agent: CodexAgent,
    api_kwargs: dict[str, Any],
    client: Any = None,
    on_first_delta: Callable[[], Any] | None = None,
    *,
    trace: str | os.PathLike[str] | None = None,
    on_retry: Callable[[RetryNotice], Any] | None = None,
) -> CompatCall:
    """`run_codex_stream`, reporting the turn instead of returning/raising its result."""
    active = client or agent._ensure_primary_openai_client(reason="codex_stream_direct")
    call = _CompatTurn(
        agent, active, api_kwargs, on_first_delta, STREAM_POLICY, "run_codex_stream", trace,
        on_retry,
    )
    return call.run()


def create_stream_fallback_call(
    agent: CodexAgent,
    api_kwargs: dict[str, Any],
    client: Any = None,
    *,
    trace: str | os.PathLike[str] | None = None,
    on_retry: Callable[[RetryNotice], Any] | None = None,
) -> CompatCall:
    """`run_codex_create_stream_fallback`, reporting the turn instead of returning/raising."""
    active = client or agent._ensure_primary_openai_client(reason="codex_create_stream_fallback")
    call = _CompatTurn(
        agent, active, api_kwargs, None, FALLBACK_POLICY, "run_codex_create_stream_fallback", trace,
        on_retry,
    )
    return call.run()


# -- one call ---------------------------------------------------------------------------------
#: How long closing an attempt waits for its reader thread once its connection is shut down.
READER_JOIN_S = 1.0


class _ObservationReader:
    """Iterates a source on a daemon thread; the caller takes observations from `items`, in the
    vocabulary of the shared turn loop (`engine.drivers.turn_loop`).

    `finish(grace_s)` ends it the way `run_turn` ends its reader: `grace_s` for it to read the
    body to its end (the connection goes back to the pool), then the connection's socket is shut
    down (a read blocked on it returns: closing it from this thread alone would leave the
    connection open, and the thread blocked, until the server sent more), the source closed, and
    the thread joined. A source with no socket (a test double, a custom transport) is closed and
    left to end by itself, as before."""

    def __init__(self, source: SdkEventSource) -> None:
        self.items: queue.SimpleQueue[LoopObservation] = queue.SimpleQueue()
        self._source = source
        self._thread = threading.Thread(target=self._run, name="streamfsm-sdk-events", daemon=True)
        self._thread.start()

    def finish(self, grace_s: float) -> None:
        thread = self._thread
        if grace_s > 0:
            thread.join(grace_s)
        sock = socket_of_response(self._source.http_response) if thread.is_alive() else None
        if sock is not None:
            shut_down(sock)
        self._source.close()
        if sock is not None:  # its read ends now; a source without a socket ends by itself
            thread.join(READER_JOIN_S)

    def _run(self) -> None:
        put = self.items.put
        try:
            for observed in self._source:
                put(Chunk(observed) if isinstance(observed, bytes) else observed)
            # Every source ends with an observation that ends the attempt; this is a safety net.
            put(EndOfStream())
        except BaseException as error:  # handed to the caller's thread, raised there
            put(error)


class _CompatTurn:
    def __init__(
        self,
        agent: Any,
        client: Any,
        api_kwargs: dict[str, Any],
        on_first_delta: Callable[[], Any] | None,
        policy: TurnPolicy,
        function: str,
        trace: str | os.PathLike[str] | None,
        on_retry: Callable[[RetryNotice], Any] | None = None,
    ) -> None:
        self.agent = agent
        self.client = client
        self.api_kwargs = api_kwargs
        self.function = function
        self.fallback_only = function == "run_codex_create_stream_fallback"
        self.trace = trace_path(agent, trace, function)
        self.now = turn_clock()
        self.sources: dict[int, SdkEventSource] = {}
        self.concrete: dict[int, Any] = {}
        self.errors: dict[int, BaseException] = {}
        #: attempts whose request was sent (an interrupt may retire one before)
        self.opened: set[int] = set()
        self._items: queue.SimpleQueue[LoopObservation] | None = None
        self._reader: _ObservationReader | None = None
        self._source: SdkEventSource | None = None
        self._number = 0
        self._manager: Any = None
        self.delivered: list[str] = []
        if not self.fallback_only:
            agent._codex_streamed_text_parts = self.delivered
        fire_reasoning = getattr(agent, "_fire_reasoning_delta", None)
        reasoning = fire_reasoning if callable(fire_reasoning) else None
        callbacks = Callbacks(
            on_first_delta=on_first_delta if callable(on_first_delta) else None,
            on_text_delta=self._deliver_text,
            on_reasoning_delta=reasoning,
            on_commentary_delta=_commentary_consumer(agent, reasoning),
            on_retry=on_retry if callable(on_retry) else None,
        )
        self.recording = TurnRecording(
            policy,
            callbacks,
            entry="run_turn",
            request=api_kwargs if isinstance(api_kwargs, dict) else None,
        )
        self.recording.header["compat"] = function

    # -- agent plumbing --------------------------------------------------------------------
    def _interrupted(self) -> bool:
        return bool(getattr(self.agent, "_interrupt_requested", False))

    def _deliver_text(self, text: str) -> None:
        self.delivered.append(text)
        self.agent._fire_stream_delta(text)

    def _touch(self) -> None:
        agent = self.agent
        agent._codex_stream_last_event_ts = time.time()
        agent._touch_activity(_ACTIVITY)

    def _log_context(self) -> str:
        context = getattr(self.agent, "_client_log_context", None)
        try:
            return str(context()) if callable(context) else ""
        except Exception:
            return ""

    # -- the turn: the shared turn loop's steps, carried out with the seed's I/O ---------------
    def run(self) -> CompatCall:
        try:
            secrets = client_secrets(self.client)
        except Exception:
            secrets = []
        steps = turn_steps(
            self.recording, self._interrupted, self.now,
            idle_timeout_s=None, trace=self.trace, secrets=secrets,
        )
        return self._outcome(drive(steps, self))

    def wait(self, seconds: float) -> Reply:
        """The reader's next observation within `seconds`; every chunk refreshes the agent's
        activity."""
        items = self._items
        item = next_within(items, seconds) if items is not None else None
        if type(item) is Chunk:
            self._touch()
        return item

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def open(self, feed: AttemptFeed) -> None:
        """Send the attempt's request the seed's way, on the caller's thread; its observations
        are then read on a thread (`_ObservationReader`). A request that fails, or a concrete
        response, is fed to the attempt here."""
        self.opened.add(feed.number)
        if feed.kind == "fallback" or self.fallback_only:
            self._fallback_attempt(feed)
        elif feed.resume_point is not None:
            self._resume_attempt(feed, feed.resume_point)
        else:
            self._stream_attempt(feed)

    def close(self, grace_s: float) -> None:
        """Close what the attempt opened: its reader and source (`_ObservationReader.finish`;
        the source's error kept for what the call raises), then the stream manager."""
        source, number, manager, reader = self._source, self._number, self._manager, self._reader
        self._source = self._manager = self._items = self._reader = None
        if reader is not None:
            reader.finish(grace_s)
        if source is not None:
            if source.error is not None:
                self.errors[number] = source.error
            source.close()
        leave = getattr(manager, "__exit__", None)
        if callable(leave):
            try:
                leave(None, None, None)
            except Exception:  # closing a finished or broken stream: nothing left to save
                pass

    def cancel(self, response_id: str) -> None:
        """Cancel the background response an interrupted call leaves (best effort)."""
        try:
            self.client.responses.cancel(response_id, **cancel_arguments(self.api_kwargs))
        except Exception:  # the response may be gone already; the call's outcome stands
            pass

    def _stream_attempt(self, feed: AttemptFeed) -> None:
        try:
            manager = self.client.responses.stream(**self.api_kwargs)
            enter = getattr(manager, "__enter__", None)
            stream = enter() if callable(enter) else manager
        except Exception as error:
            self._opening_failed(feed, error)
            return
        self._manager = manager
        self._read(feed, SdkEventSource(stream, final_response=True))

    def _fallback_attempt(self, feed: AttemptFeed) -> None:
        kwargs = dict(self.api_kwargs)
        kwargs["stream"] = True
        get_transport = getattr(self.agent, "_get_transport", None)
        if callable(get_transport):
            kwargs = get_transport().preflight_kwargs(kwargs, allow_stream=True)
        try:
            opened = self.client.responses.create(**kwargs)
        except Exception as error:
            self._opening_failed(feed, error)
            return
        if hasattr(opened, "output") or not hasattr(opened, "__iter__"):
            # A concrete response (mocks, some providers): returned as is, recorded as the
            # terminal frame that carries it.
            self.concrete[feed.number] = opened
            self._observe(feed, terminal_frame_of(opened))
            return
        self._read(feed, SdkEventSource(opened))

    def _resume_attempt(self, feed: AttemptFeed, point: tuple[str, int]) -> None:
        """Continue a broken background response: `client.responses.retrieve(id, stream=True,
        starting_after=N)`, read like the fallback's stream."""
        response_id, arguments = resume_arguments(self.api_kwargs, point)
        try:
            opened = self.client.responses.retrieve(response_id, **arguments)
        except Exception as error:
            self._opening_failed(feed, error)
            return
        self._read(feed, SdkEventSource(opened))

    def _read(self, feed: AttemptFeed, source: SdkEventSource) -> None:
        """Start reading `source` on a thread; `wait` hands its observations to the turn."""
        self.sources[feed.number] = source
        self._source, self._number = source, feed.number
        self._reader = _ObservationReader(source)
        self._items = self._reader.items

    def _opening_failed(self, feed: AttemptFeed, error: Exception) -> None:
        observed = input_of(error, opening=True)
        if observed is None:
            raise error
        if isinstance(observed, TransportFault) and observed.kind == Fault.CONNECT_ERROR:
            # The seed retries a request that could not be sent like a broken stream (another
            # stream attempt, then the fallback), not on an HTTP retry budget of its own.
            observed = TransportFault(Fault.DROP, observed.detail)
        self.errors[feed.number] = error
        self._observe(feed, observed)

    def _observe(self, feed: AttemptFeed, observed: Observation) -> None:
        """Feed one observation that ends the attempt."""
        t = self.now()
        if isinstance(observed, bytes):
            if not feed.chunk(observed, t):
                feed.end(self.now())
        elif isinstance(observed, EndOfStream):
            feed.end(t)
        else:
            feed.fail(observed, t)

    # -- what the call returns or raises -----------------------------------------------------
    def _outcome(self, result: TurnResult) -> CompatCall:
        last = self.recording.turn.attempts[-1]
        trace = os.fspath(self.trace) if self.trace is not None else None
        if result.outcome == "interrupted":
            sent = last.number in self.opened
            where = "during Codex stream" if sent else "before Codex stream retry"
            return CompatCall(result, raised=InterruptedError(f"Agent interrupted {where}"), trace=trace)
        if result.outcome in ("completed", "incomplete", "failed"):
            if result.outcome != "completed":
                self._warn_unfinished(result, last)
            return CompatCall(result, value=self._response(last, result), trace=trace)
        return CompatCall(result, raised=self._error(last, result), trace=trace)

    def _response(self, last: StreamAttempt, result: TurnResult) -> Any:
        number = last.number
        if number in self.concrete:
            return self.concrete[number]
        final = result.response
        if final is None:
            final = {"status": result.outcome, "output": last.partial_items()}
        source = self.sources.get(number)
        carried = source.response if source is not None else None
        if carried is None:
            return _response_object(final)
        return _backfilled(carried, final.get("output") or [])

    def _error(self, last: StreamAttempt, result: TurnResult) -> BaseException:
        if last.reason == "error_frame":
            return ProviderStreamError.from_error(result.error)
        saved = self.errors.get(last.number)
        if saved is not None:
            return saved
        if last.reason == InputKind.EOF:
            return RuntimeError(NO_TERMINAL_MESSAGE)
        return ProviderStreamError.from_error(result.error)

    def _warn_unfinished(self, result: TurnResult, last: StreamAttempt) -> None:
        response = result.response or {}
        log.warning(
            "Codex Responses stream received a terminal event other than response.completed",
            function=self.function,
            terminal_event=f"response.{result.outcome}",
            status=response.get("status"),
            incomplete_details=response.get("incomplete_details"),
            streamed_chars=sum(len(piece) for piece in self.delivered),
            attempt=last.number,
            client=self._log_context(),
        )


# -- helpers ----------------------------------------------------------------------------------
def _commentary_consumer(agent: Any, reasoning: Callable[[str], Any] | None) -> Callable[[str], Any]:
    """Where the agent's commentary goes, never into the streamed answer: its own
    `_fire_commentary_delta`, else its reasoning callback, else nowhere."""
    fire = getattr(agent, "_fire_commentary_delta", None)
    if callable(fire):
        return fire  # type: ignore[no-any-return]
    return reasoning if reasoning is not None else _ignored


def _ignored(text: str) -> None:
    """A commentary delta the agent has no place for (the response still holds it)."""


def _response_object(final: dict[str, Any]) -> Any:
    """An `openai.types.responses.Response` over the machine's final response (attribute access,
    `.output_text`), built without validation like the SDK builds what it receives."""
    from openai._models import construct_type
    from openai.types.responses import Response

    return construct_type(type_=Response, value=final)


def _backfilled(response: Any, output: list[dict[str, Any]]) -> Any:
    """`response` with its empty or missing output replaced by `output` (as the seed does)."""
    if isinstance(response, dict):
        if not response.get("output") and output:
            response["output"] = output
        return response
    current = getattr(response, "output", None)
    if (isinstance(current, list) and current) or not output:
        return response
    from openai._models import construct_type
    from openai.types.responses import ResponseOutputItem

    try:
        response.output = [construct_type(type_=ResponseOutputItem, value=item) for item in output]
    except Exception:  # a frozen or slotted object: hand it back as it came
        return response
    if not _has_output_text_property(response) and not getattr(response, "output_text", None):
        try:
            response.output_text = join_output_text(output)
        except Exception:
            pass
    return response


def _has_output_text_property(response: Any) -> bool:
    return isinstance(getattr(type(response), "output_text", None), property)
