"""Keeping secrets out of traces, log lines and error messages.

Two rules, applied wherever streamfsm writes something down:

- a field or header *named* like a credential (`api_key`, `Authorization`, `Cookie`,
  `x-api-key`, `access_token`, `client_secret`, ...) has its value replaced by `[redacted]`
  (`redact_fields`); counters such as `max_output_tokens` are not credentials and are kept;
- a string *shaped* like a credential (`sk-...` keys, `Bearer ...` values) or equal to a secret the
  caller's client holds is replaced wherever it appears (`scrub`). The values of the request's
  credential-named fields count as such secrets too (`field_secrets`): servers echo parts of the
  request (the Responses API echoes `metadata` in every response object of the stream).

Both are idempotent, so a trace written from redacted records replays to the same records.

Traces use a third form, `Scrubber`: it masks bytes in place with `*` (same length, so every
position and chunk boundary stays where it was) and works on a whole byte stream, so that a
secret the server echoes split across two network reads, or inside a read that is not valid UTF-8
on its own, is found all the same. It masks the given secrets and every piece of 8 or more
characters of one (`MIN_PIECE`), credential shapes, and the string values of credential-named
JSON fields.

It masks what a reader can decode, not only the bytes as they are: a server may write a secret in
a JSON string with some or all of its characters escaped (`\\u0073k-...`), and a trace line
escapes a string once more (a call's arguments are JSON text inside JSON). So the scrubber also
reads the bytes with their JSON string escapes decoded, once, twice and three times
(`readings`), looks for secrets there, and masks each character it finds where the bytes hold
it: a character written as such becomes `*`, one written as a `\\uXXXX` escape (behind any
number of escaped backslashes) becomes the escape of `*` (`\\u002a`, the same length, so it still
decodes to one character and a replay of the masked bytes decodes the same text); a character
written with a two-character escape (`\\/`) stays as it is (one character on its own is no
piece of a secret).

Finding is one pass over the bytes: every byte string a scrubber looks for (its secrets' short
forms and 4-byte grams, where a credential shape starts, how a credential-named field's name
ends) is found at once by `engine.log.literals` (Hyperscan); only the places found are looked
at further. Where that cannot run, each string is searched on its own (the field endings from a
rare byte of theirs where it is rare): the same places, more slowly.
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Callable, Final, Iterable

import attrs

from engine.log.literals import LiteralSet

__all__ = [
    "MASK",
    "MIN_PIECE",
    "MIN_SECRET",
    "REDACTED",
    "Scrubber",
    "Unescaped",
    "readings",
    "is_secret_name",
    "redact_fields",
    "scrub",
    "scrub_line",
    "client_secrets",
    "field_secrets",
]

#: Shortest field value taken for a secret to scrub everywhere; shorter values (flags, tiny ids)
#: would replace ordinary text and are still redacted where their field is.
MIN_FIELD_SECRET = 8

#: Shortest secret a `Scrubber` masks (a client's key or header counts from this length too, in
#: `client_secrets`): one to three characters would mask ordinary text everywhere, and a single
#: letter may be an escape's own (`\\u`, `\\n`), which no masking can change and keep the JSON.
MIN_SECRET = 4

REDACTED = "[redacted]"

_SECRET_NAME = re.compile(
    r"(?:^|[-_.\s])(?:api[-_]?key|key|token|secret|password|passwd|authorization|"
    r"cookie|set-cookie|credentials?|session)$|^(?:apikey|authorization|cookie)$",
    re.IGNORECASE,
)
_SECRET_SHAPE = re.compile(
    r"\b(?:sk|rk|pk|xai|sess)-[A-Za-z0-9_\-]{16,}|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*"
)


def is_secret_name(name: str) -> bool:
    """Whether a field or header called `name` holds a credential (`api_key`, `Authorization`,
    `x-api-key`, `access_token`, ...); counters such as `max_output_tokens` do not."""
    return bool(_SECRET_NAME.search(name))


def redact_fields(value: Any) -> Any:
    """A copy of JSON-like data with credential-named fields' values replaced."""
    return _rebuild(value, _same, redact_names=True)


def _scrub_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return _SECRET_SHAPE.sub(REDACTED, text) if ("-" in text or " " in text) else text


def scrub(value: Any, secrets: Iterable[str] = ()) -> Any:
    """Replace credential-shaped substrings (and the given secrets) in strings, at any depth."""
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    listed = list(secrets)
    return _rebuild(value, lambda item: _scrub_text(item, listed) if isinstance(item, str) else item)


def _same(item: Any) -> Any:
    return item


class _Leave:
    """On `_rebuild`'s work stack: the walk leaves the container with this id."""

    __slots__ = ("ident",)

    def __init__(self, ident: int) -> None:
        self.ident = ident


def _rebuild(value: Any, leaf: Callable[[Any], Any], *, redact_names: bool = False) -> Any:
    """A copy of nested dicts, lists and tuples (as lists) with `leaf` applied to every other
    value and, with `redact_names`, credential-named fields' values replaced. Iterative, so any
    depth of nesting a server sends is fine; a container that contains itself becomes REDACTED
    where it recurs."""
    root: list[Any] = [None]
    inside: set[int] = set()
    work: list[Any] = [(value, root, 0)]
    while work:
        step = work.pop()
        if type(step) is _Leave:
            inside.discard(step.ident)
            continue
        item, target, slot = step
        if isinstance(item, (dict, list, tuple)):
            if id(item) in inside:
                target[slot] = REDACTED
                continue
            inside.add(id(item))
            work.append(_Leave(id(item)))
            if isinstance(item, dict):
                copy: dict[Any, Any] = {}
                for key, inner in item.items():
                    if redact_names and isinstance(key, str) and is_secret_name(key):
                        copy[key] = REDACTED
                    else:
                        copy[key] = None
                        work.append((inner, copy, key))
                target[slot] = copy
            else:
                items: list[Any] = [None] * len(item)
                work.extend((inner, items, index) for index, inner in enumerate(item))
                target[slot] = items
        else:
            target[slot] = leaf(item)
    return root[0]


_SECRET_SHAPE_BYTES = re.compile(_SECRET_SHAPE.pattern.encode())
#: Every match of `_SECRET_SHAPE` contains one of these.
_SHAPE_MARKERS = (b"sk-", b"rk-", b"pk-", b"xai-", b"sess-", b"earer", b"EARER")


def scrub_line(line: bytes, secrets: Iterable[str] = ()) -> bytes:
    """`scrub` for one serialized JSON line: secrets and credential shapes replaced in place.

    Credentials contain no character that JSON escapes, so they appear in the line verbatim."""
    for secret in secrets:
        encoded = secret.encode()
        if encoded and encoded in line:
            line = line.replace(encoded, REDACTED.encode())
    if not any(marker in line for marker in _SHAPE_MARKERS):
        return line  # nothing shaped like a credential: skip the regex (the common case)
    return _SECRET_SHAPE_BYTES.sub(REDACTED.encode(), line)


def client_secrets(client: Any) -> list[str]:
    """The secrets an openai client holds: its API key and credential-named default headers."""
    found: list[str] = []
    key = getattr(client, "api_key", None)
    if isinstance(key, str) and len(key) >= MIN_SECRET:
        found.append(key)
    headers = getattr(client, "default_headers", None) or {}
    for name, value in dict(headers).items():
        if isinstance(value, str) and is_secret_name(str(name)) and len(value) >= MIN_SECRET:
            found.append(value)
            if value.lower().startswith("bearer "):
                found.append(value[7:])
    return sorted(set(found), key=len, reverse=True)


def field_secrets(value: Any) -> list[str]:
    """The string values of credential-named fields anywhere in JSON-like data (a request)."""
    found: set[str] = set()
    work = [value]
    seen: set[int] = set()
    while work:
        item = work.pop()
        if isinstance(item, (dict, list, tuple)):
            if id(item) in seen:
                continue
            seen.add(id(item))
        if isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and is_secret_name(key) and isinstance(inner, str):
                    if len(inner) >= MIN_FIELD_SECRET and inner != REDACTED:
                        found.add(inner)
                        if inner.lower().startswith("bearer ") and len(inner) - 7 >= MIN_FIELD_SECRET:
                            found.add(inner[7:])
                else:
                    work.append(inner)
        elif isinstance(item, (list, tuple)):
            work.extend(item)
    return sorted(found, key=len, reverse=True)


# -- masking in place, for traces -----------------------------------------------------------------

#: What each byte of a secret becomes in a trace: the same number of these, so positions, lengths
#: and chunk boundaries do not move and a replay of the masked bytes decides as the turn did.
MASK = "*"

#: Every piece of a secret this long or longer is masked wherever it appears; shorter secrets are
#: masked only whole.
MIN_PIECE = 8

_MASK_BYTE = ord(MASK)
_CR, _LF, _QUOTE, _BACKSLASH = 13, 10, ord('"'), ord("\\")

#: `_SECRET_SHAPE` for raw bytes: `Bearer` is followed by spaces or tabs only, so a mask never
#: swallows a line end of the event stream.
_SHAPE_MASK = re.compile(
    rb"\b(?:sk|rk|pk|xai|sess)-[A-Za-z0-9_\-]{16,}|(?i:bearer)[ \t]+[A-Za-z0-9._~+/\-]{8,}=*"
)
#: Where a credential shape can start (case-sensitive, in the data as it is).
_SHAPE_STARTS = (b"sk-", b"rk-", b"pk-", b"xai-", b"sess-")

#: How the name of every credential-named field ends, lower-cased, with its closing quote: a
#: field name `_SECRET_NAME` accepts ends with one of these words.
_FIELD_ENDS = (
    b'key"', b'token"', b'secret"', b'password"', b'passwd"', b'authorization"', b'cookie"',
    b'credential"', b'credentials"', b'session"',
)
#: The endings found from a byte of theirs that is rare in a stream's JSON and text (a search
#: for one byte is many times faster than one for several): the byte, then each ending with
#: where the byte sits in it.
_ANCHORED: Final = tuple(
    (anchor, tuple((ending, ending.index(anchor)) for ending in _FIELD_ENDS if anchor in ending))
    for anchor in (b"k", b"w", b"z")
)
#: The endings with no such byte, searched for: (what is searched for, and the tails that end
#: an ending after it), `credential` once for `credential"` and `credentials"`.
_SEARCHED: Final = ((b'secret"', (b"",)), (b"credential", (b'"', b's"')), (b'session"', (b"",)))
#: Where a `Bearer ...` value can start (in any case).
_BEARER: Final = b"bearer"


@attrs.frozen(slots=True)
class _Places:
    """Where some bytes hold what a `Scrubber` looks for: each short secret's occurrences
    (`wholes`, in the order of `Scrubber._whole`; overlapping ones too), each gram's, where a
    credential shape may start and where a credential-named field's name may end (its closing
    quote). Offsets only: what is there is checked afterwards."""

    wholes: list[list[int]]
    grams: dict[bytes, list[int]]
    shape_starts: list[int]
    field_closes: list[int]


def _every(data: bytes, needle: bytes) -> list[int]:
    """The start of every occurrence of `needle` in `data`, overlapping ones too, increasing."""
    places = []
    at = data.find(needle)
    while at >= 0:
        places.append(at)
        at = data.find(needle, at + 1)
    return places


#: Longest field name looked at (a longer one is not taken for a credential's name).
_MAX_NAME = 256
_SPACE = b" \t\r\n"
#: A value `redact_fields` already replaced stays as it reads.
_REDACTED_BYTES = REDACTED.encode()


class Scrubber:
    """Masks secrets in bytes, in place and length for length (`MASK`).

    `scrub(data)` takes any bytes: the whole body of one attempt (every chunk of it, joined, so
    that a secret split across two reads is found; cut again at the same places afterwards) or
    serialized JSON lines (several at once). It masks:

    - each of `secrets` of `MIN_SECRET` characters or more (the client's API key, credential headers, the request's credential-named
      field values) and every piece of one that is `MIN_PIECE` characters or longer;
    - credential shapes (`sk-...` keys, `Bearer ...` values);
    - the string value of every JSON field whose name is a credential's (`is_secret_name`), of any
      length (except `REDACTED`, which `redact_fields` put there).

    It finds them in the bytes as they are and in what a reader decodes from them (`readings`:
    JSON string escapes decoded up to `ESCAPE_LEVELS` times), masking an escaped character with
    the escape of `*` (see the module docstring).

    Line ends are never masked. A piece made only of digits is left alone outside a JSON string
    (it is a number that happens to share eight digits with a secret, and masking it would break
    the JSON). Masking is idempotent: scrubbed bytes scrub to themselves."""

    __slots__ = ("_whole", "_grams", "_literals")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[bytes] = set()
        for secret in secrets:
            if not isinstance(secret, str) or len(secret) < MIN_SECRET:
                continue
            forms.add(secret.encode("utf-8", "surrogatepass"))
            escaped = _json_escaped(secret)
            if escaped is not None:
                forms.add(escaped)
        #: secrets shorter than MIN_PIECE: masked whole
        self._whole = sorted((form for form in forms if len(form) < MIN_PIECE), key=len, reverse=True)
        #: (gram, secret, offset) for every 4-byte gram of a longer secret at an offset that is a
        #: multiple of 4: any piece of MIN_PIECE bytes or more contains one of them
        self._grams: list[tuple[bytes, bytes, int]] = [
            (form[offset : offset + 4], form, offset)
            for form in sorted(form for form in forms if len(form) >= MIN_PIECE)
            for offset in range(0, len(form) - 3, 4)
        ]
        #: every byte string `spans` looks for, found in one pass where that can run
        #: (`engine.log.literals`): the short secrets, each distinct gram, the shapes' starts,
        #: `bearer` and the field endings (these two in any case)
        self._literals = LiteralSet(
            [(secret, False) for secret in self._whole]
            + [(gram, False) for gram in dict.fromkeys(gram for gram, _, _ in self._grams)]
            + [(marker, False) for marker in _SHAPE_STARTS]
            + [(_BEARER, True)]
            + [(ending, True) for ending in _FIELD_ENDS]
        )

    def scrub(self, data: bytes, *, fields: bool = True) -> bytes:
        """`data` with every secret masked; the same object when there is nothing to mask.
        `fields=False`: `data` holds no JSON field named like a credential (lines whose only
        field names are known), so none is looked for."""
        spans = self.spans(data, fields=fields)
        if spans and _BACKSLASH_BYTE in data:
            spans = _outside_escapes(data, spans)
        escaped = self.escaped_edits(data, spans) if _BACKSLASH_BYTE in data else []
        if not spans and not escaped:
            return data
        out = bytearray(data)
        for start, end in spans:
            if _BACKSLASH in data[start:end]:
                _mask_escaped_text(out, data, start, end)
                continue
            out[start:end] = MASK.encode() * (end - start)
            if b"\n" in data[start:end] or b"\r" in data[start:end]:
                for index in range(start, end):
                    if data[index] in (_CR, _LF):
                        out[index] = data[index]
        for start, replacement in escaped:
            out[start : start + len(replacement)] = replacement
        return bytes(out)

    def escaped_edits(
        self, data: bytes, spans: list[tuple[int, int]] | None = None
    ) -> list[tuple[int, bytes]]:
        """Where `data` holds a secret a reader finds only once JSON string escapes are decoded:
        (offset, replacement bytes) for each of its characters outside `spans` (what masking the
        bytes as they are covers already), sorted."""
        covered = spans if spans is not None else self.spans(data)
        starts = [start for start, _ in covered]
        edits: dict[int, bytes] = {}
        for reading in readings(data):
            for start, end in self.spans(reading.data, fields=False):
                for at, size in _characters(reading.data, start, end):
                    first, last = reading.source(at, at + size)
                    index = bisect.bisect_right(starts, first) - 1
                    if index >= 0 and covered[index][1] > first:
                        continue  # masked with the bytes as they are
                    edit = _masked_form(data[first:last], reading.data[at : at + size])
                    if edit is not None:
                        edits[edit[0] + first] = edit[1]
        return sorted(edits.items())

    def spans(self, data: bytes, *, fields: bool = True) -> list[tuple[int, int]]:
        """The (start, end) byte ranges of `data` to mask, sorted and merged; without `fields`,
        only secrets and credential shapes (for text that is not JSON as written, such as the
        text a stream's deltas carry, decoded)."""
        found: list[tuple[int, int]] = []
        places = self._places(data)
        self._secret_spans(data, places, found)
        _shape_spans(data, places.shape_starts, found)
        if fields:
            _field_spans(data, places.field_closes, found)
        if not found:
            return found
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            last_start, last_end = merged[-1]
            if start <= last_end:
                merged[-1] = (last_start, max(last_end, end))
            else:
                merged.append((start, end))
        return merged

    def _places(self, data: bytes) -> _Places:
        """Where `data` holds what `spans` looks for: from one pass over it where that can run,
        else from a search per byte string (a rare byte visited where it is rare)."""
        found = self._literals.places(data)
        if found is None:
            lowered = data.lower()
            return _Places(
                [_every(data, secret) for secret in self._whole],
                {gram: _every(data, gram) for gram in dict.fromkeys(g for g, _, _ in self._grams)},
                _shape_starts(data) + _every(lowered, _BEARER),
                _name_ends(lowered),
            )
        wholes = len(self._whole)
        grams = list(dict.fromkeys(gram for gram, _, _ in self._grams))
        shapes = wholes + len(grams)
        fields = shapes + len(_SHAPE_STARTS) + 1
        return _Places(
            found[:wholes],
            dict(zip(grams, found[wholes:shapes])),
            [at for places in found[shapes:fields] for at in places],
            [at + len(ending) - 1 for ending, places in zip(_FIELD_ENDS, found[fields:]) for at in places],
        )

    def _secret_spans(self, data: bytes, places: _Places, found: list[tuple[int, int]]) -> None:
        for secret, ats in zip(self._whole, places.wholes):
            end = 0
            for at in ats:  # every occurrence, overlapping ones too: one mask from each end on
                if at >= end:
                    end = at + len(secret)
                    found.append((at, end))
        size = len(data)
        for gram, secret, offset in self._grams:
            for at in places.grams[gram]:
                # the gram sits at `offset` of the secret: extend the match both ways
                left = 0
                while left < offset and at - left > 0 and data[at - left - 1] == secret[offset - left - 1]:
                    left += 1
                right = at + 4
                tail = offset + 4
                while tail < len(secret) and right < size and data[right] == secret[tail]:
                    right += 1
                    tail += 1
                start = at - left
                if right - start >= MIN_PIECE and (
                    not data[start:right].isdigit() or _inside_string(data, start)
                ):
                    found.append((start, right))


# -- what a reader decodes ---------------------------------------------------------------------------

#: How many times `readings` decodes JSON string escapes: a server's JSON string (once), inside a
#: trace line (twice), a call's arguments, JSON text in a JSON string, in a trace line (three).
ESCAPE_LEVELS: Final = 3
_BACKSLASH_BYTE: Final = b"\\"
#: A JSON string escape: `\uXXXX` (group 1: the hex digits) or a two-character one (group 2).
_ESCAPE: Final = re.compile(rb'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_SIMPLE_ESCAPES: Final = {
    b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r",
    b"t": b"\t",
}
#: The escape of `MASK`, less its backslash and `u`: what an escaped character's hex digits
#: become.
_MASK_HEX: Final = b"%04x" % ord(MASK)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def _decoded_escape(match: re.Match[bytes]) -> bytes:
    """What one JSON string escape (a match of `_ESCAPE`) decodes to, in UTF-8."""
    hex_digits = match.group(1)
    if hex_digits is not None:
        return chr(int(hex_digits, 16)).encode("utf-8", "surrogatepass")
    return _SIMPLE_ESCAPES[match.group(2)]


class Unescaped:
    """Bytes with their JSON string escapes decoded once (`data`), and where each decoded byte
    came from in the bytes read (`source`). A `\\uXXXX` escape decodes to its character in UTF-8
    (a lone surrogate as surrogate-escaped bytes); `inner` is the reading this one was made from
    (None: the bytes themselves).

    The decoded bytes come from one substitution; where each escape lay is worked out only when
    a place is asked for (`source`: a secret was found in the reading, which is rare)."""

    __slots__ = ("data", "inner", "_read_from", "_escapes")

    def __init__(self, data: bytes, inner: Unescaped | None = None) -> None:
        self.inner = inner
        self._read_from = data
        self.data = _ESCAPE.sub(_decoded_escape, data)
        #: per escape: where its decoded bytes start and end here, where it was in the bytes
        #: read (`_places`, made on first use)
        self._escapes: tuple[list[int], list[int], list[int], list[int]] | None = None

    def _places(self) -> tuple[list[int], list[int], list[int], list[int]]:
        if self._escapes is None:
            at: list[int] = []
            ends: list[int] = []
            starts_read: list[int] = []
            ends_read: list[int] = []
            decoded = read = 0
            for match in _ESCAPE.finditer(self._read_from):
                start, end = match.span()
                decoded += start - read
                size = len(_decoded_escape(match))
                at.append(decoded)
                ends.append(decoded + size)
                starts_read.append(start)
                ends_read.append(end)
                decoded += size
                read = end
            self._escapes = at, ends, starts_read, ends_read
        return self._escapes

    @property
    def changed(self) -> bool:
        """Whether decoding changed anything (the bytes held an escape: each decodes to fewer
        bytes than it takes)."""
        return len(self.data) != len(self._read_from)

    def _read(self, start: int, end: int) -> tuple[int, int]:
        """Where the decoded bytes `start:end` (whole characters) were in the bytes read."""
        at, ends, starts_read, ends_read = self._places()
        index = bisect.bisect_right(at, start) - 1
        if index >= 0 and start < ends[index]:
            first = starts_read[index]
        else:
            first = start if index < 0 else ends_read[index] + start - ends[index]
        index = bisect.bisect_right(at, end - 1) - 1
        if index >= 0 and end - 1 < ends[index]:
            last = ends_read[index]
        else:
            last = end if index < 0 else ends_read[index] + end - ends[index]
        return first, last

    def source(self, start: int, end: int) -> tuple[int, int]:
        """Where the decoded bytes `start:end` (whole characters) were in the original bytes,
        through every reading this one was made from."""
        first, last = self._read(start, end)
        if self.inner is not None:
            return self.inner.source(first, last)
        return first, last


def readings(data: bytes, levels: int = ESCAPE_LEVELS) -> list[Unescaped]:
    """What a reader decodes from `data`: its JSON string escapes decoded once, then again, up
    to `levels` times, while there are escapes left to decode (empty when `data` holds none)."""
    out: list[Unescaped] = []
    inner: Unescaped | None = None
    current = data
    for _ in range(levels):
        if _BACKSLASH_BYTE not in current:
            break
        reading = Unescaped(current, inner)
        if not reading.changed:
            break
        out.append(reading)
        inner, current = reading, reading.data
    return out


def _outside_escapes(data: bytes, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`spans` less a first byte that an escape's backslash stands before (`\\/` stays an
    escape: masking its `/` would leave `\\*`, which is no JSON)."""
    out = []
    for start, end in spans:
        backslashes = 0
        while start - backslashes > 0 and data[start - backslashes - 1] == _BACKSLASH:
            backslashes += 1
        if backslashes % 2:
            start += 1
        if start < end:
            out.append((start, end))
    return out


def _mask_escaped_text(out: bytearray, data: bytes, start: int, end: int) -> None:
    """Mask `data[start:end]` in `out` as JSON string content: each byte of a character written
    as such becomes `*`, a `\\uXXXX` escape the escape of `*` (one character either way, so the
    masked string decodes to as many characters as the secret), another escape stays (a quote
    or a backslash on its own gives nothing away), a line end stays."""
    at = start
    while at < end:
        byte = data[at]
        if byte == _BACKSLASH and at + 1 < end:
            if data[at + 1] == ord("u") and at + 6 <= end and all(b in _HEX for b in data[at + 2 : at + 6]):
                out[at + 2 : at + 6] = _MASK_HEX
                at += 6
            else:
                at += 2
            continue
        if byte not in (_CR, _LF):
            out[at] = _MASK_BYTE
        at += 1


def _characters(data: bytes, start: int, end: int) -> Iterable[tuple[int, int]]:
    """(offset, size) of each UTF-8 character of `data` that starts in `start:end`."""
    at = start
    while at < end:
        byte = data[at]
        size = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        if 0x80 <= byte < 0xC0:  # a continuation byte: not a character of its own
            size = 1
        yield at, min(size, len(data) - at)
        at += size


def _masked_form(raw: bytes, character: bytes) -> tuple[int, bytes] | None:
    """How a character read as `character` and written as `raw` is masked: (offset in `raw`,
    the bytes written there), or None when it stays (a two-character escape)."""
    if raw == character:
        return 0, MASK.encode() * len(raw)
    if (
        len(raw) >= 6 and raw[-5] == ord("u") and _BACKSLASH_BYTE in raw[:-5]
        and all(byte in _HEX for byte in raw[-4:])
    ):
        return len(raw) - 4, _MASK_HEX
    return None


def _json_escaped(secret: str) -> bytes | None:
    """How `secret` reads inside a JSON string when that differs from its UTF-8 bytes."""
    import json

    escaped = json.dumps(secret, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass")
    return escaped if escaped != secret.encode("utf-8", "surrogatepass") else None


def _inside_string(data: bytes, position: int) -> bool:
    """Whether `position` lies inside a JSON string on its line (quotes counted from the line's
    start, escaped ones skipped). A very long line is taken to be one string."""
    line_start = data.rfind(b"\n", 0, position) + 1
    if position - line_start > 1 << 20:
        return True
    inside = False
    at = data.find(b'"', line_start, position)
    while at >= 0:
        backslashes = 0
        while at - backslashes - 1 >= line_start and data[at - backslashes - 1] == _BACKSLASH:
            backslashes += 1
        if backslashes % 2 == 0:
            inside = not inside
        at = data.find(b'"', at + 1, position)
    return inside


def _shape_spans(data: bytes, starts: list[int], found: list[tuple[int, int]]) -> None:
    """The credential shapes that start at `starts` (where a shape may start, in any order)."""
    for start in starts:
        match = _SHAPE_MASK.match(data, start)
        if match is not None:
            found.append(match.span())


#: Past this many dashes, `_shape_starts` looks for each shape's start on its own.
_DASHES = 4096


def _shape_starts(data: bytes) -> list[int]:
    """Where a credential shape may start (`_SHAPE_STARTS`), in any order. Every start ends with
    a dash, and dashes are rare in a stream: looking at each dash (a search for one byte, many
    times faster than one for several) finds them all in one pass instead of one per shape."""
    starts: list[int] = []
    dash = data.find(b"-")
    seen = 0
    while dash >= 0:
        seen += 1
        if seen > _DASHES:  # a stream full of dashes: one search per shape instead
            starts = []
            for marker in _SHAPE_STARTS:
                at = data.find(marker)
                while at >= 0:
                    starts.append(at)
                    at = data.find(marker, at + 1)
            return starts
        for marker in _SHAPE_STARTS:
            start = dash + 1 - len(marker)
            if start >= 0 and data.startswith(marker, start):
                starts.append(start)
        dash = data.find(b"-", dash + 1)
    return starts


def _field_spans(data: bytes, closes: list[int], found: list[tuple[int, int]]) -> None:
    """The string values of credential-named fields (`"name": "value"`, JSON as it is written,
    not inside another JSON string), from where a credential-named field's name may end
    (`closes`: the offsets of the closing quotes of `_FIELD_ENDS`, in any order)."""
    size = len(data)
    for close in closes:
        open_ = data.rfind(b'"', max(0, close - _MAX_NAME), close)
        if open_ < 0 or (open_ > 0 and data[open_ - 1] == _BACKSLASH):
            continue
        name = data[open_ + 1 : close]
        if b"\\" in name or b"\n" in name or not is_secret_name(name.decode("latin-1")):
            continue
        cursor = close + 1
        while cursor < size and data[cursor] in _SPACE:
            cursor += 1
        if cursor >= size or data[cursor] != ord(":"):
            continue
        cursor += 1
        while cursor < size and data[cursor] in _SPACE:
            cursor += 1
        if cursor >= size or data[cursor] != _QUOTE:
            continue
        start = cursor + 1
        end = start
        while end < size:
            byte = data[end]
            if byte == _QUOTE or byte in (_CR, _LF):
                break
            end += 2 if byte == _BACKSLASH else 1
        end = min(end, size)
        if end > start and data[start:end] != _REDACTED_BYTES:
            found.append((start, end))


def _name_ends(lowered: bytes) -> list[int]:
    """Where each of `_FIELD_ENDS` ends in `lowered` (the offset of its closing quote), in no
    order. The endings with a rare byte are found by visiting each of that byte's places; where
    the byte is not rare (more places than the searches it spares would cost), and for the
    other endings, by one search per ending."""
    closes: list[int] = []
    searched = list(_SEARCHED)
    budget = max(64, len(lowered) >> 10)  # a search costs about as much as visiting this many
    for anchor, endings in _ANCHORED:
        found = _anchored_ends(lowered, anchor, endings, budget * len(endings))
        if found is None:
            searched.extend((ending, (b"",)) for ending, _ in endings)
        else:
            closes.extend(found)
    for stem, tails in searched:
        at = lowered.find(stem)
        while at >= 0:
            after = at + len(stem)
            for tail in tails:
                if lowered.startswith(tail, after):
                    closes.append(after + len(tail) - 1)
            at = lowered.find(stem, at + 1)
    return closes


def _anchored_ends(
    lowered: bytes, anchor: bytes, endings: tuple[tuple[bytes, int], ...], budget: int
) -> list[int] | None:
    """The closing quotes of `endings` found from each place of `anchor`; None past `budget`
    places. At each place, one test of what follows it (the endings from their anchor on)
    rules out nearly every place."""
    closes: list[int] = []
    tails = tuple(ending[offset:] for ending, offset in endings)
    at = lowered.find(anchor)
    seen = 0
    while at >= 0:
        seen += 1
        if seen > budget:
            return None
        if lowered.startswith(tails, at):
            for ending, offset in endings:
                if at >= offset and lowered.startswith(ending, at - offset):
                    closes.append(at - offset + len(ending) - 1)
        at = lowered.find(anchor, at + 1)
    return closes
