"""Background responses the simulator keeps: resumed by `GET /v1/responses/{id}`, cancelled.

See *Background responses* in `engine.simulator.server` for what the server does with them;
this module holds the stored response and how a reply becomes one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs
import orjson

from engine.simulator.replies import Reply, Step, frame_ends, sse_frame
from machines.records import Chunk, Fault, Stall, TransportFault

__all__ = [
    "BackgroundResponse",
    "Event",
    "background_response_id",
    "start_background",
    "stream_events",
]

#: What a JSON event of an event stream is here: a parsed ``data:`` object.
Event = dict[str, Any]

#: The status the response object of an early lifecycle event has in a background response.
_BACKGROUND_EARLY_STATUS: Final[Mapping[str, str]] = {
    "response.created": "queued",
    "response.queued": "queued",
    "response.in_progress": "in_progress",
}


def background_response_id(request_number: int) -> str:
    """The id the simulator gives the background response started by its request number N."""
    return f"resp_sim_background_{request_number:04d}"


@attrs.frozen
class BackgroundResponse:
    """A background response the simulator keeps, to be resumed or cancelled.

    ``events``: every event of the response in order, each with a ``sequence_number``, the
    response objects they carry already holding ``response_id`` and ``"background": true``.
    ``headers``: the headers of a reply that streams them. ``sent``: how many events, from the
    first, some stream has sent (or started to send). ``cancelled``: ``POST .../cancel`` was
    received.
    """

    response_id: str
    events: tuple[Event, ...]
    headers: tuple[tuple[str, str], ...] = ()
    sent: int = 0
    cancelled: bool = False

    def events_after(self, sequence_number: int | None) -> tuple[Event, ...]:
        """The events whose ``sequence_number`` is above ``sequence_number`` (all for None)."""
        if sequence_number is None:
            return self.events
        return tuple(event for event in self.events if event["sequence_number"] > sequence_number)

    def response_as_of(self, count: int) -> Event:
        """The response object carried by the last of the first ``count`` events that carries
        one; a bare in-progress response object when none does."""
        for event in reversed(self.events[:count]):
            response = event.get("response")
            if isinstance(response, dict):
                return dict(response)
        return {
            "id": self.response_id,
            "object": "response",
            "status": "in_progress",
            "background": True,
            "output": [],
        }

    def final_response(self) -> Event:
        """What ``GET /v1/responses/{id}`` answers: the response of its last event carrying one
        (the terminal event, when it has one); once cancelled, the response as cancel answered
        it."""
        if self.cancelled:
            return self.cancelled_response()
        return self.response_as_of(len(self.events))

    def cancelled_response(self) -> Event:
        """What ``POST /v1/responses/{id}/cancel`` answers: the response as of the events sent
        so far, with ``"status": "cancelled"``."""
        return {**self.response_as_of(self.sent), "status": "cancelled"}


def _frame_data(frame: bytes) -> Any:
    """The parsed JSON of one SSE frame's ``data:`` lines, or None (no data, or not JSON)."""
    data = [
        line[5:].removeprefix(b" ")
        for line in frame.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    if not data:
        return None
    try:
        return orjson.loads(b"\n".join(data))
    except orjson.JSONDecodeError:
        return None


def _background_event(event: Event, response_id: str, position: int) -> Event:
    """``event`` as a background response streams it: with a ``sequence_number`` (its position
    when it has no whole number there) and its response object carrying ``response_id``,
    ``"background": true`` and, in early lifecycle events, ``queued``/``in_progress``."""
    rewritten = dict(event)
    number = event.get("sequence_number")
    if type(number) is not int:
        rewritten["sequence_number"] = position
    response = event.get("response")
    if isinstance(response, dict):
        response = {**response, "id": response_id, "background": True}
        early_status = _BACKGROUND_EARLY_STATUS.get(str(event.get("type")))
        if early_status is not None:
            response["status"] = early_status
        rewritten["response"] = response
    return rewritten


def _events_and_stalls(reply: Reply) -> tuple[list[Event], list[tuple[int, Stall]]]:
    """A streamed reply's JSON events (frames whose data is a JSON object, up to a cut) and its
    stalls, each placed by how many of those events were complete before it."""
    body = b""
    stalls: list[tuple[int, Stall]] = []
    stall_offsets: list[tuple[int, Stall]] = []
    for step in reply.steps:
        if isinstance(step, Chunk):
            body += step.data
        elif isinstance(step, Stall):
            stall_offsets.append((len(body), step))
        else:
            break
    events: list[Event] = []
    event_ends: list[int] = []
    start = 0
    for end in frame_ends(body):
        data = _frame_data(body[start:end])
        if isinstance(data, dict):
            events.append(data)
            event_ends.append(end)
        start = end
    for offset, stall in stall_offsets:
        stalls.append((sum(1 for end in event_ends if end <= offset), stall))
    return events, stalls


def start_background(reply: Reply, response_id: str) -> tuple[BackgroundResponse, Reply]:
    """The background response a ``background: true`` request given ``reply`` starts, and the
    reply that request gets: its first ``background_drop_after_events`` events (one chunk each,
    with the reply's stalls where they were), then a cut with a FIN."""
    cut_after = reply.background_drop_after_events
    if cut_after is None:
        raise ValueError("the reply has no background_drop_after_events")
    events, stalls = _events_and_stalls(reply)
    stored = tuple(
        _background_event(event, response_id, position) for position, event in enumerate(events)
    )
    sent = min(cut_after, len(stored))
    steps: list[Step] = []
    for position in range(sent + 1):
        steps.extend(stall for at, stall in stalls if at == position)
        if position < sent:
            steps.append(Chunk(sse_frame(stored[position])))
    steps.append(TransportFault(Fault.DROP))
    background = BackgroundResponse(response_id, stored, headers=reply.headers, sent=sent)
    first_stream = attrs.evolve(
        reply, steps=tuple(steps), drop="fin", background_drop_after_events=None
    )
    return background, first_stream


def stream_events(events: Iterable[Event], headers: tuple[tuple[str, str], ...]) -> Reply:
    """A streamed 200 reply sending ``events``, one chunk each, and ending as usual."""
    return Reply(steps=tuple(Chunk(sse_frame(event)) for event in events), headers=headers)
