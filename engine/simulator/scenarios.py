"""Scenarios: which reply each request to the simulator gets, from a file or from code.

Theory of operation
===================

A :class:`Scenario` is an ordered tuple of :class:`Rule` records. A rule pairs *conditions*
(``when``, ``nth``, ``times``) with *what to send*: one or more
:class:`~engine.simulator.server.Reply` records (a built-in shape may hold several, which the
rule plays in turn on its first, second, ... use) and *modifiers* that reshape them (a stall,
a cut after some bytes, a pause between events). For each request the simulator takes the first
rule, in order, whose conditions hold and which is not used up; a request no rule matches gets
HTTP 500 with an OpenAI-shaped error saying so. This is the only way the simulator picks replies:
an old-style :class:`~engine.simulator.server.Script` is the scenario whose rules are its replies,
each usable once (:meth:`Scenario.from_script`).

Sessions
--------
The request count behind ``nth`` and the use counts behind ``times`` are kept per client
*session*: requests that carry the same ``x-streamfsm-session`` or ``session-id`` header (Codex
sends one ``session-id`` per run) share a count, and requests with neither header share one
default count. So two ``codex exec`` runs against one ``streamfsm serve`` each see the scenario
from its start, and a client that sends no session header sees exactly "the server's Nth
request". With ``repeat`` set, a session whose rules are all used up starts over.

Scenario files
--------------
:func:`load_scenario` reads TOML (``.toml``, stdlib ``tomllib``) or JSON (``.json``) holding a
list of ``reply`` tables (``[[reply]]`` in TOML, ``{"reply": [...]}`` in JSON), optionally with a
top-level ``description`` (a string) and ``repeat`` (a boolean). Every mistake is reported, one
line each, in one :class:`ScenarioError`: unknown keys (with the closest known key), wrong types,
values out of range, unknown shapes, keys that exclude each other. The keys are documented in
``docs/scenarios.md`` and in :data:`REPLY_KEYS`.

Modifiers work on the event-stream *body* (the bytes of the SSE frames, never the chunked
transfer-encoding framing around them). An *event* is one SSE frame: everything up to and
including the blank line that ends it (comments and vendor frames count).

``stall_s`` / ``stall_after``
    Silence for ``stall_s`` seconds after ``stall_after`` events (0: before the first, right
    after the response headers). When ``stall_after`` is not given and the reply already holds
    stalls (the ``*stall*`` shapes), those stalls take the length ``stall_s`` instead. On a reply
    that is not streamed (an HTTP error with a JSON body) the silence comes before the status line.
``drop_after_bytes`` / ``drop``
    The body is cut after that many bytes (inside an event if that is where the count ends) and
    the connection closed: with a FIN (``"fin"``, default: the client reads end-of-file in the
    middle of the chunked body) or an RST (``"rst"``: ``SO_LINGER`` 0, the client reads
    "connection reset"). A body shorter than that is sent whole, then cut before the chunked
    terminator. ``drop`` also sets how the drops of a shape close.
``chunk_delay_ms``
    Each event is sent as its own chunk, with this pause between consecutive events.
``background_drop_after_events``
    For a request whose body holds ``"background": true``: the reply's events (here: its frames
    whose data is a JSON object; comments and ``[DONE]`` do not count) become a background
    response kept by the simulator, the stream is cut (FIN) after that many events, and
    ``GET /v1/responses/{id}?stream=true&starting_after=K`` serves the rest;
    ``POST /v1/responses/{id}/cancel`` cancels it (see *Background responses* in
    ``engine.simulator.server``). The stalls and pauses of the other modifiers stay in the
    first stream, counted in events. It excludes ``drop_after_bytes``. Requests without
    ``background`` get the reply as usual.

Traces (``.jsonl``) become scenarios through :func:`script_from_trace`, and folders of traces
(what ``streamfsm record`` writes: one trace per request) through :func:`script_from_folder`,
optionally with their recorded timing.
"""

from __future__ import annotations

import difflib
import email.utils
import json
import math
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import orjson

from engine.log.codec import type_name
from engine.log.trace import ENTRIES, RESPONSES, TraceError, input_from_json, read_trace
from engine.simulator import shapes
from engine.simulator.replies import RESPONSES_PATHS, Reply, Script, Step, error_body, frame_ends
from engine.simulator.shapes import SHAPES
from machines.records import (
    Chunk,
    EndOfStream,
    Fault,
    HttpError,
    IdleTimeout,
    Interrupt,
    Stall,
    TransportFault,
)

__all__ = [
    "DropMode",
    "REPLY_KEYS",
    "Rule",
    "Scenario",
    "ScenarioError",
    "ScenarioState",
    "SESSION_HEADERS",
    "TOP_LEVEL_KEYS",
    "When",
    "Timing",
    "frame_ends",
    "has_tool_output",
    "load_fixture",
    "load_scenario",
    "rate_limit_body",
    "reshape",
    "scenario_from_data",
    "script_from_folder",
    "script_from_trace",
    "session_of",
    "text_reply",
    "tool_call_reply",
]

When = Literal["tool_output"]
DropMode = Literal["fin", "rst"]
Timing = Literal["none", "recorded"]

#: Request headers that name a client session, in order of precedence (compared lower-cased).
SESSION_HEADERS: Final = ("x-streamfsm-session", "session-id")

#: Input item types that carry a tool's output back to the model (``when = "tool_output"``).
TOOL_OUTPUT_TYPES: Final = frozenset({"function_call_output", "custom_tool_call_output"})

#: Every key a ``reply`` table may hold, with what it means (shown by error messages and docs).
REPLY_KEYS: Final[Mapping[str, str]] = {
    "when": '"tool_output": only when the request input holds a tool output item',
    "nth": "only the session's Nth request (1-based)",
    "times": "use this reply at most N times",
    "status": "HTTP status (default 200)",
    "headers": "extra response headers (string values)",
    "body": "body of a non-streamed reply, as a table",
    "text": "a text answer streamed in several deltas",
    "tool_call": "{name, arguments, call_id}: a function call with streamed arguments",
    "shape": "a built-in shape (streamfsm serve --list)",
    "events": "raw Responses events, as tables",
    "stall_s": "seconds of silence",
    "stall_after": "events sent before the silence (default 0)",
    "drop_after_bytes": "cut the event-stream body after N bytes",
    "drop": '"fin" (default) or "rst": how a cut closes the connection',
    "chunk_delay_ms": "pause between events, each sent as its own chunk",
    "background_drop_after_events": (
        'for a "background": true request: cut the stream (FIN) after N events and keep the '
        "response resumable (GET /v1/responses/{id}) and cancellable"
    ),
}
#: Keys allowed at the top level of a scenario file.
TOP_LEVEL_KEYS: Final = ("reply", "description", "repeat")
#: Keys of the ``tool_call`` table.
TOOL_CALL_KEYS: Final = ("name", "arguments", "call_id")

_CONTENT_KEYS: Final = ("text", "tool_call", "shape", "events")
DEFAULT_RETRY_AFTER_S: Final = 1.0
"""The wait a default 429 body asks for when the reply gives no ``retry-after`` header."""


class ScenarioError(ValueError):
    """A scenario that cannot be used. ``problems`` holds one line per mistake; ``str()`` joins
    them with newlines."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------------------------
# Reshaping a reply: stalls, cuts, per-event chunks


@attrs.define
class _Layout:
    """A streamed reply taken apart: its body bytes, where its chunks break, and its stalls and
    faults placed at body offsets (in play order for equal offsets)."""

    body: bytes
    boundaries: set[int]
    marks: list[tuple[int, Stall | TransportFault]]

    @classmethod
    def of(cls, steps: Sequence[Step]) -> _Layout:
        pieces: list[bytes] = []
        offset = 0
        boundaries: set[int] = set()
        marks: list[tuple[int, Stall | TransportFault]] = []
        for step in steps:
            if isinstance(step, Chunk):
                pieces.append(step.data)
                offset += len(step.data)
                boundaries.add(offset)
            else:
                marks.append((offset, step))
                if isinstance(step, TransportFault):
                    break
        return cls(b"".join(pieces), boundaries, marks)

    def steps(self) -> tuple[Step, ...]:
        size = len(self.body)
        cuts = {b for b in self.boundaries if 0 < b < size}
        cuts.update(offset for offset, _ in self.marks if 0 < offset < size)
        points = [0, *sorted(cuts), size]
        marks = sorted(enumerate(self.marks), key=lambda entry: (entry[1][0], entry[0]))
        steps: list[Step] = []
        index = 0

        def emit_marks_up_to(offset: int) -> bool:
            nonlocal index
            while index < len(marks) and marks[index][1][0] <= offset:
                mark = marks[index][1][1]
                index += 1
                steps.append(mark)
                if isinstance(mark, TransportFault):
                    return True
            return False

        for start, end in zip(points, points[1:]):
            if emit_marks_up_to(start):
                return tuple(steps)
            if end > start:
                steps.append(Chunk(self.body[start:end]))
        emit_marks_up_to(size)
        return tuple(steps)


def reshape(
    reply: Reply,
    *,
    stall_s: float | None = None,
    stall_after: int | None = None,
    drop_after_bytes: int | None = None,
    drop: DropMode | None = None,
    chunk_delay_ms: float | None = None,
) -> Reply:
    """``reply`` with the scenario modifiers applied (see the module docstring); unchanged when
    none is given. Raises ``ValueError`` for a modifier that needs a streamed reply."""
    if drop is not None:
        reply = attrs.evolve(reply, drop=drop)
    if stall_s is None and drop_after_bytes is None and chunk_delay_ms is None:
        return reply
    if not reply.is_stream:
        if drop_after_bytes is not None or chunk_delay_ms is not None or stall_after:
            raise ValueError(
                "drop_after_bytes, chunk_delay_ms and stall_after apply to streamed replies only"
            )
        return attrs.evolve(reply, headers_after_s=float(stall_s or 0.0))
    layout = _Layout.of(reply.steps)
    ends = frame_ends(layout.body)
    if stall_s is not None:
        has_stalls = any(isinstance(mark, Stall) for _, mark in layout.marks)
        if stall_after is None and has_stalls:
            layout.marks = [
                (offset, Stall(stall_s) if isinstance(mark, Stall) else mark)
                for offset, mark in layout.marks
            ]
        else:
            after = stall_after or 0
            if after == 0:
                at = 0
            elif after <= len(ends):
                at = ends[after - 1]
            else:
                at = len(layout.body)
            layout.marks.append((at, Stall(stall_s)))
    if chunk_delay_ms is not None:
        layout.boundaries = set(ends)
        if chunk_delay_ms > 0:
            pause = Stall(chunk_delay_ms / 1000.0)
            layout.marks.extend((end, pause) for end in ends if end < len(layout.body))
    if drop_after_bytes is not None:
        cut = min(drop_after_bytes, len(layout.body))
        layout.body = layout.body[:cut]
        layout.boundaries = {b for b in layout.boundaries if b <= cut}
        layout.marks = [(offset, mark) for offset, mark in layout.marks if offset <= cut]
        layout.marks.append((cut, TransportFault(Fault.DROP)))
    return attrs.evolve(reply, steps=layout.steps())


# --------------------------------------------------------------------------------------------
# Replies built from scenario keys


def _success_headers() -> tuple[tuple[str, str], ...]:
    return tuple(shapes.SUCCESS_HEADERS)


def _delta_count(text: str) -> int:
    """How many deltas a text answer streams in: about one per word, between 1 and 12."""
    return max(1, min(12, len(text.split())))


def text_reply(text: str) -> Reply:
    """A text answer: ``response.created``, ``in_progress``, the message with its text in several
    deltas, then ``response.completed`` holding it."""
    message = shapes.text_message(text, deltas=_delta_count(text))
    events = shapes.assemble(
        shapes.created(), shapes.in_progress(), message, shapes.completed(shapes.output_items(message))
    )
    return shapes.to_reply(events, headers=_success_headers())


def tool_call_reply(name: str, arguments: str, *, call_id: str | None = None) -> Reply:
    """A function call whose ``arguments`` (a JSON string) stream in deltas, then
    ``response.completed`` holding the call."""
    call = shapes.function_call(name, arguments, deltas=3, call_id=call_id)
    events = shapes.assemble(
        shapes.created(), shapes.in_progress(), call, shapes.completed(shapes.output_items(call))
    )
    return shapes.to_reply(events, headers=_success_headers())


def _events_reply(events: Sequence[Mapping[str, Any]]) -> Reply:
    parts = shapes.assemble(*[dict(event) for event in events])
    if not parts:
        return Reply(headers=_success_headers())
    return shapes.to_reply(parts, headers=_success_headers())


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _retry_after_seconds(headers: Sequence[tuple[str, str]]) -> float | None:
    """The wait the headers ask for: ``retry-after-ms`` wins over ``retry-after`` (seconds or
    an HTTP date)."""
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    seconds = _header(headers, "retry-after")
    if seconds is None:
        return None
    try:
        return max(0.0, float(seconds))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(seconds)
    except (TypeError, ValueError):
        return None
    return max(0.0, math.ceil(when.timestamp() - time.time()))


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}s" if seconds >= 1 or seconds == 0 else f"{round(seconds * 1000)}ms"


def rate_limit_body(headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The default body of a 429: OpenAI's words, with a "try again in N s" that agrees with the
    ``retry-after-ms`` / ``retry-after`` header when one is given (else one second)."""
    wait = _retry_after_seconds(headers)
    wait = DEFAULT_RETRY_AFTER_S if wait is None else wait
    return error_body(
        "Rate limit reached for gpt-5 in organization org-simulator on requests per min (RPM): "
        f"Limit 500, Used 500, Requested 1. Please try again in {_seconds_text(wait)}. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        type="requests",
        code="rate_limit_exceeded",
    )


# --------------------------------------------------------------------------------------------
# Rules and scenarios


def _replies_tuple(value: Reply | Sequence[Reply]) -> tuple[Reply, ...]:
    replies = (value,) if isinstance(value, Reply) else tuple(value)
    if not replies or not all(isinstance(reply, Reply) for reply in replies):
        raise TypeError("a rule needs one Reply or a non-empty sequence of Reply records")
    return replies


def _has_stall(reply: Reply) -> bool:
    return any(isinstance(step, Stall) for step in reply.steps)


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"{attribute.name} must be a whole number >= 1, not {value!r}")


def _whole_number_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"{attribute.name} must be a whole number >= 0, not {value!r}")


@attrs.frozen
class Rule:
    """One ``reply`` entry of a scenario: when it applies and what it sends.

    ``replies``: what to send; a rule holding several (a multi-attempt shape) plays them in turn,
    starting over after the last. ``when``, ``nth``, ``times``: conditions (see the module
    docstring). ``stall_s`` to ``chunk_delay_ms`` are the modifiers of :func:`reshape`, applied
    to every reply. ``background_drop_after_events`` is set on every reply
    (:class:`~engine.simulator.server.Reply` says what it does); it excludes
    ``drop_after_bytes``.
    """

    replies: tuple[Reply, ...] = attrs.field(converter=_replies_tuple)
    when: When | None = None
    nth: int | None = attrs.field(default=None, validator=_positive_or_none)
    times: int | None = attrs.field(default=None, validator=_positive_or_none)
    stall_s: float | None = None
    stall_after: int | None = None
    drop_after_bytes: int | None = None
    drop: DropMode | None = None
    chunk_delay_ms: float | None = None
    background_drop_after_events: int | None = attrs.field(
        default=None, validator=_whole_number_or_none
    )
    served: tuple[Reply, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.when is not None and self.when not in ("tool_output",):
            raise ValueError(f"when must be 'tool_output', not {self.when!r}")
        if self.background_drop_after_events is not None and self.drop_after_bytes is not None:
            raise ValueError(
                "drop_after_bytes and background_drop_after_events exclude each other: give one"
            )
        # Without stall_after, a shape that stalls somewhere takes stall_s as the length of its
        # stalls; its other replies (the good retry of stall_then_retry) stay as they are.
        retime = self.stall_after is None and any(_has_stall(reply) for reply in self.replies)
        served = tuple(
            reshape(
                reply,
                stall_s=None if retime and not _has_stall(reply) else self.stall_s,
                stall_after=self.stall_after,
                drop_after_bytes=self.drop_after_bytes,
                drop=self.drop,
                chunk_delay_ms=self.chunk_delay_ms,
            )
            for reply in self.replies
        )
        if self.background_drop_after_events is not None:
            served = tuple(
                attrs.evolve(reply, background_drop_after_events=self.background_drop_after_events)
                for reply in served
            )
        object.__setattr__(self, "served", served)

    def matches(self, number: int, body: Any, used: int) -> bool:
        """Whether this rule answers a session's request ``number`` (1-based) with ``body``,
        having been used ``used`` times in that session already."""
        if self.times is not None and used >= self.times:
            return False
        if self.nth is not None and self.nth != number:
            return False
        if self.when == "tool_output" and not has_tool_output(body):
            return False
        return True

    def reply_for(self, used: int) -> Reply:
        """The reply for this rule's use number ``used`` (0-based) in a session."""
        return self.served[used % len(self.served)]


def has_tool_output(body: Any) -> bool:
    """Whether a Responses request body's ``input`` holds a tool output item."""
    if not isinstance(body, dict):
        return False
    items = body.get("input")
    if not isinstance(items, list):
        return False
    return any(isinstance(item, dict) and item.get("type") in TOOL_OUTPUT_TYPES for item in items)


def _rules_tuple(value: Iterable[Rule]) -> tuple[Rule, ...]:
    rules = tuple(value)
    if not all(isinstance(rule, Rule) for rule in rules):
        raise TypeError("a scenario's rules must be Rule records")
    return rules


@attrs.frozen
class Scenario:
    """Rules tried in order for each request. ``repeat``: a session whose every rule is used up
    starts over instead of getting HTTP 500. ``name`` and ``description`` label it in messages."""

    rules: tuple[Rule, ...] = attrs.field(converter=_rules_tuple)
    name: str = ""
    description: str = ""
    repeat: bool = False

    @classmethod
    def from_script(cls, script: Script, *, repeat: bool = False) -> Scenario:
        """The scenario of an old-style script: its replies in order, each used once."""
        return cls(
            rules=tuple(Rule(reply, times=1) for reply in script.replies),
            name=script.name,
            description=script.description,
            repeat=repeat,
        )

    @property
    def reply_count(self) -> int:
        """How many ``reply`` entries the scenario holds."""
        return len(self.rules)


@attrs.define
class _Session:
    requests: int = 0
    uses: list[int] = attrs.Factory(list)


def session_of(headers: Mapping[str, str]) -> str:
    """The session a request belongs to: its first session header's value, or ``""``."""
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in SESSION_HEADERS:
        value = lowered.get(name)
        if value:
            return f"{name}:{value}"
    return ""


class ScenarioState:
    """The live state of a scenario being served: per-session request and use counts.

    Not thread-safe by itself: the simulator calls :meth:`choose` under its own lock.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario: Final = scenario
        self._sessions: dict[str, _Session] = {}

    def choose(self, body: Any, headers: Mapping[str, str]) -> tuple[int | None, Reply]:
        """The rule index and reply for a Responses request, or ``(None, HTTP 500 reply)``."""
        session = self._sessions.setdefault(
            session_of(headers), _Session(uses=[0] * len(self.scenario.rules))
        )
        session.requests += 1
        chosen = self._match(session, body)
        if chosen is None and self.scenario.repeat and any(session.uses):
            session.requests = 1
            session.uses = [0] * len(self.scenario.rules)
            chosen = self._match(session, body)
        if chosen is not None:
            return chosen
        return None, self._no_match(session, body)

    def _match(self, session: _Session, body: Any) -> tuple[int, Reply] | None:
        for index, rule in enumerate(self.scenario.rules):
            used = session.uses[index]
            if rule.matches(session.requests, body, used):
                session.uses[index] = used + 1
                return index, rule.reply_for(used)
        return None

    def _no_match(self, session: _Session, body: Any) -> Reply:
        rules = self.scenario.rules
        label = f" {self.scenario.name!r}" if self.scenario.name else ""
        number = session.requests
        if rules and all(
            rule.times is not None and used >= rule.times for rule, used in zip(rules, session.uses)
        ):
            count = len(rules)
            message = (
                f"Simulator script{label} is exhausted: request {number} arrived but the script "
                f"holds {count} repl{'y' if count == 1 else 'ies'}, all used up."
            )
            code = "script_exhausted"
        else:
            tool = "with" if has_tool_output(body) else "without"
            message = (
                f"No reply of scenario{label} matches request {number} ({tool} tool output): "
                "each reply's when/nth/times excludes it."
            )
            code = "no_matching_reply"
        return Reply(status=500, body=error_body(message, type="server_error", code=code))


# --------------------------------------------------------------------------------------------
# Reading scenario files


#: How a scenario file's error messages name each JSON type: in TOML's words.
_TOML_TYPE_NAMES: Final[Mapping[str, str]] = {
    "null": "null", "boolean": "a boolean", "integer": "an integer", "number": "a number",
    "string": "a string", "list": "an array", "object": "a table",
}


def _type_name(value: Any) -> str:
    return type_name(value, _TOML_TYPE_NAMES)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _unknown(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
    return f"unknown key {key!r}{hint}"


class _Checker:
    """Collects one line per mistake while reading one ``reply`` table."""

    def __init__(self, where: str, table: Mapping[str, Any], problems: list[str]) -> None:
        self.where = where
        self.table = table
        self.problems = problems

    def problem(self, message: str) -> None:
        self.problems.append(f"{self.where}: {message}")

    def get(self, key: str, check: Callable[[Any], bool], expected: str) -> Any:
        if key not in self.table:
            return None
        value = self.table[key]
        if not check(value):
            self.problem(f"{key} must be {expected}, not {_type_name(value)} ({value!r})")
            return None
        return value


def _read_reply(index: int, table: Any, problems: list[str], source: str) -> Rule | None:
    where = f"{source}: reply[{index}]"
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table, not {_type_name(table)}")
        return None
    before = len(problems)
    check = _Checker(where, table, problems)
    for key in table:
        if key not in REPLY_KEYS:
            check.problem(_unknown(key, list(REPLY_KEYS)))

    when = check.get("when", lambda v: v == "tool_output", 'the string "tool_output"')
    nth = check.get("nth", lambda v: _is_int(v) and v >= 1, "a whole number >= 1")
    times = check.get("times", lambda v: _is_int(v) and v >= 1, "a whole number >= 1")
    status = check.get(
        "status", lambda v: _is_int(v) and 100 <= v <= 599, "an HTTP status from 100 to 599"
    )
    headers = check.get(
        "headers",
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "a table of strings",
    )
    body = check.get("body", lambda v: isinstance(v, dict), "a table")
    text = check.get("text", lambda v: isinstance(v, str), "a string")
    tool_call = check.get("tool_call", lambda v: isinstance(v, dict), "a table")
    shape = check.get("shape", lambda v: isinstance(v, str), "a string")
    events = check.get(
        "events",
        lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v),
        "an array of tables",
    )
    stall_s = check.get("stall_s", lambda v: _is_number(v) and v >= 0, "a number of seconds >= 0")
    stall_after = check.get(
        "stall_after", lambda v: _is_int(v) and v >= 0, "a whole number of events >= 0"
    )
    drop_after = check.get(
        "drop_after_bytes", lambda v: _is_int(v) and v >= 0, "a whole number of bytes >= 0"
    )
    drop = check.get("drop", lambda v: v in ("fin", "rst"), '"fin" or "rst"')
    chunk_delay = check.get(
        "chunk_delay_ms", lambda v: _is_number(v) and v >= 0, "a number of milliseconds >= 0"
    )
    background_drop_after = check.get(
        "background_drop_after_events",
        lambda v: _is_int(v) and v >= 0,
        "a whole number of events >= 0",
    )

    contents = [key for key in _CONTENT_KEYS if key in table]
    if len(contents) > 1:
        check.problem(f"{' and '.join(contents)} exclude each other: give one")
    if "body" in table and contents:
        check.problem(f"body and {contents[0]} exclude each other: a body is not streamed")
    if "stall_after" in table and "stall_s" not in table:
        check.problem("stall_after needs stall_s (how long the silence lasts)")
    if "background_drop_after_events" in table:
        if "drop_after_bytes" in table:
            check.problem(
                "drop_after_bytes and background_drop_after_events exclude each other: give one"
            )
        if "body" in table or (status is not None and status != 200):
            check.problem(
                "background_drop_after_events needs a streamed reply with status 200: "
                "give text, tool_call, shape or events"
            )

    replies: tuple[Reply, ...] = ()
    extra_headers = tuple((str(k), str(v)) for k, v in (headers or {}).items())
    if tool_call is not None:
        for key in tool_call:
            if key not in TOOL_CALL_KEYS:
                check.problem(f"tool_call: {_unknown(key, list(TOOL_CALL_KEYS))}")
        name = tool_call.get("name")
        arguments = tool_call.get("arguments", "{}")
        call_id = tool_call.get("call_id")
        if not isinstance(name, str) or not name:
            check.problem("tool_call.name must be a non-empty string")
        if not isinstance(arguments, str):
            check.problem(
                f"tool_call.arguments must be a JSON string, not {_type_name(arguments)}"
            )
        if call_id is not None and not isinstance(call_id, str):
            check.problem(f"tool_call.call_id must be a string, not {_type_name(call_id)}")
        if isinstance(name, str) and name and isinstance(arguments, str):
            replies = (tool_call_reply(name, arguments, call_id=call_id),)
    elif text is not None:
        replies = (text_reply(text),)
    elif shape is not None:
        if shape not in SHAPES:
            close = difflib.get_close_matches(shape, list(SHAPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (streamfsm serve --list)"
            check.problem(f"unknown shape {shape!r}{hint}")
        else:
            replies = SHAPES[shape].replies
    elif events is not None:
        replies = (_events_reply(events),)
    elif body is not None:
        replies = (Reply(status=200, body=orjson.dumps(body)),)
    elif status is not None and status != 200:
        replies = (Reply(status=status),)
    elif not contents and "body" not in table and (status is not None or "status" not in table):
        check.problem(
            "says nothing to send: give text, tool_call, shape or events (or a non-200 status)"
        )

    if len(problems) > before or not replies:
        return None
    replies = tuple(
        _override(reply, status=status, headers=extra_headers, body=body) for reply in replies
    )
    try:
        return Rule(
            replies,
            when=when,
            nth=nth,
            times=times,
            stall_s=None if stall_s is None else float(stall_s),
            stall_after=stall_after,
            drop_after_bytes=drop_after,
            drop=drop,
            chunk_delay_ms=None if chunk_delay is None else float(chunk_delay),
            background_drop_after_events=background_drop_after,
        )
    except ValueError as error:
        check.problem(str(error))
        return None


def _override(
    reply: Reply, *, status: int | None, headers: tuple[tuple[str, str], ...], body: Any
) -> Reply:
    """A shape's or builder's reply with the rule's own status, headers and body on top."""
    if status is not None:
        reply = attrs.evolve(reply, status=status)
    if headers:
        names = {name.lower() for name, _ in headers}
        kept = tuple((name, value) for name, value in reply.headers if name.lower() not in names)
        reply = attrs.evolve(reply, headers=kept + headers)
    if body is not None:
        reply = attrs.evolve(reply, body=orjson.dumps(body), steps=())
    elif reply.status == 429 and not reply.steps and reply.body is None:
        reply = attrs.evolve(reply, body=rate_limit_body(reply.headers))
    return reply


def scenario_from_data(data: Any, *, source: str = "scenario", name: str = "") -> Scenario:
    """A scenario from parsed TOML/JSON data (a table with a ``reply`` list); raises
    :class:`ScenarioError` listing every mistake."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ScenarioError([f"{source}: must be a table/object, not {_type_name(data)}"])
    for key in data:
        if key in REPLY_KEYS:
            problems.append(f"{source}: {key!r} belongs in a reply table")
        elif key not in TOP_LEVEL_KEYS:
            problems.append(f"{source}: {_unknown(key, TOP_LEVEL_KEYS)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(f"{source}: description must be a string, not {_type_name(description)}")
        description = ""
    repeat = data.get("repeat", False)
    if not isinstance(repeat, bool):
        problems.append(f"{source}: repeat must be a boolean, not {_type_name(repeat)}")
        repeat = False
    tables = data.get("reply")
    rules: list[Rule] = []
    if tables is None:
        problems.append(f"{source}: no reply: add at least one [[reply]] table")
    elif not isinstance(tables, list):
        problems.append(f"{source}: reply must be an array of tables, not {_type_name(tables)}")
    else:
        if not tables:
            problems.append(f"{source}: reply is empty: add at least one [[reply]] table")
        for index, table in enumerate(tables):
            rule = _read_reply(index, table, problems, source)
            if rule is not None:
                rules.append(rule)
    if problems:
        raise ScenarioError(problems)
    return Scenario(rules=tuple(rules), name=name, description=description, repeat=repeat)


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read a ``.toml`` or ``.json`` scenario file; raises :class:`ScenarioError` (one line per
    mistake) when it cannot be read or used."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as source:
            raw = source.read()
    except OSError as error:
        raise ScenarioError([f"{name}: cannot read ({error.strerror or error})"]) from None
    data: Any
    if name.endswith(".json"):
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ScenarioError([f"{name}: not valid JSON ({error})"]) from None
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ScenarioError([f"{name}: not valid TOML ({error})"]) from None
    stem = os.path.splitext(os.path.basename(name))[0]
    return scenario_from_data(data, source=name, name=stem)


def load_fixture(fixture: str, *, timing: Timing = "none") -> Scenario:
    """What ``streamfsm serve FIXTURE`` serves: a built-in shape name, a ``.toml``/``.json``
    scenario file, a folder of traces (:func:`script_from_folder`), or a trace (any other file).
    Shapes and single traces repeat once used up; a folder is served once, in order.

    ``timing="recorded"`` serves traces with their recorded pauses. Raises :class:`ScenarioError`.
    """
    if fixture in SHAPES:
        return Scenario((Rule(SHAPES[fixture].replies),), name=fixture,
                        description=SHAPES[fixture].description, repeat=True)
    if fixture.endswith((".toml", ".json")):
        return load_scenario(fixture)
    if os.path.isdir(fixture):
        return Scenario.from_script(script_from_folder(fixture, timing=timing))
    if not os.path.exists(fixture):
        raise ScenarioError(
            [f"{fixture}: no such file, and not a built-in shape (see `streamfsm serve --list`)"]
        )
    try:
        script = script_from_trace(read_trace(fixture), timing=timing)
    except TraceError as error:
        raise ScenarioError([f"invalid trace: {error}"]) from None
    return Scenario.from_script(script, repeat=True)


# --------------------------------------------------------------------------------------------
# Serving a recorded turn

TRACE_STALL_S: Final = 60.0
"""How long a trace's timeout or interrupt is served as silence: the client under test decides
when to give up (the stall ends as soon as it hangs up)."""
RECORDED_GAP_MIN_S: Final = 0.001
"""With recorded timing, pauses shorter than this between two inputs are not reproduced."""


def _headers_of(value: Any) -> tuple[tuple[str, str], ...]:
    """Response headers a trace kept for an HTTP error, if it kept any (a JSON object)."""
    if not isinstance(value, dict):
        return ()
    return tuple((str(name), str(val)) for name, val in value.items() if isinstance(name, str))


def _exchange_of(trace: Any) -> dict[str, Any] | None:
    """The ``exchange`` a recording proxy wrote in a trace's header (None for a turn's trace)."""
    exchange = trace.header.get("exchange")
    return exchange if isinstance(exchange, dict) else None


def _seconds_or_zero(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return 0.0


def _plain_answer(exchange: dict[str, Any] | None) -> int | None:
    """The status of a recorded answer that was not an event stream (a JSON body with a status
    below 400), else None."""
    if exchange is None:
        return None
    status, content_type = exchange.get("status"), exchange.get("content_type")
    if type(status) is not int or not 200 <= status < 400 or not isinstance(content_type, str):
        return None
    return None if "event-stream" in content_type.lower() else status


def script_from_trace(trace: Any, *, timing: Literal["none", "recorded"] = "none") -> Script:
    """A recorded turn as a script: each attempt's chunks, faults and HTTP errors, in order.

    Chunks keep their recorded boundaries; a drop or connect error becomes a
    `TransportFault(Fault.DROP)`; a read or idle timeout, and an interrupt, become a long `Stall`
    (:data:`TRACE_STALL_S`): the server went silent and the client gave up, which is all the
    server can know. A clean end of stream ends the body. An HTTP error keeps its status, body and,
    when the trace recorded them, its response headers. A request recorded by the recording
    proxy whose answer was not an event stream (a request without ``stream``) is answered with
    its recorded body, whole.

    ``timing="recorded"`` reproduces the pauses between consecutive inputs of each attempt (from
    the trace's clock readings ``t``); the first attempt also waits its recorded time to first
    input (later attempts start at once: the client's own wait before them is not the server's).
    A recorded request's clock starts when it was sent: its status line waits ``headers_t``.
    """
    if timing not in ("none", "recorded"):
        raise ValueError(f"timing must be 'none' or 'recorded', not {timing!r}")
    if ENTRIES[trace.entry] is not RESPONSES:
        raise TraceError(f"{trace.path}: a {trace.entry} trace holds no Responses-API replies")
    exchange = _exchange_of(trace)
    plain = _plain_answer(exchange)
    head_wait = 0.0
    if exchange is not None and timing == "recorded":
        head_wait = _seconds_or_zero(exchange.get("headers_t"))
    replies: list[Reply] = []
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for record in trace.inputs():
        by_attempt.setdefault(record["attempt"], []).append(record)
    for position, number in enumerate(sorted(by_attempt)):
        steps: list[Step] = []
        reply: Reply | None = None
        last_t: float | None = head_wait if position == 0 else None
        if plain is not None:
            whole = b"".join(
                item.data for item in map(input_from_json, by_attempt[number])
                if isinstance(item, Chunk)
            )
            replies.append(Reply(status=plain, body=whole, headers_after_s=head_wait))
            continue
        for record in by_attempt[number]:
            item = input_from_json(record)
            t = record.get("t")
            gap = 0.0
            if timing == "recorded" and isinstance(t, (int, float)) and not isinstance(t, bool):
                if last_t is not None and t - last_t >= RECORDED_GAP_MIN_S:
                    gap = float(t - last_t)
                last_t = float(t)
            if isinstance(item, HttpError):
                body = item.body if isinstance(item.body, (dict, list)) else {
                    "error": {"message": str(item.body)}
                }
                reply = Reply(
                    status=item.status,
                    body=orjson.dumps(body),
                    headers=_headers_of(record.get("headers")),
                    headers_after_s=gap + (head_wait if position == 0 else 0.0),
                )
                break
            if gap and not isinstance(item, (IdleTimeout, Interrupt)):
                steps.append(Stall(gap))
            if isinstance(item, Chunk):
                if item.data:
                    steps.append(Chunk(item.data))
            elif isinstance(item, TransportFault) and item.kind is not Fault.READ_TIMEOUT:
                steps.append(TransportFault(Fault.DROP))
                break
            elif isinstance(item, (TransportFault, IdleTimeout, Interrupt)):
                steps.append(Stall(TRACE_STALL_S))
                break
            elif isinstance(item, EndOfStream):
                break
        replies.append(
            reply or Reply(steps=tuple(steps), headers_after_s=head_wait if position == 0 else 0.0)
        )
    return Script(
        replies=tuple(replies), name=trace.path, description=f"replies recorded in {trace.path}"
    )


def _answers_a_post(trace: Any) -> bool:
    """Whether the simulator answers a trace's replies from its script: a turn's trace always;
    a recorded request only when it was a ``POST`` to a Responses path (the simulator answers
    other requests itself)."""
    exchange = _exchange_of(trace)
    if exchange is None:
        return True
    path = str(exchange.get("path", "")).partition("?")[0]
    return exchange.get("method") == "POST" and path in RESPONSES_PATHS


def script_from_folder(folder: str | os.PathLike[str], *, timing: Timing = "none") -> Script:
    """A folder of traces (``*.jsonl``, sorted by name: the recording proxy numbers them in
    arrival order) as one script: every trace's replies (:func:`script_from_trace`), one after
    the other, each used once. Recorded requests other than a ``POST`` to ``/v1/responses``
    (a ``GET /v1/models``, ...) are left out. Raises :class:`ScenarioError` for a folder
    without traces and for each trace that cannot be read."""
    name = os.fspath(folder)
    paths = sorted(
        entry.path for entry in os.scandir(name) if entry.name.endswith(".jsonl") and entry.is_file()
    )
    if not paths:
        raise ScenarioError([f"{name}: a folder without traces (*.jsonl)"])
    replies: list[Reply] = []
    problems: list[str] = []
    for path in paths:
        try:
            trace = read_trace(path)
            if _answers_a_post(trace):
                replies.extend(script_from_trace(trace, timing=timing).replies)
        except TraceError as error:
            problems.append(f"invalid trace: {error}")
    if problems:
        raise ScenarioError(problems)
    return Script(
        replies=tuple(replies), name=name,
        description=f"{len(replies)} repl{'y' if len(replies) == 1 else 'ies'} recorded in {name}",
    )
