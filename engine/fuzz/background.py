"""Fuzzing resumed background responses: sessions whose streams break and are continued.

Theory of operation
===================

A *background session* is one background response (`background: true`) as a server holds it,
its events numbered by `sequence_number`, and the story of one turn that reads it: the first
request's stream breaks after some events (`BREAKS`: a drop, an end without a terminal event, a
silence longer than the idle timeout, a read timeout, an interrupt), and every resume the turn
then sends is answered by a `ResumePlan`: refused with an HTTP status, or the events after the
resume point, starting with some events the client already has (an overlap) and possibly sending
one event twice, cut again after some events or sent to the end. Any other request (a new POST
after a refused resume, the fallback) gets the whole response again.

What a resume receives depends on where the turn says it stopped, so a background session
answers as a `Server` (`BackgroundSession.answers()`) that builds each attempt's reads from its
kind and resume point. The turn plays through the real sans-I/O loop
(`engine.fuzz.strategies.play_server`) and the reference model (`engine.fuzz.reference`, for a
background request) asks its own server the same way.

`check_background` holds the turn to every rule of `engine.fuzz.invariants.turn_violations`
(attempts and reasons as the reference says, delivery, output, error words) and to the rules of
resuming (`RESUME_RULES`): each attempt asks for what the reference asks (kind and resume point:
the response id and the highest sequence number received); the text delivered is a prefix of
the response's text, all of it when the turn completes; an interrupted turn whose response id
is known cancels it, once, and nothing else is cancelled; the trace replays identically.
"""

from __future__ import annotations

import os
from typing import Any, Final

import attrs
from hypothesis import strategies as st

from engine.drivers.recording import TurnRecording
from engine.fuzz.invariants import (
    CallbackLog,
    InvariantViolation,
    Violation,
    replay_violations,
    turn_violations,
)
from engine.fuzz.reference import play_turn
from engine.fuzz.strategies import Server, Step, play_server
from engine.log.eventlog import Callbacks
from engine.simulator.shapes import (
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
    AttemptKind,
    Chunk,
    Effect,
    EndOfStream,
    Fault,
    HttpError,
    InputKind,
    Interrupt,
    Stall,
    TransportFault,
    TurnPolicy,
    TurnResult,
)

__all__ = [
    "BREAKS",
    "BACKGROUND_REQUEST",
    "RESUME_RULES",
    "BackgroundSession",
    "ResumePlan",
    "background_sessions",
    "check_background",
    "play_background",
]

#: The request a played background session records in its trace header.
BACKGROUND_REQUEST: Final = {"model": "streamfsm-fuzz", "input": "generated", "background": True}

#: How a stream breaks: the input the driver would observe.
Break = Fault | InputKind
BREAKS: Final[tuple[Break, ...]] = (
    Fault.DROP, InputKind.EOF, InputKind.IDLE_TIMEOUT, Fault.READ_TIMEOUT, InputKind.INTERRUPT
)

#: What a request asked for: its kind and, for a resume, the response id and sequence number.
Asked = tuple[AttemptKind, "tuple[str, int] | None"]

#: The statuses a resume may be refused with (404: gone; 400: cancelled elsewhere; 409 and 429
#: are worth the same resume again while the HTTP budget lasts).
REFUSALS: Final = (404, 400, 410, 409, 429)

#: Seconds of silence that end an attempt (the policy's idle timeout).
IDLE_S: Final = 1.0

RESUME_RULES: Final[dict[str, str]] = {
    "resumes_as_reference": "every attempt asks for what the reference model asks: its kind and, "
    "for a resume, the response id and the highest sequence number received",
    "text_of_the_response": "the text delivered is a prefix of the response's text, and all of "
    "it (and output_text) when the turn completes",
    "cancels_once": "an interrupted turn whose response id is known cancels it once; nothing "
    "else is cancelled",
}


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
    ending: Break = Fault.DROP


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

    def answers(self, asked: list[Asked] | None = None) -> Server:
        """The server of one turn over this response (it counts the resumes it answered); each
        request is noted in `asked` (kind, resume point)."""
        resumes = 0

        def server(number: int, kind: AttemptKind, point: tuple[str, int] | None) -> list[Step]:
            nonlocal resumes
            if asked is not None:
                asked.append((kind, point))
            if kind == "resume" and point is not None:
                plan = self.resumes[resumes] if resumes < len(self.resumes) else ResumePlan()
                resumes += 1
                return self._resumed(plan, point[1])
            if number == 1:
                return self._steps(list(self.events[: self.first_cut]), self.first_ending)
            return self._steps(list(self.events), None)

        return server

    def _resumed(self, plan: ResumePlan, last: int) -> list[Step]:
        if plan.refused is not None:
            body = {"error": {"message": "resume refused", "type": "invalid_request_error",
                              "param": None, "code": None}}
            return [HttpError(plan.refused, body)]
        numbered = [(e, _sequence(e)) for e in self.events]
        seen = [e for e, n in numbered if n is not None and n <= last]
        rest = [e for e, n in numbered if n is None or n > last]
        sent = [*seen[len(seen) - min(plan.overlap, len(seen)) :], *rest]
        if plan.duplicate is not None and sent:
            at = plan.duplicate % len(sent)
            sent.insert(at, sent[at])
        if plan.cut is None:
            return self._steps(sent, None)
        return self._steps(sent[: plan.cut], plan.ending)

    def _steps(self, events: list[dict[str, Any]], ending: Break | None) -> list[Step]:
        """The events as reads cut at the session's cut points, then how the body ends."""
        body = b"".join(encode_part(e) for e in events)
        points = sorted({c % len(body) for c in self.cuts} - {0}) if body else []
        edges = [0, *points, len(body)]
        steps: list[Step] = [Chunk(body[a:b]) for a, b in zip(edges, edges[1:]) if b > a]
        steps.append(_break_step(ending, self.policy))
        return steps


def _break_step(ending: Break | None, policy: TurnPolicy) -> Step:
    if ending is None or ending == InputKind.EOF:
        return EndOfStream()
    if ending == InputKind.INTERRUPT:
        return Interrupt()
    if ending == InputKind.IDLE_TIMEOUT:
        return Stall(policy.idle_timeout_s or IDLE_S)
    return TransportFault(Fault(ending))


def _sequence(event: dict[str, Any]) -> int | None:
    number = event.get("sequence_number")
    return number if type(number) is int else None


# --------------------------------------------------------------------------------------------
# Playing and checking


def play_background(
    session: BackgroundSession,
    callbacks: Callbacks | None = None,
    *,
    seed: int = 0,
    asked: list[Asked] | None = None,
) -> TurnRecording:
    """Play `session` through a fresh `TurnRecording` (a background request); return it with
    the turn finished. Call `.finish(trace)` for the result and the trace."""
    recording = TurnRecording(session.policy, callbacks, entry="run_turn",
                              request=dict(BACKGROUND_REQUEST), seed=seed)
    play_server(recording, session.answers(asked))
    return recording


def check_background(
    session: BackgroundSession, trace: str | os.PathLike[str] | None = None
) -> TurnResult:
    """Play `session` and check every rule (module docstring); returns the result, or raises
    `InvariantViolation`. With `trace`, the trace is written there and must replay identically."""
    calls = CallbackLog(None)
    asked: list[Asked] = []
    recording = play_background(session, calls.callbacks(), asked=asked)
    result = recording.finish(trace)
    expected: list[Asked] = []
    reference = play_turn(session.policy, session.answers(expected), background=True)
    found = turn_violations(result, recording.log.records, calls.calls, reference)
    if asked != expected:
        found.append(Violation("resumes_as_reference", f"asked {asked}, the reference {expected}"))
    text = "".join(t or "" for name, t in calls.calls if name == "text_delta")
    whole = session.text
    completed = result.outcome == "completed"
    if not whole.startswith(text) or (completed and whole not in (text, result.output_text)):
        found.append(Violation("text_of_the_response", f"delivered {text!r}, output_text "
                               f"{result.output_text!r} of the response's {whole!r}"))
    records = recording.log.records
    cancels = [r.data for r in records if isinstance(r, Effect) and r.kind == "cancel"]
    known = reference.last.read.response_id
    due = [known] if reference.outcome == "interrupted" and known is not None else []
    if cancels != due:
        found.append(Violation("cancels_once", f"cancelled {cancels}, the reference {due}"))
    if trace is not None:
        found += replay_violations(os.fspath(trace), len(recording.log.records))[0]
    if found:
        raise InvariantViolation(found, session)
    return result


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
