"""Secrets never reach a trace, an error message or a log line, whatever carries them: the client's
API key and credential headers, credential-named request fields, error bodies echoing the key,
and response objects echoing the request's metadata."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import engine
from engine.simulator import shapes
from engine.log.logs import log
from engine.log.redaction import REDACTED, Scrubber, Unescaped, client_secrets, field_secrets, redact_fields, scrub
from engine.simulator.shapes import (
    SHAPES,
    assemble,
    completed,
    created,
    error_frame,
    in_progress,
    output_items,
    text_message,
    to_reply,
)
from engine.simulator.replies import Reply, Script, error_body

from support import REQUEST, run_over_http, searched_one_string_at_a_time, trace_lines

ANSWER = shapes._ANSWER

API_KEY = "sk-proj-Zq7Wb3Lr9Tx2Kc5Vn8Hd4Jm6Pf1Gs0Ya"
X_API_KEY = "xk-live-4f9a8b7c6d5e4f3a2b1c"
COOKIE = "session=cookie-secret-77aa88bb99cc"
EXTRA_BEARER = "extra-bearer-token-998877665544"
META_KEY = "meta-credential-554433221100"
META_TOKEN = "user-token-abcdefabcdef"
PLAIN_KEY = "localdev.credential.4242.xyzw"  # not shaped like any known key

CLIENT_OPTIONS = {"default_headers": {"x-api-key": X_API_KEY, "Cookie": COOKIE}}
SECRET_REQUEST = {
    **REQUEST,
    "extra_headers": {"Authorization": f"Bearer {EXTRA_BEARER}", "X-Trace": "visible-header"},
    "metadata": {"api_key": META_KEY, "user_token": META_TOKEN, "note": "visible-note"},
}
SECRETS = [API_KEY, X_API_KEY, COOKIE, "cookie-secret-77aa88bb99cc", EXTRA_BEARER, META_KEY, META_TOKEN]


def _assert_no_secret(text: str, secrets: list[str] = SECRETS) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked"


@pytest.mark.parametrize(
    "client_options",
    [CLIENT_OPTIONS, {"default_headers": {"Authorization": f"Bearer {X_API_KEY}"}}],
    ids=["x-api-key-and-cookie", "authorization"],
)
def test_trace_holds_no_client_key_header_or_credential_field(
    client_options: dict[str, object], tmp_path: Path
) -> None:
    run = run_over_http(
        SHAPES["happy_text"], tmp_path, api_key=API_KEY, client_options=client_options,
        request=SECRET_REQUEST,
    )
    assert run.result.outcome == "completed"
    text = run.trace.read_text()
    _assert_no_secret(text)
    # what is not a secret is kept, so the trace still says what was asked
    header = trace_lines(run.trace)[0]
    assert header["request"]["extra_headers"] == {"Authorization": REDACTED, "X-Trace": "visible-header"}
    assert header["request"]["metadata"] == {"api_key": REDACTED, "user_token": REDACTED, "note": "visible-note"}
    assert header["request"]["model"] == REQUEST["model"]
    # the request really went out with its metadata
    assert run.requests[0].body["metadata"]["api_key"] == META_KEY


def test_response_echoing_the_requests_metadata_does_not_leak_it(tmp_path: Path) -> None:
    """The Responses API echoes `metadata` in every response object of the stream."""
    message = text_message(ANSWER, deltas=2)
    stream = assemble(created(), in_progress(), message, completed(output_items(message)))
    for event in stream:
        if isinstance(event, dict) and "response" in event:
            event["response"] = {**event["response"], "metadata": dict(SECRET_REQUEST["metadata"])}
    run = run_over_http(
        Script((to_reply(stream),)), tmp_path, api_key=API_KEY, client_options=CLIENT_OPTIONS,
        request=SECRET_REQUEST,
    )
    assert run.result.outcome == "completed"
    assert run.result.output_text == ANSWER
    _assert_no_secret(run.trace.read_text())


@pytest.mark.parametrize("key", [API_KEY, PLAIN_KEY], ids=["sk-shaped", "plain"])
def test_error_body_echoing_the_key_is_scrubbed(key: str, tmp_path: Path) -> None:
    body = error_body(
        f"Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        type="invalid_request_error", code="invalid_api_key",
    )
    run = run_over_http(Script((Reply(status=401, body=body),)), tmp_path, api_key=key)
    error = run.result.error
    assert error is not None
    assert error["message"] == (
        f"Incorrect API key provided: {REDACTED}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    assert error["code"] == "invalid_api_key"
    _assert_no_secret(run.trace.read_text(), [key])


def test_error_frame_echoing_the_key_is_scrubbed_in_result_and_trace(tmp_path: Path) -> None:
    stream = assemble(error_frame(f"Key {PLAIN_KEY} is not entitled to model grok-4.", "permission_denied"))
    run = run_over_http(Script((to_reply(stream),)), tmp_path, api_key=PLAIN_KEY)
    assert run.result.error is not None
    assert run.result.error["message"] == f"Key {REDACTED} is not entitled to model grok-4."
    _assert_no_secret(run.trace.read_text(), [PLAIN_KEY])


def test_log_lines_hold_no_secret(tmp_path: Path) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("streamfsm")
    handler = Collect(level=logging.DEBUG)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        body = error_body(f"Incorrect API key provided: {API_KEY}.", type="invalid_request_error",
                          code="invalid_api_key")
        run_over_http(
            Script((Reply(status=401, body=body),)), tmp_path, api_key=API_KEY,
            client_options=CLIENT_OPTIONS, request=SECRET_REQUEST,
        )
        run_over_http(
            SHAPES["drop_then_retry"], tmp_path, api_key=API_KEY, client_options=CLIENT_OPTIONS,
            request=SECRET_REQUEST,
            callbacks=engine.Callbacks(on_text_delta=lambda s: 1 / 0),
        )
        log.info("probe", header=f"Bearer {API_KEY}", key=API_KEY)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    text = "\n".join(lines)
    assert '"transition"' in text and '"turn finished"' in text and '"callback raised"' in text
    assert '"probe"' in text
    _assert_no_secret(text)


# -- the rules themselves --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["api_key", "API-Key", "x-api-key", "Authorization", "authorization", "Cookie", "set-cookie",
     "access_token", "refresh_token", "client_secret", "password", "apikey", "session"],
)
def test_credential_names_are_redacted(name: str) -> None:
    assert redact_fields({"outer": [{name: "value"}]}) == {"outer": [{name: REDACTED}]}


@pytest.mark.parametrize(
    "name", ["max_output_tokens", "model", "input", "tokens", "keyboard", "monkey_business"]
)
def test_ordinary_names_are_kept(name: str) -> None:
    assert redact_fields({name: 5}) == {name: 5}


def test_scrub_shapes_and_given_secrets_idempotently() -> None:
    text = f"auth Bearer {EXTRA_BEARER} key {API_KEY} plain {PLAIN_KEY}"
    once = scrub(text, [PLAIN_KEY])
    assert once == f"auth {REDACTED} key {REDACTED} plain {REDACTED}"
    assert scrub(once, [PLAIN_KEY]) == once


def test_client_secrets_are_the_key_and_credential_headers() -> None:
    import openai

    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1", api_key=PLAIN_KEY,
        default_headers={"Authorization": f"Bearer {EXTRA_BEARER}", "X-Trace": "visible"},
    )
    with client:
        found = client_secrets(client)
    assert PLAIN_KEY in found and EXTRA_BEARER in found and f"Bearer {EXTRA_BEARER}" in found
    assert "visible" not in found


def test_field_secrets_are_the_values_of_credential_named_fields() -> None:
    request = {
        "model": "gpt-5",
        "metadata": {"api_key": META_KEY, "note": "visible-note", "token": "short"},
        "extra_headers": {"Authorization": f"Bearer {EXTRA_BEARER}"},
        "input": [{"role": "user", "content": "prompt_cache_key is not in here"}],
        "prompt_cache_key": REDACTED,
        "max_output_tokens": 1000,
    }
    assert sorted(field_secrets(request)) == sorted([META_KEY, f"Bearer {EXTRA_BEARER}", EXTRA_BEARER])
    assert field_secrets(None) == []


@pytest.mark.parametrize("one_pass", [True, False], ids=["one pass", "a string at a time"])
@pytest.mark.parametrize("filler", [b"", b"x" * 5000, b"kw" * 6000, b"keyword tokens " * 900])
@pytest.mark.parametrize(
    "name",
    [b"api_key", b"X-Api-KEY", b"access_token", b"Set-Cookie", b"password", b"passwd",
     b"Authorization", b"client_secret", b"credential", b"credentials", b"session"],
)
def test_every_credential_named_field_is_masked_in_a_stream_of_any_letters(
    name: bytes, filler: bytes, one_pass: bool
) -> None:
    """A field is found however often the letters of its name's ending appear around it, by
    either way of searching (a string at a time, rare letters are visited only where they are
    rare: the fillers make them common)."""
    data = b"data: {" + filler + b'"a":1, "' + name + b'" : "hunter22"}\n' + filler + b'\n{"' + name + b'":"x"}'
    with contextlib.nullcontext() if one_pass else searched_one_string_at_a_time():
        masked = Scrubber().scrub(data)
    assert len(masked) == len(data)
    assert b"hunter22" not in masked and b'"' + name + b'":"*"' in masked
    assert masked.replace(b"********", b"hunter22") == data.replace(b'":"x"', b'":"*"')


_ESCAPE_PIECES = [b"a", b"\\", b"\\\\", b"\\n", b'\\"', b"\\u0041", b"\\u00e9", b"\\ud83d", b"\\/", b"\\x",
                  b"u0041", b"\xc3\xa9", b"\\u00", b"\\\\u0041"]


@given(st.lists(st.sampled_from(_ESCAPE_PIECES), max_size=30).map(b"".join))
@example(b"\\\\\\u0041")  # an escaped backslash, then an escape
def test_a_reading_decodes_each_escape_and_knows_where_it_lay(data: bytes) -> None:
    """Each escape decodes as JSON decodes it, and every decoded byte says where it lay: an
    escape's bytes, its whole escape; any other byte, itself."""
    simple = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n",
              b"r": b"\r", b"t": b"\t"}
    decoded, places, at = b"", [], 0
    while at < len(data):
        two = data[at : at + 2]
        hex_digits = data[at + 2 : at + 6]
        if two == b"\\u" and len(hex_digits) == 4 and all(c in b"0123456789abcdefABCDEF" for c in hex_digits):
            piece, size = chr(int(hex_digits, 16)).encode("utf-8", "surrogatepass"), 6
        elif two[:1] == b"\\" and two[1:] in simple and len(two) == 2:
            piece, size = simple[two[1:]], 2
        else:
            piece, size = data[at : at + 1], 1
        places.append((len(decoded), len(decoded) + len(piece), at, at + size))
        decoded += piece
        at += size
    reading = Unescaped(data)
    assert reading.data == decoded
    assert reading.changed == (decoded != data)
    for start, end, first, last in places:
        assert reading.source(start, end) == (first, last)
