"""Streamed text kept as a few long strings, not one string per delta.

A long answer is hundreds of thousands of deltas, often of one character each; every delta is a
string object of its own (some fifty bytes for one character), so keeping each one until the text
is joined costs far more than the text. The machines keep what they assemble (an answer's text,
a call's arguments, what reached the user) in a list of pieces that joins its newest pieces as it
grows: `add_piece(pieces, text)` instead of `pieces.append(text)`. The list is still the text's
pieces in order, so `"".join(pieces)` is the text, and `pieces[:] = [whole]` replaces it.

Joining keeps the list short and the copying linear in practice: every `JOIN_AT` pieces, the
newest half is joined into one, and a joined piece at least as long as the one before it is
joined with it (the pieces grow longer toward the start, like the digits of a binary counter), so
the list holds at most `JOIN_AT` pieces plus one per doubling of the text, and each character is
copied a number of times logarithmic in the text's length.
"""

from __future__ import annotations

from typing import Final

__all__ = ["JOIN_AT", "add_piece"]

#: How many pieces a list holds before its newest half is joined.
JOIN_AT: Final = 64
_KEPT: Final = JOIN_AT // 2


def add_piece(pieces: list[str], piece: str) -> None:
    """Append `piece` to `pieces`, joining the newest pieces when the list has grown long."""
    pieces.append(piece)
    if len(pieces) >= JOIN_AT:
        joined = "".join(pieces[_KEPT:])
        del pieces[_KEPT:]
        pieces.append(joined)
        while len(pieces) > 1 and len(pieces[-1]) >= len(pieces[-2]):
            last = pieces.pop()
            pieces[-1] += last
