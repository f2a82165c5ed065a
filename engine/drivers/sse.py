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

Implementation note (the hot path): line ends are normalised to LF, the buffered text is split
on blank lines, and each complete block is parsed line by line. Only the incomplete tail stays
buffered.
"""

from __future__ import annotations

import codecs

from machines.records import SseEvent

__all__ = ["SseDecoder"]


class SseDecoder:
    """The decoder for one stream: `feed` each network chunk, `close` at the end of the stream.

    `last_event_id` and `retry_ms` hold the latest `id:` and valid `retry:` fields seen."""

    __slots__ = ("_utf8", "_buffer", "_pending_cr", "_started", "last_event_id", "retry_ms")

    def __init__(self) -> None:
        """A decoder at the start of a stream: nothing buffered, no event id, no retry hint."""
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._pending_cr = False
        self._started = False
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Decode one chunk; return the events it completed, in order."""
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
        if "\r" in text:
            self._pending_cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        buffer = self._buffer + text if self._buffer else text
        if "\n\n" not in buffer:
            self._buffer = buffer
            return []
        blocks = buffer.split("\n\n")
        self._buffer = blocks.pop()
        events: list[SseEvent] = []
        for block in blocks:
            event = self._parse_block(block)
            if event is not None:
                events.append(event)
        return events

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
