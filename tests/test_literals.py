"""The one-pass search of many byte strings (`engine.log.literals`) finds what a search per
string finds, and a trace is masked alike whichever way its bytes were searched."""

from __future__ import annotations

import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.log import literals
from engine.log.literals import LiteralSet
from engine.log.redaction import MIN_SECRET, Scrubber

from support import searched_one_string_at_a_time

pytest.importorskip("hyperscan", reason="the one-pass search needs Hyperscan")

#: Few letters, so that needles overlap, repeat and touch one another in the data.
_LETTERS = b'aAbB"k-\\'


def _every(data: bytes, needle: bytes) -> list[int]:
    places, at = [], data.find(needle)
    while at >= 0:
        places.append(at)
        at = data.find(needle, at + 1)
    return places


def test_the_one_pass_search_runs_here() -> None:
    assert literals.available()
    assert LiteralSet([(b"key", False)]).places(b"a key") == [[2]]


@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=4).map(lambda b: bytes(_LETTERS[x % 8] for x in b)),
                       st.booleans()), min_size=1, max_size=8),
    st.binary(max_size=300).map(lambda b: bytes(_LETTERS[x % 8] for x in b)),
)
@example([(b"abab", False), (b"ab", False)], b"abababab")
@example([(b"BEARER", True), (b"bearer", False)], b"Bearer bEaReR bearer")
def test_every_place_of_every_needle_overlapping_ones_too(needles: list[tuple[bytes, bool]], data: bytes) -> None:
    found = LiteralSet(needles).places(data)
    assert found == [
        _every(data.lower(), text.lower()) if caseless else _every(data, text) for text, caseless in needles
    ]


def test_a_needle_the_one_pass_cannot_take_leaves_the_search_to_the_caller() -> None:
    """Hyperscan's literal compiler refuses a NUL byte: the set says so (None), and a scrubber
    with such a secret masks it all the same, a string at a time."""
    assert LiteralSet([(b"a\0b", False)]).places(b"xa\0b") is None
    secret = "abc\0defgh-ijk"
    data = b'{"delta":"' + secret.encode() + b'"}'
    assert Scrubber([secret]).scrub(data) == b'{"delta":"' + b"*" * len(secret) + b'"}'


def test_threads_scan_with_one_set_at_once() -> None:
    """Each scan has its own scratch space: scans from several threads at once find what one
    finds alone."""
    scrubber = Scrubber(["sk-proj-threadsafe-secret-0123456789"])
    body = (b'data: {"delta":"sk-proj-threadsafe-secret-0123456789","api_key":"v"}\n\n' + b"x" * 5000) * 200
    expected = scrubber.scrub(body)
    results: list[bool] = []

    def scan() -> None:
        results.extend(scrubber.scrub(body) == expected for _ in range(20))

    threads = [threading.Thread(target=scan) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 80
    assert b"threadsafe" not in expected and b'"api_key":"*"' in expected


_SECRETS = ["sk-proj-Zq7Wb3Lr9Tx2Kc5Vn8Hd4Jm6Pf1Gs0Ya", "abcd", "hunter22-hunter22", "x\\y\"zzzzzz"]
_PIECES = [
    b"sk-proj-Zq7Wb3Lr9Tx2", b"Kc5Vn8Hd4Jm6Pf1Gs0Ya", b"abcd", b"hunter22-", b"hunter22", b"x\\\\y\\\"zzzz",
    b"sk-", b"rk-", b"xai-", b"sess-", b"0123456789abcdefghij", b"Bearer ", b"BEARER\t", b"bearer",
    b'"api_key"', b'"Token"', b'"client_secret" : ', b'"credentials":', b'"session"', b'"passwd"',
    b'"Authorization":"', b'"cookie"', b":", b'"', b"\\u0041", b"\\u0073k-", b"\\\\", b"\n", b" ",
    b"key", b"kw", b"tok", b"data: {", b"}", b"\xe2\x82\xac",
]


@settings(max_examples=300)
@given(
    st.lists(st.sampled_from(_PIECES) | st.binary(max_size=12), max_size=40).map(b"".join),
    st.lists(st.sampled_from(_SECRETS) | st.text(min_size=MIN_SECRET, max_size=12), max_size=3),
    st.booleans(),
)
@example(b'"api_key":"abcdabcd" Bearer hunter22-hunter22 sk-proj-Zq7Wb3Lr9Tx2', ["abcd"], True)
def test_a_scrubber_masks_alike_whichever_way_it_searches(data: bytes, secrets: list[str], fields: bool) -> None:
    scrubber = Scrubber(secrets)
    one_pass = scrubber.spans(data, fields=fields), scrubber.scrub(data, fields=fields)
    with searched_one_string_at_a_time():
        assert (scrubber.spans(data, fields=fields), scrubber.scrub(data, fields=fields)) == one_pass
