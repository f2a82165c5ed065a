"""Every place of a few dozen byte strings in megabytes of bytes, in one pass.

Theory of operation
===================

Masking a trace (`engine.log.redaction.Scrubber`) looks for the same few dozen byte strings in
every attempt's whole body: the 4-byte pieces of each secret, the starts of credential shapes
(`sk-`, `bearer`), the endings of credential-named JSON fields (`key"`, `token"`, ...). One
`bytes.find` per string costs 1.3 to 2 ms over a 4 MB body whichever string it is (the bytes of
`secret"` or `bearer` are common in a stream's JSON and text), so a body searched for a client's
API key (twelve pieces) and the field endings took 30 ms and more, several times what the turn
itself cost.

`LiteralSet(needles)` finds them all at once with Hyperscan (the `hyperscan` package: Intel's
multi-literal matcher, SIMD, every string in one pass over the bytes; about 1.2 ms for 29
strings over 4 MB here). `places(data)` gives, for each needle, the start of every occurrence
(overlapping ones too) in increasing order: what a loop of `data.find(needle, at + 1)` gives
(over `data.lower()` for a needle that ignores ASCII case).

Hyperscan is optional: where it is not installed, cannot run on this machine, or cannot take a
needle (its literal compiler refuses a NUL byte), `places` returns None and the caller searches
the way it always could (`engine.log.redaction` keeps that way and chooses it then). Both ways
find the same places; a property test compares them on generated bodies.

A compiled set is kept per distinct tuple of needles (a few per process: one per set of secrets);
every scan gets its own scratch space, so threads may scan with one set at once.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Final, Sequence

__all__ = ["LiteralSet", "Needle", "available"]

#: A byte string to find, and whether ASCII case is ignored (a needle given in lower case then
#: matches any case, as it would in `data.lower()`).
Needle = tuple[bytes, bool]

#: The `hyperscan` module, False where it cannot be used; None before the first look.
_ENGINE: ModuleType | bool | None = None

#: How many compiled sets are kept (each one set of secrets' needles).
_KEPT: Final = 32


def _engine() -> ModuleType | None:
    global _ENGINE
    if _ENGINE is None:
        try:
            import hyperscan
        except Exception:  # not installed, or its library cannot load here
            _ENGINE = False
        else:
            _ENGINE = hyperscan
    return _ENGINE if isinstance(_ENGINE, ModuleType) else None


def available() -> bool:
    """Whether the one-pass search can run here (Hyperscan installed and loading)."""
    return _engine() is not None


@functools.lru_cache(maxsize=_KEPT)
def _compiled(needles: tuple[Needle, ...]) -> Any | None:
    """The Hyperscan database of `needles`; None when it cannot be made (no Hyperscan, a needle
    it cannot take, a machine it cannot run on)."""
    engine = _engine()
    if engine is None or not needles or any(not text or b"\0" in text for text, _ in needles):
        return None
    try:
        database = engine.Database(mode=engine.HS_MODE_BLOCK)
        database.compile(
            expressions=[text for text, _ in needles],
            ids=list(range(len(needles))),
            flags=[engine.HS_FLAG_CASELESS if caseless else 0 for _, caseless in needles],
            literal=True,
        )
    except Exception:  # e.g. a CPU without the instructions Hyperscan needs
        return None
    return database


class LiteralSet:
    """A fixed set of needles, found together (see the module's doc)."""

    __slots__ = ("needles", "_sizes")

    def __init__(self, needles: Sequence[Needle]) -> None:
        self.needles = tuple(needles)
        self._sizes = [len(text) for text, _ in self.needles]

    def places(self, data: bytes) -> list[list[int]] | None:
        """For each needle (in order), the start of each of its occurrences in `data`, increasing;
        None when the one-pass search cannot run (search each needle on its own then)."""
        engine = _engine()
        database = _compiled(self.needles) if engine is not None else None
        if engine is None or database is None:
            return None
        found: list[list[int]] = [[] for _ in self.needles]
        sizes = self._sizes

        def matched(ident: int, start: int, end: int, flags: int, context: object) -> None:
            found[ident].append(end - sizes[ident])

        try:
            database.scan(bytes(data), match_event_handler=matched, scratch=engine.Scratch(database))
        except Exception:
            return None
        return found
