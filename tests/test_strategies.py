"""The session strategies (engine.fuzz.strategies) draw every kind of session they document,
with the choices spread as documented, and bench/bench_fuzz.py runs.

The strategies take each unit's small choices from one draw of bytes ("dice"); these tests make
sure that no kind of session was lost on the way and that Hypothesis's own generation (which
copies choices between same-labelled spans) does not skew the choices toward the simplest ones.
"""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from engine.log.codec import json_type
from engine.strategies import (
    CLIENT_KEY,
    RELAY_KEY,
    Session,
    escaped_secret,
    mangled,
    responses,
    run_session,
    sessions,
    sse_bytes,
)
from engine.simulator.shapes import created, text_message
from machines.records import (
    Chunk,
    TurnPolicy,
    EndOfStream,
    HttpError,
    Interrupt,
    Stall,
    TransportFault,
)

ROOT = Path(__file__).resolve().parent.parent

_GENERATE = settings(
    database=None,
    derandomize=True,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _sample(strategy: Any, count: int) -> list[Any]:
    seen: list[Any] = []

    @settings(_GENERATE, max_examples=count)
    @given(strategy)
    def collect(value: Any) -> None:
        seen.append(value)

    with _without_local_constants():
        collect()
    return seen


@contextlib.contextmanager
def _without_local_constants() -> Iterator[None]:
    """The sample is derandomized, but Hypothesis also draws constants from every local module
    loaded in the process, so what it generates would depend on which modules other tests
    imported first: none are drawn while sampling (its own constants still are)."""
    from hypothesis.internal.conjecture import providers

    if not hasattr(providers, "_get_local_constants") or not hasattr(providers, "CONSTANTS_CACHE"):
        yield  # another Hypothesis: nothing to pin
        return
    with mock.patch.object(providers, "_get_local_constants", providers.Constants), \
            mock.patch.object(providers, "CONSTANTS_CACHE", {}):
        yield


def _kinds(session: Session) -> set[str]:
    """The kinds of thing a session holds, as docs/fuzzing.md lists them."""
    kinds = {f"attempts:{len(session.attempts)}"}
    policy = session.policy
    kinds.add(f"retries:{policy.max_stream_retries}")
    kinds.add(f"fallback:{policy.fallback}")
    kinds.add(f"idle:{policy.idle_timeout_s}")
    kinds.add(f"codes:{len(policy.retry_failed_codes)}")
    first = None
    for number, script in enumerate(session.attempts):
        *middle, last = script
        if isinstance(last, HttpError):
            kinds.add("http_error")
            continue
        kinds.add(f"ending:{last!r}")
        for step in middle:
            if not isinstance(step, Chunk):
                kinds.add(f"between_reads:{step!r}")
        body = b"".join(step.data for step in script if isinstance(step, Chunk))
        reads = sum(isinstance(step, Chunk) for step in script)
        kinds.add("one_read" if reads == 1 else "several_reads" if reads > 1 else "no_read")
        if number == 0:
            first = body
        elif body == first:
            kinds.add("retry_repeats_first_answer")
        if body.startswith(b"\xef\xbb\xbf"):
            kinds.add("bom")
        kinds.add("crlf" if b"\r\n" in body else "cr" if b"\r" in body else "lf")
        if not body.replace(b"\r", b"\n").endswith(b"\n\n"):
            kinds.add("truncated")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            kinds.add("invalid_utf8")
        for marker in (
            b"codex.rate_limits",
            b": keepalive",
            b"response.created",
            b"response.in_progress",
            b"output_text.delta",
            b"reasoning_summary_text.delta",
            b"function_call_arguments.delta",
            b"response.completed",
            b"response.incomplete",
            b"response.failed",
            b"event: error",
            b"[DONE]",
            b'"instructions"',  # a full Response object, not a compact one
        ):
            if marker in body:
                kinds.add(marker.decode())
        if any(bad in body for bad in (b"not json", b"[1, 2]", b'"no_type"', b'"delta":"Pa\n')):
            kinds.add("bad_data_frame")
    return kinds


@pytest.mark.slow
def test_adversarial_sessions_hold_every_documented_kind() -> None:
    seen: collections.Counter[str] = collections.Counter()
    for session in _sample(sessions(), 600):
        seen.update(_kinds(session))
    expected = {
        *(f"attempts:{n}" for n in (1, 2, 3, 4)),
        *(f"retries:{n}" for n in (0, 1, 2)),
        "fallback:True", "fallback:False", "idle:5.0", "idle:None",
        *(f"codes:{n}" for n in (0, 1, 2)),
        "http_error", "one_read", "several_reads", "retry_repeats_first_answer",
        "bom", "crlf", "cr", "lf", "truncated", "invalid_utf8",
        *(f"ending:{step!r}" for step in (
            EndOfStream(), TransportFault("drop"), TransportFault("read_timeout"),
            TransportFault("connect_error"), Stall(60.0), Interrupt())),
        *(f"between_reads:{step!r}" for step in (
            TransportFault("drop"), TransportFault("read_timeout"), Stall(60.0), Stall(0.01),
            Interrupt())),
        "codex.rate_limits", ": keepalive", "response.created", "response.in_progress",
        "output_text.delta", "reasoning_summary_text.delta", "function_call_arguments.delta",
        "response.completed", "response.incomplete", "response.failed", "event: error",
        "[DONE]", "bad_data_frame", '"instructions"',
    }
    assert expected <= set(seen), sorted(expected - set(seen))


@pytest.mark.slow
def test_choices_are_not_skewed_toward_the_simplest() -> None:
    """Hypothesis's generator copies one unit's choices over another's; a copy that does not
    fit the draw it lands on falls back to the simplest choices (zeros), which once made the
    simplest policy come up in a fifth of all sessions. It is one policy of 36."""
    sampled = _sample(sessions(), 600)
    simplest = TurnPolicy(max_stream_retries=0, fallback=False)
    assert sum(session.policy == simplest for session in sampled) / len(sampled) < 0.1


def _v3_kinds(session: Session) -> set[str]:
    """The kinds of input the v3 limits are about, in one session and how it plays."""
    kinds: set[str] = set()
    if session.policy.turn_timeout_s is not None:
        kinds.add("turn_limit")
        reasons = [a.reason for a in run_session(session, reraise=False).attempts]
        if reasons[-1] == "turn_timeout":
            kinds.add("ended_at_the_limit")
            if len(reasons) > 1 and reasons[-2].startswith("http_"):
                kinds.add("a_wait_past_the_limit")
        if any(isinstance(step, Stall) for script in session.attempts for step in script):
            kinds.add("dripping_server")
    for script in session.attempts:
        for step in script:
            if isinstance(step, HttpError):
                waits = [step.header("retry-after") or "", step.header("retry-after-ms") or ""]
                if any(len(wait) > 100 for wait in waits):
                    kinds.add("retry_after_too_large_to_represent")
    body = b"".join(step.data for script in session.attempts for step in script
                    if isinstance(step, Chunk))
    for name, written in (("all", escaped_secret(CLIENT_KEY, "all")),
                          ("half", escaped_secret(CLIENT_KEY, "half")),
                          ("upper", escaped_secret(CLIENT_KEY, "upper")),
                          ("double", escaped_secret(CLIENT_KEY, "double")),
                          ("slash", escaped_secret(RELAY_KEY, "slash"))):
        if written.encode() in body:
            kinds.add(f"secret_escaped:{name}")
    return kinds


@pytest.mark.slow
def test_sessions_reach_the_v3_limits_and_escaped_secrets() -> None:
    """Every class of input the contract's v3 limits name comes up: turns with a wall-clock limit
    against dripping servers, ended by it, also right after an HTTP error whose wait would pass
    it; Retry-After too large to represent; the client's keys written escaped in every way."""
    seen: collections.Counter[str] = collections.Counter()
    for session in _sample(sessions(), 1200):
        seen.update(_v3_kinds(session))
    expected = {
        "turn_limit", "ended_at_the_limit", "a_wait_past_the_limit", "dripping_server",
        "retry_after_too_large_to_represent", "secret_escaped:all", "secret_escaped:half",
        "secret_escaped:upper", "secret_escaped:double", "secret_escaped:slash",
    }
    assert expected <= set(seen), sorted(expected - set(seen))


@pytest.mark.slow
def test_every_outcome_comes_up() -> None:
    outcomes = collections.Counter(
        run_session(session, reraise=False).outcome for session in _sample(sessions(), 500)
    )
    assert set(outcomes) == {"completed", "incomplete", "failed", "error", "interrupted"}


def test_well_formed_sessions_end_cleanly_and_repeat_the_answer_on_retries() -> None:
    for session in _sample(sessions(adversarial=False), 100):
        for script in session.attempts:
            assert isinstance(script[-1], EndOfStream)
            assert all(isinstance(step, Chunk) for step in script[:-1])


def test_mangled_and_sse_bytes_shrink_to_no_edit_and_plain_bytes() -> None:
    from hypothesis import find

    parts = [*created(), *text_message("Hi", deltas=2)]
    assert find(mangled(parts), lambda _: True) == parts
    body = find(sse_bytes(parts), lambda _: True)
    assert body.endswith(b"\n\n") and b"\r" not in body and not body.startswith(b"\xef")
    assert find(responses(), lambda _: True)  # a compact stream, not nothing


def test_bench_fuzz_runs_and_reports_a_result() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_fuzz.py"), "--examples", "15",
         "--rounds", "1", "--no-profile"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["candidate"]["examples_per_s"] > 0
    assert set(result["candidate"]["ms_per_example"]) == {"total", "generation", "play", "checks"}


# --------------------------------------------------------------------------------------------
# The failure classes sessions() reach beyond orderings and cuts

#: The type each field has in a well-formed stream (where it is present).
_WELL_TYPED: dict[str, type | tuple[type, ...]] = {
    "type": str, "delta": str, "output_index": int, "content_index": int, "summary_index": int,
    "sequence_number": int, "item": dict, "response": dict, "item_id": str, "arguments": str,
    "text": str, "rate_limits": dict,
}


def _classes(session: Session) -> set[str]:
    """The failure classes a session holds: fields of another JSON type (by the type they got),
    values nested hundreds of levels deep (and in which frame), an event over the policy's
    `max_event_bytes`, tool calls of every kind, secrets echoed."""
    from engine.fuzz.reference import oversized_event, reference_events
    from engine.fuzz.reference_output import is_json, json_value
    from engine.fuzz.strategies import CLIENT_KEY, SESSION_TOKEN, SHAPED_KEY
    from machines.json_text import nests_deeper_than

    found: set[str] = set()
    for script in session.attempts:
        body = b"".join(step.data for step in script if isinstance(step, Chunk))
        if oversized_event(body, session.policy.max_event_bytes) is not None:
            found.add("event_too_large")
        for _, data in reference_events(body, ended=False):
            event = json_value(data)
            if not is_json(event):
                if nests_deeper_than(data):
                    found.add("deeper_than_orjson_reads")
                continue
            if not isinstance(event, dict):
                continue
            for field, kind in _WELL_TYPED.items():
                if field in event and (
                    not isinstance(event[field], kind) or isinstance(event[field], bool)
                ):
                    found.add(f"retyped:{json_type(event[field])}")
            if '"level":' in data:
                found.add(f"deep:{event.get('type')}" if isinstance(event.get("type"), str)
                          else "deep")
            item = event.get("item")
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                found.add(f"item:{item['type']}")
        for secret, name in ((CLIENT_KEY, "client_key"), (SESSION_TOKEN, "session_token"),
                             (SHAPED_KEY, "shaped_key")):
            if secret.encode() in body:
                found.add(f"echo:{name}")
        key = CLIENT_KEY.encode()
        if key not in body and (key[:8] in body or key[-8:] in body):
            found.add("echo:client_key_split")  # across events (or attempts)
    return found


@pytest.mark.slow
def test_sessions_reach_every_failure_class_of_the_server_data() -> None:
    seen: collections.Counter[str] = collections.Counter()
    sampled = _sample(sessions(), 1500)
    for session in sampled:
        seen.update(_classes(session))
    expected = {
        *(f"retyped:{kind}" for kind in (
            "null", "boolean", "integer", "number", "string", "list", "object")),
        "deep", "deep:response.completed", "deep:error", "deep:codex.rate_limits",
        "deeper_than_orjson_reads", "event_too_large",
        *(f"item:{kind}" for kind in (
            "function_call", "custom_tool_call", "shell_call", "local_shell_call",
            "apply_patch_call", "shell_call_output", "local_shell_call_output",
            "apply_patch_call_output", "web_search_call", "message", "reasoning")),
        "echo:client_key", "echo:client_key_split", "echo:session_token", "echo:shaped_key",
    }
    assert expected <= set(seen), sorted(expected - set(seen))
    limited = [s for s in sampled if s.policy.max_event_bytes < 10_000]
    assert 0.05 < len(limited) / len(sampled) < 0.25  # one in eight, near the events' sizes
    assert all(s.secrets for s in sampled)  # the client holds its key
