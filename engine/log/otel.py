"""OpenTelemetry spans of every turn, derived from its event log (the extra `streamfsm[otel]`).

Theory of operation
===================

A turn's recording asks `spans_for(header)` for an observer of its event log when it begins. The
observer is shown every input and every list of decisions the log records (`EventLog.observer`),
as a structlog processor sees every event, and is told how the turn ended (`finished`) or that
its driver gave up on it (`abandoned`). Nothing in the drivers calls it, and a replay (which is
not a turn) has none.

    streamfsm.turn        a Responses-API turn (`run_turn`, `arun_turn`, `consume`, the seed's
                          functions): its start to its result
      streamfsm.attempt   each attempt (each HTTP request), a child of the turn, from the turn
                          machine's decision to open it to the stream-attempt machine's final state
    streamfsm.app_turn    a codex app-server turn (`CodexSession.run_turn`)

Attributes follow the GenAI semantic conventions where one fits: `gen_ai.operation.name`
("chat"), `gen_ai.provider.name` ("openai"), `gen_ai.request.model`, `gen_ai.response.id`,
`gen_ai.response.model`, `gen_ai.usage.input_tokens` / `output_tokens` (when the response has
usage), `gen_ai.conversation.id` (an app-server turn's thread), and `streamfsm.outcome`; on each
attempt `streamfsm.attempt.kind`, `.number`, `.final_state`, `.reason`, `.wait_s` (an HTTP
retry's wait before it) and `http.response.status_code` when the server answered with an error
status. A turn or attempt that did not complete gets `error.type` (the error's code, else the
outcome or the reason) and the status ERROR. Every state change is a span event named by its
trigger, with `streamfsm.machine`, `streamfsm.source` and `streamfsm.dest`. Nothing else goes
in: no prompt, no answer text, no error message, no header, so no secret either.

The API is optional, and costs nothing unasked: this module imports no part of OpenTelemetry when
it is imported (so neither does `import engine`); the first turn imports `opentelemetry.trace`
once per process, if it is installed. A tracer that records nothing (no tracer provider
configured: the API's no-op tracer) gives a span that is not recording, and then the turn has
no observer at all.
"""

from __future__ import annotations

import time
from typing import Any, Final

from engine.log.trace import APP_SERVER_ENTRY
from machines.app_records import AppTurnResult, ApprovalAnswer, ProcessExit, SpawnFailed
from machines.records import Decision, Effect, HttpError, Transition, TurnResult
from machines.stream_attempt import FINAL as ATTEMPT_FINAL
from machines.stream_attempt import MACHINE as ATTEMPT_MACHINE
from machines.turn import State as TurnState

__all__ = ["APP_TURN_SPAN", "ATTEMPT_SPAN", "TRACER", "TURN_SPAN", "AppTurnSpans", "TurnSpans",
           "spans_for"]

#: The tracer's name (its instrumentation scope).
TRACER: Final = "streamfsm"
TURN_SPAN: Final = "streamfsm.turn"
ATTEMPT_SPAN: Final = "streamfsm.attempt"
APP_TURN_SPAN: Final = "streamfsm.app_turn"

#: The turn machine's states in which an attempt runs (a transition into one opens it).
_ATTEMPT_STATES: Final = frozenset({TurnState.STREAM_ATTEMPT, TurnState.FALLBACK_ATTEMPT})

#: The `opentelemetry.trace` module once looked for: False before, None when not installed.
_api: Any = False


def _trace_api() -> Any:
    global _api
    if _api is False:
        try:
            from opentelemetry import trace
        except ImportError:
            _api = None
        else:
            _api = trace
    return _api


def spans_for(header: dict[str, Any]) -> TurnSpans | AppTurnSpans | None:
    """The observer that makes a turn's spans, the turn's span begun now as a child of the
    caller's current span; None when OpenTelemetry is not installed or records nothing."""
    api = _trace_api()
    if api is None:
        return None
    tracer = api.get_tracer(TRACER)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "streamfsm.entry": str(header.get("entry")),
    }
    request = header.get("request")
    if isinstance(request, dict) and isinstance(request.get("model"), str):
        attributes["gen_ai.request.model"] = request["model"]
    app = header.get("entry") == APP_SERVER_ENTRY
    span = tracer.start_span(APP_TURN_SPAN if app else TURN_SPAN, attributes=attributes)
    if not span.is_recording():
        return None
    return AppTurnSpans(api, span) if app else TurnSpans(api, tracer, span)


def _error_type(error: Any, otherwise: str) -> str:
    """A short, low-cardinality name for what went wrong: the error's code (for a code that is
    an object, as codex sends `codexErrorInfo`, its first key), else `otherwise`."""
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, dict) and code:
        code = next(iter(code))
    return code if isinstance(code, str) and code else otherwise


def _tokens(usage: Any) -> dict[str, int]:
    """`gen_ai.usage.*` from a usage object (`input_tokens`, `output_tokens`), if it has them."""
    out: dict[str, int] = {}
    if isinstance(usage, dict):
        for name in ("input_tokens", "output_tokens"):
            value = usage.get(name)
            if type(value) is int:
                out[f"gen_ai.usage.{name}"] = value
    return out


class _Spans:
    """What both protocols' observers share: the turn's span, its state changes as events, and
    the ending with a status."""

    def __init__(self, api: Any, span: Any) -> None:
        self._api = api
        self.span = span

    def _event(self, span: Any, transition: Transition) -> None:
        span.add_event(str(transition.trigger), {
            "streamfsm.machine": str(transition.machine),
            "streamfsm.source": str(transition.source),
            "streamfsm.dest": str(transition.dest),
        })

    def _end(self, span: Any, failed: str | None, end_time: int | None = None) -> None:
        """End `span`: with `error.type` and the status ERROR when `failed` names what did not
        complete, else OK."""
        status = self._api.StatusCode.OK
        if failed is not None:
            span.set_attribute("error.type", failed)
            status = self._api.StatusCode.ERROR
        span.set_status(self._api.Status(status))
        span.end(end_time=end_time)

    def abandoned(self, exception: str) -> None:
        """The driver gave the turn up on an exception (its class name): every span ends."""
        self._end(self.span, exception)


class TurnSpans(_Spans):
    """The spans of a Responses-API turn: the turn, and one child per attempt."""

    def __init__(self, api: Any, tracer: Any, span: Any) -> None:
        super().__init__(api, span)
        self._tracer = tracer
        self._attempts: dict[int, Any] = {}
        self._ended: dict[int, int] = {}
        self._status: dict[int, int] = {}

    def observed(self, attempt: int, item: object) -> None:
        if type(item) is HttpError:
            self._status[attempt] = item.status

    def decided(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if type(decision) is Transition:
                if decision.machine == ATTEMPT_MACHINE:
                    span = self._attempts.get(decision.attempt)
                    self._event(span if span is not None else self.span, decision)
                    if decision.dest in ATTEMPT_FINAL:
                        self._ended[decision.attempt] = time.time_ns()
                    continue
                self._event(self.span, decision)
                if decision.dest in _ATTEMPT_STATES:
                    self._open(decision.attempt)
            elif type(decision) is Effect and decision.kind in ("wait", "cancel"):
                if decision.kind == "wait":
                    span = self._attempts.get(decision.attempt)
                    if span is not None and isinstance(decision.data, (int, float)):
                        span.set_attribute("streamfsm.attempt.wait_s", float(decision.data))
                else:
                    self.span.add_event("cancel")

    def _open(self, number: int) -> None:
        context = self._api.set_span_in_context(self.span)
        self._attempts[number] = self._tracer.start_span(
            ATTEMPT_SPAN, context=context, kind=self._api.SpanKind.CLIENT,
            attributes={"streamfsm.attempt.number": number},
        )

    def finished(self, result: TurnResult) -> None:
        """The turn's result: each attempt's span gets its kind, final state and reason and
        ends when the attempt did; then the turn's span ends."""
        for attempt in result.attempts:
            span = self._attempts.pop(attempt.number, None)
            if span is None:
                continue
            span.set_attributes({
                "streamfsm.attempt.kind": str(attempt.kind),
                "streamfsm.attempt.final_state": str(attempt.final_state),
                "streamfsm.attempt.reason": str(attempt.reason),
            })
            status = self._status.get(attempt.number)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            failed = None if attempt.reason == "completed" else attempt.reason
            self._end(span, failed, self._ended.get(attempt.number))
        for span in self._attempts.values():  # opened, never ended (not in the result)
            self._end(span, "abandoned")
        self._attempts.clear()
        turn = self.span
        turn.set_attribute("streamfsm.outcome", str(result.outcome))
        response = result.response
        if isinstance(response, dict):
            if isinstance(response.get("id"), str):
                turn.set_attribute("gen_ai.response.id", response["id"])
            if isinstance(response.get("model"), str):
                turn.set_attribute("gen_ai.response.model", response["model"])
            turn.set_attributes(_tokens(response.get("usage")))
        failed = None if result.outcome == "completed" else _error_type(result.error, result.outcome)
        self._end(turn, failed)

    def abandoned(self, exception: str) -> None:
        for span in self._attempts.values():
            self._end(span, exception)
        self._attempts.clear()
        super().abandoned(exception)


class AppTurnSpans(_Spans):
    """The span of a codex app-server turn, its state changes, approvals and the process's exit
    as events."""

    def observed(self, attempt: int, item: object) -> None:
        if type(item) is ApprovalAnswer:
            self.span.add_event("approval_answered", {"streamfsm.decision": item.decision})
        elif type(item) is ProcessExit:
            code = {"streamfsm.exit_code": item.code} if item.code is not None else {}
            self.span.add_event("process_exit", code)
        elif type(item) is SpawnFailed:
            self.span.add_event("spawn_failed")

    def decided(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if type(decision) is Transition:
                self._event(self.span, decision)
            elif type(decision) is Effect and decision.kind == "approval":
                data = decision.data if isinstance(decision.data, dict) else {}
                self.span.add_event("approval_requested", {"streamfsm.kind": str(data.get("kind"))})

    def finished(self, result: AppTurnResult) -> None:
        """The turn's result: outcome, thread, counts, usage when codex sent it; the span ends."""
        span = self.span
        span.set_attributes({
            "streamfsm.outcome": str(result.outcome),
            "streamfsm.retired": result.retired,
            "streamfsm.tool_iterations": result.tool_iterations,
            "streamfsm.model_requests": result.model_requests,
        })
        if result.thread_id:
            span.set_attribute("gen_ai.conversation.id", result.thread_id)
        usage = getattr(result, "usage", None)  # v3: the turn's last token usage, when sent
        if isinstance(usage, dict):
            span.set_attributes(_tokens(usage.get("turn", usage)))
        failed = None if result.outcome == "completed" else _error_type(result.error, result.outcome)
        self._end(span, failed)
