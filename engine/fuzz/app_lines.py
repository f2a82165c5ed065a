"""Lines in the shape the real `codex app-server` 0.169.0 writes, for tests and strategies.

Each function returns one stdout line (a JSON string, without `"jsonrpc"`, with `emittedAtMs`
on notifications, as codex writes them) for a thread `THREAD` and turn `TURN` unless told
otherwise. `handshake()` is the server's side of a session start. Shapes follow the lines
recorded from the real binary (replay_fixtures/codex_app_server/).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "THREAD",
    "TURN",
    "agent_delta",
    "agent_started",
    "agent_completed",
    "command_approval",
    "command_completed",
    "command_started",
    "compaction",
    "dynamic_tool_completed",
    "dynamic_tool_started",
    "error",
    "error_response",
    "handshake",
    "item_completed",
    "item_started",
    "notification",
    "reasoning_delta",
    "resolved",
    "response",
    "server_request",
    "token_usage",
    "tool_call",
    "turn_completed",
    "turn_start_response",
    "turn_started",
    "user_message",
]

THREAD = "thread-0001"
TURN = "turn-0001"


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def notification(method: str, params: dict[str, Any]) -> str:
    """A server notification."""
    return _line({"method": method, "params": params, "emittedAtMs": 1795620000000})


def response(ident: int, result: Any) -> str:
    """A response to client request `ident`."""
    return _line({"id": ident, "result": result})


def server_request(ident: int, method: str, params: dict[str, Any]) -> str:
    """A server-to-client request."""
    return _line({"method": method, "id": ident, "params": params})


def handshake(thread: str = THREAD) -> list[str]:
    """The responses to `initialize` (id 1) and `thread/start` (id 2)."""
    return [
        response(1, {"userAgent": "codex/0.169.0", "codexHome": "/tmp/home",
                     "platformFamily": "unix", "platformOs": "linux"}),
        notification("configWarning", {"summary": "bubblewrap not found", "details": None}),
        response(2, {"thread": {"id": thread, "status": {"type": "idle"}}, "model": "gpt-5.1-codex",
                     "approvalPolicy": "on-request", "sandbox": {"type": "readOnly"}}),
        notification("thread/started", {"thread": {"id": thread}}),
    ]


def turn_start_response(ident: int, turn: str = TURN) -> str:
    """The response to `turn/start`."""
    return response(ident, {"turn": {"id": turn, "items": [], "status": "inProgress", "error": None}})


def turn_started(turn: str = TURN, thread: str = THREAD) -> str:
    """`turn/started`."""
    return notification("turn/started", {"threadId": thread, "turn": {
        "id": turn, "items": [], "status": "inProgress", "error": None}})


def item_started(item: dict[str, Any], turn: str = TURN, thread: str = THREAD) -> str:
    """`item/started` of `item`."""
    return notification("item/started", {"item": item, "threadId": thread, "turnId": turn})


def item_completed(item: dict[str, Any], turn: str = TURN, thread: str = THREAD) -> str:
    """`item/completed` of `item`."""
    return notification("item/completed", {"item": item, "threadId": thread, "turnId": turn})


def user_message(text: str, turn: str = TURN) -> list[str]:
    """The echo of the user's input: started and completed."""
    item = {"type": "userMessage", "id": "user-1", "content": [{"type": "text", "text": text}]}
    return [item_started(item, turn), item_completed(item, turn)]


def agent_started(item_id: str = "msg_1", turn: str = TURN) -> str:
    """`item/started` of an agent message."""
    return item_started({"type": "agentMessage", "id": item_id, "text": ""}, turn)


def agent_delta(delta: str, item_id: str = "msg_1", turn: str = TURN,
                thread: str = THREAD) -> str:
    """`item/agentMessage/delta`."""
    return notification("item/agentMessage/delta", {"threadId": thread, "turnId": turn,
                                                    "itemId": item_id, "delta": delta})


def agent_completed(text: str, item_id: str = "msg_1", turn: str = TURN) -> str:
    """`item/completed` of an agent message."""
    return item_completed({"type": "agentMessage", "id": item_id, "text": text}, turn)


def reasoning_delta(delta: str, item_id: str = "rs_1", turn: str = TURN) -> str:
    """`item/reasoning/summaryTextDelta`."""
    return notification("item/reasoning/summaryTextDelta", {
        "threadId": THREAD, "turnId": turn, "itemId": item_id, "delta": delta, "summaryIndex": 0})


def _command(call_id: str, command: str, status: str, exit_code: int | None,
             output: str | None) -> dict[str, Any]:
    return {"type": "commandExecution", "id": call_id, "command": f"/bin/bash -lc '{command}'",
            "cwd": "/work", "status": status, "exitCode": exit_code, "aggregatedOutput": output}


def command_started(call_id: str = "call_1", command: str = "echo ok", turn: str = TURN) -> str:
    """`item/started` of a command."""
    return item_started(_command(call_id, command, "inProgress", None, None), turn)


def command_completed(call_id: str = "call_1", command: str = "echo ok", *,
                      status: str = "completed", exit_code: int | None = 0,
                      output: str | None = "ok\n", turn: str = TURN) -> str:
    """`item/completed` of a command (status `completed`, `failed` or `declined`)."""
    return item_completed(_command(call_id, command, status, exit_code, output), turn)


def command_approval(ident: int, call_id: str = "call_1", command: str = "echo ok",
                     turn: str = TURN) -> str:
    """`item/commandExecution/requestApproval`."""
    return server_request(ident, "item/commandExecution/requestApproval", {
        "threadId": THREAD, "turnId": turn, "itemId": call_id,
        "command": f"/bin/bash -lc '{command}'", "cwd": "/work", "reason": "needs approval",
        "availableDecisions": ["accept", "cancel"]})


def resolved(ident: int) -> str:
    """`serverRequest/resolved`."""
    return notification("serverRequest/resolved", {"threadId": THREAD, "requestId": ident})


def error_response(ident: int, message: str, code: int = -32600) -> str:
    """An error response to client request `ident` (codex answers every refusal with -32600)."""
    return _line({"error": {"code": code, "message": message}, "id": ident})


def _breakdown(counts: tuple[int, int, int, int]) -> dict[str, int]:
    input_tokens, cached, output, reasoning = counts
    return {"totalTokens": input_tokens + output, "inputTokens": input_tokens,
            "cachedInputTokens": cached, "cacheWriteInputTokens": 0, "outputTokens": output,
            "reasoningOutputTokens": reasoning}


def token_usage(turn: str = TURN, *, last: tuple[int, int, int, int] | None = None,
                total: tuple[int, int, int, int] | None = None,
                window: int | None = None) -> str:
    """`thread/tokenUsage/updated`: one model response. Without counts, a bare report; with
    them (input, cached input, output, reasoning output), codex's whole shape."""
    usage: dict[str, Any] = {"total": {"totalTokens": 3}}
    if last is not None and total is not None:
        usage = {"total": _breakdown(total), "last": _breakdown(last), "modelContextWindow": window}
    return notification("thread/tokenUsage/updated", {"threadId": THREAD, "turnId": turn,
                                                      "tokenUsage": usage})


def _dynamic_tool(call_id: str, tool: str, arguments: Any, status: str,
                  text: str | None, success: bool | None) -> dict[str, Any]:
    return {"type": "dynamicToolCall", "id": call_id, "namespace": None, "tool": tool,
            "arguments": arguments, "status": status,
            "contentItems": None if text is None else [{"type": "inputText", "text": text}],
            "success": success, "durationMs": None}


def dynamic_tool_started(call_id: str = "call_t1", tool: str = "lookup", arguments: Any = None,
                         turn: str = TURN) -> str:
    """`item/started` of a call of one of the client's tools."""
    return item_started(_dynamic_tool(call_id, tool, arguments or {}, "inProgress", None, None),
                        turn)


def dynamic_tool_completed(call_id: str = "call_t1", tool: str = "lookup", arguments: Any = None,
                           text: str = "ok", success: bool = True, turn: str = TURN) -> str:
    """`item/completed` of a client tool's call, with the answer it got."""
    status = "completed" if success else "failed"
    return item_completed(_dynamic_tool(call_id, tool, arguments or {}, status, text, success),
                          turn)


def tool_call(ident: int, call_id: str = "call_t1", tool: str = "lookup",
              arguments: Any = None, turn: str = TURN) -> str:
    """`item/tool/call`: codex asks the client to run one of its tools."""
    return server_request(ident, "item/tool/call", {
        "threadId": THREAD, "turnId": turn, "callId": call_id, "namespace": None, "tool": tool,
        "arguments": arguments or {}})


def compaction(item_id: str = "compaction-1", turn: str = TURN) -> list[str]:
    """A `contextCompaction` item, started and completed (codex compacting the thread)."""
    item = {"type": "contextCompaction", "id": item_id}
    return [item_started(item, turn), item_completed(item, turn)]


def error(message: str, code: Any, will_retry: bool, turn: str = TURN) -> str:
    """The `error` notification."""
    return notification("error", {"error": {"message": message, "codexErrorInfo": code,
                                            "additionalDetails": None},
                                  "willRetry": will_retry, "threadId": THREAD, "turnId": turn})


def turn_completed(status: str = "completed", items: list[dict[str, Any]] | None = None,
                   error: dict[str, Any] | None = None, turn: str = TURN,
                   thread: str = THREAD) -> str:
    """`turn/completed` with `turn.status`, `turn.items` and `turn.error`."""
    return notification("turn/completed", {"threadId": thread, "turn": {
        "id": turn, "items": items or [], "status": status, "error": error, "durationMs": 5}})
