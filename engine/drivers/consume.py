"""`consume`: one attempt from raw SSE bytes, no network (files, captures, tests, benchmarks)."""

from __future__ import annotations

import os
from typing import Iterable

from engine.drivers.arguments import check_callbacks, check_trace
from engine.log.eventlog import Callbacks
from engine.drivers.recording import TurnRecording
from machines.records import TurnPolicy, TurnResult

__all__ = ["consume", "SINGLE_ATTEMPT"]

#: `consume` runs exactly one attempt: the end of the bytes is the end of the stream.
SINGLE_ATTEMPT = TurnPolicy(max_stream_retries=0, fallback=False)


def _as_bytes(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    raise TypeError(f"consume() takes bytes chunks, got {type(chunk).__name__}")


def consume(
    chunks: bytes | str | Iterable[bytes | str],
    callbacks: Callbacks | None = None,
    trace: str | os.PathLike[str] | None = None,
) -> TurnResult:
    """Run raw SSE bytes (one chunk, or an iterable of chunks with their boundaries) through one
    stream attempt. The end of `chunks` is the end of the stream: without a terminal event the
    outcome is "error", partial output kept."""
    check_callbacks(callbacks)
    check_trace(trace)
    pieces: Iterable[object]
    if isinstance(chunks, (bytes, bytearray, memoryview, str)):
        pieces = [chunks]
    elif hasattr(chunks, "__iter__"):
        pieces = chunks
    else:
        raise TypeError(f"consume() takes bytes or an iterable of bytes, got {type(chunks).__name__}")
    recording = TurnRecording(
        SINGLE_ATTEMPT, callbacks, entry="consume", keep_records=trace is not None
    )
    for feed in recording.attempts():
        for chunk in pieces:
            if feed.chunk(_as_bytes(chunk)):
                break
        else:
            feed.end()
    return recording.finish(trace)
