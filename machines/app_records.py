"""Records of the codex app-server machines: what they are fed and what a turn produces.

A `codex app-server` subprocess talks newline-delimited JSON-RPC on stdio. The driver
(`engine.drivers.codex`) observes the subprocess and hands the machines these inputs; it never
interprets them itself:

    ServerLine       one line the server wrote on stdout, undecoded (a request, a response, a
                     notification, or something that is not JSON at all)
    StderrLine       one line of the server's stderr, secrets already removed (kept for error
                     messages, never interpreted)
    EndOfStream      the server's stdout ended (`machines.records.EndOfStream`)
    ProcessExit      the subprocess exited with `code` (negative: killed by that signal)
    SpawnFailed      the subprocess could not be started
    TurnRequest      the caller asked for a turn with this text
    CompactRequest   the caller asked to compact the thread (a "turn" of codex's own)
    ApprovalAnswer   the approval callback answered server request `request_id` (an answer is an
                     input: a replay never calls the callback)
    ToolAnswer       the tool handler answered `item/tool/call` request `request_id` (likewise)
    Steer            the caller steered the running turn with more input
    RequestTimeout   a request the client sent was not answered within the session's timeout
    IdleTimeout      a running turn heard nothing for the session's idle timeout
                     (`machines.records.IdleTimeout`)
    TurnTimeout      a running turn reached the session's wall-clock turn limit
                     (`machines.records.TurnTimeout`, a stream turn's too)
    Interrupt        the caller asked the turn to stop (`machines.records.Interrupt`)
    InterruptTimeout `turn/interrupt` was sent and no `turn/completed` followed in time
    Close            the caller closed the session (from any thread, at any time)

The machines answer with `machines.records.Transition` and `Effect` records (`send`: a JSON-RPC
message to write; `approval`: ask the callback; `call_tool`: run the tool handler; `steered`:
how codex answered a steer; `first_delta` / `text_delta` / `reasoning_delta`; `message`: a
projected chat message; `error`; `outcome`; `retire`: close the subprocess). `AppTurnResult` is
what a turn returns, `ApprovalRequest` what the approval callback is shown, `ToolCall` what the
tool handler is shown.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import attrs

from machines.records import (
    EndOfStream,
    IdleTimeout,
    Input,
    InputKind,
    Interrupt,
    Transition,
    TurnTimeout,
)

__all__ = [
    "APP_INPUT_KINDS",
    "AppInput",
    "AppOutcome",
    "AppTurnResult",
    "ApprovalAnswer",
    "ApprovalRequest",
    "ApprovalDecision",
    "Close",
    "CompactRequest",
    "DECISIONS",
    "InterruptTimeout",
    "ProcessExit",
    "RequestTimeout",
    "ServerLine",
    "SessionFault",
    "SessionConfig",
    "SpawnFailed",
    "StderrLine",
    "Steer",
    "ToolAnswer",
    "ToolCall",
    "TurnRequest",
    "TurnTimeout",
]

class SessionFault(StrEnum):
    """What ends an app-server session (and the turn it runs) from outside: its output ended,
    it exited (whatever the exit code), a request or idle timeout, a protocol breach, it could
    not be started. Each is a trigger of both app-server machines."""

    EOF = InputKind.EOF
    EXITED = "exited"
    REQUEST_TIMEOUT = InputKind.REQUEST_TIMEOUT
    IDLE_TIMEOUT = InputKind.IDLE_TIMEOUT
    PROTOCOL_BREACH = "protocol_breach"
    SPAWN_FAILED = InputKind.SPAWN_FAILED


#: What the approval callback may answer.
ApprovalDecision = Literal["accept", "acceptForSession", "decline", "cancel"]
DECISIONS: frozenset[str] = frozenset({"accept", "acceptForSession", "decline", "cancel"})

AppOutcome = Literal["completed", "failed", "interrupted", "error"]


@attrs.frozen(slots=True)
class ServerLine(Input, kind=InputKind.LINE):
    """One line the app-server wrote on stdout (without its newline), exactly as read."""

    text: str


@attrs.frozen(slots=True)
class StderrLine(Input, kind=InputKind.STDERR):
    """One line of the app-server's stderr, with secrets already replaced."""

    text: str


@attrs.frozen(slots=True)
class ProcessExit(Input, kind=InputKind.EXIT):
    """The app-server exited; `code` is its exit status (negative: the signal that killed it),
    None when it could not be read."""

    code: int | None


@attrs.frozen(slots=True)
class SpawnFailed(Input, kind=InputKind.SPAWN_FAILED):
    """The app-server could not be started; `detail` says why (no secrets)."""

    detail: str


@attrs.frozen(slots=True)
class TurnRequest(Input, kind=InputKind.TURN):
    """The caller asked for a turn with `text` as the user's input."""

    text: str


@attrs.frozen(slots=True)
class ApprovalAnswer(Input, kind=InputKind.APPROVAL):
    """The approval callback's answer to server request `request_id`. `decision` is one of
    `DECISIONS`; `detail` says why the driver chose it when the callback did not (no callback,
    the callback raised, it returned something else)."""

    request_id: int | str
    decision: ApprovalDecision
    detail: str = ""


@attrs.frozen(slots=True)
class RequestTimeout(Input, kind=InputKind.REQUEST_TIMEOUT):
    """Client request `request_id` (`method`) got no response within `seconds`."""

    request_id: int
    method: str
    seconds: float


@attrs.frozen(slots=True)
class InterruptTimeout(Input, kind=InputKind.INTERRUPT_TIMEOUT):
    """`turn/interrupt` was sent `seconds` ago and the turn has not completed."""

    seconds: float


@attrs.frozen(slots=True)
class CompactRequest(Input, kind=InputKind.COMPACT):
    """The caller asked codex to compact the thread (`thread/compact/start`): codex runs it as a
    turn of its own, which the session records and ends like any other."""


@attrs.frozen(slots=True)
class ToolAnswer(Input, kind=InputKind.TOOL_ANSWER):
    """The tool handler's answer to `item/tool/call` request `request_id`: `text` is the tool's
    output, `success` False when the handler raised (then `text` is the exception's message) or
    when the driver answered for it; `detail` says why the driver chose the answer (no handler,
    the handler raised, it returned something else)."""

    request_id: int | str
    text: str
    success: bool = True
    detail: str = ""


@attrs.frozen(slots=True)
class Steer(Input, kind=InputKind.STEER):
    """The caller steered the running turn with `text` (`turn/steer`)."""

    text: str


@attrs.frozen(slots=True)
class Close(Input, kind=InputKind.CLOSE):
    """The caller closed the session while the turn ran."""


#: What the app-server machines are fed.
AppInput = (
    ServerLine
    | StderrLine
    | EndOfStream
    | ProcessExit
    | SpawnFailed
    | TurnRequest
    | CompactRequest
    | ApprovalAnswer
    | ToolAnswer
    | Steer
    | RequestTimeout
    | IdleTimeout
    | TurnTimeout
    | Interrupt
    | InterruptTimeout
    | Close
)

#: The input kinds an app-server turn's trace records (every `AppInput` but none).
APP_INPUT_KINDS: frozenset[InputKind] = frozenset({
    InputKind.LINE, InputKind.STDERR, InputKind.EOF, InputKind.EXIT, InputKind.SPAWN_FAILED,
    InputKind.TURN, InputKind.COMPACT, InputKind.APPROVAL, InputKind.TOOL_ANSWER,
    InputKind.STEER, InputKind.REQUEST_TIMEOUT, InputKind.IDLE_TIMEOUT, InputKind.TURN_TIMEOUT,
    InputKind.INTERRUPT, InputKind.INTERRUPT_TIMEOUT, InputKind.CLOSE,
})


def _tool_specs(value: Any) -> tuple[dict[str, Any], ...]:
    return tuple(dict(spec) for spec in value)


@attrs.frozen(slots=True)
class SessionConfig:
    """What the client tells the server about itself and the thread it starts (all of it lands
    in the lines sent, so a trace records it in its header).

    `thread_id`: the thread the handshake continues (`thread/resume`) instead of starting one;
    `developer_instructions`: sent with `thread/start` / `thread/resume` (a thread started with
    other instructions is replaced by a new one before the next turn); `dynamic_tools`: the
    client's own tools (`{name, description, inputSchema}`), offered with `thread/start`, for
    which the session asks codex for its experimental API."""

    cwd: str
    approval_policy: str = "on-request"
    sandbox: str = "read-only"
    client_name: str = "streamfsm"
    client_version: str = "0"
    thread_id: str | None = None
    developer_instructions: str | None = None
    dynamic_tools: tuple[dict[str, Any], ...] = attrs.field(default=(), converter=_tool_specs)

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data (a trace header's `config`)."""
        return {**attrs.asdict(self), "dynamic_tools": [dict(tool) for tool in self.dynamic_tools]}

    @classmethod
    def from_json(cls, data: Any) -> SessionConfig:
        """The config a trace header recorded (raises `TypeError`/`ValueError` if it is not one;
        a field it does not hold, as in traces older than the field, takes its default)."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be an object, not {type(data).__name__}")
        fields: dict[str, Any] = {}
        for field in attrs.fields(cls):
            if field.name not in data:
                continue
            value = data[field.name]
            if field.name == "dynamic_tools":
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    raise TypeError("config.dynamic_tools must be a list of objects")
            elif field.name in _OPTIONAL_TEXT:
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"config.{field.name} must be a string or null")
            elif not isinstance(value, str):
                raise TypeError(f"config.{field.name} must be a string")
            fields[field.name] = value
        if "cwd" not in fields:
            raise ValueError("config has no cwd")
        return cls(**fields)


#: Config fields that may be null.
_OPTIONAL_TEXT = frozenset({"thread_id", "developer_instructions"})


@attrs.frozen(slots=True)
class ApprovalRequest:
    """A server request the approval callback decides on.

    `kind` is "command" (`item/commandExecution/requestApproval`), "file_change"
    (`item/fileChange/requestApproval`), or the method name of another request (permissions,
    MCP elicitation, user input, the legacy approvals). `command` is codex's command string as
    sent, `changes` the file changes announced for the item, `params` the request's raw params."""

    kind: str
    item_id: str | None = None
    command: str | None = None
    cwd: str | None = None
    reason: str | None = None
    changes: list[Any] | None = None
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class ToolCall:
    """A call of one of the client's own tools (`item/tool/call`), as the tool handler is shown
    it: codex's `callId`, the tool's name, its arguments (the parsed JSON value codex sent), and
    the thread and turn it belongs to."""

    call_id: str
    tool: str
    arguments: Any
    thread_id: str | None
    turn_id: str | None


@attrs.frozen(slots=True)
class AppTurnResult:
    """What one app-server turn produced (see CONTRACT v2 and v3 and the README for each field).

    `usage` is None or the turn's token usage as codex last reported it: `input_tokens`,
    `cached_input_tokens`, `output_tokens`, `reasoning_output_tokens`, `total_tokens` for the
    turn (every model request of it), the same for the thread so far (`thread`) and for the last
    model request (`last`), and `model_context_window` when codex sent it."""

    outcome: AppOutcome
    output_text: str
    messages: list[dict[str, Any]]
    tool_iterations: int
    model_requests: int
    error: dict[str, Any] | None
    thread_id: str | None
    turn_id: str | None
    retired: bool
    transitions: list[Transition] = attrs.field(factory=list)
    #: the turn ran on a thread continued with `thread/resume` (not one this session started)
    thread_resumed: bool = False
    usage: dict[str, Any] | None = None
    #: codex compacted the thread during this turn
    compacted: bool = False
    #: the client's own tools the turn called, each once, in the order codex asked for them
    tool_calls: list[ToolCall] = attrs.field(factory=list)

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON data (the trace's `result` record, minus transitions)."""
        return {
            "outcome": self.outcome,
            "output_text": self.output_text,
            "messages": self.messages,
            "tool_iterations": self.tool_iterations,
            "model_requests": self.model_requests,
            "error": self.error,
            "thread_id": self.thread_id,
            "turn_id": self.turn_id,
            "retired": self.retired,
            "thread_resumed": self.thread_resumed,
            "usage": self.usage,
            "compacted": self.compacted,
            "tool_calls": [attrs.asdict(call) for call in self.tool_calls],
        }
