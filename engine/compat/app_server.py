"""The seed runtime's `run_codex_app_server_turn`, same signature and return dict, over
`engine.CodexSession`.

    from engine.compat import run_codex_app_server_turn

    outcome = run_codex_app_server_turn(agent, user_message=text, original_user_message=text,
                                        messages=messages, effective_task_id=task_id)

What it does with the agent, as the seed did (shared/SEED.md, part C):

1. The session: `agent._codex_session` when the host set one, else a new
   `CodexSession(cwd=agent.session_cwd or os.getcwd(), approvals=agent.codex_approval_callback)`
   stored there (created on the first turn, reused after). It inherits `os.environ`, so
   `STREAMFSM_CODEX` and `CODEX_HOME` apply.
2. The turn: `session.run_turn(user_message, ...)` with the agent's `_fire_stream_delta` /
   `_fire_reasoning_delta` as callbacks and `agent._interrupt_requested` as the interrupt. The
   user message is already in `messages` (the host appended it); the projected assistant and
   tool messages are appended after it.
3. A turn that retired its session (the subprocess died, a timeout, a protocol breach, a
   credential failure) drops `agent._codex_session`, so the next turn starts a new one (and
   tells `on_retry=`, when given, before it does).
4. Bookkeeping: tool iterations are added to `agent._iters_since_skill`; reaching
   `agent._skill_nudge_interval` (with `skill_manage` among `agent.valid_tool_names`) asks for a
   skill review and resets the counter; external memory is synced
   (`agent._sync_external_memory_for_turn`) only for a completed turn; a background review
   (`agent._spawn_background_review`) is spawned when there is final text, no interrupt, and a
   review was asked for. Each of these is skipped when the agent lacks the attribute.
5. The return dict: `final_response`, `messages`, `api_calls`, `completed`, `partial`, `error`,
   `codex_thread_id`, `codex_turn_id` (and `interrupted`); and, as the seed's successor returns
   them, when codex reported usage (`usage_fields`): `prompt_tokens` (the turn's input tokens,
   cached ones included), `completion_tokens`, `total_tokens`, `input_tokens` (not cached),
   `output_tokens`, `cache_read_tokens`, `cache_write_tokens` (0: codex does not count them
   apart), `reasoning_tokens` and `last_prompt_tokens` (the last model request's input tokens:
   how full the context is). The turn's counts cover every model request of the turn.

The seed's defects, fixed (see docs/migration.md): a failed turn is not "completed" (the
outcome is `turn.status`); the final answer is delivered once (deltas only, never again as an
interim message, never twice when codex retries); no deadline ends a turn whose answer arrived;
silence after a tool result does not retire a session; `api_calls` counts model responses
instead of 1; declined approvals are not tool iterations; the echoed user message is not
appended again; provider errors the thread recovers from leave the session alive.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from engine.compat.agent_traces import trace_path
from engine.drivers.codex import CodexSession
from engine.log.eventlog import Callbacks, announce_retry
from engine.log.logs import log
from machines.app_records import AppTurnResult
from machines.records import RetryNotice

__all__ = ["APPROVAL_ATTRIBUTE", "run_codex_app_server_turn", "usage_fields"]

#: The agent attribute holding the host's approval callback (callable(engine.ApprovalRequest)
#: -> "accept" | "acceptForSession" | "decline" | "cancel"), used when the session is created.
APPROVAL_ATTRIBUTE = "codex_approval_callback"


def _session(agent: Any) -> CodexSession:
    session = getattr(agent, "_codex_session", None)
    if session is not None:
        return session  # type: ignore[no-any-return]
    approvals = getattr(agent, APPROVAL_ATTRIBUTE, None)
    session = CodexSession(
        cwd=getattr(agent, "session_cwd", None) or os.getcwd(),
        approvals=approvals if callable(approvals) else None,
    )
    agent._codex_session = session
    return session


def _callbacks(agent: Any, on_retry: Callable[[RetryNotice], Any] | None) -> Callbacks:
    text = getattr(agent, "_fire_stream_delta", None)
    reasoning = getattr(agent, "_fire_reasoning_delta", None)
    return Callbacks(
        on_text_delta=text if callable(text) else None,
        on_reasoning_delta=reasoning if callable(reasoning) else None,
        on_retry=on_retry if callable(on_retry) else None,
    )


#: The agent attribute that remembers why the session before this one retired, until the turn
#: that starts the next one tells `on_retry` (the seed drops a retired session; the new one
#: knows nothing of it).
RETIRED_ATTRIBUTE = "_codex_session_retired"


def _drop_session(agent: Any, retired: str | None = None) -> None:
    session = getattr(agent, "_codex_session", None)
    agent._codex_session = None
    if retired is not None:
        setattr(agent, RETIRED_ATTRIBUTE, retired)
    if session is not None:
        try:
            session.close()
        except Exception:  # closing a broken session may fail again; it is gone either way
            log.debug("closing the codex session raised")


def _retire_reason(result: AppTurnResult) -> str:
    code = (result.error or {}).get("code")
    return str(code) if code else result.outcome


def _error_text(result: AppTurnResult) -> str | None:
    if result.outcome in ("completed", "interrupted"):
        return None
    error = result.error or {}
    message = error.get("message")
    return str(message) if message else f"codex app-server turn {result.outcome}"


def usage_fields(usage: dict[str, Any] | None) -> dict[str, int]:
    """The successor's usage keys from `AppTurnResult.usage` (none when codex reported none)."""
    if usage is None:
        return {}
    cached = usage["cached_input_tokens"]
    return {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
        "input_tokens": max(usage["input_tokens"] - cached, 0),
        "output_tokens": usage["output_tokens"],
        "cache_read_tokens": cached,
        "cache_write_tokens": 0,
        "reasoning_tokens": usage["reasoning_output_tokens"],
        "last_prompt_tokens": usage["last"]["input_tokens"],
    }


def _bookkeeping(agent: Any, result: AppTurnResult, original_user_message: Any,
                 messages: list[dict[str, Any]], should_review_memory: bool) -> None:
    iterations = getattr(agent, "_iters_since_skill", 0) + result.tool_iterations
    agent._iters_since_skill = iterations
    should_review_skills = False
    interval = getattr(agent, "_skill_nudge_interval", 0) or 0
    if interval > 0 and iterations >= interval and "skill_manage" in (
        getattr(agent, "valid_tool_names", None) or ()
    ):
        should_review_skills = True
        agent._iters_since_skill = 0
    if result.outcome == "completed":
        sync = getattr(agent, "_sync_external_memory_for_turn", None)
        if callable(sync):
            try:
                sync(original_user_message=original_user_message,
                     final_response=result.output_text, interrupted=False, messages=messages)
            except Exception:
                log.debug("external memory sync raised")
    if result.output_text and result.outcome != "interrupted" and (
        should_review_memory or should_review_skills
    ):
        spawn = getattr(agent, "_spawn_background_review", None)
        if callable(spawn):
            try:
                spawn(messages_snapshot=list(messages), review_memory=should_review_memory,
                      review_skills=should_review_skills)
            except Exception:
                log.debug("background review spawn raised")


def run_codex_app_server_turn(
    agent: Any,
    *,
    user_message: str,
    original_user_message: Any,
    messages: list[dict[str, Any]],
    effective_task_id: str,
    should_review_memory: bool = False,
    trace: str | os.PathLike[str] | None = None,
    on_retry: Callable[[RetryNotice], Any] | None = None,
) -> dict[str, Any]:
    """Hand one turn to the agent's codex app-server session and return the seed's dict;
    `trace=` (keyword only) records the turn; `on_retry=` (keyword only) hears an
    `engine.RetryNotice` before a new app-server process starts after a retirement."""
    path = trace_path(agent, trace, "run_codex_app_server_turn")
    callbacks = _callbacks(agent, on_retry)
    retired = getattr(agent, RETIRED_ATTRIBUTE, None)
    if retired is not None and getattr(agent, "_codex_session", None) is None:
        setattr(agent, RETIRED_ATTRIBUTE, None)
        announce_retry(callbacks, RetryNotice(2, "stream", str(retired), 0.0))
    session = _session(agent)
    try:
        result = session.run_turn(
            user_message,
            callbacks=callbacks,
            interrupt=lambda: bool(getattr(agent, "_interrupt_requested", False)),
            trace=path,
        )
    except Exception as error:  # a wrong call, or a bug: the session cannot be trusted
        log.warning("codex app-server turn raised", error=type(error).__name__,
                    task=str(effective_task_id))
        _drop_session(agent)
        return {
            "final_response": f"Codex app-server turn failed: {type(error).__name__}: {error}. "
                              "Fall back to the default runtime.",
            "messages": messages,
            "api_calls": 0,
            "completed": False,
            "partial": True,
            "interrupted": False,
            "error": str(error),
            "codex_thread_id": getattr(session, "thread_id", None),
            "codex_turn_id": None,
        }
    if result.retired:
        _drop_session(agent, retired=_retire_reason(result))
    messages.extend(result.messages)
    _bookkeeping(agent, result, original_user_message, messages, should_review_memory)
    completed = result.outcome == "completed"
    return {
        "final_response": result.output_text,
        "messages": messages,
        "api_calls": result.model_requests,
        "completed": completed,
        "partial": not completed,
        "interrupted": result.outcome == "interrupted",
        "error": _error_text(result),
        "codex_thread_id": result.thread_id,
        "codex_turn_id": result.turn_id,
        **usage_fields(result.usage),
    }
