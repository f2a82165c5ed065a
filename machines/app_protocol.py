"""The codex app-server's JSON-RPC, as data: decoding a line, shaping answers, projecting items.

Pure functions, no state: the machines (`machines.app_session`, `machines.app_turn`) use them.

Decoding (`decode_line`) is tolerant the way the server is loose: the `"jsonrpc"` field is
optional (codex never sends it), ids may be integers or strings, and a line that is not a JSON
object is `Unreadable`, never an exception. A message with a `method` and an `id` is a server
request; with a `method` and no `id` a notification; with an `id`, no `method` and a `result` or
an `error` a response to one of the client's requests.

Answers (`approval_answer`) are written in the shape the request's own schema asks for
(codex 0.169.0, `codex app-server generate-json-schema`):

    item/commandExecution/requestApproval   {"decision": accept | acceptForSession | decline | cancel}
    item/fileChange/requestApproval         same
    item/permissions/requestApproval        {"permissions": <granted profile>, "scope": turn | session}
                                            (declined: nothing granted)
    mcpServer/elicitation/request           {"action": accept | decline | cancel, "content": null}
    item/tool/requestUserInput              {"answers": {}}
    execCommandApproval, applyPatchApproval {"decision": approved | approved_for_session | denied | abort}

Any other server request gets a JSON-RPC error (`unsupported_request_error`), except
`item/tool/call` in a session that offered codex its own tools: the tool handler's answer goes
back as `{"contentItems": [{"type": "inputText", "text": ...}], "success": ...}`
(`tool_answer`), which codex hands the model as the `function_call_output`.

Usage (`usage_breakdown`): `thread/tokenUsage/updated` carries `tokenUsage.last` (the last model
request, as the provider reported it) and `tokenUsage.total` (the thread so far) in camelCase;
they are read as `input_tokens`, `cached_input_tokens`, `output_tokens`,
`reasoning_output_tokens`, `total_tokens` (a missing or non-integer count is 0).

Projection (`project_item`) turns a completed item into chat messages as the seed runtime did:
an agent message is assistant text; a command is an assistant `tool_calls` entry
(`exec_command` with `{command, cwd}`) plus a `tool` message with its output (`[exit N]` first
when it failed); a file change is `apply_patch`; an MCP call is `mcp.<server>.<tool>`. A client tool's call
(`dynamicToolCall`) is its tool's name (`<namespace>.<tool>` in a namespace) with its output
text. A declined or failed approval gets a tool message saying so and is not a tool iteration.
"""

from __future__ import annotations

import shlex
from typing import Any, Final, TypeGuard

import attrs
import orjson

from machines.app_records import ApprovalRequest
from machines.json_text import sorted_json_text

__all__ = [
    "APPROVAL_METHODS",
    "TOOL_CALL_METHOD",
    "USAGE_FIELDS",
    "CANCEL_IS_AN_ANSWER",
    "Notification",
    "Projection",
    "Request",
    "Response",
    "Unreadable",
    "approval_answer",
    "approval_request",
    "decode_line",
    "is_auth_failure",
    "notification",
    "project_item",
    "request",
    "result_reply",
    "tool_answer",
    "turn_error",
    "unsupported_request_error",
    "usage_breakdown",
]

#: Server requests the approval callback answers, with the kind it is shown.
APPROVAL_METHODS: Final[dict[str, str]] = {
    "item/commandExecution/requestApproval": "command",
    "item/fileChange/requestApproval": "file_change",
    "item/permissions/requestApproval": "item/permissions/requestApproval",
    "mcpServer/elicitation/request": "mcpServer/elicitation/request",
    "item/tool/requestUserInput": "item/tool/requestUserInput",
    "execCommandApproval": "execCommandApproval",
    "applyPatchApproval": "applyPatchApproval",
}

#: Requests whose answer can say "cancel" itself; for the others the client cancels by sending
#: `turn/interrupt` after a declining answer.
CANCEL_IS_AN_ANSWER: Final = frozenset(
    {
        "item/commandExecution/requestApproval",
        "item/fileChange/requestApproval",
        "mcpServer/elicitation/request",
        "execCommandApproval",
        "applyPatchApproval",
    }
)

#: The server request asking the client to run one of its own tools.
TOOL_CALL_METHOD: Final = "item/tool/call"

#: JSON-RPC "method not found", for server requests this client does not serve.
METHOD_NOT_FOUND: Final = -32601


@attrs.frozen(slots=True)
class Request:
    """A server-to-client request: it must be answered (by id)."""

    id: int | str
    method: str
    params: dict[str, Any]


@attrs.frozen(slots=True)
class Notification:
    """A server notification."""

    method: str
    params: dict[str, Any]


@attrs.frozen(slots=True)
class Response:
    """The server's response to client request `id`: `result`, or `error` (then not None)."""

    id: int | str
    result: Any
    error: dict[str, Any] | None


@attrs.frozen(slots=True)
class Unreadable:
    """A line that is no JSON-RPC message (not JSON, not an object, no method and no id)."""

    why: str


Message = Request | Notification | Response | Unreadable

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _is_id(value: Any) -> TypeGuard[int | str]:
    return (type(value) is int) or (type(value) is str)


def decode_line(text: str) -> Message:
    """One stdout line as a message; never raises."""
    try:
        value = _loads(text)
    except _JSONDecodeError:
        return Unreadable("not JSON")
    if type(value) is not dict:
        return Unreadable("not a JSON object")
    method = value.get("method")
    params = value.get("params")
    if not isinstance(params, dict):
        params = {}
    ident = value.get("id")
    if type(method) is str:
        if _is_id(ident):
            return Request(ident, method, params)
        if ident is None:
            return Notification(method, params)
        return Unreadable("bad id")
    if _is_id(ident) and ("result" in value or "error" in value):
        error = value.get("error")
        if error is not None and not isinstance(error, dict):
            error = {"message": str(error)}
        return Response(ident, value.get("result"), error)
    return Unreadable("no method and no response")


# -- client messages ------------------------------------------------------------------------
def request(ident: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A client request."""
    return {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A client notification."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def result_reply(ident: int | str, result: Any) -> dict[str, Any]:
    """A response to a server request."""
    return {"jsonrpc": "2.0", "id": ident, "result": result}


def unsupported_request_error(ident: int | str, method: str) -> dict[str, Any]:
    """The JSON-RPC error for a server request this client does not serve."""
    return {
        "jsonrpc": "2.0",
        "id": ident,
        "error": {"code": METHOD_NOT_FOUND, "message": f"streamfsm does not handle {method}"},
    }


def tool_answer(text: str, success: bool) -> dict[str, Any]:
    """The `result` answering `item/tool/call`: the tool's text output, and whether it worked."""
    return {"contentItems": [{"type": "inputText", "text": text}], "success": success}


#: The counts of a usage breakdown: its name in the result, and in codex's notification.
USAGE_FIELDS: Final = (
    ("input_tokens", "inputTokens"),
    ("cached_input_tokens", "cachedInputTokens"),
    ("output_tokens", "outputTokens"),
    ("reasoning_output_tokens", "reasoningOutputTokens"),
    ("total_tokens", "totalTokens"),
)


def usage_breakdown(value: Any) -> dict[str, int]:
    """One of `tokenUsage`'s breakdowns (`last`, `total`) in the result's words; a count that
    is missing or not a whole number >= 0 is 0."""
    value = value if isinstance(value, dict) else {}
    out = {}
    for name, key in USAGE_FIELDS:
        count = value.get(key)
        out[name] = count if type(count) is int and count >= 0 else 0
    return out


_LEGACY = {"accept": "approved", "acceptForSession": "approved_for_session",
           "decline": "denied", "cancel": "abort"}


def approval_answer(method: str, params: dict[str, Any], decision: str) -> dict[str, Any]:
    """The `result` answering approval request `method` with `decision`, in its own shape."""
    if method in ("item/commandExecution/requestApproval", "item/fileChange/requestApproval"):
        return {"decision": decision}
    if method in ("execCommandApproval", "applyPatchApproval"):
        return {"decision": _LEGACY.get(decision, "denied")}
    if method == "item/permissions/requestApproval":
        if decision in ("accept", "acceptForSession"):
            asked = params.get("permissions")
            return {
                "permissions": asked if isinstance(asked, dict) else {},
                "scope": "session" if decision == "acceptForSession" else "turn",
            }
        return {"permissions": {}, "scope": "turn"}
    if method == "mcpServer/elicitation/request":
        action = {"accept": "accept", "acceptForSession": "accept", "cancel": "cancel"}
        return {"action": action.get(decision, "decline"), "content": None}
    if method == "item/tool/requestUserInput":
        return {"answers": {}}
    return {"decision": decision}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def approval_request(
    method: str, params: dict[str, Any], item: dict[str, Any] | None
) -> ApprovalRequest:
    """What the callback is shown for approval request `method`; `item` is the item the
    request is about, as `item/started` announced it (its file changes), if known."""
    kind = APPROVAL_METHODS.get(method, method)
    item_id = _text(params.get("itemId")) or _text(params.get("callId"))
    command: Any = params.get("command")
    if isinstance(command, list) and all(isinstance(part, str) for part in command):
        command = shlex.join(command)
    changes: Any = params.get("changes")
    if changes is None and item is not None:
        changes = item.get("changes")
    if isinstance(changes, dict):  # the legacy patch approval: {path: change}
        changes = [{"path": path, **(c if isinstance(c, dict) else {})} for path, c in changes.items()]
    return ApprovalRequest(
        kind=kind,
        item_id=item_id,
        command=_text(command),
        cwd=_text(params.get("cwd")),
        reason=_text(params.get("reason")),
        changes=changes if isinstance(changes, list) else None,
        params=params,
    )


# -- failures -------------------------------------------------------------------------------
def turn_error(error: Any) -> dict[str, Any] | None:
    """A turn's error (`turn.error` or an `error` notification's `error`) in the result's
    shape: `message`, `code` (codex's `codexErrorInfo` as sent), `type`, `details`."""
    if not isinstance(error, dict):
        return None
    return {
        "message": error.get("message"),
        "code": error.get("codexErrorInfo"),
        "type": "turn_failed",
        "details": error.get("additionalDetails"),
    }


def _status_codes(value: Any) -> list[Any]:
    if isinstance(value, dict):
        found = [value.get("httpStatusCode")] if "httpStatusCode" in value else []
        for inner in value.values():
            found.extend(_status_codes(inner))
        return found
    return []


def is_auth_failure(error: dict[str, Any] | None) -> bool:
    """Whether a turn failed on credentials (401, `unauthorized`, an OAuth `invalid_grant`): a
    fresh subprocess re-reads them, so the session is retired."""
    if error is None:
        return False
    code = error.get("code")
    if code == "unauthorized" or 401 in _status_codes(code):
        return True
    words = " ".join(_words(error.get(key)) for key in ("message", "details")).lower()
    return "invalid_grant" in words or "401 unauthorized" in words


def _words(value: Any) -> str:
    """A field's text to search (nothing for an empty value)."""
    return _shown(value) if value else ""


def _shown(value: Any) -> str:
    """A server's value as text: a string as it is, a scalar as `str()` gives it, a list or an
    object as JSON text (`sorted_json_text`: "" when nested too deep), so text never depends on
    how deep the interpreter may recurse."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return sorted_json_text(value)
    return str(value)


# -- projection -----------------------------------------------------------------------------
@attrs.frozen(slots=True)
class Projection:
    """The chat messages one completed item becomes, and whether it counts as a tool iteration
    (a tool that ran)."""

    messages: tuple[dict[str, Any], ...]
    ran: bool


_NOTHING = Projection((), False)


def _dumps(value: Any) -> str:
    """Compact JSON with sorted keys; a value orjson cannot write (nested 255 levels or deeper,
    an integer beyond 64 bits) as `sorted_json_text` writes it, never an exception."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return sorted_json_text(value)


def _tool(call_id: str, name: str, arguments: Any, output: str, ran: bool) -> Projection:
    call = {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": _dumps(arguments)}}
    return Projection(
        (
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": output},
        ),
        ran,
    )


def _not_run(status: Any, what: str) -> str:
    if status == "declined":
        return f"[declined] the {what} was not approved"
    return f"[failed] the {what} did not run"


def project_item(item: dict[str, Any]) -> Projection:
    """A completed item as chat messages (the echoed user message and items the seed did not
    project, such as reasoning, give none)."""
    kind = item.get("type")
    ident = _text(item.get("id")) or ""
    status = item.get("status")
    if kind == "agentMessage":
        text = item.get("text")
        if not isinstance(text, str):
            return _NOTHING
        return Projection(({"role": "assistant", "content": text},), False)
    if kind == "commandExecution":
        arguments = {"command": item.get("command"), "cwd": item.get("cwd")}
        code = item.get("exitCode")
        if type(code) is int:
            output = _text(item.get("aggregatedOutput")) or ""
            if code != 0:
                output = f"[exit {code}]\n{output}"
            return _tool(ident, "exec_command", arguments, output, True)
        if status == "completed":
            return _tool(ident, "exec_command", arguments,
                         _text(item.get("aggregatedOutput")) or "", True)
        return _tool(ident, "exec_command", arguments, _not_run(status, "command"), False)
    if kind == "fileChange":
        arguments = {"changes": item.get("changes") if isinstance(item.get("changes"), list) else []}
        if status == "completed":
            return _tool(ident, "apply_patch", arguments, "[applied]", True)
        return _tool(ident, "apply_patch", arguments, _not_run(status, "change"), False)
    if kind == "dynamicToolCall":
        return _client_tool(item, ident, status)
    if kind == "mcpToolCall":
        name = f"mcp.{_shown(item.get('server'))}.{_shown(item.get('tool'))}"
        mcp_arguments: Any = item.get("arguments")
        error = item.get("error")
        if status == "completed":
            return _tool(ident, name, mcp_arguments, _mcp_output(item.get("result")), True)
        if isinstance(error, dict):
            return _tool(ident, name, mcp_arguments, f"[error] {_shown(error.get('message'))}", True)
        return _tool(ident, name, mcp_arguments, _not_run(status, "tool call"), False)
    return _NOTHING


def _client_tool(item: dict[str, Any], ident: str, status: Any) -> Projection:
    """A call of one of the client's own tools: its output text; a failed one (the handler
    raised) shows the text it failed with, one that never got an answer says so."""
    tool, namespace = item.get("tool"), item.get("namespace")
    name = _shown(tool) if namespace is None else f"{_shown(namespace)}.{_shown(tool)}"
    texts = [c.get("text") for c in item.get("contentItems") or [] if isinstance(c, dict)] \
        if isinstance(item.get("contentItems"), list) else []
    output = "\n".join(t for t in texts if isinstance(t, str))
    if status == "completed":
        return _tool(ident, name, item.get("arguments"), output, True)
    if output:
        return _tool(ident, name, item.get("arguments"), f"[error] {output}", True)
    return _tool(ident, name, item.get("arguments"), _not_run(status, "tool call"), False)


def _mcp_output(result: Any) -> str:
    if isinstance(result, dict):
        content = result.get("content")
        if isinstance(content, list):
            texts = [c.get("text") for c in content if isinstance(c, dict)]
            if texts and all(isinstance(t, str) for t in texts):
                return "\n".join(t for t in texts if isinstance(t, str))
    return _dumps(result) if result is not None else ""
