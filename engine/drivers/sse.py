"""An incremental, tolerant server-sent-events decoder (WHATWG event-stream parsing rules).

Feed it byte chunks exactly as the network delivered them; it returns the events completed by
each chunk. It accepts what real servers send: CRLF, LF or CR line ends (a CR at the end of one
chunk ends its line at once; an LF at the start of the next completes that CRLF), a UTF-8 BOM,
comments (keepalives), `event:` / `data:` / `id:` / `retry:` fields in any order, unknown fields
(ignored), multi-line data, events split across any chunk boundary, including inside a
multi-byte UTF-8 character.
Invalid UTF-8 becomes U+FFFD; nothing here raises for server input.

An event is dispatched on a blank line, only if it had at least one `data:` line; an event cut off
by the end of the stream is not dispatched. An event whose blank line ends in a CR is dispatched
by that CR, even when the connection breaks before another byte arrives.

Implementation note (the hot path): line ends are normalised to LF and only the new text (with
the one character before it) is searched for the blank line that ends an event; pieces of an event
still incomplete are kept in a list and joined once, when its blank line arrives. So the cost is
linear in the bytes received, however long an event is or however finely it is cut. The complete
part of the buffer is taken apart by position when it is nothing but usual blocks (one `event:`
line and one `data:` line each, what every Responses-API server sends: `_usual_events`); else it
is split on blank lines and each block parsed line by line. Only the incomplete tail stays
buffered. `feed_fields` hands the events on as two lists, their names and their data (all a
stream attempt reads of them): usual blocks then cost no `SseEvent` each.

Limit: `SseDecoder(max_event_bytes=N)` refuses an event larger than N bytes (of its UTF-8 text,
line ends counted as one LF, without the line end and blank line that end it): once the event
being assembled passes N, it is dropped, `too_large` is set and nothing more is dispatched, so a
server cannot make the client buffer without bound. A line end that arrived last is not counted
until the next byte shows it does not begin the blank line, so the decision does not depend on
where the reads cut the event.
"""

from __future__ import annotations

import codecs
from itertools import repeat

from machines.records import SseEvent, sse_event

__all__ = ["SseDecoder"]


def _utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8 (`str.isascii` is a flag lookup: no scan for ASCII text)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _usual_events(text: str) -> tuple[list[str], list[str]] | None:
    """The event names and data of `text`, complete blocks separated by one blank line each (the
    last one's blank line left out), when every block is the usual one: an `event: NAME` line
    and one `data: ...` line. None when any block is not: the line parser reads them then.

    This is the hot path of a Responses-API stream, which is made of nothing else: the text is
    cut into lines once, and the lines are checked and taken apart by position, a field name at
    every third line, a data line after it, a blank line after that, with no step per event
    written in Python but the slicing."""
    lines = text.split("\n")
    if len(lines) % 3 != 2 or any(lines[2::3]):
        return None
    names, data = lines[0::3], lines[1::3]
    if not all(map(str.startswith, names, repeat("event: "))) or not all(
        map(str.startswith, data, repeat("data: "))
    ):
        return None
    return [name[7:] or "message" for name in names], [line[6:] for line in data]


class SseDecoder:
    """The decoder for one stream: `feed` each network chunk as it arrives.

    `last_event_id` and `retry_ms` hold the latest `id:` and valid `retry:` fields seen.
    `max_event_bytes` (None: no limit) is the largest event accepted; `too_large` turns True
    once an event passed it, and from then on `feed` dispatches nothing."""

    __slots__ = (
        "_utf8",
        "_pending",
        "_pending_bytes",
        "_ends_lf",
        "_pending_cr",
        "_started",
        "max_event_bytes",
        "too_large",
        "last_event_id",
        "retry_ms",
    )

    def __init__(self, max_event_bytes: int | None = None) -> None:
        """A decoder at the start of a stream: nothing buffered, no event id, no retry hint."""
        if max_event_bytes is not None and (
            type(max_event_bytes) is not int or max_event_bytes < 1
        ):
            raise ValueError(f"max_event_bytes must be None or an int >= 1, not {max_event_bytes!r}")
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        #: the text of the event being assembled (LF line ends), in the pieces it arrived in
        self._pending: list[str] = []
        #: UTF-8 size of `_pending` (kept only under a limit)
        self._pending_bytes = 0
        #: whether the pending text ends with LF (a LF first in the next text ends the event)
        self._ends_lf = False
        self._pending_cr = False
        self._started = False
        self.max_event_bytes = max_event_bytes
        self.too_large = False
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Decode one chunk; return the events it completed, in order."""
        found = self._complete(chunk)
        if type(found) is tuple:
            names, data = found
            return list(map(sse_event, names, data, repeat(self.last_event_id, len(names))))
        return found  # type: ignore[return-value]

    def feed_fields(self, chunk: bytes) -> tuple[list[str], list[str]]:
        """Decode one chunk; return the names and the data of the events it completed, in order
        (`feed` without an `SseEvent` made for each: what a stream attempt reads of them,
        `StreamAttempt.receive_fields`)."""
        found = self._complete(chunk)
        if type(found) is tuple:
            return found
        return [event.event for event in found], [event.data for event in found]  # type: ignore[union-attr]

    def _complete(self, chunk: bytes) -> tuple[list[str], list[str]] | list[SseEvent]:
        """The events `chunk` completed: the usual blocks of a Responses-API stream as their names
        and data (`_usual_events`), anything else as `SseEvent`s."""
        if self.too_large:
            return []
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._pending_cr and text:
            # The previous chunk ended with a CR, already taken as a line end: an LF here is
            # the second half of that CRLF, not a line end of its own.
            self._pending_cr = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return []
        if "\r" in text:
            self._pending_cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        pending = self._pending
        limit = self.max_event_bytes
        if "\n\n" not in text and not (self._ends_lf and text[0] == "\n"):
            # No blank line yet: keep the piece, look at nothing already seen.
            pending.append(text)
            self._ends_lf = text[-1] == "\n"
            if limit is not None:
                self._pending_bytes += _utf8_size(text)
                if self._pending_size() > limit:
                    self._refuse()
            return []
        if pending:
            pending.append(text)
            buffer = "".join(pending)
            pending.clear()
        else:
            buffer = text
        # A block can pass the limit only if the buffer could (UTF-8: at most 4 bytes a character).
        bound = limit if limit is not None and len(buffer) * 4 > limit else None
        cut = buffer.rfind("\n\n")
        usual = None
        if bound is None and cut > 0 and buffer[cut - 1] != "\n":
            usual = _usual_events(buffer[:cut])
        events: tuple[list[str], list[str]] | list[SseEvent]
        if usual is not None:
            events = usual
            tail = buffer[cut + 2 :]
        else:
            blocks = buffer.split("\n\n")
            tail = blocks.pop()
            parsed: list[SseEvent] = []
            events = parsed
            for block in blocks:
                if bound is not None and _utf8_size(block) > bound:
                    self._refuse()
                    return parsed
                # The usual block, `event: NAME` and one `data: ...` line, without the line parser.
                head, _, rest = block.partition("\n")
                if head[:7] == "event: " and rest[:6] == "data: " and "\n" not in rest:
                    parsed.append(sse_event(head[7:] or "message", rest[6:], self.last_event_id))
                    continue
                event = self._parse_block(block)
                if event is not None:
                    parsed.append(event)
        if tail:
            pending.append(tail)
            self._ends_lf = tail[-1] == "\n"
            if limit is not None:
                self._pending_bytes = _utf8_size(tail)
                if self._pending_size() > limit:
                    self._refuse()
        else:
            self._ends_lf = False
            self._pending_bytes = 0
        return events

    def _pending_size(self) -> int:
        """The size of the event being assembled, as far as it arrived: a last line end may be
        the first half of the blank line that ends the event, which is not part of it (so the
        same event passes or is refused wherever the reads cut it)."""
        return self._pending_bytes - 1 if self._ends_lf else self._pending_bytes

    def _refuse(self) -> None:
        """The event being assembled passed the limit: drop it and dispatch nothing more."""
        self.too_large = True
        self._pending.clear()
        self._pending_bytes = 0

    def _parse_block(self, block: str) -> SseEvent | None:
        event_type = ""
        data: list[str] | None = None
        for line in block.split("\n"):
            if not line or line[0] == ":":
                continue  # a leading blank line dispatches nothing new; a comment is ignored
            colon = line.find(":")
            if colon < 0:
                field, value = line, ""
            else:
                field = line[:colon]
                value = line[colon + 1 :]
                if value and value[0] == " ":
                    value = value[1:]
            if field == "data":
                if data is None:
                    data = [value]
                else:
                    data.append(value)
            elif field == "event":
                event_type = value
            elif field == "id":
                if "\x00" not in value:
                    self.last_event_id = value
            elif field == "retry":
                if value.isascii() and value.isdigit():
                    self.retry_ms = int(value)
        if data is None:
            return None
        return SseEvent(event_type or "message", "\n".join(data), self.last_event_id)
