"""A trace as a timeline of steps: what arrived, what it changed, what the user got.

Theory of operation
===================

`Timeline(path)` reads a trace of any protocol with the one reader (`engine.log.trace.
TraceReader`), one record at a time, and `steps()` yields one `Step` per input record, and one per
decision of the turn machine (an attempt opened, the turn finished), which no input caused:

    t          seconds since the turn began (the input's clock reading; a decision takes the last
               one read), None in a trace without a clock (`consume`)
    attempt    the attempt's number and kind (`stream`, `fallback`, `resume`; an app-server turn's
               steps are `app_turn`s, numbered by the turn's number in its session)
    arrived    what came in: bytes and the events they completed, an HTTP error, a fault, the end
               of the stream, an idle timeout (a stall), an interrupt; a line from codex (its
               method), a line on its stderr, its exit, an approval answer, a timeout
    silence_s  for an input after a silence of `STALL_S` or more within its attempt: how long
    moves      the state changes it caused (`Move`: machine, source, trigger, dest)
    delivered  what the user got (`Delivery`): text, reasoning, a tool call, an error, a retry
               wait, a cancel; for codex, lines sent, approvals asked, messages, the outcome

Once the steps are read, `ending` holds the result record (or `abandoned` the exception that cut
the turn short). Nothing is replayed: this shows what the trace recorded. Each step keeps the
records it was made of (`records`, long strings clipped) for whoever wants to show them.

The kind of each attempt comes from the turn machine's table: the transition that opens an
attempt is named after the row that fired, and the row says what kind it opens
(`machines.turn.ROWS`).
"""

from __future__ import annotations

import os
from typing import Any, Final, Iterator

import attrs
import orjson

from engine.drivers.sse import SseDecoder
from engine.log.trace import APP_SERVER_ENTRY, TraceReader
from machines.app_records import (
    ApprovalAnswer,
    InterruptTimeout,
    ProcessExit,
    RequestTimeout,
    ServerLine,
    SpawnFailed,
    StderrLine,
    TurnRequest,
)
from machines.records import (
    Chunk,
    EndOfStream,
    HttpError,
    IdleTimeout,
    Interrupt,
    TransportFault,
)
from machines.turn import MACHINE as TURN_MACHINE
from machines.turn import ROWS as TURN_ROWS

__all__ = ["APP_TURN", "Arrival", "Delivery", "Move", "STALL_S", "Step", "Timeline", "clip"]

#: A silence this long (seconds) before an input, within one attempt, is shown as a stall.
STALL_S: Final = 0.2
#: The kind of an app-server turn's steps.
APP_TURN: Final = "app_turn"
#: Strings in the records a step keeps are clipped to this many characters.
RECORD_TEXT: Final = 400

#: What kind of attempt each turn row opens ("same": the kind of the one before).
_OPENS: Final = {
    row.label: row.decides.opens
    for row in TURN_ROWS
    if row.decides is not None and row.decides.opens is not None
}


def clip(text: str, width: int = 60) -> str:
    """`text` on one line, at most `width` characters (an ellipsis marks a cut)."""
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _clipped(value: Any, width: int = RECORD_TEXT) -> Any:
    """A record with its long strings clipped (a 64 KiB chunk is not shown whole)."""
    if isinstance(value, str):
        return value if len(value) <= width else value[: width - 1] + "…"
    if isinstance(value, dict):
        return {key: _clipped(item, width) for key, item in value.items()}
    if isinstance(value, list):
        return [_clipped(item, width) for item in value[:50]]
    return value


@attrs.frozen(slots=True)
class Arrival:
    """What one input record says came in: its `input` kind, a line of text, the bytes it held
    (a chunk, a line) and the names it carried (the events a chunk completed, a line's method)."""

    input: str
    text: str
    bytes: int = 0
    names: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class Move:
    """One state change: `machine`, `source -trigger-> dest`."""

    machine: str
    source: str
    dest: str
    trigger: str


@attrs.frozen(slots=True)
class Delivery:
    """One effect: its kind, a line of text, and for text the characters delivered."""

    effect: str
    text: str
    chars: int = 0


@attrs.frozen(slots=True)
class Step:
    """One step of the turn (see the module docstring)."""

    seq: int
    t: float | None
    attempt: int
    kind: str
    arrived: Arrival | None
    silence_s: float | None
    moves: tuple[Move, ...]
    delivered: tuple[Delivery, ...]
    records: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        """The step as JSON data (`streamfsm show --json`), without its records."""
        return {
            "seq": self.seq,
            "t": self.t,
            "attempt": self.attempt,
            "kind": self.kind,
            "arrived": attrs.asdict(self.arrived) if self.arrived is not None else None,
            "silence_s": self.silence_s,
            "moves": [attrs.asdict(move) for move in self.moves],
            "delivered": [attrs.asdict(delivery) for delivery in self.delivered],
        }


# -- what arrived ------------------------------------------------------------------------------
def _event_name(name: str, data: str) -> str:
    if name != "message":
        return name
    if data.strip() == "[DONE]":
        return "[DONE]"
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "data (not JSON)"
    kind = payload.get("type") if isinstance(payload, dict) else None
    return kind if isinstance(kind, str) else "message"


def _counted(names: list[str]) -> str:
    """`a, b ×3, c`: names in order, a run of the same name counted."""
    out: list[str] = []
    last, count = None, 0
    for name in [*names, None]:
        if name == last:
            count += 1
            continue
        if last is not None:
            out.append(last if count == 1 else f"{last} ×{count}")
        last, count = name, 1
    return ", ".join(out)


def _line_name(text: str) -> str:
    """A JSON-RPC line's method, or what it answers."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "(not JSON)"
    if not isinstance(message, dict):
        return "(not an object)"
    method = message.get("method")
    ident = message.get("id")
    if isinstance(method, str):
        return f"request {method} #{ident}" if ident is not None else method
    if "error" in message:
        return f"error reply #{ident}"
    return f"reply #{ident}"


class _Arrivals:
    """Describes inputs; keeps each attempt's SSE decoder (an event can span chunks)."""

    def __init__(self) -> None:
        self._decoders: dict[int, SseDecoder] = {}

    def describe(self, attempt: int, item: Any) -> Arrival:
        if type(item) is Chunk:
            decoder = self._decoders.setdefault(attempt, SseDecoder())
            names = [_event_name(event.event, event.data) for event in decoder.feed(item.data)]
            size = len(item.data)
            what = _counted(names) if names else "(no complete event)"
            return Arrival("chunk", f"{size} B {what}", size, tuple(names))
        if type(item) is HttpError:
            body = item.body if isinstance(item.body, dict) else {}
            error = body.get("error") if isinstance(body.get("error"), dict) else body
            code = error.get("code") or error.get("type") if isinstance(error, dict) else None
            wait = item.header("retry-after")
            text = f"HTTP {item.status}" + (f" {code}" if isinstance(code, str) else "")
            return Arrival("http_error", text + (f" (retry-after {wait})" if wait else ""),
                           names=(str(item.status),))
        if type(item) is TransportFault:
            detail = f" ({item.detail})" if item.detail else ""
            return Arrival("fault", f"fault {item.kind}{detail}", names=(str(item.kind),))
        if type(item) is EndOfStream:
            return Arrival("eof", "end of stream")
        if type(item) is IdleTimeout:
            return Arrival("idle_timeout", f"stall: no byte for {item.seconds:g} s (idle timeout)")
        if type(item) is Interrupt:
            return Arrival("interrupt", "interrupt (the caller stopped the turn)")
        if type(item) is ServerLine:
            name = _line_name(item.text)
            return Arrival("line", f"line {name}", len(item.text), (name,))
        if type(item) is StderrLine:
            return Arrival("stderr", f"stderr {clip(item.text, 50)!r}", len(item.text))
        if type(item) is ProcessExit:
            return Arrival("exit", f"process exit {item.code}")
        if type(item) is SpawnFailed:
            return Arrival("spawn_failed", f"could not start: {clip(item.detail, 50)}")
        if type(item) is TurnRequest:
            return Arrival("turn", f"turn asked: {clip(item.text, 40)!r}")
        if type(item) is ApprovalAnswer:
            detail = f" ({clip(item.detail, 40)})" if item.detail else ""
            return Arrival("approval", f"approval answered {item.decision}{detail}")
        if type(item) is RequestTimeout:
            return Arrival("request_timeout",
                           f"no answer to {item.method} #{item.request_id} in {item.seconds:g} s")
        if type(item) is InterruptTimeout:
            return Arrival("interrupt_timeout", f"no turn/completed {item.seconds:g} s after "
                                                "turn/interrupt")
        name = str(getattr(type(item), "KIND", type(item).__name__))
        return Arrival(name, name)


# -- what the user got -------------------------------------------------------------------------
#: The effects that deliver text, and how a step names what they delivered.
_TEXT_EFFECTS: Final = {
    "text_delta": "text",
    "commentary_delta": "commentary",
    "refusal_delta": "refusal",
    "reasoning_delta": "reasoning",
}


def _delivery(effect: str, data: Any) -> Delivery:
    label = _TEXT_EFFECTS.get(effect)
    if label is not None and isinstance(data, str):
        return Delivery(effect, f"{label} {clip(data, 40)!r}", len(data))
    if effect == "first_delta":
        return Delivery(effect, "first delta")
    if effect == "tool_call" and isinstance(data, dict):
        arguments = data.get("arguments")
        shown = clip(arguments, 30) if isinstance(arguments, str) else ""
        return Delivery(effect, f"tool call {data.get('name')}({shown})")
    if effect == "error" and isinstance(data, dict):
        return Delivery(effect, f"error {data.get('code')}: {clip(str(data.get('message')), 50)}")
    if effect == "wait" and isinstance(data, (int, float)):
        return Delivery(effect, f"retry wait {data:g} s")
    if effect == "cancel":
        return Delivery(effect, f"cancel {data}")
    if effect == "send" and isinstance(data, dict):
        method = data.get("method")
        what = method if isinstance(method, str) else f"reply #{data.get('id')}"
        if isinstance(method, str) and "id" in data:
            what = f"request {method} #{data.get('id')}"
        return Delivery(effect, f"sent {what}")
    if effect == "approval" and isinstance(data, dict):
        command = data.get("command")
        shown = f" {clip(str(command), 40)!r}" if command else ""
        return Delivery(effect, f"approval asked: {data.get('kind')}{shown}")
    if effect == "message" and isinstance(data, dict):
        content = data.get("content")
        shown = f" {clip(content, 40)!r}" if isinstance(content, str) else ""
        return Delivery(effect, f"message {data.get('role')}{shown}")
    if effect == "outcome" and isinstance(data, dict):
        return Delivery(effect, f"outcome {data.get('outcome')} ({data.get('reason')})")
    if effect == "retire" and isinstance(data, dict):
        return Delivery(effect, f"retire the process ({data.get('reason')})")
    if isinstance(data, str):
        return Delivery(effect, f"{effect.replace('_', ' ')} {clip(data, 40)!r}", len(data))
    return Delivery(effect, effect.replace("_", " "))


# -- reading -----------------------------------------------------------------------------------
class Timeline:
    """A trace read as steps (see the module docstring). Raises `TraceError` (one line) for a
    file that is not a valid trace, when opened or while its steps are read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        with TraceReader(self.path) as reader:
            self.header: dict[str, Any] = reader.header
        self.entry: str = self.header["entry"]
        #: True for a codex app-server turn
        self.app_server = self.entry == APP_SERVER_ENTRY
        #: the result record, once `steps()` was read to the end
        self.ending: dict[str, Any] | None = None
        #: the exception that cut the turn short (an `abandoned` record), if one did
        self.abandoned: str | None = None
        #: each attempt's kind, as the turn machine opened it
        self.kinds: dict[int, str] = {}

    def steps(self) -> Iterator[Step]:
        """Each step, in order, as the file is read."""
        arrivals = _Arrivals()
        kinds = self.kinds
        kinds.clear()
        last_t: dict[int, float] = {}  # each attempt's latest clock reading (or its start)
        # the turn's clock starts at 0 when it begins; `consume` keeps no clock
        now: float | None = None if self.entry == "consume" else 0.0
        current: dict[str, Any] | None = None
        with TraceReader(self.path) as reader:
            for _, record, item in reader:
                kind = record.get("kind")
                if kind in ("result", "abandoned"):
                    if current is not None:
                        yield _step(current)
                        current = None
                    if kind == "result":
                        self.ending = record
                    else:
                        self.abandoned = str(record.get("exception", "Exception"))
                    continue
                attempt = record.get("attempt")
                number = attempt if type(attempt) is int else 0
                opens = (kind == "transition" and record.get("machine") == TURN_MACHINE
                         and record.get("trigger") in _OPENS)
                if kind == "input" or (kind == "transition" and record.get("machine") == TURN_MACHINE):
                    if current is not None:
                        yield _step(current)
                    t = record.get("t") if kind == "input" else now
                    now = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
                    if opens:
                        opened = _OPENS[record["trigger"]]
                        previous = kinds.get(number - 1, "stream")
                        kinds[number] = previous if opened == "same" else str(opened)
                        if now is not None:
                            last_t[number] = now
                    silence = None
                    arrived = None
                    if kind == "input":
                        arrived = arrivals.describe(number, item)
                        if now is not None:
                            before = last_t.get(number, 0.0)
                            if now - before >= STALL_S or arrived.input == "idle_timeout":
                                silence = round(now - before, 6)
                            last_t[number] = now
                    step_kind = APP_TURN if self.app_server else kinds.get(number, "stream")
                    current = {"seq": record.get("seq", 0), "t": now,
                               "attempt": number, "kind": step_kind, "arrived": arrived,
                               "silence_s": silence, "moves": [], "delivered": [],
                               "records": [_clipped(record)]}
                    if kind == "transition":
                        current["moves"].append(_move(record))
                    continue
                if current is None:  # a decision before any input (a session's handshake)
                    step_kind = APP_TURN if self.app_server else kinds.get(number, "stream")
                    current = {"seq": record.get("seq", 0), "t": now, "attempt": number,
                               "kind": step_kind, "arrived": None, "silence_s": None,
                               "moves": [], "delivered": [], "records": []}
                current["records"].append(_clipped(record))
                if kind == "transition":
                    current["moves"].append(_move(record))
                elif kind == "effect":
                    current["delivered"].append(_delivery(str(record.get("effect")),
                                                          record.get("data")))
                    if record.get("effect") == "wait" and isinstance(record.get("data"), (int, float)):
                        if now is not None:  # the attempt starts after its wait
                            last_t[number] = now + float(record["data"])
        if current is not None:
            yield _step(current)


def _move(record: dict[str, Any]) -> Move:
    return Move(str(record.get("machine")), str(record.get("source")), str(record.get("dest")),
                str(record.get("trigger")))


def _step(fields: dict[str, Any]) -> Step:
    return Step(fields["seq"], fields["t"], fields["attempt"], fields["kind"], fields["arrived"],
                fields["silence_s"], tuple(fields["moves"]), tuple(fields["delivered"]),
                tuple(fields["records"]))


# -- as text -----------------------------------------------------------------------------------
#: Machines whose moves are named with a prefix (the attempt's own machine goes without).
_PREFIX: Final = {TURN_MACHINE: "turn: ", "app_session": "session: "}


def step_line(step: Step) -> str:
    """One step as one terminal line: clock, attempt, what arrived, what it changed, what the
    user got."""
    t = f"{step.t:9.4f}" if step.t is not None else f"{'#' + str(step.seq):>9}"
    who = f"#{step.attempt} {step.kind}" if step.kind != APP_TURN else f"turn {step.attempt}"
    arrived = step.arrived.text if step.arrived is not None else ""
    if step.silence_s is not None and step.arrived is not None and step.arrived.input != "idle_timeout":
        arrived = f"[silent {step.silence_s:.2f} s] {arrived}"
    line = f"{t}  {who:<13} {clip(arrived, 46):<46}"
    moves = "; ".join(f"{_PREFIX.get(m.machine, '')}{m.source} -{m.trigger}-> {m.dest}"
                      for m in step.moves)
    if moves:
        line += f"  → {moves}"
    delivered = [d.text for d in step.delivered if d.effect != "first_delta"]
    if delivered:
        shown = "; ".join(delivered[:3]) + (f"; +{len(delivered) - 3} more" if len(delivered) > 3 else "")
        line += f"  ⇒ {clip(shown, 90)}"
    return line.rstrip()


def ending_lines(timeline: Timeline) -> list[str]:
    """How the turn ended, a few lines (after `steps()` was read)."""
    if timeline.abandoned is not None:
        return [f"abandoned: the driver raised {timeline.abandoned}; the trace ends there"]
    ending = timeline.ending or {}
    lines = []
    if timeline.app_server:
        lines.append(f"result    {ending.get('outcome')}"
                     + (" (the process was retired)" if ending.get("retired") else ""))
        lines.append(f"          {ending.get('tool_iterations')} tool iteration(s), "
                     f"{ending.get('model_requests')} model request(s), thread "
                     f"{ending.get('thread_id')}")
    else:
        attempts = ending.get("attempts") or []
        lines.append(f"result    {ending.get('outcome')} after {len(attempts)} attempt(s)")
        for attempt in attempts:
            if isinstance(attempt, dict):
                lines.append(f"attempt {attempt.get('number')} {attempt.get('kind', ''):<8} "
                             f"{attempt.get('final_state', ''):<9} {attempt.get('reason')}")
        for call in ending.get("tool_calls") or []:
            if isinstance(call, dict):
                lines.append(f"tool call {call.get('name')}({clip(str(call.get('arguments')), 50)})")
    text = ending.get("output_text")
    if isinstance(text, str) and text:
        lines.append(f"text      {clip(text)!r}")
    error = ending.get("error")
    if isinstance(error, dict):
        lines.append(f"error     {error.get('code')}: {clip(str(error.get('message')), 70)}")
    return lines
