"""`streamfsm show TRACE --html OUT.html`: a turn drawn as one self-contained HTML page.

Theory of operation
===================

The page is one file with nothing to fetch: inline CSS, an inline SVG drawn here, and a little
inline script for the hover details. It is made from the trace's steps (`engine.view.timeline`)
in two passes over the file, one record at a time: the first finds the time axis (the turn's
length) and the attempts; the second draws.

    time axis         seconds since the turn began (records, for a trace without a clock)
    one lane per      its label: number, kind, final state, reason; then, left to right:
    attempt           a band of the attempt machine's states over time (each change a mark),
                      the bytes received so far (a rising area), ticks where text or reasoning
                      reached the user and where bytes or lines arrived (and, for codex, lines
                      were sent), and a row of marks: faults, HTTP errors, stalls (a silence of
                      `STALL_S` or more, or an idle timeout), interrupts, the end of the stream,
                      the retry wait before the attempt, a resume, a cancel, tool calls, errors,
                      approvals asked and answered, the process's exit, timeouts, the outcome
    an app-server     one lane per turn (its number in the session), the same rows: the states
    turn              of the app-turn machine, stdout bytes, lines received and sent

Hovering a mark shows its record (the trace's own JSON, long strings clipped). A turn of tens of
thousands of deltas stays readable and small: arrivals and deliveries are counted into
`BUCKETS` columns per lane (hovering one shows what it holds), and each lane draws at most
`MARKS_PER_LANE` single marks (the rest are counted into the columns too). So the page's size
depends on the number of lanes, not on the length of the turn.

For tests and tools the page says what it shows in attributes: the lanes (`data-attempt`,
`data-kind`, `data-final-state`, `data-reason`), the outcome (`#outcome[data-outcome]`), and
once its script ran, `body[data-ready="yes"]` with the number of script errors it saw
(`data-script-errors`); `#show=N` in the address shows mark N's details as a hover would.
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Final

import attrs

from engine.view.timeline import APP_TURN, Step, Timeline

__all__ = ["BUCKETS", "MARKS_PER_LANE", "write_page", "page"]

#: Columns per lane into which arrivals and deliveries are counted.
BUCKETS: Final = 240
#: Single marks drawn per lane at most.
MARKS_PER_LANE: Final = 400

_WIDTH: Final = 1180
_LABEL_W: Final = 230
_PLOT_X: Final = 240
_PLOT_W: Final = 900
_AXIS_Y: Final = 46
_LANE_Y: Final = 64
_LANE_H: Final = 112
_LANE_GAP: Final = 12

#: State colours (the states of every machine that owns a lane).
_STATE_COLOURS: Final = {
    "awaiting_created": "#b0b7c3", "queued": "#b0b7c3", "streaming": "#4c8bf5",
    "tool_call": "#9b59b6", "awaiting_approval": "#e6a23c", "interrupting": "#f39c12",
    "terminal": "#2e9d57", "fallback": "#e67e22", "retire": "#d64541",
}
_OUTCOME_COLOURS: Final = {"completed": "#2e9d57", "incomplete": "#e6a23c", "failed": "#d64541",
                           "error": "#d64541", "interrupted": "#f39c12"}
#: The machine that owns each lane, by protocol.
_LANE_MACHINE: Final = {False: "stream_attempt", True: "app_turn"}

#: The single marks: input kinds and effects drawn on a lane's row of marks, with their symbol.
_INPUT_MARKS: Final = {
    "fault": ("fault", "✕"), "http_error": ("http", "■"), "eof": ("eof", "▮"),
    "idle_timeout": ("stall", "◐"), "interrupt": ("interrupt", "▲"),
    "exit": ("exit", "▼"), "spawn_failed": ("fault", "✕"), "approval": ("approval", "◆"),
    "request_timeout": ("stall", "◐"), "interrupt_timeout": ("stall", "◐"),
}
_EFFECT_MARKS: Final = {
    "tool_call": ("tool", "◆"), "error": ("error", "●"), "cancel": ("cancel", "⊘"),
    "approval": ("approval", "◇"), "outcome": ("outcome", "★"), "retire": ("error", "▼"),
}


@attrs.define
class _Lane:
    """One attempt (or app-server turn) as the first pass finds it, then its drawing."""

    number: int
    kind: str
    start: float
    end: float
    final_state: str = ""
    reason: str = ""
    wait_s: float = 0.0
    states: list[tuple[float, str, int]] = attrs.field(factory=list)
    marks: list[tuple[float, str, str, str, int]] = attrs.field(factory=list)
    silences: list[tuple[float, float, int]] = attrs.field(factory=list)
    received: list[int] = attrs.field(factory=lambda: [0] * BUCKETS)
    arrivals: list[int] = attrs.field(factory=lambda: [0] * BUCKETS)
    sent: list[int] = attrs.field(factory=lambda: [0] * BUCKETS)
    text: list[int] = attrs.field(factory=lambda: [0] * BUCKETS)
    reasoning: list[int] = attrs.field(factory=lambda: [0] * BUCKETS)
    summaries: dict[int, dict[str, Any]] = attrs.field(factory=dict)
    more: int = 0


class _Scale:
    """Time (or record number) to x."""

    def __init__(self, end: float, clocked: bool) -> None:
        self.end = end if end > 0 else (1e-3 if clocked else 1.0)
        self.clocked = clocked

    def x(self, t: float) -> float:
        return _PLOT_X + _PLOT_W * min(max(t / self.end, 0.0), 1.0)

    def bucket(self, t: float) -> int:
        return min(BUCKETS - 1, max(0, int(t / self.end * BUCKETS)))

    def bucket_t(self, index: int) -> float:
        return self.end * index / BUCKETS


def _position(step: Step, count: int) -> float:
    return step.t if step.t is not None else float(count)


def _first_pass(timeline: Timeline) -> tuple[dict[int, _Lane], float, bool, int]:
    """The lanes (kind, span, final state), the turn's end, whether it has a clock, the steps."""
    lanes: dict[int, _Lane] = {}
    machine = _LANE_MACHINE[timeline.app_server]
    clocked = False
    end = 0.0
    count = 0
    for step in timeline.steps():
        count += 1
        clocked = clocked or step.t is not None
        at = _position(step, count)
        end = max(end, at)
        lane = lanes.get(step.attempt)
        if lane is None:
            lane = lanes[step.attempt] = _Lane(step.attempt, step.kind, at, at)
        lane.end = max(lane.end, at)
        for move in step.moves:
            if move.machine == machine:
                lane.final_state = move.dest
                lane.reason = move.trigger
        for delivery in step.delivered:
            if delivery.effect == "wait":
                lane.wait_s = _seconds(_effect_data(step.records, "wait"))
                lane.start = at + lane.wait_s
            elif delivery.effect == "outcome":
                data = _effect_data(step.records, "outcome")
                if isinstance(data, dict):
                    lane.reason = str(data.get("reason"))
    ending = timeline.ending or {}
    for attempt in ending.get("attempts") or []:
        if isinstance(attempt, dict) and attempt.get("number") in lanes:
            lane = lanes[attempt["number"]]
            lane.kind = str(attempt.get("kind", lane.kind))
            lane.final_state = str(attempt.get("final_state", lane.final_state))
            lane.reason = str(attempt.get("reason", lane.reason))
    return lanes, end, clocked, count


def _effect_data(records: tuple[dict[str, Any], ...], effect: str) -> Any:
    for record in records:
        if record.get("kind") == "effect" and record.get("effect") == effect:
            return record.get("data")
    return None


def _seconds(data: Any) -> float:
    return float(data) if isinstance(data, (int, float)) and not isinstance(data, bool) else 0.0


class _Marks:
    """The hover details of every mark, by index (`data-i`)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, title: str, record: Any) -> int:
        self.items.append({"title": title, "record": record})
        return len(self.items) - 1


def _second_pass(timeline: Timeline, lanes: dict[int, _Lane], scale: _Scale,
                 marks: _Marks) -> None:
    machine = _LANE_MACHINE[timeline.app_server]
    count = 0
    for step in timeline.steps():
        count += 1
        lane = lanes.get(step.attempt)
        if lane is None:
            continue
        at = _position(step, count)
        index = scale.bucket(at)
        summary = lane.summaries.get(index)
        if summary is None:
            summary = lane.summaries[index] = {
                "from_seq": step.seq, "to_seq": step.seq, "inputs": 0, "bytes": 0, "names": {},
                "text": "", "deliveries": 0, "sent": 0, "marks not drawn": 0}
        summary["to_seq"] = step.seq
        for move in step.moves:
            if move.machine == machine:
                if not lane.states:  # the state the attempt began in, from its start
                    lane.states.append((lane.start, move.source, -1))
                record = next((r for r in step.records if r.get("kind") == "transition"
                               and r.get("machine") == machine and r.get("dest") == move.dest),
                              None)
                lane.states.append((at, move.dest, marks.add(
                    f"#{step.attempt} {move.source} -{move.trigger}-> {move.dest}", record)))
        if step.arrived is not None:
            arrived = step.arrived
            summary["inputs"] += 1
            if arrived.input in ("chunk", "line"):
                lane.received[index] += arrived.bytes
                lane.arrivals[index] += 1
                summary["bytes"] += arrived.bytes
                names = summary["names"]
                for name in arrived.names[:20]:
                    if len(names) < 16 or name in names:
                        names[name] = names.get(name, 0) + 1
            if step.silence_s is not None:
                lane.silences.append((at - step.silence_s, at, marks.add(
                    f"#{step.attempt} silent {step.silence_s:.3f} s, then {arrived.text}",
                    step.records[0] if step.records else None)))
            drawn = _INPUT_MARKS.get(arrived.input)
            if drawn is not None:
                _mark(lane, summary, at, drawn, arrived.text, step.records[0], marks, step)
        for delivery in step.delivered:
            if delivery.effect in ("text_delta", "commentary_delta", "refusal_delta"):
                lane.text[index] += max(delivery.chars, 1)
                summary["deliveries"] += 1
                if len(summary["text"]) < 300:
                    summary["text"] += _texts(step.records)
            elif delivery.effect == "reasoning_delta":
                lane.reasoning[index] += max(delivery.chars, 1)
                summary["deliveries"] += 1
            elif delivery.effect == "send":
                lane.sent[index] += 1
                summary["sent"] += 1
            elif delivery.effect == "message":  # codex: a tool call is a message that holds it
                record = next((r for r in step.records if r.get("effect") == "message"
                               and isinstance(r.get("data"), dict)
                               and r["data"].get("tool_calls")), None)
                if record is not None:
                    calls = record["data"]["tool_calls"]
                    names = [str(call["function"].get("name")) for call in
                             (calls if isinstance(calls, list) else [])
                             if isinstance(call, dict) and isinstance(call.get("function"), dict)]
                    _mark(lane, summary, at, _EFFECT_MARKS["tool_call"],
                          f"tool call {', '.join(names)}", record, marks, step)
            elif delivery.effect in _EFFECT_MARKS:
                record = next((r for r in step.records if r.get("effect") == delivery.effect),
                              None)
                _mark(lane, summary, at, _EFFECT_MARKS[delivery.effect], delivery.text, record,
                      marks, step)


def _texts(records: tuple[dict[str, Any], ...]) -> str:
    """The text a step's records delivered."""
    return "".join(r["data"] for r in records
                   if r.get("effect") in ("text_delta", "commentary_delta", "refusal_delta")
                   and isinstance(r.get("data"), str))


def _mark(lane: _Lane, summary: dict[str, Any], at: float, drawn: tuple[str, str], text: str,
          record: Any, marks: _Marks, step: Step) -> None:
    if len(lane.marks) >= MARKS_PER_LANE:
        lane.more += 1
        summary["marks not drawn"] += 1
        return
    css, symbol = drawn
    lane.marks.append((at, css, symbol, text, marks.add(f"#{step.attempt} {text}", record)))


# -- drawing -----------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _nice_step(span: float) -> float:
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _tick_label(value: float, scale: _Scale) -> str:
    if not scale.clocked:
        return f"{value:g}"
    if scale.end < 1:
        return f"{value * 1000:g} ms"
    return f"{value:g} s"


def _axis(scale: _Scale, height: int) -> list[str]:
    out = [f'<line class="axis" x1="{_PLOT_X}" y1="{_AXIS_Y}" x2="{_PLOT_X + _PLOT_W}" '
           f'y2="{_AXIS_Y}"/>']
    step = _nice_step(scale.end)
    value = 0.0
    while value <= scale.end * 1.0001:
        x = scale.x(value)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{_AXIS_Y}" x2="{x:.1f}" y2="{height - 8}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{_AXIS_Y - 8}">'
                   f'{_e(_tick_label(round(value, 12), scale))}</text>')
        value += step
    unit = "time since the turn began" if scale.clocked else "record number (no clock in this trace)"
    out.append(f'<text class="axis-label" x="{_PLOT_X}" y="16">{_e(unit)}</text>')
    return out


def _lane_svg(lane: _Lane, top: int, scale: _Scale, peak: int, marks: _Marks,
              app: bool) -> list[str]:
    colour = _STATE_COLOURS.get(lane.final_state, "#666")
    title = f"turn {lane.number}" if app else f"#{lane.number} {lane.kind}"
    out = [f'<g class="lane" data-attempt="{lane.number}" data-kind="{_e(lane.kind)}" '
           f'data-final-state="{_e(lane.final_state)}" data-reason="{_e(lane.reason)}">',
           f'<rect class="lane-bg" x="4" y="{top}" width="{_WIDTH - 8}" height="{_LANE_H}"/>',
           f'<text class="lane-title" x="14" y="{top + 22}">{_e(title)}</text>',
           f'<text class="lane-state" x="14" y="{top + 42}" fill="{colour}">'
           f'{_e(lane.final_state or "?")}</text>',
           f'<text class="lane-reason" x="14" y="{top + 60}">{_e(lane.reason)}</text>']
    span = (f"{lane.start:.4f}–{lane.end:.4f} s" if scale.clocked
            else f"records {lane.start:g}–{lane.end:g}")
    out.append(f'<text class="lane-span" x="14" y="{top + 78}">{_e(span)}</text>')
    band_y = top + 8
    if lane.wait_s > 0:
        x0, x1 = scale.x(lane.start - lane.wait_s), scale.x(lane.start)
        index = marks.add(f"#{lane.number} retry wait {lane.wait_s:g} s",
                          {"effect": "wait", "attempt": lane.number, "data": lane.wait_s})
        out.append(f'<rect class="wait" data-i="{index}" x="{x0:.1f}" y="{band_y}" '
                   f'width="{max(x1 - x0, 2):.1f}" height="14"/>')
        out.append(f'<text class="mark-label" x="{x0:.1f}" y="{band_y + 26}">'
                   f'wait {lane.wait_s:g} s</text>')
    if lane.kind == "resume":
        out.append(f'<text class="resume" x="{scale.x(lane.start) + 2:.1f}" '
                   f'y="{band_y + 28}">↻ resume</text>')
    # the states over time
    for position, (at, state, index) in enumerate(lane.states):
        following = lane.states[position + 1][0] if position + 1 < len(lane.states) else lane.end
        x0, x1 = scale.x(at), scale.x(following)
        fill = _STATE_COLOURS.get(state, "#888")
        hover = f' data-i="{index}"' if index >= 0 else ""
        out.append(f'<rect class="state"{hover} data-state="{_e(state)}" '
                   f'x="{x0:.1f}" y="{band_y}" width="{max(x1 - x0, 3):.1f}" height="14" '
                   f'fill="{fill}"/>')
    # the bytes received so far
    area_top, area_h = top + 30, 40
    if peak > 0:  # a step for each column that received bytes
        total = 0
        base = area_top + area_h
        level = float(base)
        points: list[str] = []
        for index in range(BUCKETS):
            if lane.received[index]:
                x0, x1 = scale.x(scale.bucket_t(index)), scale.x(scale.bucket_t(index + 1))
                if not points:
                    points.append(f"{x0:.1f},{base}")
                total += lane.received[index]
                points.append(f"{x0:.1f},{level:.1f}")
                level = base - area_h * total / peak
                points.append(f"{x1:.1f},{level:.1f}")
        if total:
            last_x = float(points[-1].split(",")[0])
            points.append(f"{last_x:.1f},{base}")
            out.append(f'<polygon class="bytes" points="{" ".join(points)}"/>')
            near_end = last_x > _PLOT_X + _PLOT_W - 80
            label_x = last_x - 4 if near_end else last_x + 4
            anchor = "end" if near_end else "start"
            out.append(f'<text class="bytes-label" x="{label_x:.1f}" y="{level + 12:.1f}" '
                       f'text-anchor="{anchor}">{total:,} B</text>')
    for start, end, index in lane.silences:
        x0, x1 = scale.x(start), scale.x(end)
        out.append(f'<rect class="silence" data-i="{index}" x="{x0:.1f}" y="{area_top}" '
                   f'width="{max(x1 - x0, 2):.1f}" height="{area_h}"/>')
    # counted columns: text and reasoning delivered, arrivals, lines sent
    ticks_y = area_top + area_h + 4
    width = _PLOT_W / BUCKETS
    for index, summary in sorted(lane.summaries.items()):
        x = scale.x(scale.bucket_t(index))
        column = marks.add(f"#{lane.number} {_column_title(summary)}", dict(summary))
        parts: list[str] = []
        if lane.text[index] or lane.reasoning[index]:
            css = "text" if lane.text[index] else "reasoning"
            parts.append(f'<rect class="{css}" x="{x:.1f}" y="{ticks_y}" '
                         f'width="{max(width - 0.5, 1):.2f}" height="8"/>')
        if lane.arrivals[index]:
            parts.append(f'<rect class="arrival" x="{x:.1f}" y="{ticks_y + 10}" '
                         f'width="{max(width - 0.5, 1):.2f}" height="5"/>')
        if lane.sent[index]:
            parts.append(f'<rect class="sent" x="{x:.1f}" y="{ticks_y + 16}" '
                         f'width="{max(width - 0.5, 1):.2f}" height="5"/>')
        if parts:
            out.append(f'<g class="column" data-i="{column}">{"".join(parts)}'
                       f'<rect class="hit" x="{x:.1f}" y="{ticks_y}" '
                       f'width="{max(width, 1):.2f}" height="22"/></g>')
    # single marks
    marks_y = top + _LANE_H - 10
    for at, css, symbol, text, index in lane.marks:
        x = scale.x(at)
        label = text if css in ("fault", "http", "stall", "interrupt", "exit", "outcome") else ""
        near_end = x > _PLOT_X + _PLOT_W - 200
        label_x, anchor = (x - 8, "end") if near_end else (x + 8, "start")
        out.append(f'<g class="mark {css}" data-i="{index}"><text class="symbol" x="{x:.1f}" '
                   f'y="{marks_y}">{symbol}</text>'
                   + (f'<text class="mark-label" x="{label_x:.1f}" y="{marks_y}" '
                      f'text-anchor="{anchor}">{_e(_short(label))}</text>' if label else "")
                   + "</g>")
    if lane.more:
        out.append(f'<text class="mark-label" x="{_PLOT_X + _PLOT_W - 4}" y="{marks_y}" '
                   f'text-anchor="end">+{lane.more} marks counted in the columns</text>')
    out.append("</g>")
    return out


def _short(text: str, width: int = 34) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _column_title(summary: dict[str, Any]) -> str:
    parts = [f"records {summary['from_seq']}–{summary['to_seq']}"]
    if summary["bytes"]:
        parts.append(f"{summary['bytes']:,} B")
    if summary["deliveries"]:
        parts.append(f"{summary['deliveries']} delivered")
    if summary["sent"]:
        parts.append(f"{summary['sent']} sent")
    return ", ".join(parts)


_STYLE: Final = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:20px;color:#1d232b;background:#fff}
h1{font-size:18px;margin:0 0 4px}
.meta{color:#5b6572;margin:0 0 10px}
#outcome{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:600}
.summary{margin:8px 0 12px}
svg{display:block;border:1px solid #dde2e8;border-radius:6px;background:#fbfcfd}
.axis{stroke:#8a94a3}.grid{stroke:#e7ebf0}.tick,.axis-label{font-size:11px;fill:#5b6572}
.tick{text-anchor:middle}.lane-bg{fill:#fff;stroke:#e1e5ea}
.lane-title{font-weight:600;font-size:14px}.lane-state{font-weight:600;font-size:13px}
.lane-reason,.lane-span{font-size:12px;fill:#5b6572}
.state{stroke:#fff;stroke-width:.5}.wait{fill:url(#hatch);stroke:#9aa3ad}
.bytes{fill:#4c8bf5;fill-opacity:.18;stroke:#4c8bf5;stroke-width:1}
.bytes-label,.mark-label,.resume{font-size:11px;fill:#3d4652}
.silence{fill:url(#stall);stroke:#e6a23c;stroke-dasharray:2 2}
.text{fill:#2e9d57}.reasoning{fill:#9b59b6}.arrival{fill:#4c8bf5}.sent{fill:#e67e22}
.hit{fill:transparent}
.symbol{font-size:13px;text-anchor:middle}
.mark.fault .symbol,.mark.http .symbol,.mark.error .symbol{fill:#d64541}
.mark.stall .symbol,.mark.interrupt .symbol{fill:#e6a23c}.mark.tool .symbol{fill:#9b59b6}
.mark.approval .symbol{fill:#e67e22}.mark.outcome .symbol{fill:#2e9d57}
.mark.eof .symbol,.mark.exit .symbol,.mark.cancel .symbol{fill:#3d4652}
[data-i]{cursor:pointer}[data-i]:hover{opacity:.75}
#legend{margin:10px 0;color:#3d4652;font-size:12px}#legend span{margin-right:14px}
table{border-collapse:collapse;margin-top:12px}td,th{border:1px solid #dde2e8;padding:3px 8px;text-align:left}
th{background:#f3f5f8}
#tip{position:absolute;max-width:640px;max-height:420px;overflow:auto;background:#1d232b;color:#eef1f4;
border-radius:6px;padding:8px 10px;font-size:12px;box-shadow:0 4px 16px rgba(0,0,0,.25)}
#tip pre{margin:4px 0 0;white-space:pre-wrap;word-break:break-all;font:11px/1.35 ui-monospace,monospace}
"""

_SCRIPT: Final = """
(function () {
  var marks = JSON.parse(document.getElementById("marks").textContent);
  var tip = document.getElementById("tip");
  var title = tip.querySelector(".title");
  var body = tip.querySelector("pre");
  function show(element, x, y) {
    var index = Number(element.getAttribute("data-i"));
    var mark = marks[index];
    if (!mark) { return; }
    title.textContent = mark.title;
    body.textContent = JSON.stringify(mark.record, null, 2);
    tip.hidden = false;
    tip.setAttribute("data-mark", String(index));
    tip.style.left = Math.min(x + 12, window.scrollX + document.documentElement.clientWidth - 660) + "px";
    tip.style.top = (y + 14) + "px";
  }
  document.addEventListener("mouseover", function (event) {
    var element = event.target.closest ? event.target.closest("[data-i]") : null;
    if (element) { show(element, event.pageX, event.pageY); } else { tip.hidden = true; }
  });
  var asked = /[#&]show=(\\d+)/.exec(window.location.hash);
  if (asked) {
    var element = document.querySelector('[data-i="' + asked[1] + '"]');
    if (element) {
      var box = element.getBoundingClientRect();
      show(element, box.left + window.scrollX, box.bottom + window.scrollY);
    }
  }
  document.body.setAttribute("data-marks", String(document.querySelectorAll("[data-i]").length));
  document.body.setAttribute("data-ready", "yes");
})();
document.body.setAttribute("data-script-errors", String(window.streamfsmErrors || 0));
"""

#: Counts errors in the page's own script (set first, so it sees the main script's errors).
_ERROR_COUNTER: Final = (
    "window.streamfsmErrors = 0;"
    "window.addEventListener('error', function () { window.streamfsmErrors += 1;"
    " if (document.body) { document.body.setAttribute('data-script-errors',"
    " String(window.streamfsmErrors)); } });"
)


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def page(path: str | os.PathLike[str]) -> str:
    """The HTML page of the trace at `path` (raises `TraceError` for an invalid trace)."""
    timeline = Timeline(path)
    lanes, end, clocked, count = _first_pass(timeline)
    scale = _Scale(end, clocked)
    marks = _Marks()
    _second_pass(timeline, lanes, scale, marks)
    app = timeline.app_server
    ending = timeline.ending or {}
    outcome = str(ending.get("outcome")) if timeline.abandoned is None else "abandoned"
    ordered = [lanes[number] for number in sorted(lanes)]
    peak = max((sum(lane.received) for lane in ordered), default=0)
    height = _LANE_Y + len(ordered) * (_LANE_H + _LANE_GAP) + 10
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
           f'viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="the turn on a time axis">',
           '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eef0f3"/>'
           '<line x1="0" y1="0" x2="0" y2="6" stroke="#b7bec7" stroke-width="2"/></pattern>'
           '<pattern id="stall" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff6e6"/>'
           '<line x1="0" y1="0" x2="0" y2="6" stroke="#f1c27d" stroke-width="2"/></pattern></defs>']
    svg += _axis(scale, height)
    for position, lane in enumerate(ordered):
        svg += _lane_svg(lane, _LANE_Y + position * (_LANE_H + _LANE_GAP), scale, peak, marks, app)
    svg.append("</svg>")
    name = os.path.basename(timeline.path)
    request = timeline.header.get("request")
    model = request.get("model") if isinstance(request, dict) else None
    duration = f"{end:.4g} s" if clocked else f"{count} steps"
    meta = " · ".join(str(part) for part in (
        timeline.entry, f"model {model}" if isinstance(model, str) else None,
        f"{len(ordered)} {'turn' if app else 'attempt'}(s)", duration) if part)
    rows = []
    for lane in ordered:
        rows.append(f'<tr class="attempt" data-attempt="{lane.number}" data-kind="{_e(lane.kind)}" '
                    f'data-final-state="{_e(lane.final_state)}" data-reason="{_e(lane.reason)}">'
                    f"<td>{lane.number}</td><td>{_e(lane.kind if not app else APP_TURN)}</td>"
                    f"<td>{_e(lane.final_state)}</td><td>{_e(lane.reason)}</td>"
                    f"<td>{lane.start:.4f}</td><td>{lane.end:.4f}</td></tr>")
    summary = _summary(timeline, ending)
    colour = _OUTCOME_COLOURS.get(outcome, "#3d4652")
    legend = ('<span>band: the states</span><span style="color:#4c8bf5">area: bytes received'
              '</span><span style="color:#2e9d57">green: text delivered</span>'
              '<span style="color:#9b59b6">violet: reasoning</span><span style="color:#4c8bf5">'
              'blue: arrivals</span><span style="color:#e67e22">orange: lines sent</span>'
              '<span>✕ fault ■ HTTP error ◐ stall or timeout ▲ interrupt ▮ end of stream ◆ tool '
              'call ◇ approval asked ◆ answered ● error ⊘ cancel ▼ exit or retire ★ outcome</span><span>hover a mark for its record'
              '</span>')
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>streamfsm · {_e(name)}</title><style>{_STYLE}</style>",
        f"<script>{_ERROR_COUNTER}</script></head>",
        '<body data-ready="no" data-script-errors="0">',
        f"<h1>{_e(name)}</h1><p class=\"meta\">{_e(meta)}</p>",
        f'<div id="outcome" data-outcome="{_e(outcome)}" style="background:{colour}">'
        f"{_e(outcome)}</div>",
        f'<p class="summary">{_e(summary)}</p>',
        "".join(svg),
        f'<div id="legend">{legend}</div>',
        f'<table id="attempts"><thead><tr><th>{"turn" if app else "attempt"}</th><th>kind</th>'
        "<th>final state</th><th>reason</th><th>from</th><th>to</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>",
        '<div id="tip" hidden><div class="title"></div><pre></pre></div>',
        f'<script type="application/json" id="marks">{_script_json(marks.items)}</script>',
        f"<script>{_SCRIPT}</script></body></html>\n",
    ])


def _summary(timeline: Timeline, ending: dict[str, Any]) -> str:
    if timeline.abandoned is not None:
        return f"The driver raised {timeline.abandoned}; the trace ends there."
    parts = []
    text = ending.get("output_text")
    if isinstance(text, str) and text:
        parts.append(f"{len(text):,} characters of text")
    calls = ending.get("tool_calls")
    if isinstance(calls, list) and calls:
        parts.append(f"{len(calls)} tool call(s)")
    if timeline.app_server:
        parts.append(f"{ending.get('tool_iterations')} tool iteration(s), "
                     f"{ending.get('model_requests')} model request(s)")
        if ending.get("retired"):
            parts.append("the process was retired")
    error = ending.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        parts.append(f"error {json.dumps(code) if not isinstance(code, str) else code}")
    return "; ".join(parts) or "no output"


def write_page(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> int:
    """Write the page of the trace at `path` to `out`; returns its size in bytes."""
    data = page(path).encode("utf-8")
    with open(out, "wb") as file:
        file.write(data)
    return len(data)
