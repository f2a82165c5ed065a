"""One turn in progress: its machines, its event log and its trace, shared by every driver.

`Recording` is what every protocol's turn shares: the trace header, the event log (which records
each input before a machine sees it, then the machine's decisions, and only then acts on them)
and the trace, written once at the end (`finish`) or when the driver breaks (`abandon`, ending
with an `abandoned` record). A protocol's recording adds only which machine it feeds and how its
result is built: `TurnRecording` here (Responses-API stream attempts), `AppTurnRecording` in
`engine.drivers.app_recording` (codex app-server turns).

The sync driver, the async driver, `consume`, the replayer and the fuzzing strategies differ only
in where a stream turn's inputs come from (a socket, a list of chunks, a trace file, a generated
session). All of them run this loop:

    recording = TurnRecording(policy, callbacks, entry="run_turn", request=request, seed=seed)
    for feed in recording.attempts():          # the turn machine decides each attempt
        ...wait recording.wait_s (an HTTP retry), then observe the world...
        feed.chunk(data, t)                     # logged, decoded, fed to the attempt
        feed.end(t) / feed.fail(record, t)      # until feed.final
    result = recording.finish(trace_path, secrets)

`AttemptFeed` logs each observation as an input record *before* the machine sees it, then hands
the machine's decisions to the event log, which records them and acts on them. So the log holds
exactly what a replay needs, in order, and nothing runs inside a machine step.

A recording keeps its records only when they are needed (`keep_records`): a turn that writes a
trace keeps them to write it, a replay takes them one at a time, and a turn without a trace keeps
none (its memory is what it returns and the machines' state, not its stream).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Callable, Final, Generic, Iterable, Iterator, Protocol, TypeVar

import attrs
import orjson

from engine.drivers.background import is_background
from engine.drivers.sse import SseDecoder
from engine.log.eventlog import Callbacks, EventLog, InputRecord, RecordedInput, Record
from engine.log.logs import log
from engine.log.masking import DecodedText, TextChannels, TextPiece
from engine.log.otel import spans_for
from engine.log.redaction import field_secrets, scrub
from engine.log.trace import TraceWriter, header_for
from machines.json_text import lenient_loads
from machines.records import (
    Chunk,
    Effect,
    EndOfStream,
    EventTooLarge,
    InputKind,
    StreamInput,
    Transition,
    TurnPolicy,
    TurnResult,
)
from machines.stream_attempt import FINAL, StreamAttempt
from machines.turn import MACHINE as TURN_MACHINE
from machines.turn import TurnMachine

__all__ = ["AttemptFeed", "DELTA_TEXT", "Recording", "TurnRecording"]


class AttemptFeed:
    """Observations of one attempt → input records → decoded events → the attempt's machine →
    decisions → the event log."""

    __slots__ = ("attempt", "number", "kind", "resume_point", "_log", "_decoder")

    def __init__(
        self, attempt: StreamAttempt, event_log: EventLog, max_event_bytes: int | None = None
    ) -> None:
        self.attempt = attempt
        self.number = attempt.number
        self.kind = attempt.kind
        #: For a `resume` attempt: the response id and the sequence number to start after.
        self.resume_point = attempt.resume_point
        self._log = event_log
        self._decoder = SseDecoder(max_event_bytes)

    @property
    def final(self) -> bool:
        """True once the attempt has reached a final state: feed it nothing more."""
        return self.attempt.state in FINAL

    def chunk(self, data: bytes, t: float | None = None) -> bool:
        """One network read. Returns True once the attempt has reached a final state.

        An event that grows past the decoder's limit ends the attempt with `EventTooLarge`; that
        input is derived from the chunks already logged, so it is fed but not logged (a replay
        of the chunks derives it again)."""
        event_log = self._log
        event_log.input(self.number, Chunk(data), t)
        decoder = self._decoder
        names, datas = decoder.feed_fields(data)
        if datas:
            event_log.decide(self.attempt.receive_fields(names, datas))
        if decoder.too_large and self.attempt.state not in FINAL:
            too_large = EventTooLarge(decoder.max_event_bytes or 0)
            event_log.decide(self.attempt.receive(too_large))
        return self.attempt.state in FINAL

    def observe(self, item: RecordedInput, t: float | None = None) -> bool:
        """Any observation: a `Chunk` is decoded and fed, anything else goes to `fail`. Returns
        True once the attempt has reached a final state."""
        if isinstance(item, Chunk):
            return self.chunk(item.data, t)
        self.fail(item, t)
        return self.attempt.state in FINAL

    def end(self, t: float | None = None) -> None:
        """The body ended cleanly (an event cut off by the end is not dispatched)."""
        self.fail(EndOfStream(), t)

    def fail(self, item: StreamInput, t: float | None = None) -> None:
        """Anything else the driver observed: an HTTP error, a fault, an idle timeout, an
        interrupt, the end of the body."""
        self._log.input(self.number, item, t)
        self._log.decide(self.attempt.receive(item))


class _Result(Protocol):
    """What a protocol's turn returns: its error (scrubbed before the caller sees it) and its
    JSON (the trace's `result` record)."""

    @property
    def error(self) -> dict[str, Any] | None: ...

    def to_json(self) -> dict[str, Any]: ...


_R = TypeVar("_R", bound=_Result)


class Recording(Generic[_R]):
    """A turn's event log and its trace, whatever the protocol.

    `act` is the driver's hook for the effects in `driver_effects` (see `EventLog`); `secrets`
    are the ones the recording knows of itself (the request's credential-named fields), masked
    in the trace besides those `finish` and `abandon` are given; `observed`: the turn's
    OpenTelemetry spans are made from its event log (`engine.log.otel`; a replay, which is no
    turn, passes False); `keep_records`: the event log keeps its records (without them,
    `finish` and `abandon` write no trace). A protocol's recording says how its machines make
    the result (`result`) and what its log line at the end says (`_log_finished`)."""

    #: How the protocol's streams carry the text its machines deliver, so that the trace masks
    #: it alike in every attempt (`engine.log.masking`); None: the streams carry no such text.
    text: TextChannels | None = None

    def __init__(
        self,
        header: dict[str, Any],
        callbacks: Callbacks | None,
        *,
        act: Callable[[Effect], None] | None = None,
        driver_effects: Iterable[str] = (),
        secrets: Iterable[str] = (),
        observed: bool = True,
        keep_records: bool = True,
    ) -> None:
        self.header = header
        #: the turn's OpenTelemetry spans, fed by the event log (None: not observed, or no
        #: OpenTelemetry that records)
        self.spans = spans_for(header) if observed else None
        self.log = EventLog(
            callbacks, act, driver_effects, observer=self.spans, keep=keep_records
        )
        #: secrets of the turn itself, scrubbed wherever they are echoed
        self.known_secrets = list(secrets)

    def _secrets(self, secrets: Iterable[str]) -> list[str]:
        return sorted({*secrets, *self.known_secrets}, key=len, reverse=True)

    def result(self) -> _R:
        """The turn's result as the machines made it (the turn must have ended)."""
        raise NotImplementedError

    def _log_finished(self, result: _R) -> None:
        """Log the end of the turn."""
        raise NotImplementedError

    def finish(
        self,
        trace: str | os.PathLike[str] | None = None,
        secrets: Iterable[str] = (),
    ) -> _R:
        """The turn's result for the caller (its error scrubbed of secrets), and its trace
        written if asked. The trace gets the result as the machines made it, masked by the trace
        writer like every other record (so that a replay of the masked inputs reproduces it);
        writing it never raises (`TraceWriter.write`)."""
        every_secret = self._secrets(secrets)
        made = self.result()
        result = made
        if made.error is not None:
            result = attrs.evolve(made, error=scrub(made.error, every_secret))  # type: ignore[misc]
        if trace is not None and self._traceable(trace):
            TraceWriter(trace, every_secret, text=self.text).write(
                self.header, self.log.records, made.to_json(), effect_runs=self.log.effect_runs
            )
        self._log_finished(result)
        if self.spans is not None:
            self.spans.finished(result)  # type: ignore[arg-type]  # its protocol's result
        return result

    def abandon(
        self,
        trace: str | os.PathLike[str] | None,
        secrets: Iterable[str] = (),
        error: BaseException | None = None,
    ) -> None:
        """Write what was recorded so far after an unexpected error (`error`, by default the
        exception being handled), ending with an `abandoned` record naming its class."""
        if error is None:
            error = sys.exc_info()[1]
        name = type(error).__name__ if error is not None else "Exception"
        if self.spans is not None:
            self.spans.abandoned(name)
        if trace is not None and self._traceable(trace):
            TraceWriter(trace, self._secrets(secrets), text=self.text).write(
                self.header, self.log.records, None, abandoned=name,
                effect_runs=self.log.effect_runs,
            )

    def _traceable(self, trace: str | os.PathLike[str]) -> bool:
        """Whether the records a trace needs were kept (a recording made without them writes
        no trace: logged, never a partial file)."""
        if not self.log.keep:
            log.warning("trace not written: the turn kept no records", path=os.fspath(trace))
        return self.log.keep


# -- the text a stream attempt delivers, as the trace writer masks it ---------------------------

#: The events whose `delta` a stream attempt delivers, by channel (`machines.stream_attempt`).
_TEXT_EVENTS: Final = {
    "response.output_text.delta": "text",
    "response.reasoning_summary_text.delta": "reasoning",
    "response.reasoning_text.delta": "reasoning",
    "response.refusal.delta": "refusal",
}
#: A `"delta": "..."` field as written; group 1 is the string's content.
_DELTA_FIELD: Final = re.compile(rb'"delta"[ \t]*:[ \t]*"((?:[^"\\\r\n]|\\.)*)"')
#: How many `delta` fields past the expected one are searched for an event's delta.
_LOOK_AHEAD: Final = 8


def _string_offsets(content: bytes, text: str) -> tuple[int, ...] | None | bool:
    """Whether the content of a JSON string as written is `text`: False when it is not; None
    when it is, one byte per character; else each character's offset in `content`, the end
    last."""
    if b"\\" not in content:
        try:
            if content.decode("utf-8") != text:
                return False
        except UnicodeDecodeError:
            return False
        if len(content) == len(text):
            return None
    else:
        try:
            if json.loads(b'"' + content + b'"') != text:
                return False
        except ValueError:
            return False
    offsets = [0]
    at, size = 0, len(content)
    while at < size:
        byte = content[at]
        if byte == 0x5C:  # an escape: \uXXXX (a surrogate pair: two of them) or \X
            step = 2
            if content[at + 1 : at + 2] == b"u":
                step = 6
                high = int(content[at + 2 : at + 6], 16)  # json.loads read it: four hex digits
                if 0xD800 <= high < 0xDC00 and content[at + 6 : at + 8] == b"\\u":
                    step = 12
        else:
            step = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        at += step
        offsets.append(at)
    return tuple(offsets) if len(offsets) == len(text) + 1 else False


def _delta_texts(body: bytes) -> dict[str, DecodedText]:
    """The text each channel's deltas carry in one attempt's body, as the machine decodes it
    (the same decoder, the same dispatch by type), and where each delta's string lies."""
    texts: dict[str, list[str]] = {}
    pieces: dict[str, list[TextPiece]] = {}
    lengths: dict[str, int] = {}
    cursor = 0
    for event in SseDecoder().feed(body):
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            payload = lenient_loads(event.data)
        if type(payload) is not dict:
            continue
        delta = payload.get("delta")
        if type(delta) is not str:
            continue
        raw, offsets = -1, None
        for count, match in enumerate(_DELTA_FIELD.finditer(body, cursor)):
            found = _string_offsets(match.group(1), delta)
            if found is not False:
                raw, offsets, cursor = match.start(1), found, match.end()
                break
            if count == _LOOK_AHEAD:
                break
        name = payload.get("type")
        if type(name) is not str:
            name = "error" if isinstance(payload.get("error"), dict) else event.event
        channel = _TEXT_EVENTS.get(name)
        if channel is None or not delta:
            continue
        start = lengths.get(channel, 0)
        texts.setdefault(channel, []).append(delta)
        pieces.setdefault(channel, []).append(
            TextPiece(start, len(delta), raw, offsets if isinstance(offsets, tuple) else None)
        )
        lengths[channel] = start + len(delta)
    return {
        channel: DecodedText("".join(texts[channel]), tuple(pieces[channel])) for channel in texts
    }


def _resumed(records: list[Record]) -> dict[int, int]:
    """Each resume attempt, and the attempt before it that received bytes (whose response it
    goes on with)."""
    streamed: list[int] = []
    resumes: set[int] = set()
    for record in records:
        if type(record) is InputRecord and type(record.input) is Chunk:
            if not streamed or streamed[-1] != record.attempt:
                streamed.append(record.attempt)
        elif type(record) is Transition and record.machine == TURN_MACHINE and record.trigger == "resume":
            resumes.add(record.attempt)
    out: dict[int, int] = {}
    for attempt in resumes:
        before = [number for number in streamed if number < attempt]
        if before:
            out[attempt] = before[-1]
    return out


#: How stream attempts carry the text they deliver: the `delta` of text and reasoning events.
DELTA_TEXT: Final = TextChannels(InputKind.CHUNK, _delta_texts, _resumed)


class TurnRecording(Recording[TurnResult]):
    """A Responses-API turn: the turn machine, which opens each attempt, over the event log."""

    text = DELTA_TEXT

    def __init__(
        self,
        policy: TurnPolicy,
        callbacks: Callbacks | None,
        *,
        entry: str,
        request: dict[str, Any] | None = None,
        seed: int = 0,
        observed: bool = True,
        keep_records: bool = True,
    ) -> None:
        super().__init__(
            header_for(entry, policy, request, seed), callbacks, secrets=field_secrets(request),
            observed=observed, keep_records=keep_records,
        )
        self.policy = policy
        self.turn = TurnMachine(policy, seed, background=is_background(request))
        #: Seconds to wait before sending the attempt just yielded by `attempts()` (an HTTP retry).
        self.wait_s = 0.0
        #: Ids of background responses the finished turn decided to cancel (the driver sends
        #: the cancels; a replay does not).
        self.cancels: list[str] = []

    def attempts(self) -> Iterator[AttemptFeed]:
        """Each attempt the turn machine opens; the caller feeds it until it is final."""
        while True:
            attempt, decisions = self.turn.next_attempt()
            self.log.decide(decisions)
            if attempt is None:
                self.cancels = [
                    d.data for d in decisions if isinstance(d, Effect) and d.kind == "cancel"
                ]
                return
            self.wait_s = sum(
                d.data for d in decisions if isinstance(d, Effect) and d.kind == "wait"
            )
            feed = AttemptFeed(attempt, self.log, max_event_bytes=self.policy.max_event_bytes)
            yield feed
            if not feed.final:
                raise RuntimeError(f"attempt {attempt.number} was left before it ended")
            log.debug(
                "attempt ended",
                attempt=attempt.number,
                kind=attempt.kind,
                final_state=attempt.state,
                reason=attempt.reason,
                undecodable=attempt.undecodable,
                ignored=attempt.ignored,
            )

    def result(self) -> TurnResult:
        return self.turn.result(self.log.transitions)

    def _log_finished(self, result: TurnResult) -> None:
        log.info(
            "turn finished",
            outcome=result.outcome,
            attempts=[f"{a.kind}:{a.final_state}:{a.reason}" for a in result.attempts],
        )
