"""SDK-level stream events → the input records the machines take: one normalisation.

Theory of operation
===================

The machines take one kind of input: what a network driver observes (`AttemptFeed.chunk(bytes)`,
`.end()`, `.fail(record)`). Code written against the openai SDK does not hold bytes; it holds what
the SDK hands out: typed event objects from `client.responses.stream(...)` or
`client.responses.create(stream=True)`, plain dicts (what mocks and some relays give), a final
response from `get_final_response()`, and exceptions. This module turns each of those into the
*same* observations a network driver records, so the same machines, event log, traces and replay
serve SDK-level callers unchanged:

    SDK event (pydantic object, dict, plain object)   →  one SSE frame  `event: <type>\\ndata: <json>\\n\\n`
    final response object (`get_final_response()`)    →  the terminal frame that carries it
    SDK stream over HTTP (`ResponseStream`, `Stream`) →  the HTTP body underneath, as raw chunks
    end of iteration                                  →  `EndOfStream`
    `APIStatusError`                                  →  `HttpError` (status, body as sent)
    transport errors (httpx, `ConnectionError`, ...)  →  `TransportFault`
    `APIError` raised for an `error` payload          →  the `error` frame it was raised for
    SDK "missing `response.completed`" / "expected
    `response.created` before ..." `RuntimeError`s     →  `EndOfStream` (the stream ended, for us,
                                                         without a terminal event)
    SDK null-output `TypeError`                       →  `response.completed` with `output: null`
    the SDK's JSON parser failing on a `data:` line   →  `EndOfStream` (its stream is dead)
    anything else                                     →  not a stream condition: re-raised

An event's JSON is what the server sent: a pydantic event is dumped with the fields that were set
(`to_dict(mode="json")`, which round-trips the wire JSON exactly); the fields the SDK's streaming
helpers add on the client side (`snapshot` on deltas, `parsed` / `parsed_arguments`) are dropped.

When the object in hand is the openai SDK's own stream over an HTTP response, the source reads
that HTTP body instead of the SDK's parsed events: the trace then holds the server's bytes with
their chunk boundaries (identical to `run_turn`'s), and the SDK's event accumulator never sees
the stream, so a relay's prelude frame (`codex.rate_limits`, `response.in_progress`, an `error`
frame) cannot make it raise: the machines read the frame itself, with the provider's words.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Final, Iterator

import openai


from engine.drivers.transport import fault_of, http_error_of, is_transport_error
from engine.log.trace import dumps
from machines.json_text import MAX_DEPTH, recursion_room
from machines.records import EndOfStream, Fault, StreamInput

__all__ = [
    "Observation",
    "SdkEventSource",
    "TERMINAL_TYPES",
    "event_type_of",
    "frame_of",
    "input_of",
    "json_of",
    "payload_of",
    "raw_body_of",
    "sdk_error_of",
    "terminal_frame_of",
]

#: What a source yields: the bytes of one read (a frame or a raw chunk), or an input record.
Observation = bytes | StreamInput

#: Event types that end a response; the event's `response` is the one a caller gets back.
TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})

#: Fields the openai SDK's streaming helpers add to events on the client side (not wire data).
_CLIENT_SIDE_FIELDS = frozenset({"snapshot", "parsed", "parsed_arguments"})

_TERMINAL_TYPE_OF_STATUS = {"incomplete": "response.incomplete", "failed": "response.failed"}

_PRELUDE_MARKERS = (
    "Expected to have received `response.created`",
    'Expected to have received "response.created"',
)


# -- JSON of SDK objects ---------------------------------------------------------------------
def json_of(value: Any) -> Any:
    """JSON data of an SDK object, a dict, a plain object (`SimpleNamespace`) or a list of them.

    Values of any depth a parser could hand over (JSON readers stop at about a thousand levels)
    convert the same at any recursion limit; a model the SDK cannot serialise (nested deeper than
    pydantic writes) is read field by field; a value nested deeper still is None: never an
    exception."""
    try:
        with recursion_room(_ROOM_LEVELS):
            return _json_of(value)
    except RecursionError:
        return None


#: Recursion `json_of` makes room for: two frames per level (a call and its comprehension) of
#: the deepest JSON a reader hands over, and a margin.
_ROOM_LEVELS: Final = 2 * MAX_DEPTH + 256


def _json_of(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(key): _json_of(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_of(item) for item in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and isinstance(value, openai.BaseModel):
        try:
            return to_dict(mode="json")
        except ValueError:  # "Maximum serialization depth exceeded": read its fields instead
            return _fields_of(value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # another pydantic model
        try:
            return _json_of(model_dump(mode="json", exclude_unset=True))
        except ValueError:
            return _fields_of(value)
    if isinstance(value, SimpleNamespace) or hasattr(value, "__dict__"):
        return _fields_of(value)
    return repr(value)


def _fields_of(value: Any) -> dict[str, Any]:
    """An object's public attributes (a pydantic model's fields and extra fields), as JSON."""
    fields = {key: item for key, item in vars(value).items() if not key.startswith("_")}
    extra = getattr(value, "__pydantic_extra__", None)
    if isinstance(extra, dict):
        fields.update(extra)
    return {str(key): _json_of(item) for key, item in fields.items()}


def _without_client_side_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _without_client_side_fields(item)
            for key, item in value.items()
            if key not in _CLIENT_SIDE_FIELDS
        }
    if isinstance(value, list):
        return [_without_client_side_fields(item) for item in value]
    return value


def _from_sdk_helpers(event: Any) -> bool:
    return type(event).__module__.startswith("openai.lib.")


def payload_of(event: Any) -> dict[str, Any]:
    """The event's JSON payload, as the server put it in the `data:` line."""
    data = json_of(event)
    if not isinstance(data, dict):
        data = {"data": data}
    if _from_sdk_helpers(event):
        data = _without_client_side_fields(data)
    if "type" not in data:
        kind = getattr(event, "type", None)
        if isinstance(kind, str):
            data = {"type": kind, **data}
    payload: dict[str, Any] = data
    return payload


def event_type_of(event: Any) -> str | None:
    """The event's `type` (an SDK object's attribute or a dict's key), or None."""
    kind = event.get("type") if isinstance(event, dict) else getattr(event, "type", None)
    return kind if isinstance(kind, str) else None


def _field(event: Any, name: str) -> Any:
    return event.get(name) if isinstance(event, dict) else getattr(event, name, None)


# -- frames ----------------------------------------------------------------------------------
def _frame(payload: dict[str, Any]) -> bytes:
    data = dumps(payload)  # any depth, any value: never raises
    kind = payload.get("type")
    if isinstance(kind, str) and kind:
        name = kind.replace("\r", " ").replace("\n", " ").encode("utf-8")
        return b"event: " + name + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"


def frame_of(event: Any) -> bytes:
    """One SSE frame holding the event, as a server would have sent it."""
    return _frame(payload_of(event))


def terminal_frame_of(response: Any) -> bytes:
    """The terminal frame that carries `response` (a final or concrete response object).

    Its type follows the response's status: `response.incomplete` / `response.failed` for those,
    `response.completed` otherwise (what `get_final_response()` stands for)."""
    body = json_of(response)
    if not isinstance(body, dict):
        body = {}
    status = body.get("status")
    kind = _TERMINAL_TYPE_OF_STATUS.get(status if isinstance(status, str) else "", "response.completed")
    return _frame({"type": kind, "response": body})


_NULL_OUTPUT_COMPLETED = _frame(
    {"type": "response.completed", "response": {"status": "completed", "output": None}}
)


# -- exceptions ------------------------------------------------------------------------------
def _is_null_output_error(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, TypeError) and "NoneType" in text and "not iterable" in text


def _is_missing_terminal(error: BaseException) -> bool:
    """The SDK's RuntimeErrors for a stream that lacked `response.completed` or began with
    another frame than `response.created` (the seed runtime's rule, kept verbatim)."""
    if not isinstance(error, RuntimeError):
        return False
    text = str(error)
    return "response.completed" in text or any(marker in text for marker in _PRELUDE_MARKERS)


def input_of(error: BaseException, *, opening: bool) -> Observation | None:
    """What an exception from opening or reading an SDK stream stands for, or None when it is
    not a stream condition (the caller re-raises it)."""
    if isinstance(error, openai.APIStatusError):
        return http_error_of(error)
    if is_transport_error(error):
        return fault_of(error, opening=opening)
    if _is_missing_terminal(error) or isinstance(error, json.JSONDecodeError):
        return EndOfStream()
    if _is_null_output_error(error):
        return _NULL_OUTPUT_COMPLETED
    if type(error) is openai.APIError:  # the SDK's Stream raises it for a payload with `error`
        body = error.body
        if isinstance(body, dict):
            return _frame({"type": "error", "error": body})
        return _frame({"type": "error", "message": error.message})
    return None


def sdk_error_of(error: BaseException, http_response: Any) -> BaseException:
    """The exception the SDK's own `Stream` raises for a transport error while reading the body
    (it wraps them), so a caller sees the same class either way."""
    if isinstance(error, openai.APIError) or not is_transport_error(error):
        return error
    request: Any = getattr(http_response, "request", None)
    wrapped: openai.APIError
    if fault_of(error, opening=False).kind == Fault.READ_TIMEOUT:
        wrapped = openai.APITimeoutError(request=request)
    else:
        wrapped = openai.APIConnectionError(request=request)
    wrapped.__cause__ = error
    return wrapped


# -- sources ---------------------------------------------------------------------------------
def raw_body_of(stream: Any) -> Any | None:
    """The HTTP response under the openai SDK's own stream objects, or None for anything else.

    `openai.Stream` (from `responses.create(stream=True)`) exposes it as `.response`; the
    streaming helper's `ResponseStream` (from `responses.stream(...)`) keeps it as `_response`.
    Only a body that has not been read yet qualifies."""
    from openai.lib.streaming.responses import ResponseStream

    body: Any
    if isinstance(stream, openai.Stream):
        body = stream.response
    elif isinstance(stream, ResponseStream):
        body = getattr(stream, "_response", None)
    else:
        return None
    if body is None or not callable(getattr(body, "iter_bytes", None)):
        return None
    if getattr(body, "is_stream_consumed", False):
        return None
    return body


class SdkEventSource:
    """The observations of one attempt, from whatever the SDK call returned.

    `stream` is an iterable of events (SDK objects or dicts), or the SDK's stream over HTTP (its
    body is read as raw chunks). With `final_response=True` a stream that ends without a terminal
    event is asked for `get_final_response()`, as `responses.stream(...)` callers do.

    Iterating yields observations and always ends with one that ends the attempt (a terminal
    frame, `EndOfStream` or a fault), unless an exception that is not a stream condition escapes.
    Afterwards `response` holds the SDK-level object that carried the terminal response (None when
    it came as bytes) and `error` the exception an input record stands for, in the class the
    SDK's own stream would have raised."""

    def __init__(self, stream: Any, *, final_response: bool = False) -> None:
        self.stream = stream
        self.response: Any = None
        self.error: BaseException | None = None
        self._ask_final = final_response
        self._body = raw_body_of(stream)

    @property
    def http_response(self) -> Any:
        """The HTTP response the source reads, when there is one (its socket is how a reader
        blocked on it is ended), else None."""
        if self._body is not None:
            return self._body
        for name in ("response", "_response"):
            found = getattr(self.stream, name, None)
            if found is not None:
                return found
        return None

    @property
    def reads_bytes(self) -> bool:
        """True when the source reads the raw HTTP body rather than SDK events."""
        return self._body is not None

    def __iter__(self) -> Iterator[Observation]:
        if self._body is not None:
            return self._chunks(self._body)
        return self._events()

    def _chunks(self, body: Any) -> Iterator[Observation]:
        try:
            for chunk in body.iter_bytes():
                if chunk:
                    yield chunk
        except Exception as error:
            observed = input_of(error, opening=False)
            if observed is None:
                raise
            self.error = sdk_error_of(error, body)
            yield observed
            return
        yield EndOfStream()

    def _events(self) -> Iterator[Observation]:
        ended = False
        try:
            for event in self.stream:
                kind = event_type_of(event)
                if kind in TERMINAL_TYPES:
                    self.response = _field(event, "response")
                    ended = True
                elif kind == "error":
                    ended = True
                yield frame_of(event)
                if ended:  # the response is over; nothing after it would be read
                    break
            get_final = getattr(self.stream, "get_final_response", None)
            if not ended and self._ask_final and callable(get_final):
                final = get_final()
                if final is not None:
                    self.response = final
                    yield terminal_frame_of(final)
        except Exception as error:
            observed = input_of(error, opening=False)
            if observed is None:
                raise
            self.error = error
            yield observed
            return
        yield EndOfStream()

    def close(self) -> None:
        """Close the stream (errors on close are swallowed: nothing is left to save)."""
        for target in (self._body, self.stream):
            close = getattr(target, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    pass
