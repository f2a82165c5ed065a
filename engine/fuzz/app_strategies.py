"""Hypothesis strategies for codex app-server sessions: what a turn's inputs can look like.

`app_sessions()` draws an `AppScript`: the inputs of one turn, from the turn request and the
server's handshake to `turn/completed` (or the subprocess dying, or nothing), in the shapes the
real server writes (`engine.fuzz.app_lines`), with everything the real world adds:

- agent messages and reasoning whose deltas codex restarts (again `item/started`, the deltas
  from the beginning, as many times as it retries, possibly cut short), completed or not;
- tools that run, fail or are declined, with approval requests at any point, answered by the
  callback before, after or instead of the server withdrawing them (`serverRequest/resolved`),
  answered twice, or never;
- `error` notifications with and without `willRetry`, token usage (bare, or in codex's whole
  shape with counts that grow over the turn);
- calls of the client's own tools (`item/tool/call`, after their `dynamicToolCall` item), fresh
  or repeating an earlier call id under a new request id (codex asks again when the model
  repeats one), answered by the tool handler with its text or as a failure (a handler that
  raised), once, twice, or never, before or after the request, or withdrawn by the server;
- `turn/completed` lines that are not the turn's end: for another turn, for another thread with
  the turn's own id, without a turn id, without a status or with one no turn ends with;
- values nested 200-1000 levels deep in a failed MCP tool call and in `error` notifications;
- repeated lines, lines about other threads and turns, unknown server requests, lines that are
  not JSON at all, stderr lines;
- the caller's interrupt at any point (then `turn/interrupt`'s answer, `turn/completed
  interrupted`, or silence and the driver's interrupt timeout), the turn's time running out
  (the same answers follow), the caller closing the session at any point, an idle or request
  timeout, the end of output and the exit anywhere.

Each step remembers which agent message it belongs to (`Step.message`), so the invariants
(`engine.fuzz.app_invariants`) can tell what text the user may see for each message, and
whether it is a `turn/completed` that must end nothing (`Step.ends_nothing`). Scripts run
against `CONFIG`, a session that offered codex one tool.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
from hypothesis import strategies as st

from engine.fuzz import app_lines as L
from engine.simulator.shapes import nested_json
from machines.app_records import (
    AppInput,
    ApprovalAnswer,
    Close,
    InterruptTimeout,
    ProcessExit,
    RequestTimeout,
    ServerLine,
    SessionConfig,
    StderrLine,
    ToolAnswer,
    TurnRequest,
    TurnTimeout,
)
from machines.records import EndOfStream, IdleTimeout, Interrupt

__all__ = ["CONFIG", "AppScript", "Step", "app_sessions", "message_texts"]

#: The session every script runs in: it offered codex one tool of its own.
CONFIG: Final = SessionConfig(cwd="/fuzz", dynamic_tools=(
    {"name": "lookup", "description": "Looks a thing up", "inputSchema": {"type": "object"}},))


@attrs.frozen
class Step:
    """One input, the agent message (index into `AppScript.messages`) it belongs to, or -1, and
    whether it is a `turn/completed` that is not the turn's end (`ends_nothing`)."""

    input: AppInput
    message: int = -1
    ends_nothing: bool = False


@attrs.frozen
class AppScript:
    """A generated turn: its inputs in order, the agent messages' texts, the approval request
    ids the server sent, and its client tool requests (request id, call id)."""

    steps: tuple[Step, ...]
    messages: tuple[str, ...]
    approvals: tuple[int, ...]
    tool_requests: tuple[tuple[int, str], ...] = ()

    def inputs(self) -> list[AppInput]:
        """The inputs, in order."""
        return [step.input for step in self.steps]


#: Texts of agent messages: short words so that splits and restarts land everywhere.
message_texts = st.lists(
    st.sampled_from(["The ", "capital ", "of ", "France ", "is ", "Paris", ".", " ", "é", "🙂"]),
    min_size=1, max_size=8,
).map("".join)

_JUNK = st.sampled_from([
    "not json", "", "[1, 2]", "{}", '{"id": "x"}', "null", '{"method": 3}',
    L.agent_delta("ghost", turn="turn-other"), L.agent_delta("ghost", thread="thread-other"),
    L.turn_completed("completed", turn="turn-other"),
    L.notification("thread/status/changed", {"threadId": L.THREAD, "status": {"type": "active"}}),
    L.notification("account/rateLimits/updated", {"rateLimits": {}}),
    L.notification("item/commandExecution/outputDelta", {"threadId": L.THREAD, "turnId": L.TURN,
                                                         "itemId": "call_x", "delta": "out"}),
])


def _splits(draw: Any, text: str) -> list[str]:
    """`text` cut into consecutive pieces (at least one, none empty unless `text` is)."""
    if len(text) <= 1:
        return [text]
    cuts = sorted(draw(st.sets(st.integers(1, len(text) - 1), max_size=4)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def _message(draw: Any, index: int, item_id: str) -> tuple[list[Step], bool, str]:
    """An agent message's lines: runs of deltas (codex restarts), optionally completed."""
    text = draw(message_texts)
    steps = [Step(ServerLine(L.agent_started(item_id)), index)]
    restarts = draw(st.integers(0, 2))
    for _ in range(restarts):
        pieces = _splits(draw, text)
        shown = draw(st.integers(0, len(pieces)))  # how far this run got before it dropped
        steps += [Step(ServerLine(L.agent_delta(p, item_id)), index) for p in pieces[:shown]]
        steps.append(Step(ServerLine(L.error("Reconnecting...", {"responseStreamDisconnected": {}},
                                             True)), index))
        restart_id = draw(st.sampled_from([item_id, item_id + "r"]))
        steps.append(Step(ServerLine(L.agent_started(restart_id)), index))
        item_id = restart_id
    pieces = _splits(draw, text)
    complete = draw(st.booleans())
    shown = len(pieces) if complete else draw(st.integers(0, len(pieces)))
    steps += [Step(ServerLine(L.agent_delta(p, item_id)), index) for p in pieces[:shown]]
    if complete:
        steps.append(Step(ServerLine(L.agent_completed(text, item_id)), index))
    return steps, complete, text


@st.composite
def _tool(draw: Any, call_id: str, approval_id: int | None) -> list[Step]:
    steps = [Step(ServerLine(L.command_started(call_id)))]
    if approval_id is not None:
        steps.append(Step(ServerLine(L.command_approval(approval_id, call_id))))
        if draw(st.booleans()):
            steps.append(Step(ServerLine(L.resolved(approval_id))))
    status = draw(st.sampled_from(["completed", "failed", "declined"]))
    if draw(st.integers(0, 4)):  # mostly completed; sometimes never
        exit_code = {"completed": 0, "failed": draw(st.sampled_from([1, None])), "declined": None}
        steps.append(Step(ServerLine(L.command_completed(
            call_id, status=status, exit_code=exit_code[status],
            output=None if status == "declined" else "out\n"))))
    return steps


#: Where `_deep_line` puts a value nested deep (a JSON string no real line holds).
_DEEP: Final = "@@deep@@"


def _deep_line(draw: Any, number: int) -> str:
    """A line holding values nested 200-1000 levels deep where streamfsm shows or writes server
    values: a failed MCP tool call's server, arguments and error, or an `error` notification's
    message and code (written by hand: JSON writers refuse that depth)."""
    depth = draw(st.integers(200, 1000))
    if draw(st.booleans()):
        line = L.item_completed({"type": "mcpToolCall", "id": f"mcp_{number}", "server": _DEEP,
                                 "tool": "lookup", "arguments": _DEEP, "status": "failed",
                                 "error": {"message": _DEEP}})
    else:
        line = L.error(_DEEP, _DEEP, draw(st.booleans()))
    return line.replace(f'"{_DEEP}"', nested_json(depth).decode())


#: `turn/completed` lines that are not this turn's end: another turn's, another thread's with
#: this turn's id, one naming no turn, one without a status or with a status no turn ends with.
_NOT_OURS: Final = (
    L.turn_completed("completed", turn="turn-other"),
    L.turn_completed("failed", thread="thread-other"),
    L.notification("turn/completed", {"threadId": L.THREAD, "turn": {"status": "completed"}}),
    L.notification("turn/completed", {"threadId": L.THREAD, "turn": {"id": L.TURN}}),
    L.notification("turn/completed", {"threadId": L.THREAD, "turn": {"id": L.TURN,
                                                                     "status": "inProgress"}}),
)


def _usage(draw: Any, total: list[int]) -> str:
    """A usage report: bare, or codex's whole shape whose thread total grows by the request's."""
    if draw(st.booleans()):
        return L.token_usage()
    last = (draw(st.integers(0, 500)), 0, draw(st.integers(0, 50)), draw(st.integers(0, 20)))
    last = (last[0], draw(st.integers(0, last[0])), last[2], last[3])
    for index, count in enumerate(last):
        total[index] += count
    return L.token_usage(last=last, total=(total[0], total[1], total[2], total[3]),
                         window=draw(st.sampled_from([None, 258400])))


def _repeatable(step: Step) -> bool:
    item = step.input
    if not isinstance(item, ServerLine):
        return False
    text = item.text
    return not ("Delta" in text or "/delta" in text or (
        "item/started" in text and ('"agentMessage"' in text or '"reasoning"' in text)))


@st.composite
def app_sessions(draw: Any) -> AppScript:
    """One turn's inputs, from the turn request to its end (see the module's docstring)."""
    steps: list[Step] = [Step(TurnRequest("hi"))]
    for line in L.handshake():
        steps.append(Step(ServerLine(line)))
    steps.append(Step(ServerLine(L.turn_start_response(3))))
    if draw(st.booleans()):
        steps.append(Step(ServerLine(L.turn_started())))
    steps += [Step(ServerLine(line)) for line in L.user_message("hi")]
    messages: list[str] = []
    completed: list[tuple[str, str]] = []
    approvals: list[int] = []
    tool_requests: list[tuple[int, str]] = []
    usage_total = [0, 0, 0, 0]
    segments = draw(st.lists(st.sampled_from(
        ["message", "message", "reasoning", "tool", "approval_tool", "error", "usage", "junk",
         "repeat", "unknown_request", "stderr", "deep", "client_tool", "not_ours"]), max_size=8))
    open_message = False
    for number, segment in enumerate(segments):
        if segment == "message" and not open_message:  # codex completes a message before another
            index = len(messages)
            item_id = f"msg_{index}"
            part, complete, text = draw(_message(index, item_id))
            messages.append(text)
            steps += part
            if complete:
                completed.append((item_id, text))
            else:
                open_message = True
        elif segment == "reasoning":
            text = draw(message_texts)
            steps.append(Step(ServerLine(L.item_started({"type": "reasoning", "id": f"rs_{number}"}))))
            steps += [Step(ServerLine(L.reasoning_delta(p, f"rs_{number}")))
                      for p in _splits(draw, text)]
            steps.append(Step(ServerLine(L.item_completed(
                {"type": "reasoning", "id": f"rs_{number}", "summary": [text]}))))
        elif segment in ("tool", "approval_tool"):
            approval = len(approvals) if segment == "approval_tool" else None
            if approval is not None:
                approvals.append(approval)
            steps += draw(_tool(f"call_{number}", approval))
        elif segment == "error":
            steps.append(Step(ServerLine(L.error("trouble", "other", draw(st.booleans())))))
        elif segment == "usage":
            steps.append(Step(ServerLine(_usage(draw, usage_total))))
        elif segment == "client_tool":
            known = [call_id for _, call_id in tool_requests]
            repeat = bool(known) and draw(st.booleans())  # the model repeats a call id
            call_id = draw(st.sampled_from(known)) if repeat else f"call_t{number}"
            tool_requests.append((200 + number, call_id))
            steps.append(Step(ServerLine(L.dynamic_tool_started(call_id))))
            steps.append(Step(ServerLine(L.tool_call(200 + number, call_id))))
            if draw(st.integers(0, 5)) == 0:  # codex withdraws the request
                steps.append(Step(ServerLine(L.resolved(200 + number))))
            if draw(st.integers(0, 3)):  # mostly completed; sometimes never
                success = draw(st.booleans())
                steps.append(Step(ServerLine(L.dynamic_tool_completed(
                    call_id, text="found" if success else "boom", success=success))))
        elif segment == "not_ours":
            steps.append(Step(ServerLine(draw(st.sampled_from(_NOT_OURS))), ends_nothing=True))
        elif segment == "junk":
            steps.append(Step(ServerLine(draw(_JUNK))))
        elif segment == "repeat":
            # any line again, except what starts a message or carries its text: codex repeats
            # those only when it restarts a message, which `_message` draws
            again = [step for step in steps[1:] if _repeatable(step)]
            if again:
                steps.append(draw(st.sampled_from(again)))
        elif segment == "unknown_request":
            steps.append(Step(ServerLine(L.server_request(100 + number, "attestation/generate", {
                "threadId": L.THREAD, "turnId": L.TURN}))))
        elif segment == "stderr":
            steps.append(Step(StderrLine("WARN something")))
        elif segment == "deep":
            steps.append(Step(ServerLine(_deep_line(draw, number))))
    # the approval callback's answers, anywhere after the turn request (even before the request)
    for ident in approvals:
        for _ in range(draw(st.integers(0, 2))):
            position = draw(st.integers(1, len(steps)))
            decision = draw(st.sampled_from(["accept", "acceptForSession", "decline", "cancel"]))
            steps.insert(position, Step(ApprovalAnswer(ident, decision)))
    # the tool handler's answers, likewise: its text, or a failure (it raised)
    for ident, _ in tool_requests:
        for _ in range(draw(st.integers(0, 2))):
            position = draw(st.integers(1, len(steps)))
            success = draw(st.booleans())
            steps.insert(position, Step(ToolAnswer(
                ident, "found it" if success else "the service is down", success,
                "" if success else "the tool handler raised ConnectionError")))
    # the caller's interrupt, and the caller closing the session, anywhere
    interrupted = draw(st.booleans())
    if interrupted:
        steps.insert(draw(st.integers(1, len(steps))), Step(Interrupt()))
    if draw(st.integers(0, 7)) == 0:
        steps.insert(draw(st.integers(1, len(steps))), Step(Close()))
    # how it ends
    ending = draw(st.sampled_from(["completed", "failed", "interrupted", "eof", "exit", "timeout",
                                   "nothing", "close", "turn_limit"]))
    if ending == "turn_limit":  # the turn's time runs out: codex answers as to an interrupt
        steps.append(Step(TurnTimeout(5.0)))
        interrupted = True
        ending = draw(st.sampled_from(["interrupted", "nothing"]))
    if interrupted and draw(st.booleans()):
        steps.append(Step(ServerLine(L.response(4, {}))))
        if ending == "nothing":
            steps.append(Step(InterruptTimeout(2.0)))
    if ending in ("completed", "failed", "interrupted"):
        items = [{"type": "agentMessage", "id": i, "text": t} for i, t in completed]
        error = {"message": "it failed", "codexErrorInfo": "other"} if ending == "failed" else None
        steps.append(Step(ServerLine(L.turn_completed(
            ending, items if ending == "completed" else [], error))))
        if draw(st.booleans()):  # lines after the end change nothing
            steps.append(Step(ServerLine(L.agent_delta("late", "msg_late"))))
    elif ending == "eof":
        steps.append(Step(EndOfStream()))
    elif ending == "exit":
        steps.append(Step(ProcessExit(draw(st.sampled_from([0, 1, -9])))))
        steps.append(Step(EndOfStream()))
    elif ending == "timeout":
        steps.append(Step(draw(st.sampled_from([IdleTimeout(5.0),
                                                RequestTimeout(4, "turn/interrupt", 30.0)]))))
    elif ending == "close":
        steps.append(Step(Close()))
    return AppScript(tuple(steps), tuple(messages), tuple(approvals), tuple(tool_requests))
