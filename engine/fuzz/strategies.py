"""Hypothesis strategies for Responses-API SSE sessions, and the one place that plays them.

Theory of operation
===================

A *session* is what one turn sees from the outside world: a `Session` holds the turn's
`TurnPolicy` and one *attempt script* per request the turn makes. An attempt script is a tuple of
*steps*, exactly what a driver can observe on one HTTP response:

    Chunk(data)          one network read: these bytes, with this chunk boundary
    TransportFault(fault) the byte stream broke (`Fault.DROP`, `.READ_TIMEOUT`, `.CONNECT_ERROR`)
    Stall(seconds)      the socket stays silent; with an idle timeout in the policy this ends the
                        attempt (an `IdleTimeout` input), without one it is only a pause
    Interrupt()     the caller asks the turn to stop
    EndOfStream()         the body ends cleanly
    HttpError(s, body) the request was answered with a non-2xx status (first step only)

`run_session` plays a session through the real sans-I/O loop (`engine.drivers.recording.TurnRecording`
and `AttemptFeed`), which is what `run_turn` does minus the socket: steps after the attempt reached
a final state are never read (the driver would have closed the response), a script that runs out
of steps ends with a clean end of body, and an attempt the turn makes beyond the scripts gets a
`connect_error` (the server is unreachable). What answers each request is a `Server` (the
session's scripts, `Session.server`; a background response in `engine.fuzz.background`), and the
reference model (`engine.fuzz.reference`) asks the same server for its own attempts. The
driver's clock is simulated (a millisecond per step, a stall adds its seconds), so a session
plays identically every time, and a trace written by `run_session` replays with `engine.replay`
and `streamfsm replay`.

Strategies, from the inside out (every one shrinks toward a short, readable session):

    responses()          one well-formed Responses-API stream as a list of event dicts and
                         markers (`engine.simulator.shapes`): optional prelude frames, `response.created` /
                         `.in_progress`, messages (answer text, commentary and final answers by
                         `phase`, refusals, text then a refusal; passed on as sent, with the
                         phase only on `.done`, without `output_item.added` and addressed by
                         `item_id` only, or with a new `item_id` on every frame), reasoning
                         summaries, function calls with argument deltas (some never `done`),
                         items interleaved, and a terminal event (`completed` with full, empty or
                         null output, `incomplete`, `failed`, an `error` frame) or none at all
    tool_call_answers()  a response of tool calls of every kind, the client's and the server's
                         (`engine.fuzz.tool_items`), with answer text between them
    mangled(parts)       adversarial edits of such a list: swapped, moved, duplicated and dropped
                         events, inserted frames (errors anywhere, unknown names, prelude
                         frames, keepalives, `[DONE]`, bad JSON, invalid UTF-8), and fields
                         retyped: any field's value replaced by one of another JSON type, or
                         nested hundreds of levels deep (`retyped`)
    sse_bytes(parts)     the bytes: LF, CRLF or CR line ends, an optional byte-order mark
    attempt_scripts()    bytes cut at arbitrary points into reads, truncated at any byte, with
                         faults, stalls and interrupts at any point and an ending step; or an
                         HTTP error status
    policies()           turn policies (retries, fallback, idle timeout, retryable failure codes)
    sessions()           a policy and up to as many attempt scripts as it allows; a retry often
                         repeats the first attempt's answer (so delivered text must not repeat);
                         sometimes a `max_event_bytes` near the size of the answer's largest
                         event; the client's keys (`Session.secrets`), which answers echo, now
                         and then written escaped (some or all characters as `\\uXXXX`, `/` as
                         `\\/`); HTTP errors demanding waits of every size, one too large to
                         represent included; and one session in eight a turn with a wall-clock
                         limit against a server that drips its bytes (`deadline_plans`)

The strategies draw from small alphabets and small sizes on purpose: the interesting structure
is in the order and the cuts, and a failing example should fit on a screen.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Final, Iterable, Literal, Sequence, TypeVar

import attrs
import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from engine.log.codec import JSON_TYPES, json_type
from engine.log.eventlog import Callbacks
from engine.drivers.recording import TurnRecording
from engine.fuzz.tool_items import ToolItemStream, tool_item_streams
from engine.simulator.shapes import (
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
    nested_json,
    output_items,
    rate_limits_frame,
    phase_only_on_done,
    reasoning_summary,
    refusal_message,
    response_metadata_frame,
    rotating_item_ids,
    text_message,
    websocket_timing_frame,
    without_item_added,
)
from engine.simulator.background import Event
from machines.records import (
    AttemptKind,
    Chunk,
    EndOfStream,
    Fault,
    HttpError,
    IdleTimeout,
    InputKind,
    Interrupt,
    Stall,
    TransportFault,
    TurnPolicy,
    TurnResult,
    TurnTimeout,
)

__all__ = [
    "CLIENT_KEY",
    "CallbackRaised",
    "Chunk",
    "DEFAULT_MAX_EVENT_BYTES",
    "ECHOED_SECRETS",
    "SESSION_TOKEN",
    "SHAPED_KEY",
    "EndOfStream",
    "Fault",
    "HttpError",
    "Interrupt",
    "RELAY_KEY",
    "TransportFault",
    "Server",
    "Session",
    "Stall",
    "Step",
    "attempt_scripts",
    "deadline_plans",
    "escaped_secret",
    "mutated_lines",
    "trace_mutations",
    "TraceMutation",
    "mangled",
    "play_session",
    "policies",
    "responses",
    "retyped",
    "run_session",
    "session_from_trace",
    "session_settings",
    "sessions",
    "sse_bytes",
    "tool_call_answers",
    "well_formed_sessions",
]

_T = TypeVar("_T")

#: The policy's own limit on one event, when a session does not draw a small one.
DEFAULT_MAX_EVENT_BYTES: Final = TurnPolicy().max_event_bytes

#: Secrets generated servers echo (split across deltas, reads and attempts) and no trace may hold
#: a piece of: a key only the client knows (`Session.secrets`: no shape gives it away), a key
#: shaped like an OpenAI project key (found by its shape; echoed whole in error messages), and
#: the value of a response field named like a credential (`metadata.session_token`).
CLIENT_KEY: Final = "Kq7Zw2.Rn8VxT4hYp0dMs"
SHAPED_KEY: Final = "sk-proj-Zq7Wb3Lr9Tx2Kc5Vn8Hd4Jm6Pf1Gs0Ya"
SESSION_TOKEN: Final = "Pq4Xr8Ts2Vw6Yz0Bc3Df"
#: A relay's key the client holds too, with characters a JSON writer may escape (`/` as `\\/`).
RELAY_KEY: Final = "rly_7Gq/Xw2+Lm9=Tz4Pk8/Hd3"
ECHOED_SECRETS: Final = (CLIENT_KEY, SHAPED_KEY, SESSION_TOKEN, RELAY_KEY)

# --------------------------------------------------------------------------------------------
# Steps and sessions


#: What a driver can observe on one HTTP response, in the shared vocabulary of `machines.records`.
Step = Chunk | TransportFault | Stall | Interrupt | EndOfStream | HttpError

#: What answers a played turn's requests: the steps attempt `number` of `kind` observes (a
#: `resume` continues the background response at `point`: its id and last sequence number).
Server = Callable[[int, AttemptKind, tuple[str, int] | None], Sequence[Step]]

#: What an attempt beyond a session's scripts observes: the server is unreachable.
UNREACHABLE: Final[tuple[Step, ...]] = (TransportFault(Fault.CONNECT_ERROR),)


def _as_attempts(value: Iterable[Iterable[Step]]) -> tuple[tuple[Step, ...], ...]:
    return tuple(tuple(script) for script in value)


def _as_secrets(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(slots=True)
class Session:
    """One turn's view of the world: a policy and one attempt script per request, and the
    secrets the caller's client holds (its API key, ...): the trace writer is told them, as
    `run_turn` tells it the client's, so no piece of one reaches a trace."""

    attempts: tuple[tuple[Step, ...], ...] = attrs.field(converter=_as_attempts)
    policy: TurnPolicy = TurnPolicy()
    secrets: tuple[str, ...] = attrs.field(default=(), converter=_as_secrets)

    def server(
        self, number: int, kind: AttemptKind = "stream", point: tuple[str, int] | None = None
    ) -> tuple[Step, ...]:
        """The session as a `Server`: attempt `number`'s script, whatever its kind; an attempt
        beyond the scripts cannot connect."""
        return self.attempts[number - 1] if number <= len(self.attempts) else UNREACHABLE

    def describe(self) -> str:
        """The session as short, readable lines (bytes shown as text where they are text)."""
        p = self.policy
        lines = [
            f"policy: max_stream_retries={p.max_stream_retries} fallback={p.fallback} "
            f"idle_timeout_s={p.idle_timeout_s} retry_failed_codes={sorted(p.retry_failed_codes)}"
            + (f" max_http_retries={p.max_http_retries}" if p.max_http_retries else "")
            + (
                f" max_event_bytes={p.max_event_bytes}"
                if p.max_event_bytes != DEFAULT_MAX_EVENT_BYTES
                else ""
            )
            + (f" turn_timeout_s={p.turn_timeout_s}" if p.turn_timeout_s is not None else "")
        ]
        if self.secrets:
            lines.append(f"client secrets: {list(self.secrets)}")
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

    names = [field.name for field in attrs.fields(Callbacks)]
    return Callbacks(**{name: wrap(name, getattr(callbacks, name)) for name in names})


def play_session(
    session: Session,
    callbacks: Callbacks | None = None,
    policy: TurnPolicy | None = None,
) -> TurnRecording:
    """Play `session` through a fresh `TurnRecording`; return it with the turn finished.

    This is `run_turn` minus the socket. Call `.finish(trace)` on the result to get the
    `TurnResult` (and write a trace)."""
    recording = _recording_for(session, callbacks, policy)
    play_server(recording, session.server)
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


def play_server(recording: TurnRecording, server: Server) -> None:
    """Feed each attempt the recording's turn opens the steps `server` gives it, as a driver
    would observe them, on a simulated clock (a millisecond per step, a stall adds its
    seconds, the wait before an HTTP retry passes before its first step): a stall at least the
    policy's idle timeout is an `IdleTimeout`, a script that runs out ends the body cleanly, and
    steps after the attempt ended are not read. With a `turn_timeout_s`, a step (or the end of
    a silence) that would come at or after the limit comes too late: the attempt is fed a
    `TurnTimeout` at the limit instead, and a wait that would reach the limit is not waited:
    the attempt about to be sent is fed it at once."""
    policy = recording.policy
    clock = _SessionClock(policy)
    for feed in recording.attempts():
        if clock.waits_past(recording.wait_s):
            feed.fail(TurnTimeout(clock.limit or 0.0), clock.now)
            continue
        clock.wait(recording.wait_s)
        for step in server(feed.number, feed.kind, feed.resume_point):
            if not clock.step():
                feed.fail(TurnTimeout(clock.limit or 0.0), clock.now)
            elif isinstance(step, Chunk):
                feed.chunk(step.data, clock.now)
            elif isinstance(step, EndOfStream):
                feed.end(clock.now)
            elif isinstance(step, (TransportFault, Interrupt, HttpError)):
                feed.fail(step, clock.now)
            elif isinstance(step, Stall):
                ended = clock.stall(step.seconds)
                if ended is not None:
                    feed.fail(ended, clock.now)
            else:
                raise TypeError(f"not a session step: {step!r}")
            if feed.final:
                break
        if not feed.final:
            if clock.step():
                feed.end(clock.now)
            else:
                feed.fail(TurnTimeout(clock.limit or 0.0), clock.now)


class _SessionClock:
    """The simulated clock of a played session (see `play_server`), and the turn's limit on
    it: `now` is the latest reading, every move is rounded to microseconds as a driver's
    clock readings are."""

    __slots__ = ("now", "limit", "idle")

    def __init__(self, policy: TurnPolicy) -> None:
        self.now = 0.0
        self.limit = policy.turn_timeout_s
        self.idle = policy.idle_timeout_s

    def _reaches_limit(self, moment: float) -> bool:
        return self.limit is not None and moment >= self.limit

    def waits_past(self, seconds: float) -> bool:
        """Whether a wait of `seconds` from now would reach the limit."""
        return self._reaches_limit(round(self.now + seconds, 6))

    def wait(self, seconds: float) -> None:
        self.now = round(self.now + seconds, 6)

    def step(self) -> bool:
        """The next step arrives (`STEP_S` later); False when that is too late (the clock then
        reads the limit)."""
        arrival = round(self.now + STEP_S, 6)
        if self._reaches_limit(arrival):
            self.now = self.limit or arrival
            return False
        self.now = arrival
        return True

    def stall(self, seconds: float) -> IdleTimeout | TurnTimeout | None:
        """The server is silent for `seconds`: what ends the attempt meanwhile (the idle
        timeout, the turn's limit), or None."""
        idle = self.idle
        idles = idle is not None and seconds >= idle
        ends = round(self.now + (idle if idle is not None and idles else seconds), 6)
        if self.limit is not None and ends >= self.limit:
            self.now = self.limit
            return TurnTimeout(self.limit)
        self.now = ends
        return IdleTimeout(idle) if idle is not None and idles else None


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
        play_server(recording, session.server)
        result = recording.finish(trace, session.secrets)
    except BaseException:
        recording.abandon(trace, session.secrets)
        raise
    if errors and reraise:
        name, error = errors[0]
        raise CallbackRaised(name, error) from error
    return result


def session_from_trace(path: str | os.PathLike[str]) -> Session:
    """The session a trace file recorded (its policy and every attempt's inputs).

    Reading steps back from a trace loses only pauses that ended no attempt, which change
    nothing the machines see, except the time they took: so the turn's limit, when the trace
    ran out of it (a `turn_timeout` input), comes back as a silence that reaches the limit from
    anywhere (in stalls shorter than the idle timeout), and a played session makes it come at
    the same place, since everything before it comes no later than it did."""
    from engine.log.trace import input_from_json, read_trace

    trace = read_trace(path)
    policy = trace.policy
    scripts: dict[int, list[Step]] = {}
    for record in trace.inputs():
        item = input_from_json(record)
        # the trace records the same observations a session is made of; only an idle timeout
        # and a turn timeout are what the driver made of the time that passed
        steps: list[Step]
        if isinstance(item, IdleTimeout):
            steps = [Stall(item.seconds)]
        elif isinstance(item, TurnTimeout):
            steps = _silence_to_the_limit(policy)
        else:
            steps = [item]
        scripts.setdefault(record["attempt"], []).extend(steps)
    count = max(scripts, default=0)
    return Session([scripts.get(n, []) for n in range(1, count + 1)], policy)


def _silence_to_the_limit(policy: TurnPolicy) -> list[Step]:
    """Stalls that last at least the turn's limit from the start of the turn, each shorter than
    the idle timeout (so none ends an attempt first)."""
    limit = policy.turn_timeout_s or 0.0
    idle = policy.idle_timeout_s
    if idle is None:
        return [Stall(limit)]
    piece = idle / 2
    return [Stall(piece)] * (int(limit / (piece + STEP_S)) + 2)


# --------------------------------------------------------------------------------------------
# How the strategies draw
#
# Hypothesis pays for every draw (a span, a choice and their bookkeeping) far more than the
# Python that builds a stream from the choices, so the strategies take few, large draws. Each
# structural unit (a policy, a response, an output item, an attempt's plan, an error frame)
# takes all its small choices in one draw of `DICE_SIZE` bytes, its *dice*, at fixed offsets:
#
# - A byte picks among n options by `byte % n` (uniform up to 1/256). A one_of of k branches is
#   `byte % k`, with the uniform branch weights Hypothesis gives one_of, and the branch's own
#   option is taken from the rest of the byte (`byte // k`).
# - A list of small choices (edits, cut points, interruptions, interleaving, prelude frames) is
#   a count byte, uniform from empty to the maximum (the average length of the list Hypothesis
#   would draw), then a fixed number of bytes per element.
# - Arbitrary text, a truncation point and an error frame are drawn on their own, only when the
#   dice ask for them.
#
# Hypothesis shrinks each byte of a draw on its own toward zero, and the zero byte is the first
# option (an empty list, the shrink target of each choice), so everything shrinks toward the
# same short, readable session as separate draws would. Every dice is the same strategy, so
# when Hypothesis's generator copies one unit's choices over another's (its mutator duplicates
# spans with the same label), the copy is valid dice; differently sized byte draws would not
# fit and would fall back to all zeros, biasing generation toward the simplest choices.
#
# Every strategy object is built once (at import, or cached per argument): a strategy made per
# draw is validated again on every draw. An attempt's adversarial choices (edits, line ends,
# truncation, cuts, faults, the ending, or an HTTP error instead) do not depend on the response
# they apply to, so they are drawn as one `_Plan` (one span per attempt, which the shrinker can
# delete whole) and applied to the response in plain Python.

#: Bytes per draw of dice (the largest unit, an attempt's plan, uses all 36).
DICE_SIZE: Final = 36
_DICE: Final = st.binary(min_size=DICE_SIZE, max_size=DICE_SIZE)


def _pick(options: Sequence[_T], byte: int) -> _T:
    """The option a byte picks (`byte % len(options)`; the zero byte picks the first)."""
    return options[byte % len(options)]


def session_settings(**overrides: Any) -> settings:
    """Hypothesis settings for a test that draws sessions: the profile in force, without a
    deadline and without the `too_slow` and `data_too_large` health checks, plus `overrides`.

    A session is a whole turn (several attempts of a streamed response, each cut into reads), so
    drawing one takes milliseconds, and a project's first run pays Hypothesis's own one-time
    work besides (its Unicode tables, the constants of the project's modules); a test run under
    load takes longer than any fixed deadline. Used as `@session_settings()` above `@given`, at
    decoration time, so the profile a conftest loads (`max_examples`, ...) still applies."""
    current = settings.default
    assert current is not None  # Hypothesis always has a profile in force
    suppressed = {*current.suppress_health_check, HealthCheck.too_slow, HealthCheck.data_too_large}
    return settings(
        current,
        deadline=None,
        suppress_health_check=sorted(suppressed, key=lambda check: check.value),
        **overrides,
    )


# --------------------------------------------------------------------------------------------
# Well-formed responses

_SURROGATES: Final[tuple[Literal["Cs"]]] = ("Cs",)
_TEXT: Final = st.text(
    st.characters(exclude_categories=_SURROGATES), min_size=1, max_size=8
)
#: Words, and the client's key echoed at three places of a word (so that deltas split it at
#: different offsets).
_WORD_LIST: Final = (
    "Hi", "Paris", "ok", "Grüße", "東京", "🚀 go", "a\nb",
    f"key {CLIENT_KEY} é", CLIENT_KEY, f"«{CLIENT_KEY}» was echoed", f"relay {RELAY_KEY}",
)
_WORDS: Final = st.sampled_from(_WORD_LIST)
#: Short text: readable words first (what shrinking reaches), any Unicode text as well.
texts: Final = _WORDS | _TEXT


def _text(draw: st.DrawFn, byte: int) -> str:
    """`texts` from one byte: a word (even byte), or any text drawn (odd byte), half each."""
    if byte % 2 == 0:
        return _WORD_LIST[(byte >> 1) % len(_WORD_LIST)]
    return draw(_TEXT)


_TOOL_NAMES: Final = ("get_weather", "get_time", "search")
_ARGUMENT_LIST: Final = (
    '{"city":"Paris"}',
    "{}",
    '{"q":"x"}',
    '{"timezone":"Europe/Paris","n":1}',
    '{"note":"%s"}' % CLIENT_KEY,
)


def _arguments(draw: st.DrawFn, byte: int) -> str:
    """Function-call arguments from one byte: a fixed JSON object, or `{"q": <any text>}`."""
    if byte % 2 == 0:
        return _ARGUMENT_LIST[(byte >> 1) % len(_ARGUMENT_LIST)]
    return orjson.dumps({"q": draw(_TEXT)}).decode()


_FAILURE_CODES: Final = ("server_error", *[c for c in FAILURE_MESSAGES if c != "server_error"])
_MESSAGE_LIST: Final = (
    "The account signed in with OAuth is not entitled to use model grok-4.",
    "Your input exceeds the context window of this model.",
    *FAILURE_MESSAGES.values(),
    f"Incorrect API key provided: {CLIENT_KEY}.",
    f"Incorrect API key provided: {SHAPED_KEY}. You can find your API key at platform.",
)


def _message(draw: st.DrawFn, byte: int) -> str:
    """A provider's error message from one byte: a real one (even byte), or any text (odd)."""
    if byte % 2 == 0:
        return _MESSAGE_LIST[(byte >> 1) % len(_MESSAGE_LIST)]
    return draw(_TEXT)


def _failure_message(draw: st.DrawFn, byte: int) -> str | None:
    """`response.failed`'s message from one byte: none, a real one or any text, a third each."""
    branch = byte % 3
    if branch == 0:
        return None
    if branch == 1:
        return _MESSAGE_LIST[(byte // 3) % len(_MESSAGE_LIST)]
    return draw(_TEXT)


_ERROR_CODE_LIST: Final = (
    "permission_denied",
    "server_error",
    "rate_limit_exceeded",
    None,
    "invalid_prompt",
)
_ERROR_TYPE_LIST: Final = ("server_error", "invalid_request_error")


def _error_frame(draw: st.DrawFn) -> list[Event]:
    """An `error` frame, flat or nested. Dice: message, code, nested (odd byte), type."""
    dice = draw(_DICE)
    message = _message(draw, dice[0])
    code = _pick(_ERROR_CODE_LIST, dice[1])
    if dice[2] % 2:
        return nested_error_frame(message, type=_pick(_ERROR_TYPE_LIST, dice[3]), code=code)
    return error_frame(message, code)


_ERROR_FRAMES: Final = st.composite(_error_frame)()

_UNKNOWN_FRAME_LIST: Final[tuple[list[Event], ...]] = (
    response_metadata_frame(),
    websocket_timing_frame(),
    [{"type": "response.queued"}],
    [{"type": "codex.unknown_thing", "n": 1}],
    [{"type": "response.content_part.added", "output_index": 0, "content_index": 0}],
)
_RATE_LIMITS: Final = rate_limits_frame()


def _prelude_frame(byte: int) -> Sequence[StreamPart]:
    """A frame real relays send before `response.created`: rate limits, a keepalive or an
    unknown frame, a third each."""
    branch = byte % 3
    if branch == 0:
        return _RATE_LIMITS
    if branch == 1:
        return [KEEPALIVE]
    return _UNKNOWN_FRAME_LIST[(byte // 3) % len(_UNKNOWN_FRAME_LIST)]


_ITEM_KINDS: Final = ("text", "function_call", "reasoning")

#: What a message is (CONTRACT v3), as a byte picks it: answer text without a phase half the time
#: (the first, the shrink target), commentary, a final answer, a refusal, text then a refusal.
_MESSAGES: Final = (
    "answer", "answer", "answer", "answer", "commentary", "final_answer", "refusal",
    "refusal_after_text",
)
#: How a relay passes a message on: as sent, with its phase only on `output_item.done`, without
#: `output_item.added` (deltas addressed by `item_id` only), with a new `item_id` on every frame.
_RELAYS: Final[tuple[Callable[[list[Event]], list[Event]], ...]] = (
    list, phase_only_on_done, without_item_added, rotating_item_ids,
)


_PHASES: Final[dict[str, Literal["commentary", "final_answer"] | None]] = {
    "answer": None, "commentary": "commentary", "final_answer": "final_answer",
}


def _message_item(draw: st.DrawFn, index: int, dice: bytes) -> list[Event]:
    """A message at `index`. Dice: text (1), deltas (2), what it is (6), how a relay passes it on
    (7), the answer text a refusal follows (8)."""
    what = _pick(_MESSAGES, dice[6])
    text, deltas = _text(draw, dice[1]), 1 + dice[2] % 3
    if what in _PHASES:
        events = text_message(text, deltas=deltas, output_index=index, phase=_PHASES[what])
    else:
        begun = _WORD_LIST[dice[8] % len(_WORD_LIST)] if what == "refusal_after_text" else None
        events = refusal_message(text, deltas=deltas, text=begun, output_index=index)
    return _pick(_RELAYS, dice[7])(events)


def _item(draw: st.DrawFn, index: int) -> list[Event]:
    """Output item `index`. Dice: kind, text, deltas (1-3), tool name, arguments, finished
    (even byte; function calls only), and a message's own (`_message`)."""
    dice = draw(_DICE)
    kind = _pick(_ITEM_KINDS, dice[0])
    deltas = 1 + dice[2] % 3
    if kind == "text":
        return _message_item(draw, index, dice)
    if kind == "reasoning":
        return reasoning_summary(_text(draw, dice[1]), deltas=deltas, output_index=index)
    return function_call(
        _pick(_TOOL_NAMES, dice[3]),
        _arguments(draw, dice[4]),
        deltas=deltas,
        output_index=index,
        finished=dice[5] % 2 == 0,
    )


#: One strategy per output index, so each item is one span the shrinker can delete whole.
_ITEMS: Final = [st.composite(lambda draw, i=i: _item(draw, i))() for i in range(16)]


def _interleave(items: list[list[Event]], choices: Iterable[int]) -> list[StreamPart]:
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
_OPENINGS: Final = ("created", "created+in_progress", "in_progress", "nothing")
_INCOMPLETE_REASONS: Final[tuple[Literal["max_output_tokens", "content_filter"], ...]] = (
    "max_output_tokens",
    "content_filter",
)
#: Response dice: item count, opening, terminal, [DONE] trailer (odd byte), full Response
#: objects (odd byte), incomplete reason, failure code, failure message, then up to two prelude
#: frames (count, a byte each), up to eight interleaving choices (count, a byte each), and
#: whether the terminal response echoes a credential-named field (one in four).
_PRELUDE_AT: Final = 8
_MERGE_AT: Final = 11
_ECHO_AT: Final = 20


def _opening(name: str) -> list[Event]:
    if name == "created":
        return created()
    if name == "created+in_progress":
        return [*created(), *in_progress()]
    if name == "in_progress":
        return in_progress()
    return []


def _response(draw: st.DrawFn, max_items: int, terminals: tuple[str, ...]) -> list[StreamPart]:
    dice = draw(_DICE)
    prelude_count = dice[_PRELUDE_AT] % 3
    prelude = [_prelude_frame(byte) for byte in dice[_PRELUDE_AT + 1 :][:prelude_count]]
    items = [draw(_ITEMS[index]) for index in range(dice[0] % (min(max_items, 8) + 1))]
    merge_count = dice[_MERGE_AT] % 9
    body = _interleave(items, [byte % 4 for byte in dice[_MERGE_AT + 1 :][:merge_count]])
    done = output_items(*items)
    end: list[Event]
    terminal = _pick(terminals, dice[2])
    if terminal == "completed":
        end = completed(done)
    elif terminal == "completed_output_empty":
        end = completed([])
    elif terminal == "completed_output_null":
        end = completed(None)
    elif terminal == "incomplete":
        end = incomplete(_pick(_INCOMPLETE_REASONS, dice[5]), done)
    elif terminal == "failed":
        end = failed(_pick(_FAILURE_CODES, dice[6]), _failure_message(draw, dice[7]), done)
    elif terminal == "error_frame":
        end = draw(_ERROR_FRAMES)
    else:
        end = []
    trailer = [DONE] if dice[3] % 2 else []
    if dice[_ECHO_AT] % 4 == 3:
        end = [_echoing(part) for part in end]
    stream = assemble(*prelude, _opening(_pick(_OPENINGS, dice[1])), body, end, trailer)
    return stream if dice[4] % 2 else [_compact(part) for part in stream]


#: The fields of a Response object a compact stream keeps (the machines read no others).
COMPACT_RESPONSE_FIELDS: Final = (
    "id", "status", "output", "error", "incomplete_details", "tools", "metadata"
)


def _compact(part: StreamPart) -> StreamPart:
    """`part` with its embedded Response object cut to `COMPACT_RESPONSE_FIELDS` (an empty
    `tools` list and empty `metadata` left out too), so that a failing example fits on a screen
    (full objects are drawn too)."""
    if isinstance(part, dict) and isinstance(part.get("response"), dict):
        response = part["response"]
        return {
            **part,
            "response": {
                k: response[k]
                for k in COMPACT_RESPONSE_FIELDS
                if k in response and (response[k] or k not in ("tools", "metadata"))
            },
        }
    return part


def _echoing(part: Event) -> Event:
    """`part` with its Response object's `metadata` echoing a credential-named field, as the API
    echoes a request's metadata."""
    if isinstance(part.get("response"), dict):
        response = part["response"]
        return {**part, "response": {**response, "metadata": {"session_token": SESSION_TOKEN}}}
    return part


def responses(
    *, max_items: int = 3, terminals: Sequence[str] = TERMINALS
) -> st.SearchStrategy[list[StreamPart]]:
    """One well-formed Responses-API stream, as event dicts and `engine.simulator.shapes` markers.

    `terminals` limits how it may end (names from `TERMINALS`, first is the shrink target)."""
    return _responses(max_items, tuple(terminals))


@functools.lru_cache(maxsize=64)
def _responses(max_items: int, terminals: tuple[str, ...]) -> st.SearchStrategy[list[StreamPart]]:
    unknown = set(terminals) - set(TERMINALS)
    if unknown or not terminals:
        raise ValueError(f"terminals must be names from {TERMINALS}, got {list(terminals)}")
    return st.composite(lambda draw: _response(draw, max_items, terminals))()


# --------------------------------------------------------------------------------------------
# Adversarial edits

_NOISE_LIST: Final[tuple[Sequence[StreamPart], ...]] = (
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
)

#: Edit kinds, as a byte picks them: a retype twice as often as the others (its field is one of
#: many, so a given field's turn comes rarely).
_EDITS: Final = ("swap", "move", "duplicate", "drop", "insert", "retype", "retype")

#: One edit: its kind, where, the second operand (where to, for move and duplicate), the frame
#: to insert (insert) and the dice of a retype (retype).
_Edit = tuple[str, int, int, Sequence[StreamPart], bytes]


def _edits(draw: st.DrawFn, data: bytes) -> tuple[_Edit, ...]:
    """The edits two bytes each give: kind and position (`kind + 7 * position`), then the
    second operand, which for an insert picks the frame: an error frame (drawn), an unknown
    frame or other noise, a third each. A retype draws its own dice."""
    edits: list[_Edit] = []
    for start in range(0, len(data) - 1, 2):
        first, second = data[start], data[start + 1]
        kind = _EDITS[first % len(_EDITS)]
        noise: Sequence[StreamPart] = ()
        retype = b""
        if kind == "insert":
            branch = second % 3
            if branch == 0:
                noise = draw(_ERROR_FRAMES)
            elif branch == 1:
                noise = _UNKNOWN_FRAME_LIST[(second // 3) % len(_UNKNOWN_FRAME_LIST)]
            else:
                noise = _NOISE_LIST[(second // 3) % len(_NOISE_LIST)]
        elif kind == "retype":
            retype = draw(_DICE)
        edits.append((kind, first // len(_EDITS), second, noise, retype))
    return tuple(edits)


def _edit_list(draw: st.DrawFn, max_edits: int) -> tuple[_Edit, ...]:
    """Up to `max_edits` edits: a count byte, then two bytes per edit (more dice as needed)."""
    data = draw(_DICE)
    count = data[0] % (max_edits + 1)
    while len(data) < 1 + 2 * count:
        data += draw(_DICE)
    return _edits(draw, data[1 : 1 + 2 * count])


@functools.lru_cache(maxsize=16)
def _edit_lists(max_edits: int) -> st.SearchStrategy[tuple[_Edit, ...]]:
    return st.composite(lambda draw: _edit_list(draw, max_edits))()


def _apply_edits(parts: Sequence[StreamPart], edits: Iterable[_Edit]) -> list[StreamPart]:
    out = list(parts)
    for edit, a, b, noise, retype in edits:
        if edit == "insert":
            position = a % (len(out) + 1)
            out[position:position] = noise
            continue
        if edit == "retype":
            events = [i for i, part in enumerate(out) if isinstance(part, dict)]
            if retype[5] % 16 == 15:  # a payload nested deep in a frame that carries payloads:
                kinds = sorted({_payload_kind(out[i]) for i in events} - {""})  # which, first
                if kinds:
                    kind = kinds[retype[6] % len(kinds)]
                    events = [i for i in events if _payload_kind(out[i]) == kind]
            if events:
                i = events[a % len(events)]
                event = out[i]
                assert isinstance(event, dict)
                out[i] = retyped(event, retype)
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


# -- retyping a field --------------------------------------------------------------------------
#
# A retype replaces the value of one field of one event, at the top level or nested (an item's
# type, a response's output, an error's code, a part of a list), with a value of another JSON
# type: null, a boolean, an integer (beyond 64 bits too), a number (1e999 too, which only the
# standard library reads), a string (with an escaped lone surrogate too), a list, an object; or,
# one retype in eight, with one nested hundreds of levels deep (around orjson's limits: it writes
# at most 254 levels and reads at most 1024), half of those in the terminal response, an error
# frame or rate limits. The values are JSON text, written into the event's own JSON by hand, so
# any of them can be sent; the event keeps its `event:` line.

_ODD_VALUES: Final[dict[str, tuple[bytes, ...]]] = {
    "null": (b"null",),
    "boolean": (b"true", b"false"),
    "integer": (b"0", b"1", b"-1", b"7", b"18446744073709551616", b"-9223372036854775809"),
    "number": (b"1.5", b"-0.0", b"0.0", b"1e999", b"-1e999", b"2.5e-8"),
    "string": (
        b'""', b'"x"', b'"0"', b'"message"', b'"function_call"', b'"response.completed"',
        b'"odd \\ud800 text"', b'"error"', b'"commentary"', b'"refusal"',
    ),
    "list": (b"[]", b"[1,2]", b'["x"]', b'[{"type":"message"}]', b"[null]", b"[[]]"),
    "object": (
        b"{}", b'{"a":1}', b'{"type":"function_call"}', b'{"text":"x","delta":"y"}',
        b'{"message":"m","code":"c"}',
    ),
}
#: Depths of the deeply nested values: around orjson's writing limit (255) and reading limit
#: (1024), and the standard library's default recursion limit (1000).
_DEPTHS: Final = (200, 254, 255, 600, 1000, 1024, 1025, 1100)
#: Frames whose payloads one retype in sixteen nests deep (where the stream has one): the
#: terminal response, error frames, rate limits. Another one in sixteen nests any field deep.
_DEEP_FRAMES: Final = frozenset({"response.completed", "error", "codex.rate_limits"})
#: The fields the machines read, by name: half of all retypes pick one of these (where the event
#: has any), the other half any field at all.
_READ_FIELDS: Final = frozenset(
    {
        "type", "delta", "text", "output_index", "content_index", "summary_index", "item_id",
        "item", "id", "call_id", "name", "arguments", "input", "action", "operation", "status",
        "content", "command", "command_index", "response", "output", "tools", "error", "code",
        "message", "sequence_number", "rate_limits", "phase", "refusal",
    }
)
#: How deep into an event a retype looks for a field, and how many elements of a list.
_FIELD_DEPTH: Final = 4
_LIST_ELEMENTS: Final = 2
_MARK: Final = "\x00retyped\x00"
_MARK_JSON: Final = orjson.dumps(_MARK)

Path = tuple[str | int, ...]


def _payload_kind(part: StreamPart) -> str:
    """The type of a frame that carries payloads (`_DEEP_FRAMES`), or ""."""
    kind = part.get("type") if isinstance(part, dict) else None
    return kind if isinstance(kind, str) and kind in _DEEP_FRAMES else ""


def _field_paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Paths to every field of `value`, in document order (a container before its contents), up
    to `_FIELD_DEPTH` levels deep and `_LIST_ELEMENTS` elements of a list."""
    paths: list[Path] = []
    if len(prefix) >= _FIELD_DEPTH:
        return paths
    inner: Iterable[tuple[str | int, Any]]
    if isinstance(value, dict):
        inner = value.items()
    elif isinstance(value, list):
        inner = enumerate(value[:_LIST_ELEMENTS])
    else:
        return paths
    for key, item in inner:
        path = (*prefix, key)
        paths.append(path)
        paths.extend(_field_paths(item, path))
    return paths


def _replaced(value: Any, path: Path, new: Any) -> Any:
    """A copy of `value` with the field at `path` replaced by `new` (containers on the way
    copied, the rest shared)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    copy = list(value)
    assert isinstance(head, int)
    copy[head] = _replaced(copy[head], rest, new)
    return copy


def _field(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def retyped(event: Event, dice: bytes, path: Path | None = None) -> Data:
    """`event` with one field's value replaced by a value of another JSON type (see above),
    as a `Data` part under the event's own `event:` name. Dice: the field (two bytes, in
    document order, top-level fields first; among the fields the machines read when byte 4 is
    odd; `path` when given), the JSON type (among the other six; nested deep instead when byte
    5 is 14 or 15 modulo 16, 15 being the edit's choice of a frame that carries payloads), the
    value (for a deep one, its depth)."""
    name = event.get("type")
    if path is None:
        paths = _field_paths(event)
        if dice[4] % 2:
            paths = [path for path in paths if path[-1] in _READ_FIELDS] or paths
        if not paths:
            return Data(orjson.dumps(event).decode(), event=name if isinstance(name, str) else None)
        path = paths[int.from_bytes(dice[0:2], "big") % len(paths)]
    old = json_type(_field(event, path))
    deep = dice[5] % 16 >= 14
    kind = "deep" if deep else _pick([t for t in JSON_TYPES if t != old], dice[2])
    value = nested_json(_pick(_DEPTHS, dice[3])) if kind == "deep" else _pick(_ODD_VALUES[kind], dice[3])
    text = orjson.dumps(_replaced(event, path, _MARK)).replace(_MARK_JSON, value, 1)
    return Data(text.decode(), event=name if isinstance(name, str) else None)


def mangled(parts: list[StreamPart], *, max_edits: int = 4) -> st.SearchStrategy[list[StreamPart]]:
    """`parts` after up to `max_edits` adversarial edits: swapped, moved, duplicated or dropped
    events, inserted frames (error frames, unknown names, prelude frames, keepalives, `[DONE]`,
    bad JSON, invalid UTF-8), and fields retyped (a value of another JSON type, or nested
    hundreds of levels deep, in any field of an event). No edit at all is the shrink target."""
    return _edit_lists(max_edits).map(functools.partial(_apply_edits, parts))


# --------------------------------------------------------------------------------------------
# Bytes, reads and attempt scripts

_LINE_ENDS: Final = (b"\n", b"\r\n", b"\r")
_BOM: Final = b"\xef\xbb\xbf"


def _encode(parts: Iterable[StreamPart], ending: bytes = b"\n", bom: bool = False) -> bytes:
    body = b"".join([encode_part(part) for part in parts])
    if ending != b"\n":
        body = body.replace(b"\n", ending)
    return _BOM + body if bom else body


def _encode_with(parts: list[StreamPart], dice: bytes) -> bytes:
    """Dice: line ends, byte-order mark (one in four)."""
    return _encode(parts, _pick(_LINE_ENDS, dice[0]), dice[1] % 4 == 3)


def sse_bytes(parts: list[StreamPart]) -> st.SearchStrategy[bytes]:
    """The SSE bytes of `parts`, with LF, CRLF or CR line ends and maybe a byte-order mark."""
    return _DICE.map(functools.partial(_encode_with, parts))


def _cut(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`body` cut at the given offsets (taken modulo its length; 0 cuts nothing)."""
    size = len(body)
    points = sorted({c % size for c in cuts if size}) if size else []
    edges = [0, *[p for p in points if p], size]
    return [body[a:b] for a, b in zip(edges, edges[1:]) if b > a]


_INTERRUPTION_STEPS: Final[tuple[Step, ...]] = (
    TransportFault(Fault.DROP),
    Stall(60.0),
    Interrupt(),
    TransportFault(Fault.READ_TIMEOUT),
    Stall(0.01),
)
_ENDINGS: Final[tuple[Step, ...]] = (
    EndOfStream(),
    TransportFault(Fault.DROP),
    TransportFault(Fault.READ_TIMEOUT),
    Stall(60.0),
    Interrupt(),
    TransportFault(Fault.CONNECT_ERROR),
)
_HTTP_STATUSES: Final = (500, 429, 401, 400, 503, 408, 409, 502)
#: Waits an HTTP error demands (each says one): seconds, milliseconds (winning over seconds), an
#: HTTP date (measured from `received_at`), a wait longer than the default `max_retry_wait_s`,
#: waits too large to represent (hundreds of digits: longer than any limit), a short one.
_DEMANDED_WAITS: Final[tuple[tuple[tuple[str, str], ...], ...]] = (
    (("retry-after", "1"),),
    (("retry-after-ms", "20"), ("retry-after", "9")),
    (("retry-after", "Tue, 14 Nov 2023 22:13:30 GMT"),),
    (("retry-after", "120"),),
    (("retry-after", "9" * 400),),
    (("retry-after-ms", "9" * 300), ("retry-after", "1")),
    (("retry-after", "0.2"),),
)
#: When an HTTP error asks the client to try again: nothing, a demanded wait, garbage.
_RETRY_HEADERS: Final[tuple[tuple[tuple[str, str], ...], ...]] = (
    (),
    *_DEMANDED_WAITS,
    (("retry-after", "soon"), ("x-request-id", "req_1")),
)
#: The wall clock an HTTP error is received at in generated sessions (22:13:20 that day).
_RECEIVED_AT: Final = 1_700_000_000.0
_TRUNCATIONS: Final = st.integers(0, 1 << 16)

#: Plan dice: repeat the first answer (even byte), HTTP error (one in sixteen), status, body,
#: body message, body code, line ends, byte-order mark (one in four), truncation (odd byte),
#: ending; then up to four edits (count, two bytes each), up to six cut points (count, two
#: bytes each), up to two interruptions (count, a byte each: `step + 5 * position`) and how the
#: echoed secrets are written (`_ESCAPES_AT`).
_EDITS_AT: Final = 10
_CUTS_AT: Final = 19
_INTERRUPTIONS_AT: Final = 32


def _http_body(draw: st.DrawFn, kind: int, message: int, code: int) -> Any:
    """An HTTP error body, a fifth each: an OpenAI error object, a bare message object, none,
    a real provider message as text, any text."""
    branch = kind % 5
    if branch == 0:
        return {
            "error": {
                "message": _message(draw, message),
                "type": "server_error",
                "param": None,
                "code": _pick(_ERROR_CODE_LIST, code),
            }
        }
    if branch == 1:
        return {"message": _message(draw, message), "code": None}
    if branch == 2:
        return None
    if branch == 3:
        return _pick(_MESSAGE_LIST, message)
    return draw(_TEXT)


def _cut_points(dice: bytes) -> tuple[int, ...]:
    count = dice[_CUTS_AT] % 7
    at = _CUTS_AT + 1
    return tuple(int.from_bytes(dice[at + 2 * i : at + 2 * i + 2], "big") for i in range(count))


@attrs.frozen(slots=True)
class _Plan:
    """Everything an attempt draws besides its response; `script(parts)` applies it."""

    repeat: bool  # a retry repeats the session's first answer
    adversarial: bool
    cuts: tuple[int, ...] = ()
    http: HttpError | None = None
    edits: tuple[_Edit, ...] = ()
    line_end: bytes = b"\n"
    bom: bool = False
    truncate_at: int | None = None
    interruptions: tuple[tuple[int, Step], ...] = ()
    ending: Step = EndOfStream()
    #: how the secrets the answer echoes are written (`_ESCAPES`; "": as they are)
    escapes: str = ""
    #: a server that drips the body: pieces of this many bytes, each followed by this pause
    drip: tuple[int, float] | None = None

    def script(self, parts: list[StreamPart]) -> tuple[Step, ...]:
        if not self.adversarial:
            body = _encode(parts)
            return (*[Chunk(chunk) for chunk in _cut(body, self.cuts)], EndOfStream())
        if self.http is not None:
            return (self.http,)
        body = _escaped_secrets(
            _encode(_apply_edits(parts, self.edits), self.line_end, self.bom), self.escapes
        )
        if self.truncate_at is not None:
            body = body[: self.truncate_at % (len(body) + 1)]
        steps: list[Step]
        if self.drip is not None:
            size, pause = self.drip
            steps = [step for at in range(0, len(body), size)
                     for step in (Chunk(body[at : at + size]), Stall(pause))]
        else:
            steps = [Chunk(chunk) for chunk in _cut(body, self.cuts)]
        for position, step in self.interruptions:
            steps.insert(position % (len(steps) + 1), step)
        steps.append(self.ending)
        return tuple(steps)


#: How an answer writes the secrets it echoes, as a plan's last dice byte picks it: as they are
#: (half the plans), every character as `\\uXXXX`, every other one, every third one, every one
#: with upper-case hex digits, each `/` as `\\/`, and escaped twice (`\\\\uXXXX`: inside a string
#: that is JSON text itself, as a call's arguments are).
_ESCAPES: Final = ("", "", "", "", "all", "half", "third", "upper", "slash", "double")
_ESCAPES_AT: Final = 35


def escaped_secret(secret: str, how: str) -> str:
    """`secret` as a JSON string's content written the way `how` says (`_ESCAPES`)."""
    if how == "slash":
        return secret.replace("/", "\\/")
    step = {"half": 2, "third": 3}.get(how, 1)
    form = "\\u%04X" if how == "upper" else "\\u%04x"
    written = "".join(form % ord(c) if i % step == 0 else c for i, c in enumerate(secret))
    return written.replace("\\", "\\\\") if how == "double" else written


def _escaped_secrets(body: bytes, how: str) -> bytes:
    """`body` with every whole secret it echoes (`ECHOED_SECRETS`) written the way `how` says:
    the same JSON values, other bytes."""
    if not how:
        return body
    for secret in ECHOED_SECRETS:
        if secret.encode() in body:
            body = body.replace(secret.encode(), escaped_secret(secret, how).encode())
    return body


def _http_error_plan(
    draw: st.DrawFn, dice: bytes, waits: Sequence[tuple[tuple[str, str], ...]]
) -> _Plan:
    """An HTTP error instead of a stream. Dice: repeat the first answer (byte 0), status (2),
    body (3, 4, 5), the headers saying when to try again, among `waits` (6)."""
    body = _http_body(draw, dice[3], dice[4], dice[5])
    error = HttpError(_pick(_HTTP_STATUSES, dice[2]), body, _pick(waits, dice[6]), _RECEIVED_AT)
    return _Plan(dice[0] % 2 == 0, True, http=error)


def _adversarial_plan(draw: st.DrawFn) -> _Plan:
    dice = draw(_DICE)
    repeat = dice[0] % 2 == 0
    if dice[1] % 16 == 15:
        return _http_error_plan(draw, dice, _RETRY_HEADERS)
    edit_count = dice[_EDITS_AT] % 5
    interruption_count = dice[_INTERRUPTIONS_AT] % 3
    interruptions = dice[_INTERRUPTIONS_AT + 1 :][:interruption_count]
    return _Plan(
        repeat,
        True,
        cuts=_cut_points(dice),
        edits=_edits(draw, dice[_EDITS_AT + 1 :][: 2 * edit_count]),
        line_end=_pick(_LINE_ENDS, dice[6]),
        bom=dice[7] % 4 == 3,
        truncate_at=draw(_TRUNCATIONS) if dice[8] % 2 else None,
        interruptions=tuple((byte // 5, _pick(_INTERRUPTION_STEPS, byte)) for byte in interruptions),
        ending=_pick(_ENDINGS, dice[9]),
        escapes=_pick(_ESCAPES, dice[_ESCAPES_AT]),
    )


#: A dripping server: how many bytes at a time, and the pause after each (every one shorter than
#: the idle timeouts the policies draw, so the silence never lasts).
_DRIP_SIZES: Final = (1, 3, 16, 64)
_DRIP_PAUSES: Final = (0.0, 0.01, 0.05, 0.2)
#: The turn's limit in deadline sessions (seconds of the simulated clock).
_TURN_LIMITS: Final = (0.05, 0.3, 1.0, 4.0)
#: How a dripping attempt ends, when its body does not end it: cleanly, a drop, an interrupt.
_DRIP_ENDINGS: Final[tuple[Step, ...]] = (EndOfStream(), TransportFault(Fault.DROP), Interrupt())


def _deadline_plan(draw: st.DrawFn) -> _Plan:
    """A server that drips its answer against the turn's limit, or (one in four) answers with an
    HTTP error that demands a wait (shorter or longer than what is left, or too large to
    represent). Dice: repeat the first answer, HTTP error, status, body, body message, body
    code, demanded wait, piece size, pause, ending, escapes."""
    dice = draw(_DICE)
    if dice[1] % 4 == 3:
        return _http_error_plan(draw, dice, _DEMANDED_WAITS)
    return _Plan(
        dice[0] % 2 == 0,
        True,
        drip=(_pick(_DRIP_SIZES, dice[7]), _pick(_DRIP_PAUSES, dice[8])),
        ending=_pick(_DRIP_ENDINGS, dice[9]),
        escapes=_pick(_ESCAPES, dice[10]),
    )


def _well_formed_plan(draw: st.DrawFn) -> _Plan:
    dice = draw(_DICE)
    return _Plan(dice[0] % 2 == 0, False, cuts=_cut_points(dice))


_PLANS: Final = st.composite(_adversarial_plan)()
_WELL_FORMED_PLANS: Final = st.composite(_well_formed_plan)()
_DEADLINE_PLANS: Final = st.composite(_deadline_plan)()


def deadline_plans() -> st.SearchStrategy[Any]:
    """An attempt's plan against a turn's wall-clock limit (`_deadline_plan`): a dripping server,
    or an HTTP error demanding a wait; its `script(parts)` is the attempt's steps."""
    return _DEADLINE_PLANS


def _script(
    draw: st.DrawFn, answers: st.SearchStrategy[list[StreamPart]], adversarial: bool
) -> tuple[Step, ...]:
    parts = draw(answers)
    return draw(_PLANS if adversarial else _WELL_FORMED_PLANS).script(parts)


def attempt_scripts(
    response: st.SearchStrategy[list[StreamPart]] | None = None, *, adversarial: bool = True
) -> st.SearchStrategy[tuple[Step, ...]]:
    """One attempt: a response's bytes as reads, and (adversarial) edits, a truncation, faults,
    stalls and interrupts at any point, an ending step, or an HTTP error status instead."""
    answers = response if response is not None else responses()
    return st.composite(lambda draw: _script(draw, answers, adversarial))()


_RETRY_CODE_LIST: Final[tuple[frozenset[str], ...]] = (
    frozenset(),
    frozenset({"server_error"}),
    frozenset({"server_error", "rate_limit_exceeded"}),
)
def _turn_policy(
    retries: int, fallback: bool, idle: float | None, codes: int, http_retries: int
) -> TurnPolicy:
    # keyword arguments through Any: the attrs converter of `retry_failed_codes` (frozenset)
    # gives mypy no usable parameter type
    fields: dict[str, Any] = {
        "max_stream_retries": retries,
        "fallback": fallback,
        "idle_timeout_s": idle,
        "retry_failed_codes": _RETRY_CODE_LIST[codes],
        "max_http_retries": http_retries,
    }
    return TurnPolicy(**fields)


#: Every policy the strategies draw, by (retries, fallback, idle timeout, retried codes, HTTP
#: retries) index.
_POLICY_TABLE: Final = {
    (retries, fallback, idle, codes, http): _turn_policy(
        retries, bool(fallback), (None, 5.0)[idle], codes, http
    )
    for retries in range(3)
    for fallback in range(2)
    for idle in range(2)
    for codes in range(3)
    for http in range(3)
}


def _policy(dice: bytes) -> TurnPolicy:
    """The policy dice pick: retries 0-2, fallback (off first), an idle timeout of 5 s or none
    (none first), retried failure codes (none first), HTTP retries 0-2 (none first)."""
    return _POLICY_TABLE[dice[0] % 3, dice[1] % 2, dice[2] % 2, dice[3] % 3, dice[5] % 3]


_POLICIES: Final = _DICE.map(_policy)


def policies() -> st.SearchStrategy[TurnPolicy]:
    """Turn policies. The shrink target is a single attempt (no retry, no fallback), so a
    failing session that does not need a retry shrinks to one attempt."""
    return _POLICIES


def _event_sizes(parts: Iterable[StreamPart]) -> list[int]:
    """The size of every event `parts` send, as `TurnPolicy.max_event_bytes` counts it: the
    UTF-8 bytes of its lines (LF line ends), without the blank line that ends it."""
    sizes = []
    for part in parts:
        text = encode_part(part).decode("utf-8", "replace")
        for block in text.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
            if block:
                sizes.append(len(block.encode("utf-8", "surrogatepass")))
    return sizes


def _small_limit(parts: Iterable[StreamPart], byte: int) -> int:
    """A `max_event_bytes` close to the sizes of the events in `parts`: one byte under the
    largest (it is refused), exactly the largest, one over (all pass, unless an edit makes an
    event larger), the second largest, half the largest, or 64 bytes."""
    sizes = sorted(_event_sizes(parts), reverse=True) or [64]
    largest = sizes[0]
    second = sizes[1] if len(sizes) > 1 else largest // 2
    return max(1, _pick((largest - 1, largest, largest + 1, second, largest // 2, 64), byte))


def _tool_answer(stream: ToolItemStream) -> list[StreamPart]:
    return [_compact(part) for part in stream.events]


#: A response of tool calls of every kind, the client's and the server's, with answer text
#: between them (`engine.fuzz.tool_items`), in compact form.
_TOOL_ANSWERS: Final = tool_item_streams(max_items=4).map(_tool_answer)

def tool_call_answers() -> st.SearchStrategy[list[StreamPart]]:
    """One response of tool calls of every kind, the client's and the server's, with answer text
    between them (`engine.fuzz.tool_items.tool_item_streams()`), in compact form: what
    `sessions()` streams in one session of four."""
    return _TOOL_ANSWERS


#: Session dice: the policy (bytes 0-3 and 5), how many attempt scripts (4), a small
#: `max_event_bytes` (one in eight) and which one (6, 7), answers of tool calls of every kind
#: instead of `responses()` (one in four, 8).
_LIMIT_AT: Final = 6
_TOOL_ANSWERS_AT: Final = 8
#: Session dice: a turn with a wall-clock limit against dripping servers (one in eight, 9), and
#: which limit (10).
_DEADLINE_AT: Final = 9


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
    usually does) or streams another one. Answers come from `responses()` or, one session in
    four, from `engine.fuzz.tool_items.tool_item_streams()` (calls of every kind, the
    client's and the server's), unless `response` is given. A drawn policy sometimes (one in
    eight) gets a `max_event_bytes` close to the size of the first answer's largest event, and
    (one in eight) a `turn_timeout_s`: its attempts then drip against the limit
    (`deadline_plans`), as do those under a given policy with a limit. The client holds
    `CLIENT_KEY` and `RELAY_KEY` (`Session.secrets`). `adversarial=False` gives well-formed
    streams in whole-event reads or arbitrary cuts, each ending cleanly."""
    dice = draw(_DICE)
    if policy is None:
        chosen = _policy(dice)
    else:
        chosen = policy if isinstance(policy, TurnPolicy) else draw(policy)
    if response is not None:
        answers = response
    else:
        answers = _TOOL_ANSWERS if dice[_TOOL_ANSWERS_AT] % 4 == 3 else responses()
    limit = (
        1 + chosen.max_stream_retries + (1 if chosen.fallback else 0)
        + (chosen.max_http_retries or 0)
    )
    plans = _PLANS if adversarial else _WELL_FORMED_PLANS
    first = draw(answers)
    if policy is None and dice[_LIMIT_AT] % 8 == 7:
        chosen = attrs.evolve(chosen, max_event_bytes=_small_limit(first, dice[_LIMIT_AT + 1]))
    if policy is None and adversarial and dice[_DEADLINE_AT] % 8 == 7:
        chosen = attrs.evolve(chosen, turn_timeout_s=_pick(_TURN_LIMITS, dice[_DEADLINE_AT + 1]))
    count = 1 + dice[4] % limit
    if chosen.turn_timeout_s is not None and adversarial:
        # against the limit: a dripping server, and a script for every request the turn may
        # make (no back-off wait, whose jitter would decide whether the limit comes first)
        plans, count = _DEADLINE_PLANS, limit
    scripts = []
    for number in range(count):
        plan = draw(plans)
        parts = first if number == 0 or plan.repeat else draw(answers)
        scripts.append(plan.script(parts))
    return Session(scripts, chosen, (CLIENT_KEY, RELAY_KEY))


def well_formed_sessions(**kwargs: Any) -> st.SearchStrategy[Session]:
    """`sessions(adversarial=False, ...)`: well-formed streams that end cleanly."""
    return sessions(adversarial=False, **kwargs)


# --------------------------------------------------------------------------------------------
# Typed-field mutations of recorded traces
#
# Contract v3: "every field of every record has its type checked on reading (a boolean is not a
# number; clock readings are finite, non-negative and never go backwards within an attempt); a
# record that breaks this makes the trace invalid (exit 2)". A mutation gives one field of a
# valid trace another value, written as JSON text (so `1e999`, too large for a double, can be
# written), and says whether the rule makes the trace invalid with it (`breaks`); a number of
# the right type and range (a huge one included) keeps the trace valid, and it replays (a
# divergence where the machines decide otherwise).


@attrs.frozen(slots=True)
class TraceMutation:
    """One field of a recorded trace given another value: the line (0: the header), the field's
    path in it, the value as JSON text, what it is (`kind`), and whether the trace is then
    invalid (`breaks`)."""

    line: int
    path: tuple[str | int, ...]
    value: bytes
    kind: str
    breaks: bool

    def describe(self) -> str:
        where = ".".join(map(str, self.path))
        verdict = "invalid" if self.breaks else "valid"
        return f"line {self.line + 1}: {where} = {self.value.decode()} ({self.kind}: {verdict})"


_Line = dict[str, Any]
#: A mutation's kind: which lines and fields it applies to, and the values it writes (JSON
#: text) with whether each breaks the rule there.
_Target = Callable[[list[_Line], int], list[tuple[tuple[str | int, ...], bool]]]


def _field_here(
    name: str, kinds: Iterable[str] = ("input", "transition", "effect"), *, breaks: bool = True
) -> _Target:
    kinds = frozenset(kinds)

    def target(lines: list[_Line], index: int) -> list[tuple[tuple[str | int, ...], bool]]:
        line = lines[index]
        return [((name,), breaks)] if index and line.get("kind") in kinds and name in line else []

    return target


def _input_field(name: str, inputs: Iterable[str], *, breaks: bool = True) -> _Target:
    inputs = frozenset(inputs)

    def target(lines: list[_Line], index: int) -> list[tuple[tuple[str | int, ...], bool]]:
        line = lines[index]
        fits = index and line.get("kind") == "input" and line.get("input") in inputs
        return [((name,), breaks)] if fits and name in line else []

    return target


def _later_clock(lines: list[_Line], index: int) -> bool:
    """Whether an input after `index`, in the same attempt, has a clock reading."""
    attempt = lines[index].get("attempt")
    return any(
        line.get("kind") == "input" and line.get("attempt") == attempt and line.get("t") is not None
        for line in lines[index + 1 :]
    )


def _huge_clock(lines: list[_Line], index: int) -> list[tuple[tuple[str | int, ...], bool]]:
    """1e308 on a clock reading: the largest there is, so any later reading of the attempt goes
    back from it."""
    line = lines[index]
    if not index or line.get("kind") != "input" or line.get("t") is None:
        return []
    return [(("t",), _later_clock(lines, index))]


def _header_policy(name: str) -> _Target:
    def target(lines: list[_Line], index: int) -> list[tuple[tuple[str | int, ...], bool]]:
        policy = lines[index].get("policy") if index == 0 else None
        return [(("policy", name), True)] if isinstance(policy, dict) else []

    return target


def _result_field(*path: str | int) -> _Target:
    def target(lines: list[_Line], index: int) -> list[tuple[tuple[str | int, ...], bool]]:
        line = lines[index]
        if line.get("kind") != "result":
            return []
        value: Any = line
        for key in path:
            if isinstance(key, int):
                if not isinstance(value, list) or len(value) <= key:
                    return []
            elif not isinstance(value, dict) or key not in value:
                return []
            value = value[key]
        return [(path, True)]

    return target


def _effect_data(*effects: str) -> _Target:
    names = frozenset(effects)

    def target(lines: list[_Line], index: int) -> list[tuple[tuple[str | int, ...], bool]]:
        line = lines[index]
        fits = line.get("kind") == "effect" and line.get("effect") in names
        return [(("data",), True)] if fits else []

    return target


#: Every mutation kind: what it aims at, and the values it writes (JSON text).
_MUTATIONS: Final[tuple[tuple[str, _Target, tuple[bytes, ...]], ...]] = (
    ("a boolean for an attempt number", _field_here("attempt"), (b"true", b"false")),
    ("a fraction for an attempt number", _field_here("attempt"), (b"1.0", b"2.5")),
    ("a negative attempt number", _field_here("attempt"), (b"-1",)),
    ("an attempt number beyond 64 bits", _field_here("attempt"), (b"1180591620717411303424",)),
    ("a boolean for a sequence number", _field_here("seq", ("input", "effect", "result")),
     (b"true",)),
    ("a sequence number of 0", _field_here("seq", ("transition", "result")), (b"0", b"-3")),
    ("a negative clock reading", _field_here("t", ("input",)), (b"-1", b"-0.000001")),
    ("a clock reading that is no number", _field_here("t", ("input",)), (b"true", b'"0.1"')),
    ("an infinite clock reading", _field_here("t", ("input",)), (b"1e999",)),
    ("a boolean for a status", _input_field("status", (InputKind.HTTP_ERROR,)), (b"true",)),
    ("a boolean or negative duration", _input_field("seconds", (InputKind.IDLE_TIMEOUT, InputKind.TURN_TIMEOUT)),
     (b"true", b"-1", b"1e999")),
    ("a number for text", _effect_data("text_delta", "reasoning_delta", "commentary_delta"),
     (b"7", b"false")),
    ("a negative or boolean wait", _effect_data("wait"), (b"-0.5", b"true")),
    ("an outcome that is none", _result_field("outcome"), (b"1", b'"done"')),
    ("a boolean for a result's attempt number", _result_field("attempts", 0, "number"),
     (b"true",)),
    ("text that is no text", _result_field("output_text"), (b"5", b"null")),
    ("a boolean for a retry count", _header_policy("max_stream_retries"), (b"true",)),
    ("a negative or infinite timeout", _header_policy("idle_timeout_s"), (b"-1", b"1e999")),
    ("a boolean or zero turn limit", _header_policy("turn_timeout_s"), (b"true", b"0")),
)
#: Mutations of the right type and range (huge ones included): the trace stays valid.
_FITTING: Final[tuple[tuple[str, _Target, tuple[bytes, ...]], ...]] = (
    ("a huge sequence number", _field_here("seq", ("input", "transition", "effect"), breaks=False),
     (b"4611686018427387904",)),
    ("a huge status", _input_field("status", ("http_error",), breaks=False), (b"1099511627776",)),
    ("the largest clock reading", _huge_clock, (b"1e308",)),
    ("a huge seed", lambda lines, index: [(("seed",), False)] if index == 0 else [],
     (b"9223372036854775807",)),
)


def _candidates(
    lines: list[_Line], target: _Target
) -> list[tuple[int, tuple[str | int, ...], bool]]:
    return [(index, path, breaks) for index in range(len(lines))
            for path, breaks in target(lines, index)]


def _decreasing_clocks(lines: list[_Line]) -> list[tuple[int, bytes]]:
    """Inputs whose clock reading can go back from the one before in their attempt, and the
    reading that does."""
    found = []
    last: dict[Any, float] = {}
    for index, line in enumerate(lines):
        t = line.get("t") if line.get("kind") == "input" else None
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            before = last.get(line.get("attempt"))
            if before is not None and before > 0:
                found.append((index, repr(before / 2).encode()))
            last[line.get("attempt")] = t
    return found


def trace_mutations(lines: list[dict[str, Any]]) -> st.SearchStrategy[TraceMutation]:
    """One typed-field mutation of the trace whose JSON lines are `lines` (header first): a kind
    (a boolean for a number, a negative, infinite, decreasing or huge clock reading, a number
    beyond 64 bits, a wrong type in an effect's data, the result or the header's policy, or a
    huge number that still fits), a field it applies to, and a value."""

    @st.composite
    def mutation(draw: st.DrawFn) -> TraceMutation:
        options: list[TraceMutation] = []
        for kind, target, values in (*_MUTATIONS, *_FITTING):
            places = _candidates(lines, target)
            if places:
                index, path, breaks = draw(st.sampled_from(places))
                options.append(TraceMutation(index, path, draw(st.sampled_from(values)), kind,
                                             breaks))
        decreasing = _decreasing_clocks(lines)
        if decreasing:
            index, value = draw(st.sampled_from(decreasing))
            options.append(TraceMutation(index, ("t",), value, "a clock reading going back", True))
        return draw(st.sampled_from(options))

    return mutation()


_MUTATED_MARK: Final = "\x00streamfsm-mutated\x00"


def mutated_lines(raw_lines: list[bytes], mutation: TraceMutation) -> list[bytes]:
    """The trace's lines with `mutation` applied (its value written as the JSON text it is)."""
    from engine.log.trace import dumps, loads

    out = list(raw_lines)
    record = loads(out[mutation.line])
    target = record
    for key in mutation.path[:-1]:
        target = target[key]
    target[mutation.path[-1]] = _MUTATED_MARK
    out[mutation.line] = dumps(record).replace(orjson.dumps(_MUTATED_MARK), mutation.value, 1)
    return out
