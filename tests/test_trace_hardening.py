"""Traces hold up against what servers and files really do (contract v2, "Trace files").

- Secrets: no piece of 8 or more characters of a secret reaches a trace, also when the server
  echoes it split across two network reads, across two SSE events, across two attempts, or
  inside a read that is not valid UTF-8 on its own (stored as base64); and the trace still
  replays identically. Swept at every cut offset of a small stream, through `engine.consume` and
  through `run_turn` with the real openai client over loopback, and drawn by Hypothesis.
  (v3) Also when the server writes it escaped in a JSON string, some or all of its characters
  as `\\uXXXX`, escaped twice inside a call's arguments, or with `\\/`: no 8 characters of it
  in anything a reader decodes from the trace, every length kept, the trace replays.
- Deep nesting and odd JSON in what the server sends: writing a trace never raises, never
  leaves a `.partial` file, keeps the result, and the trace replays identically.

Generated sessions reach both too (`engine.fuzz.strategies`: the client's key and a
credential-named field echoed, split across deltas, reads and attempts; fields retyped to values
nested hundreds of levels deep), and every one of them is checked for them
(`engine.fuzz.invariants`: `secrets_masked`, `replay_identical`), with the helpers used here.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterable

import openai
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import engine
from engine.drivers.recording import TurnRecording
from engine.log.redaction import MIN_PIECE, MIN_SECRET, Scrubber, readings
from engine.fuzz.invariants import leaked_pieces, secret_pieces
from engine.simulator.shapes import nested_json
from engine.fuzz.strategies import CLIENT_KEY, SESSION_TOKEN, SHAPED_KEY
from engine.simulator.replies import Reply, Script
from engine.simulator.server import ResponsesSimulator
from machines.records import Chunk, TransportFault, TurnPolicy

from support import assert_replays_identically, trace_lines

#: Shaped like an OpenAI project key: found by its shape even where no client holds it (consume).
API_KEY = SHAPED_KEY
#: The token of an `Authorization: Bearer ...` value.
BEARER_TOKEN = "tok.Yh6Rf2Wd9Qa3Le7Mc1Nb5"
AUTHORIZATION = f"Bearer {BEARER_TOKEN}"
#: A key with no known shape: only a client that holds it knows it is one.
PLAIN_KEY = CLIENT_KEY

ONE_ATTEMPT = TurnPolicy(max_stream_retries=0, fallback=False)


def _sse(event: dict[str, Any]) -> bytes:
    name = str(event["type"]).encode()
    return b"event: " + name + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _created() -> dict[str, Any]:
    return {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}}


def _delta(text: str) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": text}


def _completed(**response: Any) -> dict[str, Any]:
    return {
        "type": "response.completed",
        "response": {"id": "resp_1", "status": "completed", "output": [], **response},
    }


def echo_stream(key: str = API_KEY) -> bytes:
    """A small answer that echoes the key, an `Authorization` value and a `session_token` field,
    each right after a two-byte character (so a cut near them leaves a chunk that is not UTF-8)."""
    return b"".join(
        _sse(event)
        for event in (
            _created(),
            _delta(f"é key {key}, é header Authorization: {AUTHORIZATION} ok"),
            _completed(metadata={"session_token": SESSION_TOKEN, "note": "é visible"}),
        )
    )


pieces = secret_pieces


def consume_knowing(chunks: Iterable[bytes], trace: Path, secrets: list[str]) -> engine.TurnResult:
    """`engine.consume` by hand, with the secrets a client would have handed the trace writer."""
    recording = TurnRecording(ONE_ATTEMPT, None, entry="consume")
    for feed in recording.attempts():
        for chunk in chunks:
            if feed.chunk(chunk):
                break
        else:
            feed.end()
    return recording.finish(trace, secrets)


def _cuts(data: bytes) -> list[list[bytes]]:
    return [[data[:cut], data[cut:]] for cut in range(1, len(data))]


# -- secrets, through consume ----------------------------------------------------------------


def test_every_cut_of_an_echoing_stream_leaves_no_piece_of_a_secret(tmp_path: Path) -> None:
    """Every cut offset: the key, the `Authorization` value and the `session_token` field,
    through `engine.consume` (no client: found by shape and by field name)."""
    data = echo_stream()
    leaking: list[int] = []
    binary = 0
    for cut, chunks in enumerate(_cuts(data), 1):
        trace = tmp_path / f"cut-{cut}.jsonl"
        result = engine.consume(chunks, trace=trace)
        assert result.outcome == "completed"
        assert API_KEY in result.output_text  # the caller gets its answer as it was sent
        if leaked_pieces(trace, [API_KEY, AUTHORIZATION, SESSION_TOKEN]):
            leaking.append(cut)
        binary += any("data_b64" in r for r in trace_lines(trace))
        assert_replays_identically(trace)
        trace.unlink()
    assert leaking == []
    assert binary > 0  # some cuts fell inside a two-byte character


def test_binary_chunk_holding_a_secret_is_scrubbed_and_replays(tmp_path: Path) -> None:
    data = echo_stream()
    start = data.index(API_KEY.encode())
    cut = start - 1  # inside "é", right before " key": both chunks are stored as base64
    chunks = [data[: cut - 5], data[cut - 5 : start + 20], data[start + 20 :]]
    trace = tmp_path / "binary.jsonl"
    engine.consume(chunks, trace=trace)
    stored = [r for r in trace_lines(trace) if r.get("input") == "chunk"]
    assert ["data_b64" in r for r in stored] == [True, True, False]
    assert leaked_pieces(trace, [API_KEY]) == set()
    # the masked bytes keep their length: the boundaries are the network's
    assert [len(base64.b64decode(r["data_b64"])) if "data_b64" in r else len(r["data"].encode()) for r in stored] == [
        len(chunk) for chunk in chunks
    ]
    assert_replays_identically(trace)


def test_secret_split_across_two_events_is_masked_where_it_is_assembled(tmp_path: Path) -> None:
    """Each delta holds a piece of the key; the output text and the response join them."""
    head, tail = PLAIN_KEY[:6], PLAIN_KEY[6:]  # 6 characters: too short to mask on its own
    data = b"".join(
        _sse(event)
        for event in (_created(), _delta(f"key {head}"), _delta(f"{tail} end"), _completed())
    )
    trace = tmp_path / "events.jsonl"
    result = consume_knowing([data[:100], data[100:]], trace, [PLAIN_KEY])
    assert result.output_text == f"key {PLAIN_KEY} end"
    assert leaked_pieces(trace, [PLAIN_KEY]) == set()
    final = trace_lines(trace)[-1]
    assert final["output_text"] == "key " + "*" * len(PLAIN_KEY) + " end"
    assert_replays_identically(trace)


def test_credential_fields_of_any_length_are_masked_in_every_record(tmp_path: Path) -> None:
    data = b"".join(
        _sse(event)
        for event in (
            _created(),
            _delta("hi"),
            _completed(metadata={"api_key": "short", "x-session-token": SESSION_TOKEN, "tokens": "kept"}),
        )
    )
    trace = tmp_path / "fields.jsonl"
    result = engine.consume(data, trace=trace)
    assert result.response is not None and result.response["metadata"]["api_key"] == "short"
    recorded = trace_lines(trace)[-1]["response"]["metadata"]
    assert recorded == {"api_key": "*****", "x-session-token": "*" * len(SESSION_TOKEN), "tokens": "kept"}
    assert_replays_identically(trace)


# -- secrets, through run_turn over loopback -------------------------------------------------


def _client(sim: ResponsesSimulator, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key=key, max_retries=0)


#: A request whose credential-named fields hold secrets the server then echoes.
SECRET_REQUEST = {
    "model": "gpt-5",
    "input": "hi",
    "metadata": {"session_token": SESSION_TOKEN},
    "extra_headers": {"Authorization": AUTHORIZATION},
}


@pytest.mark.slow
def test_every_cut_through_run_turn_leaves_no_piece_of_a_secret(tmp_path: Path) -> None:
    """The real openai client against the simulator, one turn per cut offset. The key has no
    known shape here: the trace writer knows it from the client."""
    data = echo_stream(PLAIN_KEY)
    cuts = _cuts(data)
    replies = [Reply(steps=(Chunk(a), Chunk(b))) for a, b in cuts]
    leaking: list[int] = []
    with ResponsesSimulator(Script(replies)) as sim, _client(sim, PLAIN_KEY) as client:
        for cut in range(1, len(cuts) + 1):
            trace = tmp_path / f"cut-{cut}.jsonl"
            result = engine.run_turn(client, dict(SECRET_REQUEST), policy=ONE_ATTEMPT, trace=trace)
            assert result.outcome == "completed", cut
            if leaked_pieces(trace, [PLAIN_KEY, AUTHORIZATION, SESSION_TOKEN]):
                leaking.append(cut)
            assert_replays_identically(trace)
            trace.unlink()
        assert len(sim.requests) == len(cuts)
    assert leaking == []


def test_secret_split_across_two_attempts(tmp_path: Path) -> None:
    """Attempt 1 breaks in the middle of the key; attempt 2 sends the rest first (a relay that
    resends from a byte offset): the pieces on both sides are masked."""
    data = echo_stream(PLAIN_KEY)
    middle = data.index(PLAIN_KEY.encode()) + len(PLAIN_KEY) // 2
    script = Script(
        (
            Reply(steps=(Chunk(data[:middle]), TransportFault("drop"))),
            Reply(steps=(Chunk(data[middle - 3 : middle + 9]), TransportFault("drop"))),
            Reply(steps=(Chunk(data[:middle]), Chunk(data[middle:]))),
        )
    )
    trace = tmp_path / "attempts.jsonl"
    with ResponsesSimulator(script) as sim, _client(sim, PLAIN_KEY) as client:
        result = engine.run_turn(
            client, dict(SECRET_REQUEST), policy=TurnPolicy(max_stream_retries=2), trace=trace
        )
    assert result.outcome == "completed"
    assert [a.reason for a in result.attempts][-1] == "completed"
    assert leaked_pieces(trace, [PLAIN_KEY, AUTHORIZATION, SESSION_TOKEN]) == set()
    assert_replays_identically(trace)


def test_http_error_echoing_the_key_in_pieces(tmp_path: Path) -> None:
    body = orjson.dumps(
        {"error": {"message": f"key {PLAIN_KEY[:12]}... and {PLAIN_KEY[10:]} refused",
                   "type": "invalid_request_error", "code": "invalid_api_key", "param": None}}
    )
    trace = tmp_path / "http.jsonl"
    with ResponsesSimulator(Script((Reply(status=401, body=body),))) as sim, _client(sim, PLAIN_KEY) as client:
        result = engine.run_turn(client, dict(SECRET_REQUEST), trace=trace)
    assert result.outcome == "error"
    assert leaked_pieces(trace, [PLAIN_KEY]) == set()
    assert_replays_identically(trace)


# -- secrets the server writes escaped (contract v3) -----------------------------------------

#: A relay's key with characters a JSON writer may escape (`/` as `\\/`).
RELAY_KEY = "rly_7Gq/Xw2+Lm9=Tz4Pk8/Hd3"


def escaped(secret: str, which: str, *, upper: bool = False) -> str:
    """`secret` as a JSON string's content with some characters written as `\\uXXXX`: every
    one ("all"), every other ("half"), every third ("third"); `/` written as `\\/` ("slash")."""
    if which == "slash":
        return secret.replace("/", "\\/")
    step = {"all": 1, "half": 2, "third": 3}[which]
    form = "\\u%04X" if upper else "\\u%04x"
    return "".join(form % ord(c) if i % step == 0 else c for i, c in enumerate(secret))


def escaped_echo(content: str) -> bytes:
    """A small answer whose one delta says `content` as written (escapes kept as they are)."""
    delta = _sse(_delta("@@")).replace(b'"@@"', ('"key ' + content + ' end"').encode())
    return _sse(_created()) + delta + _sse(_completed())


def readable(trace: Path, secret: str) -> set[str]:
    """What a reader decodes of `secret` from the trace, 8 characters at a time."""
    return leaked_pieces(trace, [secret])


_ESCAPES = [(key, which, upper) for key in (API_KEY, PLAIN_KEY, RELAY_KEY)
            for which in ("all", "half", "third") for upper in (False, True)]


@pytest.mark.parametrize(("key", "which", "upper"), _ESCAPES, ids=lambda v: str(v)[:8])
def test_a_secret_written_escaped_is_masked_where_a_reader_would_decode_it(
    key: str, which: str, upper: bool, tmp_path: Path
) -> None:
    """Some or all of the key's characters as `\\uXXXX` (either case): the trace holds no 8
    characters of it once decoded, keeps every length, and replays identically; the caller
    still gets the answer as it was sent."""
    data = escaped_echo(escaped(key, which, upper=upper))
    trace = tmp_path / "t.jsonl"
    result = consume_knowing(_cuts(data)[len(data) // 2], trace, [PLAIN_KEY, RELAY_KEY])
    assert result.output_text == f"key {key} end"
    assert readable(trace, key) == set()
    assert_replays_identically(trace)
    [chunks] = [[r for r in trace_lines(trace) if r.get("input") == "chunk"]]
    assert sum(len(r["data"]) for r in chunks) == len(data.decode())


def test_a_secret_escaped_twice_in_a_calls_arguments_is_masked(tmp_path: Path) -> None:
    """Arguments are JSON text inside a JSON string: the key escaped there is escaped again on
    the wire, and once more in the trace line."""
    arguments = '{"note":"%s"}' % escaped(PLAIN_KEY, "half")
    item = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f",
            "arguments": arguments, "status": "completed"}
    data = b"".join(_sse(e) for e in (
        _created(),
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": arguments},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        _completed(output=[item]),
    ))
    trace = tmp_path / "t.jsonl"
    result = consume_knowing([data], trace, [PLAIN_KEY])
    assert result.tool_calls[0]["arguments"] == arguments
    assert readable(trace, PLAIN_KEY) == set()
    assert_replays_identically(trace)


def test_a_credential_fields_value_written_escaped_keeps_its_length_once_masked(
    tmp_path: Path,
) -> None:
    """A credential-named field's whole value is masked; written with escapes, each escaped
    character becomes the escape of `*`, so the masked value still decodes to as many
    characters and the result replays identically (it used to become a run of `*` six times
    as long)."""
    token = escaped(SESSION_TOKEN, "all")
    completed = _sse(_completed(metadata={"session_token": "@@"})).replace(
        b'"@@"', f'"{token}"'.encode())
    data = _sse(_created()) + _sse(_delta("hi")) + completed
    trace = tmp_path / "t.jsonl"
    result = consume_knowing([data], trace, [])
    assert result.response is not None and result.response["metadata"]["session_token"] == SESSION_TOKEN
    assert readable(trace, SESSION_TOKEN) == set()
    assert_replays_identically(trace)


def test_a_relay_key_with_escaped_slashes_is_masked_and_stays_json(tmp_path: Path) -> None:
    data = escaped_echo(escaped(RELAY_KEY, "slash"))
    trace = tmp_path / "t.jsonl"
    result = consume_knowing([data], trace, [RELAY_KEY])
    assert result.output_text == f"key {RELAY_KEY} end"
    assert readable(trace, RELAY_KEY) == set()
    assert_replays_identically(trace)


def test_an_escaped_secret_through_run_turn_in_two_attempts(tmp_path: Path) -> None:
    """The real client: attempt 1 echoes the client's key escaped and breaks, attempt 2 says it
    whole and plain; no piece in any reading of the trace, and it replays identically."""
    first = escaped_echo(escaped(PLAIN_KEY, "all"))
    second = escaped_echo(PLAIN_KEY)
    script = Script((Reply(steps=(Chunk(first[:-40]), TransportFault("drop"))),
                     Reply(steps=(Chunk(second),))))
    trace = tmp_path / "t.jsonl"
    with ResponsesSimulator(script) as sim, _client(sim, PLAIN_KEY) as client:
        result = engine.run_turn(client, dict(SECRET_REQUEST), policy=TurnPolicy(max_stream_retries=1),
                                 trace=trace)
    assert result.outcome == "completed" and result.output_text == f"key {PLAIN_KEY} end"
    assert readable(trace, PLAIN_KEY) == set()
    assert_replays_identically(trace)


@given(st.data())
def test_hypothesis_any_escape_form_of_a_secret(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    secret = data.draw(secrets_)
    marks = data.draw(st.lists(st.booleans(), min_size=len(secret), max_size=len(secret)))
    upper = data.draw(st.booleans())
    content = "".join(("\\u%04X" if upper else "\\u%04x") % ord(c) if mark else c
                      for c, mark in zip(secret, marks))
    stream = escaped_echo(content)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=3)))
    bounds = [0, *cuts, len(stream)]
    trace = tmp_path_factory.mktemp("escaped") / "t.jsonl"
    result = consume_knowing([stream[a:b] for a, b in zip(bounds, bounds[1:])], trace, [secret])
    assert result.output_text == f"key {secret} end"
    assert readable(trace, secret) == set()
    assert_replays_identically(trace)


# -- secrets, drawn by Hypothesis ------------------------------------------------------------

_SECRET_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"
secrets_ = st.text(_SECRET_CHARS, min_size=MIN_PIECE + 4, max_size=40)
surroundings = st.text(st.sampled_from("ab é東🚀 \n\"\\"), max_size=8)


@st.composite
def echoed_streams(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """A secret the server echoes once or twice in deltas (with odd characters around it), the
    SSE bytes cut at 1 to 4 random places."""
    secret = draw(secrets_)
    texts = [draw(surroundings) + secret + draw(surroundings)]
    if draw(st.booleans()):
        split = draw(st.integers(1, len(secret) - 1))  # the second echo spans two deltas
        texts += [draw(surroundings) + secret[:split], secret[split:] + draw(surroundings)]
    data = b"".join(_sse(e) for e in (_created(), *map(_delta, texts), _completed()))
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), min_size=1, max_size=4)))
    bounds = [0, *cuts, len(data)]
    return secret, [data[a:b] for a, b in zip(bounds, bounds[1:])]


@given(echoed_streams())
def test_hypothesis_secret_echoed_and_cut_anywhere(tmp_path_factory: pytest.TempPathFactory, drawn: tuple[str, list[bytes]]) -> None:
    secret, chunks = drawn
    trace = tmp_path_factory.mktemp("drawn") / "t.jsonl"
    result = consume_knowing(chunks, trace, [secret])
    assert result.outcome == "completed"
    assert leaked_pieces(trace, [secret]) == set()
    assert_replays_identically(trace)


_ESCAPED_BYTES = st.lists(st.sampled_from([b"\\u0041", b"\\u004a", b"\\\\", b"\\/", b"\\n", b"\\"]),
                         max_size=6).map(b"".join)


@given(st.lists(st.binary(max_size=60) | _ESCAPED_BYTES, max_size=6).map(b"".join),
       st.lists(st.text(_SECRET_CHARS, min_size=MIN_SECRET, max_size=30), max_size=3))
@example(b"\\nabc", ["nabc"])  # an escaped line end, then "abc": no "nabc" to read
@example(b"\\uQRST \\u0000", ["uQRS", "u000"])  # a `u` no escape takes; one that an escape does
def test_scrubber_keeps_lengths_line_ends_and_is_idempotent(data: bytes, secrets: list[str]) -> None:
    """No secret is left in what a reader decodes from the masked bytes (the letter of an escape
    such as `\\n` stands for another character, so it is not read as text)."""
    scrubber = Scrubber(secrets)
    masked = scrubber.scrub(data)
    assert len(masked) == len(data)
    assert [i for i, b in enumerate(masked) if b in b"\r\n"] == [i for i, b in enumerate(data) if b in b"\r\n"]
    assert scrubber.scrub(masked) == masked
    read = [reading.data for reading in readings(masked)] or [masked]
    for secret in secrets:
        for piece in (pieces(secret) if len(secret) >= MIN_PIECE else {secret}):
            if not piece.isdigit():
                assert not any(piece.encode() in text for text in read), (piece, read)


def test_a_secret_shorter_than_min_secret_is_not_masked() -> None:
    """One to three characters would mask ordinary text everywhere (and a lone letter may be an
    escape's own): such a secret is ignored, as `client_secrets` ignores such a key."""
    text = b'{"delta":"a \\u0041 \\n key abc"}'
    assert Scrubber(["a", "ab", "abc", "u", "n"]).scrub(text) == text
    assert Scrubber(["abcd"]).scrub(b"x abcd y") == b"x **** y"


# -- deep nesting and odd JSON ---------------------------------------------------------------


def _deep_stream(where: str, depth: int) -> bytes:
    marker = "DEEP-PAYLOAD"
    if where == "completed":
        events = [_created(), _delta("hi"), _completed(metadata={"deep": marker})]
    elif where == "error":
        events = [{"type": "error", "error": {"message": "bad", "code": "server_error", "type": "server_error", "param": marker}}]
    else:
        events = [{"type": "codex.rate_limits", "rate_limits": {"primary": marker}}, _created(), _delta("hi"), _completed()]
    return b"".join(_sse(event) for event in events).replace(orjson.dumps(marker), nested_json(depth))


@pytest.mark.parametrize("where", ["completed", "error", "rate_limits"])
@pytest.mark.parametrize("depth", [254, 255, 600, 1020])
def test_deeply_nested_payload_is_traced_and_replays(where: str, depth: int, tmp_path: Path) -> None:
    trace = tmp_path / "deep.jsonl"
    untraced = engine.consume(_deep_stream(where, depth))
    result = engine.consume(_deep_stream(where, depth), trace=trace)
    assert result.outcome == untraced.outcome
    assert result.output_text == untraced.output_text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.jsonl"]  # no .partial file
    assert_replays_identically(trace)


@given(st.sampled_from(["completed", "error", "rate_limits"]), st.integers(200, 1023))
def test_hypothesis_any_depth_never_breaks_the_trace(tmp_path_factory: pytest.TempPathFactory, where: str, depth: int) -> None:
    folder = tmp_path_factory.mktemp("deep")
    trace = folder / "t.jsonl"
    engine.consume(_deep_stream(where, depth), trace=trace)
    assert [p.name for p in folder.iterdir()] == ["t.jsonl"]
    assert_replays_identically(trace)


def test_deep_http_error_body_through_run_turn(tmp_path: Path) -> None:
    body = b'{"error":{"message":"deep","type":"server_error","code":null,"param":null,"detail":%s}}' % nested_json(1000)
    trace = tmp_path / "http.jsonl"
    with ResponsesSimulator(Script((Reply(status=400, body=body),))) as sim, _client(sim, PLAIN_KEY) as client:
        result = engine.run_turn(client, {"model": "gpt-5", "input": "hi"}, trace=trace)
    assert result.outcome == "error"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["http.jsonl"]
    assert_replays_identically(trace)


def test_unwritable_trace_keeps_the_result(tmp_path: Path) -> None:
    """A trace that cannot be written (here its directory vanished during the turn) is logged,
    leaves no `.partial` file, and the caller still gets the result."""
    folder = tmp_path / "gone"
    folder.mkdir()
    callbacks = engine.Callbacks(on_first_delta=folder.rmdir)
    result = engine.consume(echo_stream(), callbacks=callbacks, trace=folder / "t.jsonl")
    assert result.outcome == "completed"
    assert list(tmp_path.iterdir()) == []


# -- masking alike in every attempt of a turn -------------------------------------------------


def test_a_secret_split_differently_in_two_attempts_replays(tmp_path: Path) -> None:
    from engine.strategies import Session, run_session
    from engine.simulator.shapes import assemble, completed, created, encode_part
    from machines.records import EndOfStream

    word = f"key {PLAIN_KEY} é"

    def body(*parts: Any) -> bytes:
        return b"".join(encode_part(part) for part in assemble(*parts))

    first = body(created(), [_delta(word[:9]), _delta(word[9:18]), _delta(word[18:])])
    second = body(created(), [_delta(word + " more")], completed([]))
    session = Session(
        [[Chunk(first), TransportFault("drop")], [Chunk(second), EndOfStream()]],
        TurnPolicy(max_stream_retries=1, fallback=False),
        (PLAIN_KEY,),
    )
    trace = tmp_path / "t.jsonl"
    result = run_session(session, trace=trace)
    assert result.output_text == word + " more"
    assert leaked_pieces(trace, [PLAIN_KEY]) == set()
    assert_replays_identically(trace)


def _retry_session(secret: str, attempts: list[tuple[list[str], bool]]) -> Any:
    """A turn whose attempts send deltas (`False`: then drop; `True`: then complete)."""
    from engine.strategies import Session
    from engine.simulator.shapes import assemble, completed, created, encode_part
    from machines.records import EndOfStream

    scripts = []
    for deltas, complete in attempts:
        parts: list[Any] = [created(), [_delta(piece) for piece in deltas]]
        if complete:
            parts.append(completed([]))
        body = b"".join(encode_part(part) for part in assemble(*parts))
        scripts.append([Chunk(body), EndOfStream() if complete else TransportFault("drop")])
    return Session(scripts, TurnPolicy(max_stream_retries=len(attempts) - 1, fallback=False), (secret,))


def test_a_retry_catching_up_after_a_drop_inside_the_secret_replays(tmp_path: Path) -> None:
    """The first attempt breaks after 5 characters of the key (too few to mask on their own);
    the retry says it all again: both mask those 5 characters, so the retry catches up on
    replay as it did in the turn, and the text after it is delivered."""
    from engine.strategies import run_session

    word = f"key {PLAIN_KEY} é"
    session = _retry_session(PLAIN_KEY, [([word[:6], word[6:9]], False), ([word, " more"], True)])
    trace = tmp_path / "t.jsonl"
    delivered: list[str] = []
    result = run_session(session, engine.Callbacks(on_text_delta=delivered.append), trace=trace)
    assert result.output_text == word + " more" == "".join(delivered)
    assert leaked_pieces(trace, [PLAIN_KEY]) == set()
    records = trace_lines(trace)
    texts = [r["data"] for r in records if r.get("effect") == "text_delta"]
    assert texts == ["key **", "***", "*" * (len(PLAIN_KEY) - 5) + " é", " more"]
    assert PLAIN_KEY[:5].encode() not in trace.read_bytes()  # masked in the first attempt too
    assert_replays_identically(trace)


def test_a_secret_in_two_character_deltas_is_masked_where_a_retry_sends_it_whole(tmp_path: Path) -> None:
    """No read holds 8 characters of the key when each delta carries two: masking the text as
    decoded finds it, as it finds it whole in the retry."""
    from engine.strategies import run_session

    pairs = [PLAIN_KEY[i : i + 2] for i in range(0, len(PLAIN_KEY), 2)]
    session = _retry_session(PLAIN_KEY, [(["key ", *pairs], False), ([f"key {PLAIN_KEY}", "!"], True)])
    trace = tmp_path / "t.jsonl"
    result = run_session(session, trace=trace)
    assert result.output_text == f"key {PLAIN_KEY}!"
    assert all(pair.encode() not in trace.read_bytes() for pair in pairs if len(pair) == 2)
    assert_replays_identically(trace)


def _cut(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=6)))
    bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


@st.composite
def retried_echoes(draw: st.DrawFn) -> tuple[str, str, list[tuple[list[str], bool]]]:
    """A secret the server echoes in an answer it sends again after each drop, cut into other
    deltas every time; each broken attempt stops anywhere in the answer."""
    secret = draw(secrets_)
    text = draw(surroundings) + secret + draw(surroundings) + " more"
    attempts: list[tuple[list[str], bool]] = []
    for _ in range(draw(st.integers(1, 2))):
        stop = draw(st.integers(1, len(text)))
        attempts.append((_cut(draw, text[:stop]), False))
    attempts.append((_cut(draw, text), True))
    return secret, text, attempts


@given(retried_echoes())
def test_hypothesis_a_secret_cut_differently_in_every_attempt(
    tmp_path_factory: pytest.TempPathFactory, drawn: tuple[str, str, list[tuple[list[str], bool]]]
) -> None:
    from engine.strategies import run_session

    secret, text, attempts = drawn
    trace = tmp_path_factory.mktemp("retried") / "t.jsonl"
    result = run_session(_retry_session(secret, attempts), trace=trace)
    assert result.output_text == text
    assert leaked_pieces(trace, [secret]) == set()
    assert_replays_identically(trace)


# -- an escaped secret inside the text of a turn of several attempts -----------------------------


@pytest.mark.parametrize("levels", [1, 2])
def test_a_key_the_text_itself_holds_escaped_is_masked_alike_in_a_turn_of_several_attempts(
    tmp_path: Path, levels: int
) -> None:
    """The answer's text holds the client's key as `\\u004b...` (the delta's JSON writes the
    backslash escaped: the key appears only when the text is decoded again). The text masking
    that keeps attempts alike and the scrubber of the result record must mask it the same way:
    both change the escapes' hex digits, so the replayed result matches the recorded one."""
    from engine.strategies import Session, run_session
    from machines.records import EndOfStream, HttpError

    written = "".join("\\" * levels + "u%04x" % ord(c) for c in CLIENT_KEY)
    events = [_created(), _delta("key "), _delta(written), _delta(" é")]
    body = b"".join(_sse(event) for event in events)
    session = Session(
        attempts=(
            (HttpError(status=500, body={"error": {"message": "busy", "code": "server_error"}},
                       headers=(), received_at=1700000000.0),),
            (Chunk(data=b"e"), EndOfStream()),
            (Chunk(data=body), EndOfStream()),
        ),
        policy=TurnPolicy(max_stream_retries=0, fallback=True, max_http_retries=1),
        secrets=(CLIENT_KEY,),
    )
    trace = tmp_path / "t.jsonl"
    result = run_session(session, trace=trace, reraise=False)
    assert result.output_text.startswith("key " + written[:6])
    assert leaked_pieces(trace, [CLIENT_KEY]) == set()
    assert_replays_identically(trace)
