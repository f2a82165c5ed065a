"""Background responses: the requests that continue one and cancel one (shared by the drivers).

A request with `background: true` asks for a response the server keeps generating when the
connection drops. The turn machine decides when to resume one (a `resume` attempt, whose
`resume_point` names the response and the last sequence number received) and when to cancel one
(a `cancel` effect after an interrupt); the drivers send those requests with the caller's openai
client, built here from the turn's own request so both go out with the same per-request options.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["CANCEL_TIMEOUT_S", "PASSED_ON", "cancel_arguments", "is_background", "resume_arguments"]

#: Per-request options of the turn's request that its resumes and cancels carry too.
PASSED_ON: Final[tuple[str, ...]] = ("extra_headers", "extra_query", "extra_body", "timeout")

#: How long a cancel may take before the turn returns without waiting for its answer (seconds).
CANCEL_TIMEOUT_S: Final = 2.0


def is_background(request: Any) -> bool:
    """The request asks for a background response (`background: true`)."""
    return isinstance(request, dict) and request.get("background") is True


def resume_arguments(request: dict[str, Any], point: tuple[str, int]) -> tuple[str, dict[str, Any]]:
    """The response id and the keyword arguments of `responses.retrieve` that stream `point`'s
    response on from just after its sequence number."""
    response_id, sequence = point
    arguments: dict[str, Any] = {"stream": True, "starting_after": sequence}
    if "include" in request:
        arguments["include"] = request["include"]
    for name in PASSED_ON:
        if name in request:
            arguments[name] = request[name]
    return response_id, arguments


def cancel_arguments(request: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `responses.cancel` for a response of `request`: its extra headers,
    query and body, and a short timeout."""
    arguments: dict[str, Any] = {name: request[name] for name in PASSED_ON[:3] if name in request}
    arguments["timeout"] = CANCEL_TIMEOUT_S
    return arguments
