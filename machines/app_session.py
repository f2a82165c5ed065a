"""The app-server session machine: one `codex app-server` subprocess, its handshake, its turns.

Theory of operation
===================

A session is one subprocess speaking newline-delimited JSON-RPC on stdio, one thread in it, and
the turns run on that thread one after the other. The driver (`engine.drivers.codex`) starts the
subprocess and feeds this machine everything it observes, as records from
`machines.app_records`: each stdout line (undecoded), stderr lines, the end of stdout, the exit,
the caller's turn and compaction requests, interrupts, steers and close, the approval callback's
and the tool handler's answers, the driver's timeouts. `receive(input)` returns the decisions, `Transition` and `Effect` records, of this
machine and of the turn it runs (`machines.app_turn`); the driver records them, then acts on
them. The machine never reads a pipe or a clock and never calls anyone, so a recorded turn
replays exactly (`engine.drivers.replay`).

States (`State`) and the rules between them are the rows of `TABLE`:

    spawned          the subprocess runs; nothing sent yet.
    initializing     `initialize` sent (the first turn request starts the handshake; with
                     client tools it asks for codex's experimental API, which they need).
    resuming_thread  `initialize` answered; `initialized` and `thread/resume` sent: the session
                     continues the thread its config names (`thread_id`). A refusal (codex
                     knows no such thread) starts a new one instead, and the turn's result says
                     `thread_resumed` False.
    starting_thread  `initialized` and `thread/start` sent: after `initialize`, after a refused
                     resume, or before a turn whose developer instructions differ from those
                     the thread was started with (a new thread carries the new ones).
    ready            the thread exists; no turn runs.
    turn_running     a turn runs (`turn/start`, or `thread/compact/start` for a compaction,
                     sent); when it ends the session is ready again, unless the turn's final row
                     retires the session.
    retired          final: the subprocess is done for; the driver closes it (`retire` effect)
                     and the next turn starts a new one. Reasons: it closed its output or exited
                     (whatever the exit code: a zero exit without `turn/completed` is a death
                     too), a request or idle timeout, a protocol breach (the handshake refused or
                     answered without the ids it must carry), a credential failure, no
                     `turn/completed` after an interrupt, the caller closing the session. Never
                     a provider error the thread recovers from: a failed turn leaves the
                     session ready.

The handshake rows decide (`ThreadRequest`) which thread request goes out: `thread/start` or
`thread/resume`, each with the config's developer instructions; `thread/start` also offers the
client's tools (`dynamicTools`; codex takes none on resume).

Routing, written in code (the turn machine keeps its own table):

- Decoding is tolerant (`machines.app_protocol.decode_line`): no `"jsonrpc"` field needed;
  a line that is not a JSON-RPC message is counted (`unreadable`) and changes nothing.
- Responses are matched by id to the client's requests (`pending`). An unknown id is counted.
- Notifications name their thread (`threadId`) and turn (`turnId`, or `turn.id` on `turn/*`).
  Other threads' and finished turns' notifications are ignored, but a `turn/completed` that is
  not the running turn's (another turn or thread, or no turn id at all) is handed to the running
  turn as such (`foreign_completion`), which it never ends; a turn whose id is not known yet
  (its `turn/start` response has not come, or a compaction's, which carries none) learns it from
  `turn/started` only. Thread- and account-level notifications (`thread/status/changed`,
  `account/rateLimits/updated`, `configWarning`, ...) are ignored, except that every
  `thread/tokenUsage/updated` for the session's thread keeps the thread's usage total (the
  next turn's usage is counted from it).
- Server requests of an approval kind go to the running turn, which asks the callback; with no
  running turn they are declined at once. `item/tool/call` goes to the running turn when the
  session offered codex its own tools (answered `success: false` with no running turn). Any other
  server request gets a JSON-RPC error.
- A steer goes to the running turn; with none, the caller is told it was refused (`steered`).
  Codex's answer to `turn/steer` is told the caller the same way.
- Faults (end of output, exit, timeouts, breach, spawn failure) end the running or queued turn
  with outcome "error" and retire the session; with no turn they retire it directly. The error
  message ends with the last stderr lines (secrets were removed by the driver). The caller
  closing the session does the same, with the error code `session_closed`.

Between turns the driver keeps the subprocess; the next turn's trace starts with a `snapshot()`
of this machine in its header (`restore()` rebuilds it), so each turn replays on its own.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum
from typing import Any, Final

from machines.app_protocol import (
    APPROVAL_METHODS,
    TOOL_CALL_METHOD,
    USAGE_FIELDS,
    Notification,
    Request,
    Response,
    Unreadable,
    approval_answer,
    decode_line,
    notification,
    request,
    result_reply,
    tool_answer,
    unsupported_request_error,
    usage_breakdown,
)
from machines.app_records import (
    AppInput,
    ApprovalAnswer,
    AppTurnResult,
    Close,
    CompactRequest,
    InterruptTimeout,
    ProcessExit,
    RequestTimeout,
    ServerLine,
    SessionConfig,
    SessionFault,
    SpawnFailed,
    StderrLine,
    Steer,
    ToolAnswer,
    TurnRequest,
    TurnTimeout,
)
from machines.app_turn import TURN_NOTIFICATIONS, AppTurn
from machines.records import (
    Decision,
    Effect,
    EndOfStream,
    IdleTimeout,
    InputKind,
    Interrupt,
    Transition,
)
from machines.table import Row, Table

__all__ = [
    "AppSession",
    "FAULTS",
    "LIVE",
    "MACHINE",
    "State",
    "TABLE",
    "ThreadRequest",
    "Trigger",
]

MACHINE: Final = "app_session"


class State(StrEnum):
    """The states of an app-server session."""

    SPAWNED = "spawned"
    INITIALIZING = "initializing"
    RESUMING_THREAD = "resuming_thread"
    STARTING_THREAD = "starting_thread"
    READY = "ready"
    TURN_RUNNING = "turn_running"
    RETIRED = "retired"


class Trigger(StrEnum):
    """What moves a session: the handshake's steps and turns beginning and ending. What ends it
    from outside is its own trigger, a `SessionFault` (`FAULTS`)."""

    BEGIN = "begin"
    INITIALIZED = "initialized"
    THREAD_RESUMED = "thread_resumed"
    RESUME_REFUSED = "resume_refused"
    THREAD_STARTED = "thread_started"
    TURN_BEGINS = "turn_begins"
    TURN_ENDED = "turn_ended"


class ThreadRequest(StrEnum):
    """What a handshake row decides: the thread request that goes out (its method)."""

    START = "thread/start"
    RESUME = "thread/resume"


#: Before `ready`: a turn asked for now waits (queued) for the handshake.
STARTING: Final = frozenset(
    {State.SPAWNED, State.INITIALIZING, State.RESUMING_THREAD, State.STARTING_THREAD}
)
LIVE: Final = STARTING | {State.READY, State.TURN_RUNNING}

#: What retires a session with no turn running (a running turn ends first, then `turn_ended`).
FAULTS: Final = tuple(SessionFault)


def turn_retires_session(session: AppSession) -> bool:
    """The turn's final row retires the session."""
    turn = session.turn
    return turn is not None and turn.ending is not None and turn.ending.retire_session


def resumes_a_thread(session: AppSession) -> bool:
    """The session's config names a thread to continue."""
    return session.config.thread_id is not None


def instructions_changed(session: AppSession) -> bool:
    """The developer instructions asked for now are not those the thread was started with."""
    return session.config.developer_instructions != session.thread_instructions


_S = State


def _fault_row(fault: StrEnum) -> Row[AppSession, ThreadRequest]:
    return Row(fault, (*STARTING, _S.READY), _S.RETIRED)


ROWS: Final[list[Row[AppSession, ThreadRequest]]] = [
    # the handshake: initialize, then continue the thread the config names or start one
    Row(Trigger.BEGIN, _S.SPAWNED, _S.INITIALIZING),
    Row(Trigger.INITIALIZED, _S.INITIALIZING, _S.RESUMING_THREAD, guards=resumes_a_thread,
        decides=ThreadRequest.RESUME),
    Row(Trigger.INITIALIZED, _S.INITIALIZING, _S.STARTING_THREAD, decides=ThreadRequest.START),
    Row(Trigger.THREAD_RESUMED, _S.RESUMING_THREAD, _S.READY),
    Row(Trigger.RESUME_REFUSED, _S.RESUMING_THREAD, _S.STARTING_THREAD,
        decides=ThreadRequest.START),
    Row(Trigger.THREAD_STARTED, _S.STARTING_THREAD, _S.READY),
    # turns, one at a time; new developer instructions start a new thread first
    Row(Trigger.TURN_BEGINS, _S.READY, _S.STARTING_THREAD, guards=instructions_changed,
        decides=ThreadRequest.START, name="new_thread"),
    Row(Trigger.TURN_BEGINS, _S.READY, _S.TURN_RUNNING),
    Row(Trigger.TURN_ENDED, (_S.TURN_RUNNING, *STARTING), _S.RETIRED, guards=turn_retires_session),
    Row(Trigger.TURN_ENDED, _S.TURN_RUNNING, _S.READY),
    Row(Trigger.TURN_ENDED, STARTING),
    # the subprocess fails, or the caller closes the session, with no turn running
    *(_fault_row(fault) for fault in (*FAULTS, InputKind.CLOSE)),
]

TABLE: Final[Table[AppSession, ThreadRequest]] = Table(
    MACHINE, State, (*Trigger, *FAULTS, InputKind.CLOSE), ROWS, initial=State.SPAWNED,
    final={State.RETIRED},
)

#: The error of a turn the caller ended by closing its session.
SESSION_CLOSED: Final = {"message": "the session was closed while the turn ran",
                         "code": "session_closed", "type": "app_server_error"}

#: How many stderr lines are kept for error messages, and how many an error message shows.
STDERR_KEPT: Final = 40
STDERR_SHOWN: Final = 6
#: Finished turn ids remembered, to ignore their late notifications.
FINISHED_KEPT: Final = 16
#: Server request ids remembered, to answer each once.
REQUESTS_KEPT: Final = 64


_SCOPED: Final = TURN_NOTIFICATIONS
#: A usage breakdown's counts (how a snapshot's `usage_total` is checked).
_USAGE_NAMES: Final = frozenset(name for name, _ in USAGE_FIELDS)


class AppSession:
    """One app-server subprocess's session, on `TABLE`. Sans-I/O:
    `receive(input)` returns the decisions of the session and of its running turn."""

    state: State

    def __init__(self, config: SessionConfig) -> None:
        self.state = State.SPAWNED
        self.config = config
        self.out: list[Decision] = []
        self.next_id = 1
        #: client requests awaiting a response: id -> method
        self.pending: dict[int, str] = {}
        self.thread_id: str | None = None
        self.turn: AppTurn | None = None
        self.turn_number = 0
        self.finished_turns: deque[str] = deque(maxlen=FINISHED_KEPT)
        self.stderr: deque[str] = deque(maxlen=STDERR_KEPT)
        #: ids of the server requests seen lately: a repeated request gets no second answer
        self.server_requests: deque[int | str] = deque(maxlen=REQUESTS_KEPT)
        #: Why the session was retired (None while it is not).
        self.retire_reason: str | None = None
        #: the developer instructions the thread was started (or resumed) with
        self.thread_instructions: str | None = None
        #: the thread was continued with `thread/resume`, not started by this session
        self.thread_resumed = False
        #: the thread's usage total as codex last reported it (None: not reported yet)
        self.usage_total: dict[str, int] | None = None
        self._settled: AppTurn | None = None
        self.unreadable = 0
        self.ignored = 0

    # -- snapshots: where a turn's trace starts --------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The state a new turn starts from, as JSON data (a trace header's `session`)."""
        return {
            "state": self.state,
            "thread_id": self.thread_id,
            "next_id": self.next_id,
            "pending": [[ident, method] for ident, method in sorted(self.pending.items())],
            "turn_number": self.turn_number,
            "finished_turns": list(self.finished_turns),
            "stderr": list(self.stderr),
            "server_requests": list(self.server_requests),
            "thread_instructions": self.thread_instructions,
            "thread_resumed": self.thread_resumed,
            "usage_total": self.usage_total,
        }

    @classmethod
    def restore(cls, config: SessionConfig, snapshot: dict[str, Any]) -> AppSession:
        """A session in the state `snapshot()` described (raises `TypeError`/`ValueError` for
        data that is not a snapshot)."""
        session = cls(config)
        state = snapshot.get("state")
        if state not in (*STARTING, State.READY):
            raise ValueError(f"a turn cannot start in session state {state!r}")
        thread_id = snapshot.get("thread_id")
        if thread_id is not None and not isinstance(thread_id, str):
            raise TypeError("thread_id must be a string or null")
        if state == State.READY and thread_id is None:
            raise ValueError("a ready session needs a thread_id")
        for key in ("next_id", "turn_number"):
            if type(snapshot.get(key)) is not int or snapshot[key] < 0:
                raise ValueError(f"{key} must be a whole number >= 0")
        pending: dict[int, str] = {}
        for entry in snapshot.get("pending") or []:
            if (not isinstance(entry, list) or len(entry) != 2 or type(entry[0]) is not int
                    or not isinstance(entry[1], str)):
                raise ValueError("pending must hold [id, method] pairs")
            pending[entry[0]] = entry[1]
        for key in ("finished_turns", "stderr"):
            value = snapshot.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} must be a list of strings")
        requests = snapshot.get("server_requests") or []
        if not isinstance(requests, list) or not all(
                type(v) is int or type(v) is str for v in requests):
            raise ValueError("server_requests must be a list of ids")
        instructions = snapshot.get("thread_instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise TypeError("thread_instructions must be a string or null")
        resumed = snapshot.get("thread_resumed", False)
        if type(resumed) is not bool:
            raise TypeError("thread_resumed must be a boolean")
        usage = snapshot.get("usage_total")
        if usage is not None and (not isinstance(usage, dict) or set(usage) != _USAGE_NAMES or not all(
                type(count) is int and count >= 0 for count in usage.values())):
            raise ValueError("usage_total must be null or a usage breakdown")
        session.thread_instructions = instructions
        session.thread_resumed = resumed
        session.usage_total = usage
        session.state = State(state)
        session.thread_id = thread_id
        session.next_id = snapshot["next_id"]
        session.turn_number = snapshot["turn_number"]
        session.pending = pending
        session.finished_turns.extend(snapshot.get("finished_turns") or [])
        session.stderr.extend(snapshot.get("stderr") or [])
        session.server_requests.extend(requests)
        return session

    # -- feeding ---------------------------------------------------------------------------------
    @property
    def is_retired(self) -> bool:
        """True once the session is done for."""
        return self.retire_reason is not None

    @property
    def live_turn(self) -> AppTurn | None:
        """The turn being run (queued or sent), if any."""
        turn = self.turn
        return turn if turn is not None and not turn.is_final else None

    def receive(self, item: AppInput) -> list[Decision]:
        """Feed one input record; return the decisions it caused, in order."""
        kind = type(item)
        if kind is ServerLine:
            assert isinstance(item, ServerLine)
            if self.retire_reason is None:
                self._line(item.text)
            else:
                self.ignored += 1
        elif kind is StderrLine:
            assert isinstance(item, StderrLine)
            self.stderr.append(item.text)
        elif kind is TurnRequest:
            assert isinstance(item, TurnRequest)
            self._turn_requested(item.text)
        elif kind is CompactRequest:
            self._turn_requested("", compaction=True)
        elif kind is ApprovalAnswer:
            assert isinstance(item, ApprovalAnswer)
            turn = self.live_turn
            if turn is not None:
                turn.answer(item)
        elif kind is ToolAnswer:
            assert isinstance(item, ToolAnswer)
            turn = self.live_turn
            if turn is not None:
                turn.tool_answered(item)
        elif kind is Steer:
            assert isinstance(item, Steer)
            turn = self.live_turn
            if turn is not None:
                turn.steer(item.text)
            else:
                self.out.append(Effect("steered", self.turn_number, {
                    "accepted": False, "error": "no turn is running"}))
        elif kind is Interrupt:
            turn = self.live_turn
            if turn is not None:
                turn.interrupt()
        elif kind is TurnTimeout:
            assert isinstance(item, TurnTimeout)
            turn = self.live_turn
            if turn is not None:
                turn.time_out(item.seconds)
        elif kind is InterruptTimeout:
            turn = self.live_turn
            if turn is not None:
                turn.interrupt_timed_out()
        elif kind is Close:
            turn = self.live_turn
            if turn is not None:
                turn.close(dict(SESSION_CLOSED))  # then `_settle` ends it and retires the session
            elif self.retire_reason is None:
                TABLE.feed(self, InputKind.CLOSE)
            else:
                self.ignored += 1
        elif kind is EndOfStream:
            self._fault(SessionFault.EOF, "codex app-server closed its output")
        elif kind is ProcessExit:
            assert isinstance(item, ProcessExit)
            status = "an unknown status" if item.code is None else f"status {item.code}"
            self._fault(SessionFault.EXITED, f"codex app-server exited with {status}")
        elif kind is SpawnFailed:
            assert isinstance(item, SpawnFailed)
            self._fault(SessionFault.SPAWN_FAILED, f"codex app-server could not be started: {item.detail}")
        elif kind is RequestTimeout:
            assert isinstance(item, RequestTimeout)
            if self.pending.get(item.request_id) == item.method:
                self._fault(SessionFault.REQUEST_TIMEOUT, f"codex app-server did not answer {item.method} "
                            f"within {item.seconds:g} s")
        elif kind is IdleTimeout:
            assert isinstance(item, IdleTimeout)
            if self.live_turn is not None and self.live_turn.is_sent:
                self._fault(SessionFault.IDLE_TIMEOUT, f"codex app-server sent nothing for "
                            f"{item.seconds:g} s during the turn")
        else:
            raise TypeError(f"not an app-server input: {type(item).__name__}")
        self._settle()
        out = self.out
        self.out = []
        return out

    # -- decisions used by the turn (`machines.app_turn.Wire`) ------------------------------------
    def send(self, number: int, message: dict[str, Any]) -> None:
        """Decide to write `message` to the subprocess."""
        self.out.append(Effect("send", number, message))

    def request(self, number: int, method: str, params: dict[str, Any]) -> int:
        """Decide to send a client request; return its id."""
        ident = self.next_id
        self.next_id += 1
        self.pending[ident] = method
        self.send(number, request(ident, method, params))
        return ident

    # -- the table ---------------------------------------------------------------------------------
    def _moved(self, row: Row[AppSession, ThreadRequest], source: State) -> None:
        dest = row.dest
        assert isinstance(dest, State)
        self.out.append(Transition(MACHINE, self.turn_number, source, dest, row.label))
        if dest in TABLE.final:
            reason = row.label
            if row.trigger is Trigger.TURN_ENDED and self.turn is not None and self.turn.ending is not None:
                reason = self.turn.ending.reason
            self.retire_reason = reason
            self.out.append(Effect("retire", self.turn_number, {"reason": reason}))

    # -- handlers ----------------------------------------------------------------------------------
    def _turn_requested(self, text: str, *, compaction: bool = False) -> None:
        if self.retire_reason is not None or self.live_turn is not None:
            self.ignored += 1  # the driver never asks for a turn here
            return
        self.turn_number += 1
        self.turn = AppTurn(self.turn_number, text, self, compaction=compaction)
        if TABLE.takes(self.state, Trigger.BEGIN):  # a new subprocess: the handshake first
            params: dict[str, Any] = {"clientInfo": {"name": self.config.client_name,
                                                     "version": self.config.client_version}}
            if self.config.dynamic_tools:  # client tools are part of codex's experimental API
                params["capabilities"] = {"experimentalApi": True}
            self.request(self.turn_number, "initialize", params)
            TABLE.feed(self, Trigger.BEGIN)
        elif TABLE.takes(self.state, Trigger.TURN_BEGINS):  # ready: the turn starts at once
            self._start_turn()

    def _start_turn(self) -> None:
        """Ready, with a turn asked for: it starts, unless its row starts a new thread first
        (the turn then starts once the thread has)."""
        turn = self.turn
        assert turn is not None and self.thread_id is not None
        decides = TABLE.select(self, Trigger.TURN_BEGINS).decides
        if decides is not None:
            self._request_thread(decides, Trigger.TURN_BEGINS)
        else:
            turn.send_start(self.thread_id, self.usage_total)
            TABLE.feed(self, Trigger.TURN_BEGINS)

    def _request_thread(self, kind: ThreadRequest, trigger: Trigger) -> None:
        """Send `thread/start` or `thread/resume` with what the config says of the thread, then
        take `trigger` (whose row decided it); from then on the thread is the one asked for."""
        config = self.config
        params: dict[str, Any] = {"cwd": config.cwd, "approvalPolicy": config.approval_policy,
                                  "sandbox": config.sandbox}
        if kind is ThreadRequest.RESUME:
            params = {"threadId": config.thread_id, **params}
        if config.developer_instructions is not None:
            params["developerInstructions"] = config.developer_instructions
        if kind is ThreadRequest.START and config.dynamic_tools:
            params["dynamicTools"] = [dict(tool) for tool in config.dynamic_tools]
        self.usage_total = None  # the new thread's usage is reported from scratch
        self.request(self.turn_number, kind.value, params)
        TABLE.feed(self, trigger)
        self.thread_instructions = config.developer_instructions

    def _took_thread(self, thread_id: str, trigger: Trigger, *, resumed: bool) -> None:
        """A thread request was answered with `thread_id`: ready, and a waiting turn starts."""
        self.thread_id = thread_id
        self.thread_resumed = resumed
        TABLE.feed(self, trigger)
        if self.live_turn is not None:
            self._start_turn()

    def _line(self, text: str) -> None:
        message = decode_line(text)
        kind = type(message)
        if kind is Notification:
            assert isinstance(message, Notification)
            self._notification(message)
        elif kind is Response:
            assert isinstance(message, Response)
            self._response(message)
        elif kind is Request:
            assert isinstance(message, Request)
            self._server_request(message)
        else:
            assert isinstance(message, Unreadable)
            self.unreadable += 1

    def _response(self, message: Response) -> None:
        ident = message.id
        method = self.pending.pop(ident, None) if type(ident) is int else None
        if method is None:
            self.ignored += 1
            return
        error = message.error
        result = message.result
        if method == "initialize":
            if error is not None:
                self._fault(SessionFault.PROTOCOL_BREACH, f"codex app-server refused initialize: "
                            f"{error.get('message')}")
                return
            self.send(self.turn_number, notification("initialized"))
            decides = TABLE.select(self, Trigger.INITIALIZED).decides
            assert decides is not None
            self._request_thread(decides, Trigger.INITIALIZED)
        elif method in ("thread/start", "thread/resume"):
            thread = result.get("thread") if isinstance(result, dict) else None
            thread_id = thread.get("id") if isinstance(thread, dict) else None
            if error is not None or not isinstance(thread_id, str):
                why = error.get("message") if error is not None else "no thread id in the response"
                if method == "thread/resume":  # codex knows no such thread: start a new one
                    decides = TABLE.select(self, Trigger.RESUME_REFUSED).decides
                    assert decides is not None
                    self._request_thread(decides, Trigger.RESUME_REFUSED)
                    return
                self._fault(SessionFault.PROTOCOL_BREACH, f"codex app-server refused thread/start: {why}")
                return
            if method == "thread/resume":
                self._took_thread(thread_id, Trigger.THREAD_RESUMED, resumed=True)
            else:
                self._took_thread(thread_id, Trigger.THREAD_STARTED, resumed=False)
        elif method in ("turn/start", "thread/compact/start"):
            turn = self.live_turn
            if turn is not None and turn.start_request_id == ident:
                turn.start_response(result, error)
        elif method == "turn/steer":
            self.out.append(Effect("steered", self.turn_number, {
                "accepted": error is None,
                "error": error.get("message") if error is not None else None}))
            turn = self.live_turn
            if turn is not None:
                turn.steered()
        # turn/interrupt: its answer ({} or "no active turn") changes nothing

    def _scope(self, method: str, params: dict[str, Any]) -> AppTurn | None:
        """The live, sent turn a notification or request is about, or None to ignore it."""
        turn = self.live_turn
        if turn is None or not turn.is_sent:
            return None
        thread_id = params.get("threadId")
        if thread_id is None and method.startswith("turn/"):
            thread_id = params.get("thread", {}).get("id") if isinstance(
                params.get("thread"), dict) else None
        if thread_id is not None and thread_id != turn.thread_id:
            return None
        turn_id = params.get("turnId")
        if turn_id is None:
            inner = params.get("turn")
            turn_id = inner.get("id") if isinstance(inner, dict) else None
        if turn_id is None:
            return None if method == "turn/completed" else turn  # an end must name its turn
        if not isinstance(turn_id, str):
            return None
        if turn.turn_id is None:
            if turn_id in self.finished_turns or method != "turn/started":
                return None
            turn.learn_id(turn_id)
        return turn if turn_id == turn.turn_id else None

    def _notification(self, message: Notification) -> None:
        method, params = message.method, message.params
        if method not in _SCOPED:
            self.ignored += 1
            return
        turn = self._scope(method, params)
        if turn is not None:
            turn.notification(method, params)
        elif method == "turn/completed" and self.live_turn is not None and self.live_turn.is_sent:
            self.live_turn.foreign_completion()
        else:
            self.ignored += 1
        if method == "thread/tokenUsage/updated" and params.get("threadId") == self.thread_id \
                and isinstance(params.get("tokenUsage"), dict):
            self.usage_total = usage_breakdown(params["tokenUsage"].get("total"))

    def _server_request(self, message: Request) -> None:
        if message.id in self.server_requests:
            self.ignored += 1  # the same request again: it has (or will get) its one answer
            return
        self.server_requests.append(message.id)
        number = self.turn_number
        if message.method == TOOL_CALL_METHOD and self.config.dynamic_tools:
            turn = self._scope(message.method, message.params)
            if turn is None:
                self.send(number, result_reply(message.id, tool_answer("no turn is running", False)))
            else:
                turn.tool_request(message.id, message.params)
            return
        if message.method not in APPROVAL_METHODS:
            self.send(number, unsupported_request_error(message.id, message.method))
            return
        turn = self._scope(message.method, message.params)
        if turn is None:
            self.send(number, result_reply(
                message.id, approval_answer(message.method, message.params, "decline")))
            return
        turn.server_request(message.id, message.method, message.params)

    def _fault(self, fault: SessionFault, message: str) -> None:
        if self.retire_reason is not None:
            self.ignored += 1
            return
        error = {"message": self._with_stderr(message), "code": fault.value,
                 "type": "app_server_error"}
        turn = self.live_turn
        if turn is not None:
            turn.fault(fault, error)  # then `_settle` ends the turn and retires the session
        else:
            TABLE.feed(self, fault)

    def _with_stderr(self, message: str) -> str:
        lines = [line.strip() for line in self.stderr if line.strip()][-STDERR_SHOWN:]
        if not lines:
            return message
        tail = " | ".join(lines)
        if len(tail) > 1000:
            tail = "…" + tail[-999:]
        return f"{message}; its stderr ends: {tail}"

    def _settle(self) -> None:
        """After every input: a turn that just ended leaves the session ready or retired."""
        turn = self.turn
        if turn is None or not turn.is_final or turn is self._settled:
            return
        self._settled = turn
        if turn.turn_id is not None:
            self.finished_turns.append(turn.turn_id)
        TABLE.feed(self, Trigger.TURN_ENDED)

    # -- the result ------------------------------------------------------------------------------
    def turn_result(self, transitions: list[Transition]) -> AppTurnResult:
        """The result of the turn that just ended; `transitions` are its transition records as
        the event log numbered them."""
        turn = self.turn
        if turn is None or turn.ending is None:
            raise RuntimeError("no turn has ended")
        return AppTurnResult(
            outcome=turn.ending.outcome,
            output_text=turn.output_text(),
            messages=list(turn.messages),
            tool_iterations=turn.tool_iterations,
            model_requests=turn.model_requests,
            error=turn.error if turn.ending.outcome in ("failed", "error") else None,
            thread_id=self.thread_id,
            turn_id=turn.turn_id,
            retired=self.retire_reason is not None,
            transitions=transitions,
            thread_resumed=self.thread_resumed,
            usage=turn.usage,
            compacted=turn.compacted,
            tool_calls=list(turn.tool_calls),
        )
