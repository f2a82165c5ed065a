"""Fuzzing resumed background responses: sessions whose streams break and are continued.

Theory of operation
===================

A *background session* is one background response (`background: true`) as a server holds it,
its events numbered by `sequence_number`, and the story of one turn that reads it: the first
request's stream breaks after some events (a drop, an end without a terminal event, a silence
longer than the idle timeout, a read timeout), and every resume the turn then sends is answered
by a `ResumePlan`: refused with an HTTP status, or the events after the resume point, starting
with some events the client already has (an overlap) and possibly sending one event twice, cut
again after some events or sent to the end. Any other request (a new POST after a refused resume,
the fallback) gets the whole response again.

Unlike `engine.fuzz.strategies.Session`, what a resume receives depends on where the turn
says it stopped (the resume point, known only while playing), so `play_background` builds each
attempt's bytes when the turn opens the attempt, from the attempt's kind and resume point, cut
into reads at the session's cut points. It plays through the real sans-I/O loop
(`TurnRecording`), like `run_session`, with a simulated clock; the trace it writes replays with
`engine.replay`.

`check_background` states what must hold, from the session alone (a reference, not the machines'
own bookkeeping):

- the turn never raises, and its trace replays identically;
- every stream attempt after a byte-stream fault is a resume exactly when the policy resumes,
  the broken chain of attempts received `response.created` with the response id, and a stream
  retry is left; its resume point is the response id and the highest sequence number received;
- nothing reaches the user twice or out of order: the delivered text is a prefix of the
  response's text, and all of it when the turn completes (so do `output_text`);
- a refused resume is never followed by another resume of the same chain;
- stream and resume attempts together stay within `1 + max_stream_retries`;
- an interrupted turn whose response id is known cancels that response, once; no other turn
  cancels anything.
"""

from __future__ import annotations

import os
from typing import Any, Final, Literal

import attrs
import orjson
from hypothesis import strategies as st

from engine.drivers.recording import TurnRecording
from engine.drivers.sse import SseDecoder
from engine.log.eventlog import Callbacks, InputRecord
from engine.simulator.shapes import (
    RESPONSE_ID,
    assemble,
    completed,
    created,
    encode_part,
    in_progress,
    output_items,
    rate_limits_frame,
    reasoning_summary,
    text_message,
)
from machines.records import (
    Chunk,
    Effect,
    EndOfStream,
    HttpError,
    IdleTimeout,
    Interrupt,
    ReasonCode,
    StreamInput,
    TransportFault,
    TurnPolicy,
    TurnResult,
)

__all__ = [
    "BackgroundSession",
    "BACKGROUND_REQUEST",
    "ResumePlan",
    "background_sessions",
    "check_background",
    "play_background",
]

#: The request a played background session records in its trace header.
BACKGROUND_REQUEST: Final = {"model": "streamfsm-fuzz", "input": "generated", "background": True}

#: How a stream breaks: the input the driver would observe.
Break = Literal["drop", "read_timeout", "eof", "idle_timeout", "interrupt"]
BREAKS: Final[tuple[Break, ...]] = ("drop", "eof", "idle_timeout", "read_timeout", "interrupt")

#: The statuses a resume may be refused with (404: gone; 400: cancelled elsewhere; 409 and 429
#: are worth the same resume again while the HTTP budget lasts).
REFUSALS: Final = (404, 400, 410, 409, 429)

#: Seconds the simulated clock advances per read; an idle timeout takes the policy's seconds.
STEP_S: Final = 0.001
IDLE_S: Final = 1.0


@attrs.frozen(slots=True)
class ResumePlan:
    """How the server answers one resume: `refused` (an HTTP status), or the events after the
    resume point, preceded by the last `overlap` events at or below it, with the event at
    `duplicate` (an index into what is sent) sent twice, cut after `cut` events by `ending`
    (`cut` None: everything, then a clean end)."""

    refused: int | None = None
    overlap: int = 0
    duplicate: int | None = None
    cut: int | None = None
    ending: Break = "drop"


@attrs.frozen(slots=True)
class BackgroundSession:
    """A background response and how one turn's reads of it go."""

    events: tuple[dict[str, Any], ...]
    first_cut: int
    first_ending: Break
    resumes: tuple[ResumePlan, ...]
    policy: TurnPolicy
    #: byte offsets (modulo each attempt's body length) where reads end
    cuts: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        """The response's answer text, all of it."""
        return "".join(
            e["delta"] for e in self.events if e.get("type") == "response.output_text.delta"
        )

    def describe(self) -> str:
        lines = [
            f"policy: max_stream_retries={self.policy.max_stream_retries} "
            f"fallback={self.policy.fallback} resume={self.policy.resume} "
            f"max_http_retries={self.policy.max_http_retries}",
            f"events: {[(e.get('sequence_number'), e.get('type')) for e in self.events]}",
            f"first request: {self.first_cut} events, then {self.first_ending}",
        ]
        lines += [f"resume {n}: {plan}" for n, plan in enumerate(self.resumes, 1)]
        lines.append(f"cuts: {self.cuts}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Playing


def _ending_input(ending: Break, policy: TurnPolicy) -> StreamInput:
    if ending == "eof":
        return EndOfStream()
    if ending == "interrupt":
        return Interrupt()
    if ending == "idle_timeout":
        return IdleTimeout(policy.idle_timeout_s or IDLE_S)
    return TransportFault(ending)


def _body(events: list[dict[str, Any]]) -> bytes:
    return b"".join(encode_part(e) for e in events)


def _reads(body: bytes, cuts: tuple[int, ...]) -> list[bytes]:
    if not body:
        return []
    points = sorted({c % len(body) for c in cuts} - {0})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:])]


def _answer_for(
    session: BackgroundSession, kind: str, point: tuple[str, int] | None, resume_index: int,
    first: bool,
) -> tuple[list[dict[str, Any]] | HttpError, StreamInput]:
    """What the server sends for an attempt: events and how the body ends, or a refusal."""
    events = list(session.events)
    if kind == "resume" and point is not None:
        plan = session.resumes[resume_index] if resume_index < len(session.resumes) else ResumePlan()
        if plan.refused is not None:
            body = {"error": {"message": "resume refused", "type": "invalid_request_error",
                              "param": None, "code": None}}
            return HttpError(plan.refused, body), EndOfStream()
        last = point[1]
        numbered = [(e, _seq(e)) for e in events]
        seen = [e for e, n in numbered if n is not None and n <= last]
        rest = [e for e, n in numbered if n is None or n > last]
        sent = [*seen[len(seen) - min(plan.overlap, len(seen)):], *rest]
        if plan.duplicate is not None and sent:
            at = plan.duplicate % len(sent)
            sent.insert(at, sent[at])
        if plan.cut is None:
            return sent, EndOfStream()
        return sent[: plan.cut], _ending_input(plan.ending, session.policy)
    if first:
        return events[: session.first_cut], _ending_input(session.first_ending, session.policy)
    return events, EndOfStream()


def _seq(event: dict[str, Any]) -> int | None:
    number = event.get("sequence_number")
    return number if type(number) is int else None


def play_background(
    session: BackgroundSession, callbacks: Callbacks | None = None, *, seed: int = 0
) -> TurnRecording:
    """Play `session` through a fresh `TurnRecording` (a background request); return it with
    the turn finished. Call `.finish(trace)` for the result and the trace."""
    recording = TurnRecording(session.policy, callbacks, entry="run_turn",
                              request=dict(BACKGROUND_REQUEST), seed=seed)
    clock = 0.0
    resumes = 0
    for feed in recording.attempts():
        answer, ending = _answer_for(
            session, feed.kind, feed.resume_point, resumes, first=feed.number == 1
        )
        if feed.kind == "resume":
            resumes += 1
        clock = round(clock + STEP_S, 6)
        if isinstance(answer, HttpError):
            feed.fail(answer, clock)
            continue
        for read in _reads(_body(answer), session.cuts):
            clock = round(clock + STEP_S, 6)
            if feed.chunk(read, clock):
                break
        if not feed.final:
            if isinstance(ending, IdleTimeout):
                clock = round(clock + ending.seconds, 6)
            feed.fail(ending, round(clock + STEP_S, 6))
    return recording


# --------------------------------------------------------------------------------------------
# What must hold


class BackgroundRuleBroken(AssertionError):
    """A rule of resuming did not hold for a session (the message names the rule)."""


def _require(condition: bool, rule: str, session: BackgroundSession, detail: str = "") -> None:
    if not condition:
        raise BackgroundRuleBroken(f"{rule}{': ' + detail if detail else ''}\n{session.describe()}")


def check_background(
    session: BackgroundSession, trace: str | os.PathLike[str] | None = None
) -> TurnResult:
    """Play `session` and check every rule of resuming (module docstring); returns the result.
    With `trace`, the trace is written there and must replay identically."""
    delivered: list[str] = []
    recording = play_background(session, Callbacks(on_text_delta=delivered.append))
    result = recording.finish(trace)
    turn = recording.turn
    attempts = turn.attempts
    policy = session.policy
    text = "".join(delivered)
    full = session.text

    _require(full.startswith(text), "delivered text is a prefix of the response's text",
             session, f"{text!r}")
    if result.outcome == "completed":
        _require(text == full, "a completed turn delivered the whole text", session, f"{text!r}")
        _require(result.output_text == full, "output_text of a completed turn", session,
                 f"{result.output_text!r}")
    tries = [
        a for i, a in enumerate(attempts)
        if a.kind in ("stream", "resume") and not (i and _ended_for_http_retry(attempts[i - 1]))
    ]
    _require(len(tries) <= 1 + policy.max_stream_retries, "stream tries within the budget",
             session, f"{[(a.kind, a.reason) for a in attempts]}")

    # the reference: per chain of attempts on one response, the id and the last sequence number
    known_id: str | None = None
    last: int | None = None
    for index, attempt in enumerate(attempts):
        if attempt.kind != "resume":
            known_id, last = None, None
        else:
            _require(attempt.resume_point == (known_id, last), "resume point", session,
                     f"attempt {attempt.number}: {attempt.resume_point} != {(known_id, last)}")
        known_id, last = _received(recording, attempt.number, known_id, last)
        if index + 1 == len(attempts):
            break
        following = attempts[index + 1]
        ending = attempt.ending
        assert ending is not None
        broke = ending.trigger in ("drop", "eof", "idle_timeout", "read_timeout")
        if following.kind == "fallback" or ending.retry == "http":
            continue
        should_resume = broke and policy.resume and known_id is not None and last is not None
        _require((following.kind == "resume") == should_resume, "resume exactly when resumable",
                 session, f"attempt {following.number} is {following.kind} after "
                 f"{ending.trigger} with id={known_id} last={last}")
        if ending.reason.code is ReasonCode.RESUME_REFUSED:
            _require(following.kind != "resume", "no resume after a refusal", session)

    cancels = [d.data for d in recording.log.records
               if isinstance(d, Effect) and d.kind == "cancel"]
    if result.outcome == "interrupted" and known_id is not None:
        _require(cancels == [known_id], "an interrupt cancels the known response once", session,
                 f"{cancels}")
    else:
        _require(cancels == [], "nothing is cancelled unless interrupted", session, f"{cancels}")
    if trace is not None:
        from engine.drivers.replay import replay

        report = replay(trace)
        _require(report.identical, "the trace replays identically", session,
                 str(report.divergence))
    return result


def _ended_for_http_retry(attempt: Any) -> bool:
    return attempt.ending is not None and attempt.ending.retry == "http"


def _received(
    recording: TurnRecording, number: int, known_id: str | None, last: int | None
) -> tuple[str | None, int | None]:
    """The response id and highest sequence number known after attempt `number`, from the bytes
    it received (decoded again here) and what the chain knew before it."""
    decoder = SseDecoder()
    for record in recording.log.records:
        if not isinstance(record, InputRecord) or record.attempt != number:
            continue
        if not isinstance(record.input, Chunk):
            continue
        for event in decoder.feed(record.input.data):
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(payload, dict):
                continue
            if known_id is None and payload.get("type") in ("response.created", "response.in_progress"):
                response = payload.get("response")
                rid = response.get("id") if isinstance(response, dict) else None
                if type(rid) is str and rid:
                    known_id = rid
            number_seen = _seq(payload)
            if number_seen is not None and (last is None or number_seen > last):
                last = number_seen
    return known_id, last


# --------------------------------------------------------------------------------------------
# Strategies

_WORDS: Final = ("Hi", "Paris", "ok", "Grüße", "東京", "🚀 go", " and", ".")


@st.composite
def background_responses(draw: st.DrawFn) -> tuple[dict[str, Any], ...]:
    """A well-formed background response: maybe a `codex.rate_limits` frame (no sequence
    number), `response.created`, maybe `.in_progress`, maybe a reasoning summary, one or two
    messages in 1-4 deltas, `response.completed`; numbered from 0."""
    parts: list[Any] = []
    if draw(st.booleans()):
        parts.append(rate_limits_frame())
    parts.append(created())
    if draw(st.booleans()):
        parts.append(in_progress())
    items: list[Any] = []
    index = 0
    if draw(st.booleans()):
        items.append(reasoning_summary("thinking", deltas=draw(st.integers(1, 3)),
                                       output_index=index))
        index += 1
    for _ in range(draw(st.integers(1, 2))):
        words = draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=6))
        text = " ".join(words)
        deltas = draw(st.integers(1, min(4, len(text))))
        items.append(text_message(text, deltas=deltas, output_index=index))
        index += 1
    parts.extend(items)
    parts.append(completed(output_items(*items)))
    return tuple(e for e in assemble(*parts) if isinstance(e, dict))


_PLANS: Final = st.builds(
    ResumePlan,
    refused=st.none() | st.sampled_from(REFUSALS),
    overlap=st.integers(0, 3),
    duplicate=st.none() | st.integers(0, 20),
    cut=st.none() | st.integers(0, 12),
    ending=st.sampled_from(BREAKS),
)


@st.composite
def background_sessions(draw: st.DrawFn) -> BackgroundSession:
    """Background sessions: a response, where and how its first stream breaks, how each resume
    is answered, a policy (stream retries 0-3, fallback, resume on or off, HTTP retries 0-1) and
    read boundaries."""
    events = draw(background_responses())
    policy = TurnPolicy(
        max_stream_retries=draw(st.integers(0, 3)),
        fallback=draw(st.booleans()),
        resume=draw(st.sampled_from((True, True, False))),
        max_http_retries=draw(st.integers(0, 1)),
        idle_timeout_s=IDLE_S,
    )
    return BackgroundSession(
        events=events,
        first_cut=draw(st.integers(0, len(events))),
        first_ending=draw(st.sampled_from(BREAKS)),
        resumes=tuple(draw(st.lists(_PLANS, max_size=4))),
        policy=policy,
        cuts=tuple(draw(st.lists(st.integers(0, 4000), max_size=6))),
    )
