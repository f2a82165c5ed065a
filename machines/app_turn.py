"""The app-server turn machine: one `turn/start` of a `codex app-server` thread, until it ends.

Theory of operation
===================

A turn is one user input handed to codex, which then talks to the model, runs tools, asks for
approvals, calls the client's own tools and finally sends `turn/completed`. This machine is fed,
by the session machine (`machines.app_session`, which decodes the lines and routes the ones
about this turn), the server's notifications and requests for this turn, the approval
callback's and the tool handler's answers, the caller's interrupt, steer and close, the turn's
wall-clock limit, and what ends a turn from outside (the subprocess closing its output or
exiting, a timeout, a protocol breach). Like every streamfsm machine it never reads a pipe, a
clock or a flag and never calls anyone: it appends its decisions (`Transition` and `Effect`
records) to the session's output and the driver records them, then acts on them (writes the
`send` lines, asks the approval callback, calls the tool handler, delivers text, closes the
subprocess on `retire`).

A compaction (`CompactRequest`) is a turn too: codex runs it as a turn of its own, so it is sent
as `thread/compact/start` instead of `turn/start`, learns its id from `turn/started` (the
request's answer is `{}`), and ends like any turn; codex's `contextCompaction` item (or the older
`thread/compacted` notification) marks the thread compacted.

States (`State`) and every rule between them are the rows of `TABLE`, the only place they are
written; `streamfsm diagram app_turn` draws them:

    queued             asked for while the session is still starting (initialize, thread/start);
                       `turn/start` not sent yet.
    awaiting_created   `turn/start` sent; waiting for `turn/started` (its response gives the id).
    streaming          the model's answer and reasoning flow; agent-message deltas are delivered.
    tool_call          a tool item (command, file change, MCP call, ...) started and not completed.
    awaiting_approval  a server request waits for the approval callback's answer.
    awaiting_tool      codex asked the client to run one of its own tools (`item/tool/call`);
                       the tool handler's answer is awaited.
    interrupting       the caller interrupted (or the turn's time ran out): `turn/interrupt` sent
                       (or pending answers cancelled first), waiting for `turn/completed`.
    terminal           final: `turn/completed` came; its `turn.status` is the outcome
                       (`completed`, `interrupted`, `failed` with `turn.error`).
    retire             final: the turn ended without `turn/completed`: the subprocess closed its
                       output or exited (whatever its exit code), a request or idle timeout, a
                       protocol breach, `turn/start` refused, the caller closed the session, or
                       no `turn/completed` after an interrupt. The outcome is "error" (or
                       "interrupted" for an interrupt).

Reading a row (`machines.table`): `Row(Trigger.FAILED, SENT, State.TERMINAL, guards=auth_failed,
decides=TurnEndingRule("failed", retire_session=True, reason="auth_failure"))` says: a
`turn/completed` with status `failed`, once `turn/start` was sent, when the error is a credential
failure (401, `unauthorized`, `invalid_grant`), ends the turn in `terminal` with outcome "failed"
and retires the session (a fresh subprocess re-reads credentials). Rows are tried in order; the
first whose guards hold fires. A row without `dest` is a stay: the trigger is valid there and
changes nothing (`retrying`, codex's own `error` notification with `willRetry: true`, is one: it
never ends a turn; so are `malformed_completion`, a `turn/completed` for this turn without a
status the turn knows, and `foreign_completion`, one for another turn or thread: neither ends the
turn). A trigger with no row for the current state raises `transitions.MachineError`. The table
also says where an input is taken at all: a notification (`notified`), a `turn/start` answer
(`accepted`), an approval or tool request, a tool answer, a steer, an interrupt, the turn's time
running out or its grace passing is handled only in the states that have a row for it, and
ignored elsewhere. Final rows decide (`TurnEndingRule`) the `outcome`, whether the session is
retired, the `reason` (default: the trigger) and whether requests still unanswered are declined;
approval and tool rows decide (`Answer`) whether a request is asked of the callback, answered
`cancel` at once (the turn is being interrupted) or, for a tool `callId` asked before, answered
again with the first answer; steer rows decide (`Steering`) whether `turn/steer` goes out; the
turn-limit rows decide (`Timeout`) whether the answer had already arrived.

The turn limit (`TurnTimeout`): past it the turn is interrupted like a caller's interrupt, and
when `turn/completed` (interrupted) follows it ends "error" with reason `turn_timeout`, unless the
turn's final agent message had fully arrived (`item/completed` of an agent message that is not
commentary, with nothing started after it, no tool open and no request pending): then the turn
ends "completed" with that text (codex sends the message's `item/completed` at once and
`turn/completed` only after the provider's `response.completed`, so a limit can fall between
them).

Rules written in code rather than in the table (h11 style, listed here):

- Agent-message text is delivered through a `_Stream` per logical message (its text delivered
  exactly once by `machines.delivery.Delivery`, as for the attempts of a Responses turn). Codex restarts a
  message on each of its own stream retries: it sends `item/started agentMessage` again (same
  or new id) and resends the deltas from the beginning; the abandoned item never completes. An
  `item/started agentMessage` while the previous agent message is unfinished is such a restart:
  its deltas are compared with what the user already got and only text past that point is
  delivered (if the retry says something else, nothing more of it is delivered). Reasoning
  items restart the same way. `item/completed` holds the authoritative text; a tail the deltas
  did not deliver is delivered then.
- A `userMessage` item during the turn is a steer's input (codex drops the stream it was reading
  and asks the model again): the agent message in progress is abandoned there (what the user
  saw of it is projected as an assistant message), so the next one is a new message, not a
  restart, even under the same item id.
- Approval requests are asked of the callback (`approval` effect) and answered once, in the
  request's own shape (`machines.app_protocol.approval_answer`). An interrupt answers every
  pending one with `cancel` before `turn/interrupt` goes out, so the turn ends promptly; a late
  callback answer is then ignored. A `cancel` for a request whose schema has no cancel sends
  `turn/interrupt` after the declining answer. `serverRequest/resolved` settles a request the
  server withdrew. When the turn completes, a request still unanswered is declined.
- Client tool requests (`item/tool/call`) are asked of the tool handler (`call_tool` effect) and
  answered once with its text (`success: false` when it raised). A request for a `callId` asked
  before (codex asks again when the model repeats a call id) gets the first answer, as soon as
  there is one, and the handler is not called again. An interrupt, or the end of the turn,
  answers a pending one `success: false`.
- `thread/tokenUsage/updated` counts one model response (`model_requests`) and gives the usage:
  the thread's total now, the last request's, and the turn's (the thread's total now less the
  total when the turn began, which the session knows from the thread's last report, else from
  the first report: its total less its last request's).
- A turn learns its id from the `turn/start` response or from `turn/started`, never from other
  notifications (a report about an earlier turn may come first, e.g. the usage codex sends when
  a thread is resumed).
- Output: `output_text` is the last agent message of `turn.items` on `completed`, else the text of
  the last agent message streamed (complete or not), never doubled. `turn.items` is empty for
  interrupted and failed turns, so partial text lives only in the deltas: an unfinished message
  with text is projected as an assistant message when the turn ends.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final, Protocol

import attrs

from machines.app_protocol import (
    CANCEL_IS_AN_ANSWER,
    TOOL_CALL_METHOD,
    approval_answer,
    approval_request,
    is_auth_failure,
    project_item,
    result_reply,
    tool_answer,
    turn_error,
    usage_breakdown,
)
from machines.app_records import ApprovalAnswer, AppOutcome, SessionFault, ToolAnswer, ToolCall
from machines.delivery import Delivery
from machines.records import Decision, Effect, InputKind, Transition
from machines.table import Row, Table

__all__ = [
    "AppTurn",
    "Answer",
    "FAULTS",
    "FINAL",
    "LIVE",
    "MACHINE",
    "State",
    "Steering",
    "TABLE",
    "TOOL_ITEMS",
    "INPUTS",
    "TURN_NOTIFICATIONS",
    "Timeout",
    "Trigger",
    "TurnEnding",
    "TurnEndingRule",
    "WAITING_ON_CALLER",
    "Wire",
]

MACHINE: Final = "app_turn"


class State(StrEnum):
    """The states of an app-server turn."""

    QUEUED = "queued"
    AWAITING_CREATED = "awaiting_created"
    STREAMING = "streaming"
    TOOL_CALL = "tool_call"
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_TOOL = "awaiting_tool"
    INTERRUPTING = "interrupting"
    TERMINAL = "terminal"
    RETIRE = "retire"


class Trigger(StrEnum):
    """What the server's messages about a turn mean, and where its own inputs are taken; its
    other inputs are their own triggers (`INPUTS`)."""

    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ID_LEARNED = "id_learned"
    NOTIFIED = "notified"
    STARTED = "started"
    CONTENT = "content"
    USAGE = "usage"
    COMPACTED = "compacted"
    RETRYING = "retrying"
    ERROR_REPORTED = "error_reported"
    TOOL_STARTED = "tool_started"
    TOOL_DONE = "tool_done"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_SETTLED = "approval_settled"
    TOOL_REQUESTED = "tool_requested"
    STEERED = "steered"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    MALFORMED_COMPLETION = "malformed_completion"
    FOREIGN_COMPLETION = "foreign_completion"


#: The inputs a turn takes under their vocabulary names, each its own trigger: the caller's
#: interrupt, steer and close, the tool handler's answer, the turn's limit, the interrupt's
#: grace, and what ends the session from outside (`SessionFault`).
INPUTS: Final = (
    InputKind.INTERRUPT, InputKind.INTERRUPT_TIMEOUT, InputKind.TOOL_ANSWER, InputKind.STEER,
    InputKind.TURN_TIMEOUT, InputKind.CLOSE, *SessionFault,
)


#: `turn/start` was sent.
SENT: Final = frozenset(
    {State.AWAITING_CREATED, State.STREAMING, State.TOOL_CALL, State.AWAITING_APPROVAL,
     State.AWAITING_TOOL, State.INTERRUPTING}
)
#: Sent and not being interrupted.
RUNNING: Final = SENT - {State.INTERRUPTING}
LIVE: Final = SENT | {State.QUEUED}
FINAL: Final = frozenset({State.TERMINAL, State.RETIRE})
_PAST_CREATED: Final = SENT - {State.AWAITING_CREATED}
#: The turn waits on the caller's side (an approval, a tool), not on the server.
WAITING_ON_CALLER: Final = frozenset({State.AWAITING_APPROVAL, State.AWAITING_TOOL})

#: What ends a turn from outside: the subprocess, the driver's clocks, a protocol breach.
FAULTS: Final = tuple(SessionFault)

#: Item types that are tools (the turn is in `tool_call` while one is open).
TOOL_ITEMS: Final = frozenset(
    {"commandExecution", "fileChange", "mcpToolCall", "dynamicToolCall", "collabAgentToolCall",
     "webSearch", "imageView", "imageGeneration"}
)


@attrs.frozen(slots=True)
class TurnEndingRule:
    """What a final row decides: the outcome, whether the session is retired, the reason's code
    (None: the trigger's own), and whether server requests still unanswered are declined (the
    session lives on, so each gets its answer)."""

    outcome: AppOutcome
    retire_session: bool = False
    reason: str | None = None
    declines_pending: bool = False


class Answer(StrEnum):
    """What an approval, tool or interrupt row decides about server requests: ask the callback
    (or the tool handler), answer `cancel` at once (the turn is being interrupted), or answer
    again what the first request for the same tool call got."""

    ASK = "ask"
    CANCEL = "cancel"
    REPEAT = "repeat"


class Steering(StrEnum):
    """What a steer row decides: send `turn/steer`, or answer the caller that it was refused
    (no running turn, or its id is not known yet)."""

    SEND = "send"
    REFUSE = "refuse"


class Timeout(StrEnum):
    """What a turn-limit row decides: whether the turn's final answer had fully arrived when its
    time ran out (then the turn still completes with it) or not (the turn ends "error")."""

    AFTER_ANSWER = "after_answer"
    BEFORE_ANSWER = "before_answer"


#: What a row of this machine decides.
Decides = TurnEndingRule | Answer | Steering | Timeout


# -- guards: pure conditions of a turn ---------------------------------------------------------


def no_tool_open(turn: AppTurn) -> bool:
    """Every tool item that started has completed."""
    return not turn.open_tools


def tool_open(turn: AppTurn) -> bool:
    """A tool item that started has not completed."""
    return bool(turn.open_tools)


def none_pending(turn: AppTurn) -> bool:
    """No server request waits for an answer."""
    return not turn.pending


def only_tools_pending(turn: AppTurn) -> bool:
    """Requests wait for an answer, and every one of them is a client tool call."""
    return bool(turn.pending) and all(p.method == TOOL_CALL_METHOD for p in turn.pending.values())


def only_approvals_pending(turn: AppTurn) -> bool:
    """Requests wait for an answer, and none of them is a client tool call."""
    return bool(turn.pending) and all(p.method != TOOL_CALL_METHOD for p in turn.pending.values())


def auth_failed(turn: AppTurn) -> bool:
    """The turn failed on credentials (401, `unauthorized`, `invalid_grant`)."""
    return is_auth_failure(turn.error)


def is_compaction(turn: AppTurn) -> bool:
    """The turn is a compaction (`thread/compact/start`), not the caller's input."""
    return turn.compaction


def call_known(turn: AppTurn) -> bool:
    """The tool call being asked for (its `callId`) was asked for before in this turn."""
    return turn.asked_call in turn.tool_answers or turn.asked_call in turn.tool_waiting


def id_known(turn: AppTurn) -> bool:
    """The turn's id is known (a steer must name it)."""
    return turn.turn_id is not None


def answer_arrived(turn: AppTurn) -> bool:
    """The turn's final agent message has fully arrived: its `item/completed` came, it is not
    commentary, nothing started after it, no tool is open and no request waits."""
    return turn.answer_ready and not turn.open_tools and not turn.pending


def timed_out(turn: AppTurn) -> bool:
    """The turn's time ran out (it is being interrupted for it)."""
    return turn.timeout is not None


def timed_out_after_answer(turn: AppTurn) -> bool:
    """The turn's time ran out after its final answer had fully arrived."""
    return turn.timeout is Timeout.AFTER_ANSWER


# -- actions some rows take --------------------------------------------------------------------


def send_interrupt_when_due(turn: AppTurn) -> None:
    """The turn's id came while it is being interrupted: `turn/interrupt` can go out now."""
    if not turn.interrupt_sent:
        turn.send_interrupt()


_S = State
_T = Trigger


def _fault_row(fault: SessionFault) -> Row[AppTurn, Decides]:
    return Row(fault, LIVE, _S.RETIRE, decides=TurnEndingRule("error", retire_session=True))


ROWS: Final[list[Row[AppTurn, Decides]]] = [
    # the turn starts
    Row(_T.SENT, _S.QUEUED, _S.AWAITING_CREATED),
    Row(_T.ACCEPTED, SENT),
    Row(_T.REJECTED, SENT, _S.TERMINAL, guards=is_compaction,
        decides=TurnEndingRule("failed", reason="compaction_refused")),
    Row(_T.REJECTED, SENT, _S.RETIRE,
        decides=TurnEndingRule("error", retire_session=True, reason="turn_start_refused")),
    Row(_T.ID_LEARNED, _S.INTERRUPTING, then=send_interrupt_when_due),
    Row(_T.ID_LEARNED, RUNNING),
    # the server's notifications about the turn are taken once turn/start was sent
    Row(_T.NOTIFIED, SENT),
    Row(_T.STARTED, _S.AWAITING_CREATED, _S.STREAMING),
    Row(_T.STARTED, _PAST_CREATED),
    # the answer streams; usage and compaction are reported on the way
    Row(_T.CONTENT, _S.AWAITING_CREATED, _S.STREAMING),
    Row(_T.CONTENT, _PAST_CREATED),
    Row(_T.USAGE, SENT),
    Row(_T.COMPACTED, SENT),
    # codex retries the model by itself and reports errors it then ends the turn with
    Row(_T.RETRYING, SENT),
    Row(_T.ERROR_REPORTED, SENT),
    # tools
    Row(_T.TOOL_STARTED, (_S.AWAITING_CREATED, _S.STREAMING), _S.TOOL_CALL),
    Row(_T.TOOL_STARTED, (_S.TOOL_CALL, _S.AWAITING_APPROVAL, _S.AWAITING_TOOL, _S.INTERRUPTING)),
    Row(_T.TOOL_DONE, _S.AWAITING_CREATED, _S.STREAMING),
    Row(_T.TOOL_DONE, _S.TOOL_CALL, _S.STREAMING, guards=no_tool_open),
    Row(_T.TOOL_DONE, (_S.STREAMING, _S.TOOL_CALL, _S.AWAITING_APPROVAL, _S.AWAITING_TOOL,
                       _S.INTERRUPTING)),
    # approvals: the callback is asked (an interrupted turn answers cancel at once); it answers,
    # or the server withdraws the request
    Row(_T.APPROVAL_REQUESTED, (_S.AWAITING_CREATED, _S.STREAMING, _S.TOOL_CALL),
        _S.AWAITING_APPROVAL, decides=Answer.ASK),
    Row(_T.APPROVAL_REQUESTED, (_S.AWAITING_APPROVAL, _S.AWAITING_TOOL), decides=Answer.ASK),
    Row(_T.APPROVAL_REQUESTED, _S.INTERRUPTING, decides=Answer.CANCEL),
    Row(_T.APPROVAL_SETTLED, _S.AWAITING_APPROVAL, _S.TOOL_CALL, guards=(none_pending, tool_open)),
    Row(_T.APPROVAL_SETTLED, _S.AWAITING_APPROVAL, _S.STREAMING, guards=none_pending),
    Row(_T.APPROVAL_SETTLED, _S.AWAITING_APPROVAL, _S.AWAITING_TOOL, guards=only_tools_pending),
    Row(_T.APPROVAL_SETTLED, (_S.AWAITING_APPROVAL, _S.AWAITING_TOOL, _S.INTERRUPTING)),
    # the client's own tools: the handler is asked once per call id (an interrupted turn
    # answers at once); it answers
    Row(_T.TOOL_REQUESTED, SENT, guards=call_known, decides=Answer.REPEAT),
    Row(_T.TOOL_REQUESTED, (_S.AWAITING_CREATED, _S.STREAMING, _S.TOOL_CALL), _S.AWAITING_TOOL,
        decides=Answer.ASK),
    Row(_T.TOOL_REQUESTED, (_S.AWAITING_TOOL, _S.AWAITING_APPROVAL), decides=Answer.ASK),
    Row(_T.TOOL_REQUESTED, _S.INTERRUPTING, decides=Answer.CANCEL),
    Row(InputKind.TOOL_ANSWER, _S.AWAITING_TOOL, _S.TOOL_CALL, guards=(none_pending, tool_open)),
    Row(InputKind.TOOL_ANSWER, _S.AWAITING_TOOL, _S.STREAMING, guards=none_pending),
    Row(InputKind.TOOL_ANSWER, _S.AWAITING_TOOL, _S.AWAITING_APPROVAL,
        guards=only_approvals_pending),
    Row(InputKind.TOOL_ANSWER, (_S.AWAITING_TOOL, _S.AWAITING_APPROVAL, _S.INTERRUPTING)),
    # the caller steers the running turn (codex answers turn/steer)
    Row(InputKind.STEER, RUNNING, guards=id_known, decides=Steering.SEND),
    Row(InputKind.STEER, LIVE, decides=Steering.REFUSE),
    Row(_T.STEERED, SENT),
    # the server ends the turn: turn/completed for this thread and turn, by turn.status; one
    # without a status the turn knows, or about another turn or thread, ends nothing
    Row(_T.COMPLETED, SENT, _S.TERMINAL,
        decides=TurnEndingRule("completed", declines_pending=True)),
    Row(_T.INTERRUPTED, SENT, _S.TERMINAL, guards=timed_out_after_answer,
        decides=TurnEndingRule("completed", declines_pending=True, reason=InputKind.TURN_TIMEOUT)),
    Row(_T.INTERRUPTED, SENT, _S.TERMINAL, guards=timed_out,
        decides=TurnEndingRule("error", declines_pending=True, reason=InputKind.TURN_TIMEOUT)),
    Row(_T.INTERRUPTED, SENT, _S.TERMINAL,
        decides=TurnEndingRule("interrupted", declines_pending=True)),
    Row(_T.FAILED, SENT, _S.TERMINAL, guards=auth_failed,
        decides=TurnEndingRule("failed", retire_session=True, reason="auth_failure")),
    Row(_T.FAILED, SENT, _S.TERMINAL, decides=TurnEndingRule("failed", declines_pending=True)),
    Row(_T.MALFORMED_COMPLETION, SENT),
    Row(_T.FOREIGN_COMPLETION, SENT),
    # the caller stops the turn, or its time runs out
    Row(InputKind.INTERRUPT, _S.QUEUED, _S.RETIRE,
        decides=TurnEndingRule("interrupted", reason="interrupted")),
    Row(InputKind.INTERRUPT, RUNNING, _S.INTERRUPTING, decides=Answer.CANCEL),
    Row(InputKind.INTERRUPT, _S.INTERRUPTING),
    Row(InputKind.TURN_TIMEOUT, _S.QUEUED, _S.RETIRE,
        decides=TurnEndingRule("error", reason=InputKind.TURN_TIMEOUT)),
    Row(InputKind.TURN_TIMEOUT, RUNNING, _S.INTERRUPTING, guards=answer_arrived,
        decides=Timeout.AFTER_ANSWER),
    Row(InputKind.TURN_TIMEOUT, RUNNING, _S.INTERRUPTING, decides=Timeout.BEFORE_ANSWER),
    Row(InputKind.TURN_TIMEOUT, _S.INTERRUPTING),
    Row(InputKind.INTERRUPT_TIMEOUT, _S.INTERRUPTING, _S.RETIRE, guards=timed_out_after_answer,
        decides=TurnEndingRule("completed", retire_session=True, reason=InputKind.TURN_TIMEOUT)),
    Row(InputKind.INTERRUPT_TIMEOUT, _S.INTERRUPTING, _S.RETIRE, guards=timed_out,
        decides=TurnEndingRule("error", retire_session=True, reason=InputKind.TURN_TIMEOUT)),
    Row(InputKind.INTERRUPT_TIMEOUT, _S.INTERRUPTING, _S.RETIRE,
        decides=TurnEndingRule("interrupted", retire_session=True)),
    # the caller closes the session (from any thread): the turn ends at once
    Row(InputKind.CLOSE, LIVE, _S.RETIRE,
        decides=TurnEndingRule("error", retire_session=True, reason="session_closed")),
    # the subprocess or the clocks end the turn without turn/completed: always retire
    *(_fault_row(fault) for fault in FAULTS),
]

TABLE: Final[Table[AppTurn, Decides]] = Table(
    MACHINE, State, (*Trigger, *INPUTS), ROWS, initial=State.QUEUED, final=FINAL
)

#: `turn/completed` statuses that end a turn (anything else is malformed).
_STATUSES: Final = {"completed": Trigger.COMPLETED, "interrupted": Trigger.INTERRUPTED,
                    "failed": Trigger.FAILED}


@attrs.frozen(slots=True)
class TurnEnding:
    """How a turn ended, read off the final row that fired."""

    state: State
    trigger: StrEnum
    outcome: AppOutcome
    retire_session: bool
    reason: str
    declines_pending: bool = False


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
    restarts: `delivery` is what reached the callbacks and the current run's place in it
    (`machines.delivery`), `attempt` the current run's deltas."""

    __slots__ = ("item_id", "delivery", "attempt", "done", "final")

    def __init__(self, item_id: str | None) -> None:
        self.item_id = item_id
        self.delivery = Delivery()
        self.attempt: list[str] = []
        self.done = False
        self.final: str | None = None  # the text `item/completed` gave

    @property
    def diverged(self) -> bool:
        """The current run said something else than what was delivered."""
        return self.delivery.diverged

    def restart(self, item_id: str | None) -> None:
        """Codex started this message over: its deltas come again from the beginning."""
        self.item_id = item_id
        self.attempt = []
        self.delivery.restart()

    def delta(self, delta: str) -> str:
        """Take one delta; return the part that is new to the user ("" while repeating)."""
        self.attempt.append(delta)
        return self.delivery.take(delta)

    def complete(self, text: str | None) -> str:
        """`item/completed`: keep its text; return a tail the deltas did not deliver ("" when
        none, or when this run said something else than what was delivered)."""
        self.done = True
        self.final = text
        return self.delivery.finish(text) if text is not None else ""

    def text(self) -> str:
        """The message's text: the completed text, else this run's text or, when this run has
        not yet repeated everything delivered, the delivered text (never a mix of two runs)."""
        if self.final is not None:
            return self.final
        current = "".join(self.attempt)
        if self.delivery.diverged:
            return current
        shown = self.delivery.delivered()
        return current if len(current) >= len(shown) else shown


@attrs.define(slots=True)
class _Pending:
    method: str
    params: dict[str, Any]


#: What a client tool call was answered: the text and whether it worked.
_ToolResult = tuple[str, bool]


class AppTurn:
    """One app-server turn on `TABLE`. Sans-I/O: its decisions go to the
    session's output (`wire.out`).

    `number` is the turn's number in its session (the `attempt` of its records); `text` is the
    user's input; `compaction` says the turn is a compaction (`thread/compact/start`)."""

    state: State

    def __init__(self, number: int, text: str, wire: Wire, *, compaction: bool = False) -> None:
        self.state = State.QUEUED
        self.number = number
        self.text = text
        self.compaction = compaction
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
        #: the client tools asked for, once per call id; each call's answer, once it has one;
        #: request ids asking again for a call whose answer is still awaited
        self.tool_calls: list[ToolCall] = []
        self.tool_answers: dict[str, _ToolResult] = {}
        self.tool_waiting: dict[str, list[int | str]] = {}
        #: the call id of the tool request being decided on (`call_known` reads it)
        self.asked_call: str | None = None
        #: usage: the thread's total when the turn began (None: unknown yet), the result's dict
        self.usage_base: dict[str, int] | None = None
        self.usage: dict[str, Any] | None = None
        self.compacted = False
        #: the latest agent message completed and nothing started since (`answer_arrived`)
        self.answer_ready = False
        #: why the turn's time ran out, once it did
        self.timeout: Timeout | None = None
        self.malformed_completions = 0
        self.foreign_completions = 0

    # -- state -----------------------------------------------------------------------------
    @property
    def is_final(self) -> bool:
        """True once a final row fired (`terminal` or `retire`)."""
        return self.ending is not None

    @property
    def is_sent(self) -> bool:
        """True once `turn/start` was sent and until the turn ends."""
        return self.start_request_id is not None and self.ending is None

    def _takes(self, trigger: StrEnum) -> bool:
        """Whether the table takes `trigger` in the turn's state at all."""
        return TABLE.takes(self.state, trigger)

    def _moved(self, row: Row[AppTurn, Decides], source: State) -> None:
        dest = row.dest
        assert isinstance(dest, State)
        self._wire.out.append(Transition(MACHINE, self.number, source, dest, row.label))
        rule = row.decides
        if isinstance(rule, TurnEndingRule):
            self.ending = TurnEnding(
                dest, row.trigger, rule.outcome, rule.retire_session,
                rule.reason if rule.reason is not None else row.label, rule.declines_pending,
            )
            self._finish()

    # -- the session drives these ---------------------------------------------------------------
    def send_start(self, thread_id: str, usage_base: dict[str, int] | None = None) -> None:
        """Decide `turn/start` (or, for a compaction, `thread/compact/start`) on `thread_id`
        (the session is ready); `usage_base` is the thread's usage total as last reported."""
        self.thread_id = thread_id
        self.usage_base = usage_base
        params: dict[str, Any] = {"threadId": thread_id}
        method = "thread/compact/start"
        if not self.compaction:
            method, params["input"] = "turn/start", [{"type": "text", "text": self.text}]
        self.start_request_id = self._wire.request(self.number, method, params)
        TABLE.feed(self, Trigger.SENT)

    def start_response(self, result: Any, error: dict[str, Any] | None) -> None:
        """The response to `turn/start` (the turn's id) or `thread/compact/start` (`{}`: the id
        comes with `turn/started`), or a refusal."""
        if not self._takes(Trigger.ACCEPTED):
            return
        turn = result.get("turn") if isinstance(result, dict) else None
        ident = turn.get("id") if isinstance(turn, dict) else None
        if error is None and self.compaction and isinstance(result, dict):
            TABLE.feed(self, Trigger.ACCEPTED)
            return
        if error is not None or type(ident) is not str:
            why = error.get("message") if error is not None else "no turn id in the response"
            method = "thread/compact/start" if self.compaction else "turn/start"
            self.error = {"message": f"codex app-server refused {method}: {why}",
                          "code": error.get("code") if error is not None else None,
                          "type": "protocol_error"}
            TABLE.feed(self, Trigger.REJECTED)
            return
        self.learn_id(ident)
        TABLE.feed(self, Trigger.ACCEPTED)

    def learn_id(self, ident: str) -> None:
        """The turn's id is known (from the response or `turn/started`)."""
        if self.turn_id is None:
            self.turn_id = ident
            if self._takes(Trigger.ID_LEARNED):
                TABLE.feed(self, Trigger.ID_LEARNED)

    def notification(self, method: str, params: dict[str, Any]) -> None:
        """A notification about this turn."""
        handler = _NOTIFICATIONS.get(method)
        if handler is not None and self._takes(Trigger.NOTIFIED):
            handler(self, params)

    def foreign_completion(self) -> None:
        """A `turn/completed` for another turn or thread came while this turn runs."""
        if self._takes(Trigger.FOREIGN_COMPLETION):
            self.foreign_completions += 1
            TABLE.feed(self, Trigger.FOREIGN_COMPLETION)

    def server_request(self, ident: int | str, method: str, params: dict[str, Any]) -> None:
        """An approval-kind server request about this turn."""
        if not self._takes(Trigger.APPROVAL_REQUESTED):
            return
        if ident in self.pending or ident in self.answered:
            return  # a repeated request id: it has its answer, or will get one
        row = TABLE.select(self, Trigger.APPROVAL_REQUESTED)
        if row.decides is Answer.CANCEL:
            self._reply(ident, method, params, "cancel")
            TABLE.feed(self, Trigger.APPROVAL_REQUESTED)
            return
        self.pending[ident] = _Pending(method, params)
        item_id = params.get("itemId")
        item = self.items.get(item_id) if isinstance(item_id, str) else None
        asked = approval_request(method, params, item)
        self._wire.out.append(Effect("approval", self.number, {
            "request_id": ident, "method": method, **attrs.asdict(asked),
        }))
        TABLE.feed(self, Trigger.APPROVAL_REQUESTED)

    def tool_request(self, ident: int | str, params: dict[str, Any]) -> None:
        """An `item/tool/call` request about this turn: codex asks to run a client tool."""
        if not self._takes(Trigger.TOOL_REQUESTED):
            return
        if ident in self.pending or ident in self.answered:
            return  # a repeated request id: it has its answer, or will get one
        call_id = _call_id(ident, params)
        self.asked_call = call_id
        row = TABLE.select(self, Trigger.TOOL_REQUESTED)
        if row.decides is Answer.REPEAT:
            known = self.tool_answers.get(call_id)
            if known is not None:
                self._answer_tool(ident, *known)
            else:
                self.tool_waiting[call_id].append(ident)
        elif row.decides is Answer.CANCEL:
            self._answer_tool(ident, "the turn was interrupted", False)
        else:
            tool = params.get("tool")
            call = ToolCall(call_id=call_id, tool=tool if isinstance(tool, str) else "",
                            arguments=params.get("arguments"), thread_id=self.thread_id,
                            turn_id=self.turn_id)
            self.pending[ident] = _Pending(TOOL_CALL_METHOD, params)
            self._wire.out.append(Effect("call_tool", self.number, {
                "request_id": ident, **attrs.asdict(call)}))
        TABLE.feed(self, Trigger.TOOL_REQUESTED)
        if row.decides is Answer.ASK:  # known from now on: codex may ask for it again
            self.tool_calls.append(call)
            self.tool_waiting[call_id] = []
        self.asked_call = None

    def answer(self, item: ApprovalAnswer) -> None:
        """The approval callback's answer (ignored unless its request is still pending: a turn
        that ended or is being interrupted has none)."""
        pending = self.pending.get(item.request_id)
        if pending is None or pending.method == TOOL_CALL_METHOD:
            return
        self._reply(item.request_id, pending.method, pending.params, item.decision)
        del self.pending[item.request_id]
        TABLE.feed(self, Trigger.APPROVAL_SETTLED)
        if item.decision == "cancel" and pending.method not in CANCEL_IS_AN_ANSWER:
            self.interrupt()

    def tool_answered(self, item: ToolAnswer) -> None:
        """The tool handler's answer (ignored unless its request is still pending)."""
        pending = self.pending.get(item.request_id)
        if pending is None or pending.method != TOOL_CALL_METHOD:
            return
        del self.pending[item.request_id]
        self._settle_tool(_call_id(item.request_id, pending.params), item.request_id, item.text,
                          item.success)
        TABLE.feed(self, InputKind.TOOL_ANSWER)

    def steer(self, text: str) -> None:
        """The caller steers the turn with `text`: `turn/steer`, or a refusal at once."""
        if not self._takes(InputKind.STEER):
            return
        if TABLE.select(self, InputKind.STEER).decides is Steering.SEND:
            assert self.thread_id is not None and self.turn_id is not None
            self._wire.request(self.number, "turn/steer", {
                "threadId": self.thread_id, "expectedTurnId": self.turn_id,
                "input": [{"type": "text", "text": text}]})
        else:
            self._wire.out.append(Effect("steered", self.number, {
                "accepted": False, "error": "the turn cannot be steered now"}))
        TABLE.feed(self, InputKind.STEER)

    def steered(self) -> None:
        """Codex answered a steer (the session decided what the caller is told)."""
        if self._takes(Trigger.STEERED):
            TABLE.feed(self, Trigger.STEERED)

    def interrupt(self) -> None:
        """The caller wants the turn stopped: cancel pending requests, send `turn/interrupt`."""
        self._stop(InputKind.INTERRUPT)

    def time_out(self, seconds: float) -> None:
        """The turn's time ran out: it is stopped like an interrupt, remembering whether its
        answer had arrived."""
        if not self._takes(InputKind.TURN_TIMEOUT):
            return
        row = TABLE.select(self, InputKind.TURN_TIMEOUT)
        if row.dest is not None:  # the limit stops the turn (it is not being stopped already)
            if isinstance(row.decides, Timeout):
                self.timeout = row.decides
            self.error = {"message": f"the turn did not end within {seconds:g} s",
                          "code": "turn_timeout", "type": "turn_timeout"}
        self._stop(InputKind.TURN_TIMEOUT)

    def _stop(self, trigger: InputKind) -> None:
        if not self._takes(trigger):
            return
        if TABLE.select(self, trigger).dest is State.INTERRUPTING:
            self._cancel_pending()
            TABLE.feed(self, trigger)
            if self.turn_id is not None and not self.interrupt_sent:
                self.send_interrupt()
        else:
            TABLE.feed(self, trigger)

    def interrupt_timed_out(self) -> None:
        """No `turn/completed` followed `turn/interrupt` in time."""
        if self._takes(InputKind.INTERRUPT_TIMEOUT):
            TABLE.feed(self, InputKind.INTERRUPT_TIMEOUT)

    def close(self, error: dict[str, Any]) -> None:
        """The caller closed the session; `error` says so."""
        if self.ending is None and self._takes(InputKind.CLOSE):
            self.error = error
            TABLE.feed(self, InputKind.CLOSE)

    def fault(self, fault: SessionFault, error: dict[str, Any]) -> None:
        """Something ended the turn from outside; `error` says what."""
        if self.ending is not None:
            return
        self.error = error
        TABLE.feed(self, fault)

    # -- decisions -------------------------------------------------------------------------
    def _reply(self, ident: int | str, method: str, params: dict[str, Any], decision: str) -> None:
        self.answered.add(ident)
        self._wire.send(self.number, result_reply(ident, approval_answer(method, params, decision)))

    def _answer_tool(self, ident: int | str, text: str, success: bool) -> None:
        self.answered.add(ident)
        self._wire.send(self.number, result_reply(ident, tool_answer(text, success)))

    def _settle_tool(self, call_id: str, ident: int | str, text: str, success: bool) -> None:
        """A tool call has its answer: its request and every request that asked again for the
        same call id get it."""
        self.tool_answers[call_id] = (text, success)
        self._answer_tool(ident, text, success)
        for again in self.tool_waiting.pop(call_id, []):
            self._answer_tool(again, text, success)

    def _cancel_pending(self, decision: str = "cancel") -> None:
        """Answer every request still waiting: approvals with `decision`, tool calls as failed."""
        for ident, pending in list(self.pending.items()):
            if pending.method == TOOL_CALL_METHOD:
                self._settle_tool(_call_id(ident, pending.params), ident,
                                  "the turn ended before the tool answered", False)
            else:
                self._reply(ident, pending.method, pending.params, decision)
        self.pending.clear()

    def send_interrupt(self) -> None:
        """Decide `turn/interrupt` for this turn (its id is known)."""
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

    def _project_unfinished(self) -> None:
        """The agent message in progress ends unfinished: what the user saw of it is kept."""
        current = self._text
        if current is not None and not current.done:
            current.done = True
            partial = current.text()
            if partial:
                self._message({"role": "assistant", "content": partial})

    def _finish(self) -> None:
        """The turn reached a final state: what the user saw is projected, pending requests are
        answered when the session lives on, and the outcome is decided."""
        ending = self.ending
        assert ending is not None
        self._project_unfinished()
        if ending.declines_pending:
            self._cancel_pending("decline")
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
        TABLE.feed(self, Trigger.STARTED)

    def _item_started(self, params: dict[str, Any]) -> None:
        item, kind, ident = _item_of(params)
        if item is None:
            return
        if ident is not None:
            self.items[ident] = item
        self.answer_ready = False
        if kind == "agentMessage":
            self._text = self._begin(self._text, ident, self.streams)
            TABLE.feed(self, Trigger.CONTENT)
        elif kind == "reasoning":
            self._reasoning = self._begin(self._reasoning, ident, self.reasoning)
            TABLE.feed(self, Trigger.CONTENT)
        elif kind in TOOL_ITEMS:
            if ident is not None:
                self.open_tools.add(ident)
            TABLE.feed(self, Trigger.TOOL_STARTED)
        elif kind == "userMessage":
            self._project_unfinished()  # a steer: the message in progress was dropped
        else:
            TABLE.feed(self, Trigger.CONTENT)

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
        new = self._delta(params, reasoning=False)
        if new is not None:
            self._deliver_text(new)

    def _reasoning_delta(self, params: dict[str, Any]) -> None:
        new = self._delta(params, reasoning=True)
        if new is not None:
            self._deliver_reasoning(new)

    def _delta(self, params: dict[str, Any], *, reasoning: bool) -> str | None:
        """A delta of the agent message or reasoning item it names: the part new to the user,
        or None when it belongs to no open message (a late or repeated line) or is no text."""
        delta = params.get("delta")
        if type(delta) is not str:
            return None
        current, kept = (self._reasoning, self.reasoning) if reasoning else (self._text, self.streams)
        stream = self._stream_for(current, params.get("itemId"), kept)
        if stream is None:
            return None
        if reasoning:
            self._reasoning = stream
        else:
            self._text = stream
        TABLE.feed(self, Trigger.CONTENT)
        return stream.delta(delta)

    def _item_completed(self, params: dict[str, Any]) -> None:
        item, kind, ident = _item_of(params)
        if item is None:
            return
        if kind == "agentMessage":
            stream = self._stream_for(self._text, ident, self.streams)
            if stream is None:
                return  # completed already: a repeated line
            text = item.get("text") if isinstance(item.get("text"), str) else None
            self._text = stream
            TABLE.feed(self, Trigger.CONTENT)
            self._deliver_text(stream.complete(text))
            self.answer_ready = bool(text) and item.get("phase") != "commentary"
        elif kind == "reasoning":
            stream = self._stream_for(self._reasoning, ident, self.reasoning)
            if stream is not None:
                self._reasoning = stream
                stream.done = True
            TABLE.feed(self, Trigger.CONTENT)
            return
        elif kind == "contextCompaction":
            self._compacted(params)
            return
        elif kind in TOOL_ITEMS:
            if ident is not None and ident in self.finished_tools:
                # completed already: a repeated line, or the same call run again (the model
                # repeated a call id); it is projected once, but it is no longer open
                self.open_tools.discard(ident)
                TABLE.feed(self, Trigger.TOOL_DONE)
                return
            if ident is not None:
                self.open_tools.discard(ident)
                self.finished_tools.add(ident)
        projection = project_item(item)
        for message in projection.messages:
            self._message(message)
        if projection.ran:
            self.tool_iterations += 1
        if kind in TOOL_ITEMS:
            TABLE.feed(self, Trigger.TOOL_DONE)

    def _compacted(self, params: dict[str, Any]) -> None:
        self.compacted = True
        TABLE.feed(self, Trigger.COMPACTED)

    def _token_usage(self, params: dict[str, Any]) -> None:
        self.model_requests += 1
        reported = params.get("tokenUsage")
        if isinstance(reported, dict):
            last = usage_breakdown(reported.get("last"))
            total = usage_breakdown(reported.get("total"))
            if self.usage_base is None:
                self.usage_base = {key: max(total[key] - last[key], 0) for key in total}
            base = self.usage_base
            usage: dict[str, Any] = {key: max(total[key] - base.get(key, 0), 0) for key in total}
            usage["thread"] = total
            usage["last"] = last
            window = reported.get("modelContextWindow")
            if type(window) is int:
                usage["model_context_window"] = window
            self.usage = usage
        TABLE.feed(self, Trigger.USAGE)

    def _error(self, params: dict[str, Any]) -> None:
        if params.get("willRetry") is True:
            TABLE.feed(self, Trigger.RETRYING)
            return
        self.error = turn_error(params.get("error")) or self.error
        TABLE.feed(self, Trigger.ERROR_REPORTED)

    def _resolved(self, params: dict[str, Any]) -> None:
        ident = params.get("requestId")
        if (type(ident) is int or type(ident) is str) and ident in self.pending:
            pending = self.pending.pop(ident)
            self.answered.add(ident)  # withdrawn by the server: a late answer is not sent
            if pending.method == TOOL_CALL_METHOD:
                # its answer, for the requests asking again for the same call id: a failure
                call_id = _call_id(ident, pending.params)
                self.tool_answers[call_id] = ("codex withdrew the tool call", False)
                for again in self.tool_waiting.pop(call_id, []):
                    self._answer_tool(again, "codex withdrew the tool call", False)
                TABLE.feed(self, InputKind.TOOL_ANSWER)
            else:
                TABLE.feed(self, Trigger.APPROVAL_SETTLED)

    def _turn_completed(self, params: dict[str, Any]) -> None:
        turn = params.get("turn")
        turn = turn if isinstance(turn, dict) else {}
        status = turn.get("status")
        trigger = _STATUSES.get(status) if isinstance(status, str) else None
        if trigger is None:
            self.malformed_completions += 1
            TABLE.feed(self, Trigger.MALFORMED_COMPLETION)
            return
        items = turn.get("items")
        self.final_items = items if isinstance(items, list) else []
        if trigger is Trigger.FAILED:
            reported = turn_error(turn.get("error"))
            if reported is not None:
                self.error = reported
            elif self.error is None:
                self.error = {"message": f"turn/completed with status {status!r}",
                              "code": None, "type": "turn_failed", "details": None}
        TABLE.feed(self, trigger)

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


def _call_id(ident: int | str, params: dict[str, Any]) -> str:
    """A tool request's `callId` (the request's own id stands in when it has none)."""
    call_id = params.get("callId")
    return call_id if isinstance(call_id, str) else f"request-{ident}"


def _item_of(params: dict[str, Any]) -> tuple[dict[str, Any] | None, Any, str | None]:
    """An item notification's item (None when it holds none), its type and its id (None when it
    is not a string)."""
    item = params.get("item")
    if not isinstance(item, dict):
        return None, None, None
    ident = item.get("id")
    return item, item.get("type"), ident if isinstance(ident, str) else None


_NOTIFICATIONS: Final = {
    "turn/started": AppTurn._turn_started,
    "turn/completed": AppTurn._turn_completed,
    "item/started": AppTurn._item_started,
    "item/completed": AppTurn._item_completed,
    "item/agentMessage/delta": AppTurn._agent_delta,
    "item/reasoning/summaryTextDelta": AppTurn._reasoning_delta,
    "item/reasoning/textDelta": AppTurn._reasoning_delta,
    "thread/tokenUsage/updated": AppTurn._token_usage,
    "thread/compacted": AppTurn._compacted,
    "error": AppTurn._error,
    "serverRequest/resolved": AppTurn._resolved,
}

#: Notifications the session routes to a turn (everything else is about the thread or account).
TURN_NOTIFICATIONS: Final = frozenset(_NOTIFICATIONS) | {
    "item/commandExecution/outputDelta", "item/reasoning/summaryPartAdded", "turn/diff/updated",
    "turn/plan/updated", "item/fileChange/outputDelta", "item/mcpToolCall/progress",
}
