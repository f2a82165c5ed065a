"""The app-server turn machine: one `turn/start` of a `codex app-server` thread, until it ends.

Theory of operation
===================

A turn is one user input handed to codex, which then talks to the model, runs tools, asks for
approvals and finally sends `turn/completed`. This machine is fed, by the session machine
(`machines.app_session`, which decodes the lines and routes the ones about this turn), the
server's notifications and requests for this turn, the approval callback's answers, the caller's
interrupt, and what ends a turn from outside (the subprocess closing its output or exiting, a
timeout, a protocol breach). Like every streamfsm machine it never reads a pipe, a clock or a
flag and never calls anyone: it appends its decisions (`Transition` and `Effect` records) to the
session's output and the driver records them, then acts on them (writes the `send` lines, asks
the approval callback, delivers text, closes the subprocess on `retire`).

States (`STATES`) and every rule between them are the rows of `TABLE`, the only place they are
written; `streamfsm diagram app_turn` draws them:

    queued             asked for while the session is still starting (initialize, thread/start);
                       `turn/start` not sent yet.
    awaiting_created   `turn/start` sent; waiting for `turn/started` (its response gives the id).
    streaming          the model's answer and reasoning flow; agent-message deltas are delivered.
    tool_call          a tool item (command, file change, MCP call, ...) started and not completed.
    awaiting_approval  a server request waits for the approval callback's answer.
    interrupting       the caller interrupted: `turn/interrupt` sent (or pending answers cancelled
                       first), waiting for `turn/completed`.
    terminal           final: `turn/completed` came; its `turn.status` is the outcome
                       (`completed`, `interrupted`, `failed` with `turn.error`).
    retire             final: the turn ended without `turn/completed`: the subprocess closed its
                       output or exited (whatever its exit code), a request or idle timeout, a
                       protocol breach, `turn/start` refused, or no `turn/completed` after an
                       interrupt. The outcome is "error" (or "interrupted" for an interrupt).

Reading a row: `{"trigger": "failed", "source": SENT, "dest": TERMINAL, "conditions":
"auth_failed", "outcome": "failed", "retire_session": True, "reason": "auth_failure"}` says: a
`turn/completed` with status `failed`, once `turn/start` was sent, when the error is a credential
failure (401, `unauthorized`, `invalid_grant`), ends the turn in `terminal` with outcome "failed"
and retires the session (a fresh subprocess re-reads credentials). Rows are tried in order; the
first whose conditions hold fires. `dest: None` rows are stays: the trigger is valid there and
changes nothing (`retrying`, codex's own `error` notification with `willRetry: true`, is one:
it never ends a turn). A trigger with no row for the current state raises
`transitions.MachineError`: the routing below never fires one, so that is a bug. Final rows carry
the `outcome`, whether the session is retired (`retire_session`) and a `reason` (default: the
trigger).

Rules written in code rather than in the table (h11 style, listed here):

- Agent-message text is delivered through a `_Stream` per logical message. Codex restarts a
  message on each of its own stream retries: it sends `item/started agentMessage` again (same
  or new id) and resends the deltas from the beginning; the abandoned item never completes. An
  `item/started agentMessage` while the previous agent message is unfinished is such a restart:
  its deltas are compared with what the user already got and only text past that point is
  delivered (if the retry says something else, nothing more of it is delivered). Reasoning
  items restart the same way. `item/completed` holds the authoritative text; a tail the deltas
  did not deliver is delivered then.
- Approval requests are asked of the callback (`approval` effect) and answered once, in the
  request's own shape (`machines.app_protocol.approval_answer`). An interrupt answers every
  pending one with `cancel` before `turn/interrupt` goes out, so the turn ends promptly; a late
  callback answer is then ignored. A `cancel` for a request whose schema has no cancel sends
  `turn/interrupt` after the declining answer. `serverRequest/resolved` settles a request the
  server withdrew. When the turn completes, a request still unanswered is declined.
- `thread/tokenUsage/updated` counts one model response (`model_requests`).
- Output: `output_text` is the last agent message of `turn.items` on `completed`, else the text of
  the last agent message streamed (complete or not), never doubled. `turn.items` is empty for
  interrupted and failed turns, so partial text lives only in the deltas: an unfinished message
  with text is projected as an assistant message when the turn ends.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import attrs
from machines.table import definition

from machines.app_protocol import (
    CANCEL_IS_AN_ANSWER,
    approval_answer,
    approval_request,
    is_auth_failure,
    project_item,
    result_reply,
    turn_error,
)
from machines.app_records import ApprovalAnswer, AppOutcome
from machines.records import Decision, Effect, Transition

__all__ = [
    "AWAITING_APPROVAL",
    "AWAITING_CREATED",
    "AppTurn",
    "DEFINITION",
    "FAULTS",
    "FINAL",
    "INTERRUPTING",
    "LIVE",
    "MACHINE",
    "QUEUED",
    "RETIRE",
    "STATES",
    "STREAMING",
    "TABLE",
    "TERMINAL",
    "TOOL_CALL",
    "TOOL_ITEMS",
    "TURN_NOTIFICATIONS",
    "TurnEnding",
    "Wire",
]

MACHINE: Final = "app_turn"

QUEUED: Final = "queued"
AWAITING_CREATED: Final = "awaiting_created"
STREAMING: Final = "streaming"
TOOL_CALL: Final = "tool_call"
AWAITING_APPROVAL: Final = "awaiting_approval"
INTERRUPTING: Final = "interrupting"
TERMINAL: Final = "terminal"
RETIRE: Final = "retire"

STATES: Final[list[str]] = [
    QUEUED, AWAITING_CREATED, STREAMING, TOOL_CALL, AWAITING_APPROVAL, INTERRUPTING, TERMINAL, RETIRE
]
#: `turn/start` was sent.
SENT: Final[list[str]] = [AWAITING_CREATED, STREAMING, TOOL_CALL, AWAITING_APPROVAL, INTERRUPTING]
#: Sent and not being interrupted.
RUNNING: Final[list[str]] = [AWAITING_CREATED, STREAMING, TOOL_CALL, AWAITING_APPROVAL]
LIVE: Final[list[str]] = [QUEUED, *SENT]
FINAL: Final = frozenset({TERMINAL, RETIRE})
_PAST_CREATED: Final[list[str]] = [STREAMING, TOOL_CALL, AWAITING_APPROVAL, INTERRUPTING]

#: What ends a turn from outside: the subprocess, the driver's clocks, a protocol breach.
FAULTS: Final[list[str]] = [
    "eof", "exited", "request_timeout", "idle_timeout", "protocol_breach", "spawn_failed"
]

#: Item types that are tools (the turn is in `tool_call` while one is open).
TOOL_ITEMS: Final = frozenset(
    {"commandExecution", "fileChange", "mcpToolCall", "dynamicToolCall", "collabAgentToolCall",
     "webSearch", "imageView", "imageGeneration"}
)

TABLE: Final[list[dict[str, Any]]] = [
    # the turn starts
    {"trigger": "sent", "source": QUEUED, "dest": AWAITING_CREATED},
    {"trigger": "accepted", "source": SENT, "dest": None},
    {"trigger": "rejected", "source": SENT, "dest": RETIRE, "outcome": "error",
     "retire_session": True, "reason": "turn_start_refused"},
    {"trigger": "started", "source": AWAITING_CREATED, "dest": STREAMING},
    {"trigger": "started", "source": _PAST_CREATED, "dest": None},
    # the answer streams
    {"trigger": "content", "source": AWAITING_CREATED, "dest": STREAMING},
    {"trigger": "content", "source": _PAST_CREATED, "dest": None},
    # codex retries the model by itself and reports errors it then ends the turn with
    {"trigger": "retrying", "source": SENT, "dest": None},
    {"trigger": "error_reported", "source": SENT, "dest": None},
    # tools
    {"trigger": "tool_started", "source": [AWAITING_CREATED, STREAMING], "dest": TOOL_CALL},
    {"trigger": "tool_started", "source": [TOOL_CALL, AWAITING_APPROVAL, INTERRUPTING],
     "dest": None},
    {"trigger": "tool_done", "source": AWAITING_CREATED, "dest": STREAMING},
    {"trigger": "tool_done", "source": TOOL_CALL, "dest": STREAMING, "conditions": "no_tool_open"},
    {"trigger": "tool_done", "source": [STREAMING, TOOL_CALL, AWAITING_APPROVAL, INTERRUPTING],
     "dest": None},
    # approvals: the callback answers, or the server withdraws the request
    {"trigger": "approval_requested", "source": [AWAITING_CREATED, STREAMING, TOOL_CALL],
     "dest": AWAITING_APPROVAL},
    {"trigger": "approval_requested", "source": [AWAITING_APPROVAL, INTERRUPTING], "dest": None},
    {"trigger": "approval_settled", "source": AWAITING_APPROVAL, "dest": TOOL_CALL,
     "conditions": ["none_pending", "tool_open"]},
    {"trigger": "approval_settled", "source": AWAITING_APPROVAL, "dest": STREAMING,
     "conditions": "none_pending"},
    {"trigger": "approval_settled", "source": [AWAITING_APPROVAL, INTERRUPTING], "dest": None},
    # the server ends the turn: turn/completed, by turn.status
    {"trigger": "completed", "source": SENT, "dest": TERMINAL, "outcome": "completed"},
    {"trigger": "interrupted", "source": SENT, "dest": TERMINAL, "outcome": "interrupted"},
    {"trigger": "failed", "source": SENT, "dest": TERMINAL, "conditions": "auth_failed",
     "outcome": "failed", "retire_session": True, "reason": "auth_failure"},
    {"trigger": "failed", "source": SENT, "dest": TERMINAL, "outcome": "failed"},
    # the caller stops the turn
    {"trigger": "interrupt", "source": QUEUED, "dest": RETIRE, "outcome": "interrupted",
     "reason": "interrupted"},
    {"trigger": "interrupt", "source": RUNNING, "dest": INTERRUPTING},
    {"trigger": "interrupt", "source": INTERRUPTING, "dest": None},
    {"trigger": "interrupt_timeout", "source": INTERRUPTING, "dest": RETIRE,
     "outcome": "interrupted", "retire_session": True},
    # the subprocess or the clocks end the turn without turn/completed: always retire
    *(
        {"trigger": fault, "source": LIVE, "dest": RETIRE, "outcome": "error",
         "retire_session": True}
        for fault in FAULTS
    ),
]

_ROW_META = ("outcome", "retire_session", "reason")


@attrs.frozen(slots=True)
class TurnEnding:
    """How a turn ended, read off the final row that fired."""

    state: str
    trigger: str
    outcome: AppOutcome
    retire_session: bool
    reason: str


DEFINITION, _STAYS = definition(STATES, TABLE, QUEUED, _ROW_META)
_EVENTS = DEFINITION.events


class Wire(Protocol):
    """What a turn needs of its session: a place for decisions and a way to send requests."""

    out: list[Decision]

    def send(self, number: int, message: dict[str, Any]) -> None:
        """Decide to write `message` (a `send` effect)."""
        ...

    def request(self, number: int, method: str, params: dict[str, Any]) -> int:
        """Decide to send a client request; return its id."""
        ...


class _Stream:
    """One logical message (agent text or reasoning) as the user sees it, across codex's
    restarts: `delivered` is what reached the callbacks, `attempt` the current run's deltas."""

    __slots__ = ("item_id", "delivered", "attempt", "behind", "in_step", "diverged", "done",
                 "final")

    def __init__(self, item_id: str | None) -> None:
        self.item_id = item_id
        self.delivered: list[str] = []
        self.attempt: list[str] = []
        self.behind = ""
        self.in_step = True
        self.diverged = False
        self.done = False
        self.final: str | None = None  # the text `item/completed` gave

    def restart(self, item_id: str | None) -> None:
        """Codex started this message over: its deltas come again from the beginning."""
        self.item_id = item_id
        self.behind = "".join(self.delivered)
        self.attempt = []
        self.in_step = not self.behind
        self.diverged = False

    def delta(self, delta: str) -> str:
        """Take one delta; return the part that is new to the user ("" while repeating)."""
        self.attempt.append(delta)
        if self.in_step:
            self.delivered.append(delta)
            return delta
        if self.diverged:
            return ""
        so_far = "".join(self.attempt)
        behind = self.behind
        if len(so_far) <= len(behind):
            if not behind.startswith(so_far):
                self.diverged = True
            return ""
        if not so_far.startswith(behind):
            self.diverged = True
            return ""
        self.in_step = True
        new = so_far[len(behind):]
        self.delivered.append(new)
        return new

    def complete(self, text: str | None) -> str:
        """`item/completed`: keep its text; return a tail the deltas did not deliver ("" when
        none, or when this run said something else than what was delivered)."""
        self.done = True
        self.final = text
        if text is None or self.diverged:
            return ""
        shown = "".join(self.delivered)
        if len(text) > len(shown) and text.startswith(shown):
            tail = text[len(shown):]
            self.delivered.append(tail)
            self.in_step = True
            return tail
        return ""

    def text(self) -> str:
        """The message's text: the completed text, else this run's text or, when this run has
        not yet repeated everything delivered, the delivered text (never a mix of two runs)."""
        if self.final is not None:
            return self.final
        current = "".join(self.attempt)
        if self.diverged:
            return current
        shown = "".join(self.delivered)
        return current if len(current) >= len(shown) else shown


@attrs.define(slots=True)
class _Pending:
    method: str
    params: dict[str, Any]


class AppTurn:
    """One app-server turn on `DEFINITION` (the table). Sans-I/O: its decisions go to the
    session's output (`wire.out`).

    `number` is the turn's number in its session (the `attempt` of its records); `text` is the
    user's input."""

    state: str

    def __init__(self, number: int, text: str, wire: Wire) -> None:
        self.state = QUEUED
        self.number = number
        self.text = text
        self._wire = wire
        self.thread_id: str | None = None
        self.turn_id: str | None = None
        self.start_request_id: int | None = None
        self.ending: TurnEnding | None = None
        self.error: dict[str, Any] | None = None
        self.interrupt_sent = False
        self.pending: dict[int | str, _Pending] = {}
        self.answered: set[int | str] = set()
        self.items: dict[str, dict[str, Any]] = {}
        self.open_tools: set[str] = set()
        self.finished_tools: set[str] = set()
        self.messages: list[dict[str, Any]] = []
        self.tool_iterations = 0
        self.model_requests = 0
        self.first_delta_sent = False
        #: agent messages, in the order they started (reasoning items in `reasoning`)
        self.streams: list[_Stream] = []
        self.reasoning: list[_Stream] = []
        self._text: _Stream | None = None
        self._reasoning: _Stream | None = None
        self.final_items: list[Any] | None = None

    # -- state -----------------------------------------------------------------------------
    @property
    def is_final(self) -> bool:
        """True once the turn reached `terminal` or `retire`."""
        return self.state in FINAL

    @property
    def is_sent(self) -> bool:
        """True once `turn/start` was sent and until the turn ends."""
        return self.state in SENT

    def _fire(self, trigger: str) -> None:
        if (self.state, trigger) not in _STAYS:
            _EVENTS[trigger].trigger(self)

    def _moved(self, row: dict[str, Any], source: str) -> None:
        dest = row["dest"]
        trigger = row["trigger"]
        self._wire.out.append(Transition(MACHINE, self.number, source, dest, trigger))
        if dest in FINAL:
            self.ending = TurnEnding(
                dest, trigger, row["outcome"], row.get("retire_session", False),
                row.get("reason", trigger),
            )
            self._finish()

    # -- conditions (named in TABLE) ---------------------------------------------------------
    def no_tool_open(self, event: Any) -> bool:
        """Every tool item that started has completed."""
        return not self.open_tools

    def tool_open(self, event: Any) -> bool:
        """A tool item that started has not completed."""
        return bool(self.open_tools)

    def none_pending(self, event: Any) -> bool:
        """No server request waits for an answer."""
        return not self.pending

    def auth_failed(self, event: Any) -> bool:
        """The turn failed on credentials (401, `unauthorized`, `invalid_grant`)."""
        return is_auth_failure(self.error)

    # -- the session drives these ---------------------------------------------------------------
    def send_start(self, thread_id: str) -> None:
        """Decide `turn/start` on `thread_id` (the session is ready)."""
        self.thread_id = thread_id
        self.start_request_id = self._wire.request(
            self.number, "turn/start",
            {"threadId": thread_id, "input": [{"type": "text", "text": self.text}]},
        )
        self._fire("sent")

    def start_response(self, result: Any, error: dict[str, Any] | None) -> None:
        """The response to `turn/start`: the turn's id, or a refusal."""
        if self.state not in SENT:
            return
        turn = result.get("turn") if isinstance(result, dict) else None
        ident = turn.get("id") if isinstance(turn, dict) else None
        if error is not None or type(ident) is not str:
            why = error.get("message") if error is not None else "no turn id in the response"
            self.error = {"message": f"codex app-server refused turn/start: {why}",
                          "code": error.get("code") if error is not None else None,
                          "type": "protocol_error"}
            self._fire("rejected")
            return
        self.learn_id(ident)
        self._fire("accepted")

    def learn_id(self, ident: str) -> None:
        """The turn's id is known (from the response or the first notification about it)."""
        if self.turn_id is None:
            self.turn_id = ident
            if self.state == INTERRUPTING and not self.interrupt_sent:
                self._send_interrupt()

    def notification(self, method: str, params: dict[str, Any]) -> None:
        """A notification about this turn."""
        handler = _NOTIFICATIONS.get(method)
        if handler is not None and self.state in SENT:
            handler(self, params)

    def server_request(self, ident: int | str, method: str, params: dict[str, Any]) -> None:
        """An approval-kind server request about this turn."""
        if self.state not in SENT:
            return
        if ident in self.pending or ident in self.answered:
            return  # a repeated request id: it has its answer, or will get one
        if self.state == INTERRUPTING:
            self._reply(ident, method, params, "cancel")
            self._fire("approval_requested")
            return
        self.pending[ident] = _Pending(method, params)
        item_id = params.get("itemId")
        item = self.items.get(item_id) if isinstance(item_id, str) else None
        asked = approval_request(method, params, item)
        self._wire.out.append(Effect("approval", self.number, {
            "request_id": ident, "method": method, **attrs.asdict(asked),
        }))
        self._fire("approval_requested")

    def answer(self, item: ApprovalAnswer) -> None:
        """The approval callback's answer (ignored unless its request is still pending)."""
        pending = self.pending.get(item.request_id)
        if pending is None or self.state not in SENT:
            return
        self._reply(item.request_id, pending.method, pending.params, item.decision)
        del self.pending[item.request_id]
        self._fire("approval_settled")
        if item.decision == "cancel" and pending.method not in CANCEL_IS_AN_ANSWER:
            self.interrupt()

    def interrupt(self) -> None:
        """The caller wants the turn stopped: cancel pending approvals, send `turn/interrupt`."""
        if self.state == QUEUED:
            self._fire("interrupt")
            return
        if self.state not in RUNNING:
            return
        for ident, pending in list(self.pending.items()):
            self._reply(ident, pending.method, pending.params, "cancel")
        self.pending.clear()
        self._fire("interrupt")
        if self.turn_id is not None and not self.interrupt_sent:
            self._send_interrupt()

    def interrupt_timed_out(self) -> None:
        """No `turn/completed` followed `turn/interrupt` in time."""
        if self.state == INTERRUPTING:
            self._fire("interrupt_timeout")

    def fault(self, trigger: str, error: dict[str, Any]) -> None:
        """Something ended the turn from outside (`FAULTS`); `error` says what."""
        if self.state in FINAL:
            return
        self.error = error
        self._fire(trigger)

    # -- decisions -------------------------------------------------------------------------
    def _reply(self, ident: int | str, method: str, params: dict[str, Any], decision: str) -> None:
        self.answered.add(ident)
        self._wire.send(self.number, result_reply(ident, approval_answer(method, params, decision)))

    def _send_interrupt(self) -> None:
        assert self.thread_id is not None and self.turn_id is not None
        self.interrupt_sent = True
        self._wire.request(self.number, "turn/interrupt",
                           {"threadId": self.thread_id, "turnId": self.turn_id})

    def _deliver_text(self, delta: str) -> None:
        if not delta:
            return
        out = self._wire.out
        if not self.first_delta_sent:
            self.first_delta_sent = True
            out.append(Effect("first_delta", self.number))
        out.append(Effect("text_delta", self.number, delta))

    def _deliver_reasoning(self, delta: str) -> None:
        if delta:
            self._wire.out.append(Effect("reasoning_delta", self.number, delta))

    def _message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._wire.out.append(Effect("message", self.number, message))

    def _finish(self) -> None:
        """The turn reached a final state: what the user saw is projected, pending requests are
        answered when the session lives on, and the outcome is decided."""
        ending = self.ending
        assert ending is not None
        current = self._text
        if current is not None and not current.done:
            partial = current.text()
            if partial:
                self._message({"role": "assistant", "content": partial})
        if ending.state == TERMINAL and not ending.retire_session:
            for ident, pending in list(self.pending.items()):
                self._reply(ident, pending.method, pending.params, "decline")
        self.pending.clear()
        out = self._wire.out
        if ending.outcome in ("failed", "error") and self.error is not None:
            out.append(Effect("error", self.number, self.error))
        out.append(Effect("outcome", self.number, {
            "outcome": ending.outcome, "reason": ending.reason,
            "retire_session": ending.retire_session,
        }))

    # -- notification handlers (`_NOTIFICATIONS` maps methods to them) -------------------------
    def _turn_started(self, params: dict[str, Any]) -> None:
        self._fire("started")

    def _item_started(self, params: dict[str, Any]) -> None:
        item = params.get("item")
        if not isinstance(item, dict):
            return
        kind = item.get("type")
        ident = item.get("id") if isinstance(item.get("id"), str) else None
        if ident is not None:
            self.items[ident] = item
        if kind == "agentMessage":
            self._text = self._begin(self._text, ident, self.streams)
            self._fire("content")
        elif kind == "reasoning":
            self._reasoning = self._begin(self._reasoning, ident, self.reasoning)
            self._fire("content")
        elif kind in TOOL_ITEMS:
            if ident is not None:
                self.open_tools.add(ident)
            self._fire("tool_started")
        elif kind != "userMessage":
            self._fire("content")

    def _begin(self, current: _Stream | None, ident: str | None, kept: list[_Stream]) -> _Stream:
        if current is not None and not current.done:
            current.restart(ident)  # codex retries the model: the same message, from the start
            return current
        stream = _Stream(ident)
        kept.append(stream)
        return stream

    def _stream_for(self, current: _Stream | None, ident: Any, kept: list[_Stream]) -> _Stream | None:
        """The stream a delta or completion belongs to: the open one; None for one that
        completed already (a late or repeated line); or a new one for an item never announced
        by `item/started`."""
        if current is not None and (ident is None or ident == current.item_id):
            return None if current.done else current
        if any(stream.done and stream.item_id == ident for stream in kept):
            return None
        return self._begin(None, ident if isinstance(ident, str) else None, kept)

    def _agent_delta(self, params: dict[str, Any]) -> None:
        delta = params.get("delta")
        if type(delta) is not str:
            return
        stream = self._stream_for(self._text, params.get("itemId"), self.streams)
        if stream is None:
            return
        self._text = stream
        self._fire("content")
        self._deliver_text(stream.delta(delta))

    def _reasoning_delta(self, params: dict[str, Any]) -> None:
        delta = params.get("delta")
        if type(delta) is not str:
            return
        stream = self._stream_for(self._reasoning, params.get("itemId"), self.reasoning)
        if stream is None:
            return
        self._reasoning = stream
        self._fire("content")
        self._deliver_reasoning(stream.delta(delta))

    def _item_completed(self, params: dict[str, Any]) -> None:
        item = params.get("item")
        if not isinstance(item, dict):
            return
        kind = item.get("type")
        ident = item.get("id") if isinstance(item.get("id"), str) else None
        if kind == "agentMessage":
            stream = self._stream_for(self._text, ident, self.streams)
            if stream is None:
                return  # completed already: a repeated line
            text = item.get("text") if isinstance(item.get("text"), str) else None
            self._text = stream
            self._fire("content")
            self._deliver_text(stream.complete(text))
        elif kind == "reasoning":
            stream = self._stream_for(self._reasoning, ident, self.reasoning)
            if stream is not None:
                self._reasoning = stream
                stream.done = True
            self._fire("content")
            return
        elif kind in TOOL_ITEMS:
            if ident is not None and ident in self.finished_tools:
                return  # completed already: a repeated line
            if ident is not None:
                self.open_tools.discard(ident)
                self.finished_tools.add(ident)
        projection = project_item(item)
        for message in projection.messages:
            self._message(message)
        if projection.ran:
            self.tool_iterations += 1
        if kind in TOOL_ITEMS:
            self._fire("tool_done")

    def _token_usage(self, params: dict[str, Any]) -> None:
        self.model_requests += 1

    def _error(self, params: dict[str, Any]) -> None:
        if params.get("willRetry") is True:
            self._fire("retrying")
            return
        self.error = turn_error(params.get("error")) or self.error
        self._fire("error_reported")

    def _resolved(self, params: dict[str, Any]) -> None:
        ident = params.get("requestId")
        if (type(ident) is int or type(ident) is str) and ident in self.pending:
            del self.pending[ident]
            self.answered.add(ident)  # withdrawn by the server: a late answer is not sent
            self._fire("approval_settled")

    def _turn_completed(self, params: dict[str, Any]) -> None:
        turn = params.get("turn")
        turn = turn if isinstance(turn, dict) else {}
        status = turn.get("status")
        items = turn.get("items")
        self.final_items = items if isinstance(items, list) else []
        if status == "completed":
            self._fire("completed")
        elif status == "interrupted":
            self._fire("interrupted")
        else:
            reported = turn_error(turn.get("error"))
            if reported is not None:
                self.error = reported
            elif self.error is None:
                self.error = {"message": f"turn/completed with status {status!r}",
                              "code": None, "type": "turn_failed", "details": None}
            self._fire("failed")

    # -- the result ------------------------------------------------------------------------
    def output_text(self) -> str:
        """The answer: the last agent message of `turn.items` when the turn completed, else the
        last agent message streamed, complete or not."""
        if self.ending is not None and self.ending.outcome == "completed" and self.final_items:
            for item in reversed(self.final_items):
                if isinstance(item, dict) and item.get("type") == "agentMessage":
                    text = item.get("text")
                    if isinstance(text, str):
                        return text
        for stream in reversed(self.streams):
            text = stream.text()
            if text:
                return text
        return ""


_NOTIFICATIONS: Final = {
    "turn/started": AppTurn._turn_started,
    "turn/completed": AppTurn._turn_completed,
    "item/started": AppTurn._item_started,
    "item/completed": AppTurn._item_completed,
    "item/agentMessage/delta": AppTurn._agent_delta,
    "item/reasoning/summaryTextDelta": AppTurn._reasoning_delta,
    "item/reasoning/textDelta": AppTurn._reasoning_delta,
    "thread/tokenUsage/updated": AppTurn._token_usage,
    "error": AppTurn._error,
    "serverRequest/resolved": AppTurn._resolved,
}

#: Notifications the session routes to a turn (everything else is about the thread or account).
TURN_NOTIFICATIONS: Final = frozenset(_NOTIFICATIONS) | {
    "item/commandExecution/outputDelta", "item/reasoning/summaryPartAdded", "turn/diff/updated",
    "turn/plan/updated", "item/fileChange/outputDelta", "item/mcpToolCall/progress",
}
