"""The stream-attempt machine: one HTTP request's worth of Responses-API server-sent events.

Theory of operation
===================

A turn makes one or more *attempts*; each attempt is one request whose body is an SSE stream.
This machine is fed, in order, everything the driver observed for that request, as records from
`machines.records`: dispatched `SseEvent`s, an `HttpError` status, a `TransportFault`, a clean
`EndOfStream`, an `IdleTimeout`, an `Interrupt`. It never reads a socket, a clock or a flag; that is
why a recorded attempt replays exactly.

States (the `STATES` list) and the rules between them (the `TABLE` below, the only place they are
written; the diagram and docs are generated from it):

    awaiting_created   request sent, no lifecycle frame yet. Prelude frames are absorbed here, in
                       the same request: `response.queued`, `codex.rate_limits` (payload kept as a
                       `rate_limits` effect), unknown names, keepalives, `[DONE]`, bad JSON.
                       `response.created` moves on; so does `response.in_progress` (relays that
                       never send `created`) and any content frame (relays that send neither).
    streaming          answer text flows. Each `response.output_text.delta` is delivered to the
                       user (effect `text_delta`, `first_delta` before the turn's very first one)
                       unless a tool call was seen in this attempt; reasoning deltas are delivered
                       as `reasoning_delta`. Everything is also kept in an `OutputAssembly`.
    tool_call          a function call is being streamed (`output_item.added` of a function_call,
                       or any `*function_call*` frame). From the first such frame on, answer text
                       of this attempt is kept but no longer delivered. When every open call has its
                       `output_item.done`, the machine returns to `streaming`.
    terminal           final: the server ended the response (`response.completed`, `.incomplete`,
                       `.failed`), sent an `error` frame (the provider's words kept verbatim), or
                       answered the request with an HTTP error status. The turn ends with it.
    fallback           final: the byte stream failed (a retryable fault) on the last stream attempt
                       of a turn whose policy allows a fallback; the turn continues with one
                       `create(stream=True)` attempt.
    retire             final: the attempt is abandoned: a retryable fault with stream attempts left
                       (the turn retries), a fault with nothing left (the turn ends in "error"), or
                       an interrupt (the turn ends "interrupted", promptly).

Retryable faults are `drop` (connection lost mid-body), `read_timeout`, `connect_error`,
`idle_timeout` (no byte for the policy's idle time) and `eof` (the body ended cleanly without a
terminal event). A `response.failed` is an outcome, not a fault, unless its error code is listed
in the policy's `retry_failed_codes` (empty by default): then it is treated like a fault.

Text delivery across attempts (a `DeliveryLedger` shared by the turn's attempts): what reached the
user is never delivered again. A retry's text is compared with what was already delivered; only
text past that point is delivered, and if the retry says something else, nothing more of it is
delivered (the result still holds the retry's own text, never a mix of two attempts).

Hot path: in-state events (text, reasoning and argument deltas) are dispatched through a plain
dict of handlers; only events that change state go through a `transitions` trigger.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import orjson
from transitions import Machine

from machines.output import OutputAssembly
from machines.records import (
    EffectKind,
    EndOfStream,
    HttpError,
    IdleTimeout,
    Interrupt,
    MachineInput,
    SseEvent,
    TransportFault,
)

MACHINE = "stream_attempt"

AWAITING_CREATED = "awaiting_created"
STREAMING = "streaming"
TOOL_CALL = "tool_call"
TERMINAL = "terminal"
FALLBACK = "fallback"
RETIRE = "retire"

STATES = [AWAITING_CREATED, STREAMING, TOOL_CALL, TERMINAL, FALLBACK, RETIRE]
LIVE = [AWAITING_CREATED, STREAMING, TOOL_CALL]
FINAL = frozenset({TERMINAL, FALLBACK, RETIRE})

#: Triggers that are byte-stream failures: worth another attempt.
FAULTS = ["drop", "read_timeout", "connect_error", "idle_timeout", "eof"]

TABLE: list[dict[str, Any]] = [
    # the response begins
    {"trigger": "created", "source": AWAITING_CREATED, "dest": STREAMING},
    {"trigger": "in_progress", "source": AWAITING_CREATED, "dest": STREAMING},
    {"trigger": "content", "source": AWAITING_CREATED, "dest": STREAMING},
    # function calls: text stops reaching the user for the rest of the attempt
    {"trigger": "tool_call_started", "source": [AWAITING_CREATED, STREAMING], "dest": TOOL_CALL},
    {"trigger": "tool_calls_done", "source": TOOL_CALL, "dest": STREAMING},
    # the server ends the response: an outcome, not retried
    {"trigger": "completed", "source": LIVE, "dest": TERMINAL},
    {"trigger": "incomplete", "source": LIVE, "dest": TERMINAL},
    {
        "trigger": "failed",
        "source": LIVE,
        "dest": FALLBACK,
        "conditions": ["failure_is_retryable", "hands_over_to_fallback"],
    },
    {"trigger": "failed", "source": LIVE, "dest": RETIRE, "conditions": "failure_is_retryable"},
    {"trigger": "failed", "source": LIVE, "dest": TERMINAL},
    {"trigger": "error_frame", "source": LIVE, "dest": TERMINAL},
    {"trigger": "http_error", "source": LIVE, "dest": TERMINAL},
    # the byte stream fails: retried by the turn, or handed to the fallback
    *(
        row
        for fault in FAULTS
        for row in (
            {
                "trigger": fault,
                "source": LIVE,
                "dest": FALLBACK,
                "conditions": "hands_over_to_fallback",
            },
            {"trigger": fault, "source": LIVE, "dest": RETIRE},
        )
    ),
    # the caller stops the turn
    {"trigger": "interrupt", "source": LIVE, "dest": RETIRE},
]


class AttemptSink(Protocol):
    """Where a machine's decisions go (the engine's event log)."""

    def transition(self, machine: str, attempt: int, source: str, dest: str, trigger: str) -> None:
        ...

    def effect(self, kind: EffectKind, attempt: int, data: Any = None) -> None:
        ...


class DeliveryLedger:
    """Text that reached the user this turn, per channel ("text", "reasoning")."""

    __slots__ = ("pieces", "length")

    def __init__(self) -> None:
        self.pieces: dict[str, list[str]] = {"text": [], "reasoning": []}
        self.length: dict[str, int] = {"text": 0, "reasoning": 0}

    def delivered(self, channel: str) -> str:
        return "".join(self.pieces[channel])


class _Channel:
    """One attempt's view of one delivery channel: in step with the ledger, catching up, or off."""

    __slots__ = ("behind", "seen", "in_step", "diverged")

    def __init__(self, ledger: DeliveryLedger, channel: str) -> None:
        self.behind = ledger.delivered(channel)  # what a retry must first repeat
        self.seen: list[str] = []
        self.in_step = not self.behind
        self.diverged = False

    def catch_up(self, delta: str) -> str:
        """The part of `delta` that is new to the user ("" while repeating delivered text)."""
        if self.diverged:
            return ""
        self.seen.append(delta)
        so_far = "".join(self.seen)
        behind = self.behind
        if len(so_far) <= len(behind):
            if not behind.startswith(so_far):
                self.diverged = True
            return ""
        if not so_far.startswith(behind):
            self.diverged = True
            return ""
        self.in_step = True
        self.seen = []
        return so_far[len(behind) :]


def provider_error(payload: dict[str, Any], default_type: str) -> dict[str, Any]:
    """The provider's error words, verbatim, from a top-level or nested `error` envelope."""
    nested = payload.get("error")
    if isinstance(nested, dict):
        error = dict(nested)
    else:
        error = {k: v for k, v in payload.items() if k not in ("sequence_number",)}
    error.setdefault("message", None)
    error.setdefault("code", None)
    if not error.get("type"):
        error["type"] = default_type
    return error


_loads = orjson.loads


class StreamAttempt:
    """One attempt, as a `transitions` machine over `TABLE`.

    `number` counts attempts within the turn (from 1); `kind` is "stream" or "fallback";
    `hands_over_to_fallback` says whether a fault ends this attempt in `fallback` (the turn
    decides: last stream attempt and fallback allowed); `retry_failed_codes` lists the
    `response.failed` codes treated as faults.
    """

    state: str

    def __init__(
        self,
        number: int,
        kind: str,
        *,
        sink: AttemptSink,
        ledger: DeliveryLedger,
        hands_over_to_fallback: bool = False,
        retry_failed_codes: frozenset[str] = frozenset(),
    ) -> None:
        self.number = number
        self.kind = kind
        self.sink = sink
        self.ledger = ledger
        self._hands_over = hands_over_to_fallback
        self._retry_failed_codes = retry_failed_codes
        self.assembly = OutputAssembly()
        self.tool_call_seen = False
        self.reason = ""
        self.response: dict[str, Any] | None = None  # the terminal event's response
        self.error: dict[str, Any] | None = None
        self.rate_limits: list[Any] = []
        self.undecodable = 0
        self.ignored = 0
        self._text = _Channel(ledger, "text")
        self._reasoning = _Channel(ledger, "reasoning")
        Machine(
            model=self,
            states=STATES,
            transitions=TABLE,
            initial=AWAITING_CREATED,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=True,
            after_state_change="_after_state_change",
        )

    # -- transitions callbacks and conditions -------------------------------------------------
    def _after_state_change(self, event: Any) -> None:
        trigger = event.event.name
        dest = event.transition.dest
        if dest in FINAL:
            self.reason = self.reason or trigger
        self.sink.transition(MACHINE, self.number, event.transition.source, dest, trigger)

    def hands_over_to_fallback(self, event: Any) -> bool:
        return self._hands_over

    def failure_is_retryable(self, event: Any) -> bool:
        return bool(self.error) and self.error.get("code") in self._retry_failed_codes

    @property
    def is_final(self) -> bool:
        return self.state in FINAL

    # -- inputs --------------------------------------------------------------------------------
    def receive(self, item: MachineInput) -> None:
        """Feed one input record."""
        if type(item) is SseEvent:
            self.receive_event(item)
        elif self.state in FINAL:
            return
        elif isinstance(item, TransportFault):
            self.reason = item.kind
            self.trigger(item.kind)
        elif isinstance(item, EndOfStream):
            self.trigger("eof")
        elif isinstance(item, IdleTimeout):
            self.trigger("idle_timeout")
        elif isinstance(item, Interrupt):
            self.reason = "interrupted"
            self.trigger("interrupt")
        elif isinstance(item, HttpError):
            self.error = _http_error(item)
            self.reason = f"http_{item.status}"
            self.trigger("http_error")
        else:
            raise TypeError(f"not a machine input: {type(item).__name__}")

    def receive_event(self, item: SseEvent) -> None:
        """Feed one dispatched server-sent event (the hot path)."""
        if self.state in FINAL:
            self.ignored += 1
            return
        data = item.data
        try:
            payload = _loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if type(payload) is not dict:
            if data.strip() != "[DONE]":
                self.undecodable += 1
            return
        name = payload.get("type")
        if type(name) is not str:
            name = "error" if isinstance(payload.get("error"), dict) else item.event
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, payload)
        elif "function_call" in name:
            self._tool_call_frame(payload)
        else:
            self.ignored += 1

    # -- handlers (one per event type; `_HANDLERS` maps names to them) ---------------------------
    def _created(self, payload: dict[str, Any]) -> None:
        if self.state == AWAITING_CREATED:
            self.trigger("created")

    def _in_progress(self, payload: dict[str, Any]) -> None:
        if self.state == AWAITING_CREATED:
            self.trigger("in_progress")

    def _rate_limits(self, payload: dict[str, Any]) -> None:
        self.rate_limits.append(payload)
        self.sink.effect("rate_limits", self.number, payload)

    def _text_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if type(delta) is not str:
            return
        if self.state == AWAITING_CREATED:
            self.trigger("content")
        self.assembly.text_delta(payload, delta)
        if self.tool_call_seen or not delta:
            return
        self._deliver("text", self._text, delta)

    def _reasoning_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if type(delta) is not str:
            return
        if self.state == AWAITING_CREATED:
            self.trigger("content")
        self.assembly.reasoning_delta(payload, delta)
        if delta:
            self._deliver("reasoning", self._reasoning, delta)

    def _deliver(self, channel: str, view: _Channel, delta: str) -> None:
        if not view.in_step:
            delta = view.catch_up(delta)
            if not delta:
                return
        ledger = self.ledger
        if channel == "text" and not ledger.length["text"]:
            self.sink.effect("first_delta", self.number)
        ledger.pieces[channel].append(delta)
        ledger.length[channel] += len(delta)
        self.sink.effect("text_delta" if channel == "text" else "reasoning_delta", self.number, delta)

    def _text_done(self, payload: dict[str, Any]) -> None:
        self.assembly.text_done(payload)

    def _item_added(self, payload: dict[str, Any]) -> None:
        item = self.assembly.item_added(payload)
        if item is not None and item.get("type") == "function_call":
            self._tool_call_frame(payload)
        elif self.state == AWAITING_CREATED:
            self.trigger("content")

    def _item_done(self, payload: dict[str, Any]) -> None:
        item = self.assembly.item_done(payload)
        if item is None:
            return
        if item.get("type") == "function_call":
            self._tool_call_frame(payload)
            if self.assembly.open_function_calls() == 0:
                self.trigger("tool_calls_done")
        elif self.state == AWAITING_CREATED:
            self.trigger("content")

    def _arguments_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if type(delta) is str:
            self.assembly.arguments_delta(payload, delta)
        self._tool_call_frame(payload)

    def _arguments_done(self, payload: dict[str, Any]) -> None:
        self.assembly.arguments_done(payload)
        self._tool_call_frame(payload)

    def _tool_call_frame(self, payload: dict[str, Any]) -> None:
        self.tool_call_seen = True
        if self.state != TOOL_CALL:
            self.trigger("tool_call_started")

    def _terminal(self, trigger: str, payload: dict[str, Any]) -> None:
        response = payload.get("response")
        self.response = response if isinstance(response, dict) else {}
        self.reason = trigger
        if trigger == "failed":
            raw = self.response.get("error")
            self.error = provider_error(
                {"error": raw if isinstance(raw, dict) else {}}, "response.failed"
            )
            if self.failure_is_retryable(None):
                self.reason = f"failed:{self.error.get('code')}"
        self.trigger(trigger)

    def _completed(self, payload: dict[str, Any]) -> None:
        self._terminal("completed", payload)

    def _incomplete(self, payload: dict[str, Any]) -> None:
        self._terminal("incomplete", payload)

    def _failed(self, payload: dict[str, Any]) -> None:
        self._terminal("failed", payload)

    def _error_frame(self, payload: dict[str, Any]) -> None:
        self.error = provider_error(payload, "error")
        self.reason = "error_frame"
        self.trigger("error_frame")

    # -- results -------------------------------------------------------------------------------
    def final_response(self) -> dict[str, Any] | None:
        """The terminal response with its output backfilled, or None without one."""
        if not self.response:
            return None
        if self.response.get("output"):
            return self.response
        return {**self.response, "output": self.partial_items()}

    def partial_items(self) -> list[dict[str, Any]]:
        """Everything this attempt streamed, as output items (done items as sent)."""
        return self.assembly.items("incomplete" if self.reason != "completed" else "completed")


def _http_error(item: HttpError) -> dict[str, Any]:
    body = item.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = provider_error(body, "http_error")
    elif isinstance(body, dict) and "message" in body:
        error = provider_error(body, "http_error")
    else:
        error = {
            "message": body if isinstance(body, str) and body else f"HTTP {item.status}",
            "code": None,
            "type": "http_error",
        }
    error["status"] = item.status
    return error


_HANDLERS: dict[str, Callable[[StreamAttempt, dict[str, Any]], None]] = {
    "response.created": StreamAttempt._created,
    "response.in_progress": StreamAttempt._in_progress,
    "codex.rate_limits": StreamAttempt._rate_limits,
    "response.output_text.delta": StreamAttempt._text_delta,
    "response.output_text.done": StreamAttempt._text_done,
    "response.reasoning_summary_text.delta": StreamAttempt._reasoning_delta,
    "response.reasoning_text.delta": StreamAttempt._reasoning_delta,
    "response.output_item.added": StreamAttempt._item_added,
    "response.output_item.done": StreamAttempt._item_done,
    "response.function_call_arguments.delta": StreamAttempt._arguments_delta,
    "response.function_call_arguments.done": StreamAttempt._arguments_done,
    "response.completed": StreamAttempt._completed,
    "response.incomplete": StreamAttempt._incomplete,
    "response.failed": StreamAttempt._failed,
    "error": StreamAttempt._error_frame,
}
