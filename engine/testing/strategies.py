"""Hypothesis strategies for Responses-API SSE sessions, and the one place that plays them.

Theory of operation
===================

A *session* is what one turn sees from the outside world: a `Session` holds the turn's
`TurnPolicy` and one *attempt script* per request the turn makes. An attempt script is a tuple of
*steps*, exactly what a driver can observe on one HTTP response:

    Chunk(data)          one network read: these bytes, with this chunk boundary
    TransportFault(kind)         the byte stream broke ("drop", "read_timeout", "connect_error")
    Stall(seconds)      the socket stays silent; with an idle timeout in the policy this ends the
                        attempt (an `IdleTimeout` input), without one it is only a pause
    Interrupt()     the caller asks the turn to stop
    EndOfStream()         the body ends cleanly
    HttpError(s, body) the request was answered with a non-2xx status (first step only)

`run_session` plays a session through the real sans-I/O loop (`engine.drivers.recording.TurnRecording`
and `AttemptFeed`), which is what `run_turn` does minus the socket: steps after the attempt reached
a final state are never read (the driver would have closed the response), a script that runs out
of steps ends with a clean end of body, and an attempt the turn makes beyond the scripts gets a
`connect_error` (the server is unreachable). The driver's clock is simulated (a millisecond per
step, a stall adds its seconds), so a session plays identically every time, and a trace written
by `run_session` replays with `engine.replay` and `streamfsm replay`.

Strategies, from the inside out (every one shrinks toward a short, readable session):

    responses()          one well-formed Responses-API stream as a list of event dicts and
                         markers (`engine.testing.shapes`): optional prelude frames, `response.created` /
                         `.in_progress`, text messages, reasoning summaries, function calls with
                         argument deltas (some never `done`), items interleaved, and a terminal
                         event (`completed` with full, empty or null output, `incomplete`,
                         `failed`, an `error` frame) or none at all
    mangled(parts)       adversarial edits of such a list: swapped, moved, duplicated and dropped
                         events, and inserted frames (errors anywhere, unknown names, prelude
                         frames, keepalives, `[DONE]`, bad JSON, invalid UTF-8)
    sse_bytes(parts)     the bytes: LF, CRLF or CR line ends, an optional byte-order mark
    attempt_scripts()    bytes cut at arbitrary points into reads, truncated at any byte, with
                         faults, stalls and interrupts at any point and an ending step; or an
                         HTTP error status
    policies()           turn policies (retries, fallback, idle timeout, retryable failure codes)
    sessions()           a policy and up to as many attempt scripts as it allows; a retry often
                         repeats the first attempt's answer (so delivered text must not repeat)

The strategies draw from small alphabets and small sizes on purpose: the interesting structure
is in the order and the cuts, and a failing example should fit on a screen.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Final, Iterable, Literal, Sequence

import attrs
import orjson
from hypothesis import strategies as st

from engine.log.eventlog import Callbacks
from engine.drivers.recording import TurnRecording
from engine.testing.shapes import (
    DONE,
    FAILURE_MESSAGES,
    KEEPALIVE,
    Comment,
    Data,
    Raw,
    StreamPart,
    assemble,
    completed,
    created,
    encode_part,
    error_frame,
    failed,
    function_call,
    in_progress,
    incomplete,
    nested_error_frame,
    output_items,
    rate_limits_frame,
    reasoning_summary,
    response_metadata_frame,
    text_message,
    websocket_timing_frame,
)
from machines.records import (
    Chunk,
    EndOfStream,
    HttpError,
    IdleTimeout,
    Interrupt,
    Stall,
    TransportFault,
    TurnPolicy,
    TurnResult,
)

__all__ = [
    "CallbackRaised",
    "Chunk",
    "EndOfStream",
    "HttpError",
    "Interrupt",
    "TransportFault",
    "Session",
    "Stall",
    "Step",
    "attempt_scripts",
    "mangled",
    "play_session",
    "policies",
    "responses",
    "run_session",
    "session_from_trace",
    "sessions",
    "sse_bytes",
    "well_formed_sessions",
]

FaultKind = Literal["drop", "read_timeout", "connect_error"]

# --------------------------------------------------------------------------------------------
# Steps and sessions


#: What a driver can observe on one HTTP response, in the shared vocabulary of `machines.records`.
Step = Chunk | TransportFault | Stall | Interrupt | EndOfStream | HttpError


def _as_attempts(value: Iterable[Iterable[Step]]) -> tuple[tuple[Step, ...], ...]:
    return tuple(tuple(script) for script in value)


@attrs.frozen(slots=True)
class Session:
    """One turn's view of the world: a policy and one attempt script per request."""

    attempts: tuple[tuple[Step, ...], ...] = attrs.field(converter=_as_attempts)
    policy: TurnPolicy = TurnPolicy()

    def describe(self) -> str:
        """The session as short, readable lines (bytes shown as text where they are text)."""
        p = self.policy
        lines = [
            f"policy: max_stream_retries={p.max_stream_retries} fallback={p.fallback} "
            f"idle_timeout_s={p.idle_timeout_s} retry_failed_codes={sorted(p.retry_failed_codes)}"
        ]
        for number, script in enumerate(self.attempts, 1):
            lines.append(f"attempt {number}:")
            for step in script:
                if isinstance(step, Chunk):
                    try:
                        shown = repr(step.data.decode("utf-8"))
                    except UnicodeDecodeError:
                        shown = repr(step.data)
                    lines.append(f"  read {shown}")
                else:
                    lines.append(f"  {step!r}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Playing a session through the machines

#: The request a played session records in its trace header.
FUZZ_REQUEST: Final = {"model": "streamfsm-fuzz", "input": "generated session"}

#: Seconds the simulated clock advances per step.
STEP_S: Final = 0.001


class CallbackRaised(Exception):
    """A caller's callback raised while a session played (the first such error is the cause)."""

    def __init__(self, callback: str, error: BaseException) -> None:
        super().__init__(f"{callback} raised {type(error).__name__}: {error}")
        self.callback = callback
        self.error = error


def _fenced_callbacks(
    callbacks: Callbacks | None, errors: list[tuple[str, BaseException]]
) -> Callbacks | None:
    """The caller's callbacks, each noting what it raises (the event log swallows exceptions)."""
    if callbacks is None:
        return None

    def wrap(name: str, callback: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if callback is None:
            return None

        def noted(*args: Any) -> Any:
            try:
                return callback(*args)
            except Exception as error:
                errors.append((name, error))
                raise

        return noted

    return Callbacks(
        on_first_delta=wrap("on_first_delta", callbacks.on_first_delta),
        on_text_delta=wrap("on_text_delta", callbacks.on_text_delta),
        on_reasoning_delta=wrap("on_reasoning_delta", callbacks.on_reasoning_delta),
    )


def play_session(
    session: Session,
    callbacks: Callbacks | None = None,
    policy: TurnPolicy | None = None,
) -> TurnRecording:
    """Play `session` through a fresh `TurnRecording`; return it with the turn finished.

    This is `run_turn` minus the socket. Call `.finish(trace)` on the result to get the
    `TurnResult` (and write a trace)."""
    recording = _recording_for(session, callbacks, policy)
    _play(recording, session)
    return recording


def _recording_for(
    session: Session, callbacks: Callbacks | None, policy: TurnPolicy | None
) -> TurnRecording:
    if not isinstance(session, Session):
        raise TypeError(
            f"session must be an engine.strategies.Session, not {type(session).__name__}"
        )
    if policy is not None and not isinstance(policy, TurnPolicy):
        raise TypeError(f"policy must be engine.TurnPolicy or None, not {type(policy).__name__}")
    if callbacks is not None and not isinstance(callbacks, Callbacks):
        raise TypeError(
            f"callbacks must be engine.Callbacks or None, not {type(callbacks).__name__}"
        )
    return TurnRecording(
        session.policy if policy is None else policy,
        callbacks,
        entry="run_turn",
        request=FUZZ_REQUEST,
    )


def _play(recording: TurnRecording, session: Session) -> None:
    policy = recording.policy
    clock = 0.0
    for feed in recording.attempts():
        index = feed.number - 1
        script = (
            session.attempts[index] if index < len(session.attempts) else (TransportFault("connect_error"),)
        )
        for step in script:
            clock = round(clock + STEP_S, 6)
            if isinstance(step, Chunk):
                feed.chunk(step.data, clock)
            elif isinstance(step, EndOfStream):
                feed.end(clock)
            elif isinstance(step, (TransportFault, Interrupt, HttpError)):
                feed.fail(step, clock)
            elif isinstance(step, Stall):
                if policy.idle_timeout_s is not None and step.seconds >= policy.idle_timeout_s:
                    clock = round(clock + policy.idle_timeout_s, 6)
                    feed.fail(IdleTimeout(policy.idle_timeout_s), clock)
                else:
                    clock = round(clock + step.seconds, 6)
            else:
                raise TypeError(f"not a session step: {step!r}")
            if feed.final:
                break
        if not feed.final:
            feed.end(round(clock + STEP_S, 6))


def run_session(
    session: Session,
    callbacks: Callbacks | None = None,
    policy: TurnPolicy | None = None,
    trace: str | os.PathLike[str] | None = None,
    *,
    reraise: bool = True,
) -> TurnResult:
    """Play `session` through the stream-attempt and turn machines; return the `TurnResult`.

    `policy` overrides the session's own. `trace` writes the turn as a trace file (it replays
    with `engine.replay`; if playing raises, what was recorded so far is written). The event log
    fences callbacks (a raising callback never breaks a turn); here, with `reraise` (the
    default), the first exception a callback raised is raised after the turn as
    `CallbackRaised`, so a property test over your callbacks sees it."""
    if callbacks is not None and not isinstance(callbacks, Callbacks):
        raise TypeError(
            f"callbacks must be engine.Callbacks or None, not {type(callbacks).__name__}"
        )
    errors: list[tuple[str, BaseException]] = []
    recording = _recording_for(session, _fenced_callbacks(callbacks, errors), policy)
    try:
        _play(recording, session)
        result = recording.finish(trace)
    except BaseException:
        recording.abandon(trace)
        raise
    if errors and reraise:
        name, error = errors[0]
        raise CallbackRaised(name, error) from error
    return result


def session_from_trace(path: str | os.PathLike[str]) -> Session:
    """The session a trace file recorded (its policy and every attempt's inputs).

    Reading steps back from a trace loses only pauses that ended no attempt, which change
    nothing the machines see."""
    from machines.records import Chunk
    from engine.log.trace import input_from_json, read_trace
    from machines.records import EndOfStream

    trace = read_trace(path)
    scripts: dict[int, list[Step]] = {}
    for record in trace.inputs():
        item = input_from_json(record)
        if isinstance(item, Chunk):
            step: Step = Chunk(item.data)
        elif isinstance(item, EndOfStream):
            step = EndOfStream()
        elif isinstance(item, TransportFault):
            step = TransportFault(item.kind)
        elif isinstance(item, IdleTimeout):
            step = Stall(item.seconds)
        elif isinstance(item, Interrupt):
            step = Interrupt()
        else:
            step = HttpError(item.status, item.body)
        scripts.setdefault(record["attempt"], []).append(step)
    count = max(scripts, default=0)
    return Session([scripts.get(n, []) for n in range(1, count + 1)], trace.policy)


# --------------------------------------------------------------------------------------------
# Well-formed responses

_TEXT: Final = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8
)
_WORDS: Final = st.sampled_from(["Hi", "Paris", "ok", "Grüße", "東京", "🚀 go", "a\nb"])
#: Short text: readable words first (what shrinking reaches), any Unicode text as well.
texts: Final = _WORDS | _TEXT

_TOOL_NAMES: Final = ("get_weather", "get_time", "search")
_ARGUMENTS: Final = st.sampled_from(
    ['{"city":"Paris"}', "{}", '{"q":"x"}', '{"timezone":"Europe/Paris","n":1}']
) | st.builds(lambda s: orjson.dumps({"q": s}).decode(), _TEXT)

_FAILURE_CODES: Final = ("server_error", *[c for c in FAILURE_MESSAGES if c != "server_error"])
_PROVIDER_MESSAGES: Final = (
    st.sampled_from(
        [
            "The account signed in with OAuth is not entitled to use model grok-4.",
            "Your input exceeds the context window of this model.",
            *FAILURE_MESSAGES.values(),
        ]
    )
    | _TEXT
)
_ERROR_CODES: Final = st.sampled_from(
    ["permission_denied", "server_error", "rate_limit_exceeded", None, "invalid_prompt"]
)


_BOOLEANS: Final = st.booleans()
_ERROR_TYPES: Final = st.sampled_from(["server_error", "invalid_request_error"])


def _error_frame(draw: st.DrawFn) -> list[dict[str, Any]]:
    message = draw(_PROVIDER_MESSAGES)
    code = draw(_ERROR_CODES)
    if draw(_BOOLEANS):
        return nested_error_frame(message, type=draw(_ERROR_TYPES), code=code)
    return error_frame(message, code)


_ERROR_FRAMES: Final = st.composite(_error_frame)()

_UNKNOWN_FRAMES: Final = st.sampled_from(
    [
        response_metadata_frame(),
        websocket_timing_frame(),
        [{"type": "response.queued"}],
        [{"type": "codex.unknown_thing", "n": 1}],
        [{"type": "response.content_part.added", "output_index": 0, "content_index": 0}],
    ]
)

#: Frames real relays send before `response.created`.
_PRELUDES: Final = st.lists(
    st.one_of(st.just(rate_limits_frame()), st.just([KEEPALIVE]), _UNKNOWN_FRAMES), max_size=2
)

_ITEM_KINDS: Final = st.sampled_from(["text", "function_call", "reasoning"])
_DELTA_COUNTS: Final = st.integers(1, 3)
_TOOL_NAME: Final = st.sampled_from(_TOOL_NAMES)
_TRUE_FIRST: Final = st.sampled_from([True, False])
_FALSE_FIRST: Final = st.sampled_from([False, True])


def _item(draw: st.DrawFn, index: int) -> list[StreamPart]:
    kind = draw(_ITEM_KINDS)
    if kind == "text":
        return text_message(draw(texts), deltas=draw(_DELTA_COUNTS), output_index=index)
    if kind == "reasoning":
        return reasoning_summary(draw(texts), deltas=draw(_DELTA_COUNTS), output_index=index)
    return function_call(
        draw(_TOOL_NAME),
        draw(_ARGUMENTS),
        deltas=draw(_DELTA_COUNTS),
        output_index=index,
        finished=draw(_TRUE_FIRST),
    )


#: One strategy per output index, so each item is one span the shrinker can delete whole.
_ITEMS: Final = [st.composite(lambda draw, i=i: _item(draw, i))() for i in range(16)]


def _interleave(items: list[list[StreamPart]], choices: list[int]) -> list[StreamPart]:
    """Merge the items' events, keeping each item's own order: `choices` pick which item's next
    event comes next (an empty list gives the items one after the other)."""
    queues = [list(item) for item in items]
    merged: list[StreamPart] = []
    for choice in choices:
        live = [q for q in queues if q]
        if not live:
            break
        merged.append(live[choice % len(live)].pop(0))
    for q in queues:
        merged.extend(q)
    return merged


TERMINALS: Final = (
    "completed",
    "completed_output_empty",
    "completed_output_null",
    "incomplete",
    "failed",
    "error_frame",
    "none",
)
_OPENINGS: Final = st.sampled_from(["created", "created+in_progress", "in_progress", "nothing"])
_ITEM_COUNTS: Final = [st.integers(0, n) for n in range(9)]
_MERGE_CHOICES: Final = st.lists(st.integers(0, 3), max_size=8)
_TERMINAL_CHOICES: Final = st.sampled_from(TERMINALS)
_INCOMPLETE_REASONS: Final = st.sampled_from(["max_output_tokens", "content_filter"])
_FAILURE_CODE: Final = st.sampled_from(_FAILURE_CODES)
_FAILURE_MESSAGE: Final = st.none() | _PROVIDER_MESSAGES


def _response(
    draw: st.DrawFn, max_items: int, terminals: st.SearchStrategy[str]
) -> list[StreamPart]:
    prelude = draw(_PRELUDES)
    start = draw(_OPENINGS)
    count = min(draw(_ITEM_COUNTS[min(max_items, 8)]), len(_ITEMS))
    items = [draw(_ITEMS[index]) for index in range(count)]
    body = _interleave(items, draw(_MERGE_CHOICES))
    done = output_items(*items)
    terminal = draw(terminals)
    if terminal == "completed":
        end: list[StreamPart] = completed(done)
    elif terminal == "completed_output_empty":
        end = completed([])
    elif terminal == "completed_output_null":
        end = completed(None)
    elif terminal == "incomplete":
        end = incomplete(draw(_INCOMPLETE_REASONS), done)
    elif terminal == "failed":
        end = failed(draw(_FAILURE_CODE), draw(_FAILURE_MESSAGE), done)
    elif terminal == "error_frame":
        end = draw(_ERROR_FRAMES)
    else:
        end = []
    opening: list[StreamPart] = {
        "created": created(),
        "created+in_progress": [*created(), *in_progress()],
        "in_progress": in_progress(),
        "nothing": [],
    }[start]
    trailer = [DONE] if draw(_BOOLEANS) else []
    stream = assemble(*prelude, opening, body, end, trailer)
    return stream if draw(_FALSE_FIRST) else [_compact(part) for part in stream]


#: The fields of a Response object a compact stream keeps (the machines read no others).
COMPACT_RESPONSE_FIELDS: Final = ("id", "status", "output", "error", "incomplete_details")


def _compact(part: StreamPart) -> StreamPart:
    """`part` with its embedded Response object cut to `COMPACT_RESPONSE_FIELDS`, so that a
    failing example fits on a screen (full objects are drawn too)."""
    if isinstance(part, dict) and isinstance(part.get("response"), dict):
        response = part["response"]
        return {
            **part,
            "response": {k: response[k] for k in COMPACT_RESPONSE_FIELDS if k in response},
        }
    return part


def responses(
    *, max_items: int = 3, terminals: Sequence[str] = TERMINALS
) -> st.SearchStrategy[list[StreamPart]]:
    """One well-formed Responses-API stream, as event dicts and `engine.testing.shapes` markers.

    `terminals` limits how it may end (names from `TERMINALS`, first is the shrink target)."""
    return _responses(max_items, tuple(terminals))


@functools.lru_cache(maxsize=64)
def _responses(max_items: int, terminals: tuple[str, ...]) -> st.SearchStrategy[list[StreamPart]]:
    unknown = set(terminals) - set(TERMINALS)
    if unknown or not terminals:
        raise ValueError(f"terminals must be names from {TERMINALS}, got {list(terminals)}")
    choice = (
        _TERMINAL_CHOICES if tuple(terminals) == TERMINALS else st.sampled_from(list(terminals))
    )
    return st.composite(lambda draw: _response(draw, max_items, choice))()


# --------------------------------------------------------------------------------------------
# Adversarial edits

_NOISE_FRAMES: Final = st.sampled_from(
    [
        in_progress(),
        created(),
        rate_limits_frame(),
        [KEEPALIVE],
        [Comment("")],
        [DONE],
        [
            Data(
                '{"type":"response.output_text.delta","delta":"Pa',
                event="response.output_text.delta",
            )
        ],
        [Data("not json at all")],
        [Data("[1, 2]")],
        [Data('{"no_type": true}', event="error")],
        [Raw(b"data: \xff\xfe\xc3(\n\n")],
        [Raw(b"event: response.output_text.delta\n\n")],
        [Raw(b"id: 7\nretry: 10\nunknown-field: x\n\n")],
    ]
)
_NOISE_KINDS: Final = st.sampled_from(["error", "unknown", "other"])

_EDITS: Final = ("swap", "move", "duplicate", "drop", "insert")
_EDIT_LISTS: Final = [
    st.lists(st.tuples(st.sampled_from(_EDITS), st.integers(0, 63), st.integers(0, 63)), max_size=n)
    for n in range(9)
]


def _noise(draw: st.DrawFn) -> list[StreamPart]:
    kind = draw(_NOISE_KINDS)
    if kind == "error":
        return draw(_ERROR_FRAMES)
    if kind == "unknown":
        return draw(_UNKNOWN_FRAMES)
    return draw(_NOISE_FRAMES)


_NOISE: Final = st.composite(_noise)()


def _mangle(draw: st.DrawFn, parts: list[StreamPart], max_edits: int) -> list[StreamPart]:
    out = list(parts)
    edits = draw(
        _EDIT_LISTS[max_edits]
        if max_edits < len(_EDIT_LISTS)
        else st.lists(
            st.tuples(st.sampled_from(_EDITS), st.integers(0, 63), st.integers(0, 63)),
            max_size=max_edits,
        )
    )
    for edit, a, b in edits:
        if edit == "insert":
            noise = draw(_NOISE)
            position = a % (len(out) + 1)
            out[position:position] = noise
            continue
        if not out:
            continue
        i = a % len(out)
        if edit == "swap" and len(out) > 1:
            j = (i + 1) % len(out)
            out[i], out[j] = out[j], out[i]
        elif edit == "move":
            part = out.pop(i)
            out.insert(b % (len(out) + 1), part)
        elif edit == "duplicate":
            out.insert(i + 1 + b % (len(out) - i), out[i])
        elif edit == "drop":
            del out[i]
    return out


def mangled(parts: list[StreamPart], *, max_edits: int = 4) -> st.SearchStrategy[list[StreamPart]]:
    """`parts` after up to `max_edits` adversarial edits: swapped, moved, duplicated or dropped
    events, and inserted frames (error frames, unknown names, prelude frames, keepalives,
    `[DONE]`, bad JSON, invalid UTF-8). No edit at all is the shrink target."""
    return st.composite(lambda draw: _mangle(draw, parts, max_edits))()


# --------------------------------------------------------------------------------------------
# Bytes, reads and attempt scripts

_LINE_ENDS: Final = st.sampled_from([b"\n", b"\r\n", b"\r"])


def _encode(draw: st.DrawFn, parts: list[StreamPart]) -> bytes:
    ending = draw(_LINE_ENDS)
    body = b"".join(encode_part(part) for part in parts)
    if ending != b"\n":
        body = body.replace(b"\n", ending)
    if draw(_BOOLEANS) and draw(_BOOLEANS):
        body = b"\xef\xbb\xbf" + body
    return body


def sse_bytes(parts: list[StreamPart]) -> st.SearchStrategy[bytes]:
    """The SSE bytes of `parts`, with LF, CRLF or CR line ends and maybe a byte-order mark."""
    return st.composite(lambda draw: _encode(draw, parts))()


def _cut(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`body` cut at the given offsets (taken modulo its length; 0 cuts nothing)."""
    size = len(body)
    points = sorted({c % size for c in cuts if size}) if size else []
    edges = [0, *[p for p in points if p], size]
    return [body[a:b] for a, b in zip(edges, edges[1:]) if b > a]


_INTERRUPTIONS: Final = st.lists(
    st.tuples(
        st.integers(0, 64),
        st.sampled_from(
            [TransportFault("drop"), Stall(60.0), Interrupt(), TransportFault("read_timeout"), Stall(0.01)]
        ),
    ),
    max_size=2,
)
_ENDINGS: Final = st.sampled_from(
    [
        EndOfStream(),
        TransportFault("drop"),
        TransportFault("read_timeout"),
        Stall(60.0),
        Interrupt(),
        TransportFault("connect_error"),
    ]
)
_HTTP_STATUSES: Final = st.sampled_from([500, 429, 401, 400, 503])
_HTTP_BODIES: Final = st.one_of(
    st.builds(
        lambda m, c: {"error": {"message": m, "type": "server_error", "param": None, "code": c}},
        _PROVIDER_MESSAGES,
        _ERROR_CODES,
    ),
    st.builds(lambda m: {"message": m, "code": None}, _PROVIDER_MESSAGES),
    st.none(),
    _PROVIDER_MESSAGES,
)
_ONE_IN_SIXTEEN: Final = st.integers(0, 15)
_TRUNCATIONS: Final = st.none() | st.integers(0, 1 << 16)
_CUTS: Final = st.lists(st.integers(0, 1 << 16), max_size=6)


def _script(draw: st.DrawFn, parts: list[StreamPart], adversarial: bool) -> tuple[Step, ...]:
    if not adversarial:
        body = b"".join(encode_part(part) for part in parts)
        return (*(Chunk(chunk) for chunk in _cut(body, draw(_CUTS))), EndOfStream())
    if draw(_ONE_IN_SIXTEEN) == 15:
        return (HttpError(draw(_HTTP_STATUSES), draw(_HTTP_BODIES)),)
    body = _encode(draw, _mangle(draw, parts, 4))
    truncate_at = draw(_TRUNCATIONS)
    if truncate_at is not None:
        body = body[: truncate_at % (len(body) + 1)]
    steps: list[Step] = [Chunk(chunk) for chunk in _cut(body, draw(_CUTS))]
    for position, step in draw(_INTERRUPTIONS):
        steps.insert(position % (len(steps) + 1), step)
    steps.append(draw(_ENDINGS))
    return tuple(steps)


_scripts: Final = st.composite(_script)


def attempt_scripts(
    response: st.SearchStrategy[list[StreamPart]] | None = None, *, adversarial: bool = True
) -> st.SearchStrategy[tuple[Step, ...]]:
    """One attempt: a response's bytes as reads, and (adversarial) edits, a truncation, faults,
    stalls and interrupts at any point, an ending step, or an HTTP error status instead."""
    answers = response if response is not None else responses()
    return st.composite(lambda draw: _script(draw, draw(answers), adversarial))()


_RETRIES: Final = st.sampled_from([0, 1, 2])
_IDLE_TIMEOUTS: Final = st.sampled_from([None, 5.0])
_RETRY_CODES: Final = st.sampled_from(
    [frozenset(), frozenset({"server_error"}), frozenset({"server_error", "rate_limit_exceeded"})]
)


@st.composite
def policies(draw: st.DrawFn) -> TurnPolicy:
    """Turn policies. The shrink target is a single attempt (no retry, no fallback), so a
    failing session that does not need a retry shrinks to one attempt."""
    return TurnPolicy(
        max_stream_retries=draw(_RETRIES),
        fallback=draw(_FALSE_FIRST),
        idle_timeout_s=draw(_IDLE_TIMEOUTS),
        retry_failed_codes=draw(_RETRY_CODES),
    )


_ATTEMPT_COUNTS: Final = [st.integers(1, max(1, n)) for n in range(6)]


@st.composite
def sessions(
    draw: st.DrawFn,
    *,
    policy: TurnPolicy | st.SearchStrategy[TurnPolicy] | None = None,
    response: st.SearchStrategy[list[StreamPart]] | None = None,
    adversarial: bool = True,
) -> Session:
    """A turn's worth of attempt scripts under a policy (drawn from `policies()` unless given).

    Each attempt after the first repeats the first attempt's answer (as a retried request
    usually does) or streams another one. `adversarial=False` gives well-formed streams in
    whole-event reads or arbitrary cuts, each ending cleanly."""
    if policy is None:
        chosen = draw(policies())
    elif isinstance(policy, TurnPolicy):
        chosen = policy
    else:
        chosen = draw(policy)
    answers = response if response is not None else responses()
    limit = 1 + chosen.max_stream_retries + (1 if chosen.fallback else 0)
    count = draw(_ATTEMPT_COUNTS[limit])
    first = draw(answers)
    scripts = []
    for number in range(count):
        parts = first if number == 0 or draw(_TRUE_FIRST) else draw(answers)
        scripts.append(draw(_scripts(parts, adversarial)))
    return Session(scripts, chosen)


def well_formed_sessions(**kwargs: Any) -> st.SearchStrategy[Session]:
    """`sessions(adversarial=False, ...)`: well-formed streams that end cleanly."""
    return sessions(adversarial=False, **kwargs)
