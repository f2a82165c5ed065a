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
    ApprovalAnswer   the approval callback answered server request `request_id` (an answer is an
                     input: a replay never calls the callback)
    RequestTimeout   a request the client sent was not answered within the session's timeout
    IdleTimeout      a running turn heard nothing for the session's idle timeout
                     (`machines.records.IdleTimeout`)
    Interrupt        the caller asked the turn to stop (`machines.records.Interrupt`)
    InterruptTimeout `turn/interrupt` was sent and no `turn/completed` followed in time

The machines answer with `machines.records.Transition` and `Effect` records (`send`: a JSON-RPC
message to write; `approval`: ask the callback; `first_delta` / `text_delta` /
`reasoning_delta`; `message`: a projected chat message; `error`; `outcome`; `retire`: close the
subprocess). `AppTurnResult` is what a turn returns, `ApprovalRequest` what the callback is shown.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import attrs

from machines.records import EndOfStream, IdleTimeout, Input, InputKind, Interrupt, Transition

__all__ = [
    "AppInput",
    "AppOutcome",
    "AppTurnResult",
    "ApprovalAnswer",
    "ApprovalRequest",
    "ApprovalDecision",
    "DECISIONS",
    "InterruptTimeout",
    "ProcessExit",
    "RequestTimeout",
    "ServerLine",
    "SessionFault",
    "SessionConfig",
    "SpawnFailed",
    "StderrLine",
    "TurnRequest",
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


#: What the app-server machines are fed.
AppInput = (
    ServerLine
    | StderrLine
    | EndOfStream
    | ProcessExit
    | SpawnFailed
    | TurnRequest
    | ApprovalAnswer
    | RequestTimeout
    | IdleTimeout
    | Interrupt
    | InterruptTimeout
)


@attrs.frozen(slots=True)
class SessionConfig:
    """What the client tells the server about itself and the thread it starts (all of it lands
    in the lines sent, so a trace records it in its header)."""

    cwd: str
    approval_policy: str = "on-request"
    sandbox: str = "read-only"
    client_name: str = "streamfsm"
    client_version: str = "0"

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data (a trace header's `config`)."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> SessionConfig:
        """The config a trace header recorded (raises `TypeError`/`ValueError` if it is not one)."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be an object, not {type(data).__name__}")
        fields = {}
        for field in attrs.fields(cls):
            if field.name in data:
                value = data[field.name]
                if not isinstance(value, str):
                    raise TypeError(f"config.{field.name} must be a string")
                fields[field.name] = value
        if "cwd" not in fields:
            raise ValueError("config has no cwd")
        return cls(**fields)


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
class AppTurnResult:
    """What one app-server turn produced (see CONTRACT v2 and the README for each field)."""

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
        }
