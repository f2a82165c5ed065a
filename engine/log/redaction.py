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
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

__all__ = [
    "REDACTED",
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
    if isinstance(key, str) and len(key) >= 4:
        found.append(key)
    headers = getattr(client, "default_headers", None) or {}
    for name, value in dict(headers).items():
        if isinstance(value, str) and is_secret_name(str(name)) and len(value) >= 4:
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

