"""Masking the same in every attempt of a turn: secrets in the text the machines decode.

Theory of operation
===================

The trace writer masks each attempt's stream as a whole (`engine.log.trace`), so a secret split
across two network reads is found. How the server cut the *text* into deltas still matters: a
secret split across two deltas has event framing between its pieces in the bytes, so a piece
under `MIN_PIECE` characters may stay as it is. Two attempts that say the same text, cut
differently, would be masked differently, and a retry that catches up with the text already
delivered (`machines.stream_attempt`) would compare other text on replay than it did in the
turn. So, for a turn with more than one attempt, the writer also masks the text the machines
decode, channel by channel ("text", "reasoning"), the same way in every attempt (`mask_text`):

1. The protocol says how its streams carry text (`TextChannels`): `decode(body)` gives an
   attempt's channels (`DecodedText`: the text of its deltas, joined, and where each character
   lies in the body's bytes); `continues(records)` says which attempts go on with another one's
   text (a resumed background response). A run of attempts that continue each other is a
   *chain*, and its text is their texts joined.
2. The text delivered to the user on each channel (the `text_delta` and `reasoning_delta`
   effects, joined) is one more text: the *delivered* text.
3. Each text is masked on its own, as decoded: every secret and every piece of `MIN_PIECE` or
   more characters of one, wherever the deltas cut it, credential shapes, and whatever masking
   the bytes already covered.
4. A chain that caught up with the delivered text (its text starts with everything delivered
   before it began) shares its masks with the delivered text over the text they have in common:
   a position masked in either is masked in both. So every chain a retry compares with the
   delivered text is masked as that text is, and a replay's catch-up decides what the turn did.
5. A mask says what a character becomes: `*`, or what the scrubber writes there when the text
   itself holds an escaped secret (`\\u004b` in the text is masked as `\\u002a`: its hex digits
   change), so that the delivered text, the bodies and the result's text, masked by the scrubber
   on their own, agree. The masks are written: a character the body holds as one byte becomes
   that character, one it holds as a `\\u00XX` escape becomes that character's escape (the same
   length); a delivered piece of text has its masked characters replaced. Only printable ASCII
   characters other than a quote and a backslash are masked this way, so that a masked
   character is one character in every text; the others are left to the masking of the bytes.

Masking keeps every length, so the contract holds: no piece of `MIN_PIECE` characters of a
secret stays, and the bytes replay as the turn's did.
"""

from __future__ import annotations

import bisect
import os
from typing import Callable, Final

import attrs

from engine.log.eventlog import Record
from engine.log.redaction import MASK, Scrubber
from machines.records import Effect, InputKind

__all__ = ["DecodedText", "EFFECT_CHANNELS", "TextChannels", "TextPiece", "mask_text"]

#: The effects that deliver text, by the channel they deliver on.
#: (Commentary is answer text its message's phase routes apart: the same `output_text` deltas.)
EFFECT_CHANNELS: Final = {
    "text_delta": "text",
    "commentary_delta": "text",
    "reasoning_delta": "reasoning",
    "refusal_delta": "refusal",
}

_MASK_BYTE: Final = ord(MASK)
_ESCAPED_MASK: Final = b"\\u%04x" % _MASK_BYTE


@attrs.frozen(slots=True)
class TextPiece:
    """One delta's text in a `DecodedText`: where it starts in the text (`start`, `length`
    characters), where its JSON string's content starts in the body (`raw`; -1 when it was not
    found) and, when its characters are not one byte each, the offset of each in the string's
    bytes, the end last (`offsets`)."""

    start: int
    length: int
    raw: int
    offsets: tuple[int, ...] | None = None

    def place(self, index: int) -> tuple[int, int] | None:
        """Where character `index` of the text (inside this piece) lies in the body: its first
        byte and its length in bytes; None when the piece was not found."""
        if self.raw < 0:
            return None
        at = index - self.start
        if self.offsets is None:
            return self.raw + at, 1
        return self.raw + self.offsets[at], self.offsets[at + 1] - self.offsets[at]


@attrs.frozen(slots=True)
class DecodedText:
    """The text one attempt's stream carries on one channel, joined from its deltas (`pieces`,
    in order)."""

    text: str
    pieces: tuple[TextPiece, ...]


@attrs.frozen
class TextChannels:
    """How a protocol's streams carry the text its machines deliver: the stream of inputs of
    `kind`; `decode(body)` is the text of each channel in one attempt's stream (its bytes,
    unmasked); `continues(records)` maps each attempt that goes on with another attempt's text
    to that attempt."""

    kind: InputKind
    decode: Callable[[bytes], dict[str, DecodedText]]
    continues: Callable[[list[Record]], dict[int, int]]


def _maskable(character: str) -> bool:
    return " " <= character <= "~" and character not in "\"\\"


#: A text's masks: position of a character -> the character it becomes.
Masks = dict[int, str]


def _masked_characters(text: str, scrubber: Scrubber) -> Masks:
    """What masking `text` as decoded text changes, as the scrubber changes it: a character
    written as such becomes `*`; a hex digit of an escape the text holds becomes the digit of
    the mask's escape."""
    data = text.encode("utf-8", "surrogatepass")
    masked = scrubber.scrub(data, fields=False)
    if masked is data or masked == data:
        return {}
    found: Masks = {}
    at = 0
    for index, character in enumerate(text):
        size = len(character.encode("utf-8", "surrogatepass"))
        if masked[at : at + size] != data[at : at + size]:
            found[index] = chr(masked[at]) if size == 1 else MASK
        at += size
    return found


def _read_back(written: bytes) -> str:
    """The character one place of a body holds: a byte, or a `\\u00XX` escape."""
    if len(written) == 1:
        return chr(written[0])
    if len(written) == len(_ESCAPED_MASK) and written[:2] == b"\\u":
        try:
            return chr(int(written[2:], 16))
        except ValueError:
            return MASK
    return MASK


@attrs.define
class _Chain:
    """The text one chain of attempts carries on one channel, and where each piece lies."""

    text: str = ""
    #: (piece, attempt) in order, with the piece's start moved to its place in `text`
    pieces: list[tuple[TextPiece, int]] = attrs.Factory(list)
    first: int = 0

    def add(self, attempt: int, decoded: DecodedText) -> None:
        shift = len(self.text)
        self.text += decoded.text
        for piece in decoded.pieces:
            self.pieces.append((attrs.evolve(piece, start=piece.start + shift), attempt))

    def own_masks(self, scrubber: Scrubber, bodies: dict[int, tuple[bytes, bytearray]]) -> Masks:
        """What masking the text covers, and what masking the bytes already covered."""
        found = _masked_characters(self.text, scrubber)
        for piece, attempt in self.pieces:
            if piece.raw < 0:
                continue
            body, masked = bodies[attempt]
            end = piece.raw + (piece.offsets[-1] if piece.offsets is not None else piece.length)
            if body[piece.raw : end] == masked[piece.raw : end]:
                continue
            for index in range(piece.start, piece.start + piece.length):
                place = piece.place(index)
                assert place is not None
                at, size = place
                if masked[at : at + size] != body[at : at + size]:
                    found.setdefault(index, _read_back(bytes(masked[at : at + size])))
        return found

    def write(self, masks: Masks, bodies: dict[int, tuple[bytes, bytearray]]) -> None:
        """Write `masks` into the bodies."""
        starts = [piece.start for piece, _ in self.pieces]
        for index in sorted(masks):
            character = masks[index]
            if index >= len(self.text) or not _maskable(self.text[index]) or not _maskable(character):
                continue
            piece, attempt = self.pieces[bisect.bisect_right(starts, index) - 1]
            place = piece.place(index)
            if place is None:
                continue
            at, size = place
            masked = bodies[attempt][1]
            if size == 1:
                masked[at] = ord(character)
            elif size == len(_ESCAPED_MASK):
                masked[at : at + size] = b"\\u%04x" % ord(character)


def _delivered(records: list[Record]) -> dict[str, list[tuple[int, int, Effect]]]:
    """Per channel, the effects that delivered text: (index in `records`, start in the delivered
    text, effect)."""
    out: dict[str, list[tuple[int, int, Effect]]] = {}
    lengths: dict[str, int] = {}
    for index, record in enumerate(records):
        if type(record) is Effect and type(record.data) is str:
            channel = EFFECT_CHANNELS.get(record.kind)
            if channel is not None:
                start = lengths.get(channel, 0)
                out.setdefault(channel, []).append((index, start, record))
                lengths[channel] = start + len(record.data)
    return out


def mask_text(
    records: list[Record],
    bodies: dict[int, tuple[bytes, bytearray]],
    scrubber: Scrubber,
    channels: TextChannels,
) -> dict[int, Effect]:
    """Mask the decoded text of every attempt's stream the same way (see the module's doc).

    `bodies` maps each attempt to its stream's bytes and the masked bytes, which are masked
    further in place; returns the delivering effects to write instead, by index in `records`."""
    continues = channels.continues(records)
    chain_of: dict[int, int] = {}
    chains: list[list[int]] = []
    for attempt in sorted(bodies):
        previous = continues.get(attempt)
        if previous in chain_of:
            chain_of[attempt] = chain_of[previous]
            chains[chain_of[attempt]].append(attempt)
        else:
            chain_of[attempt] = len(chains)
            chains.append([attempt])
    decoded = {attempt: channels.decode(body) for attempt, (body, _) in bodies.items()}
    delivered = _delivered(records)
    names = sorted({name for texts in decoded.values() for name in texts} | delivered.keys())
    written: dict[int, Effect] = {}
    for name in names:
        effects = delivered.get(name, [])
        text = "".join(effect.data for _, _, effect in effects)
        shared = _masked_characters(text, scrubber)
        reaches: list[tuple[_Chain, Masks, int]] = []
        for attempts in chains:
            chain = _Chain(first=attempts[0])
            for attempt in attempts:
                if name in decoded[attempt]:
                    chain.add(attempt, decoded[attempt][name])
            if not chain.text:
                continue
            before = next((start for _, start, e in effects if e.attempt >= chain.first), len(text))
            common = 0
            if chain.text[:before] == text[:before]:  # it caught up with the delivered text
                common = len(os.path.commonprefix([chain.text, text]))
            own = chain.own_masks(scrubber, bodies)
            for index, character in own.items():
                if index < common:
                    shared.setdefault(index, character)
            reaches.append((chain, own, common))
        for chain, own, common in reaches:
            chain.write(own | {index: shared[index] for index in shared if index < common}, bodies)
        for index, start, effect in effects:
            data = effect.data
            hidden = [at - start for at in range(start, start + len(data))
                      if at in shared and _maskable(data[at - start]) and _maskable(shared[at])]
            if hidden:
                characters = list(data)
                for at in hidden:
                    characters[at] = shared[start + at]
                written[index] = attrs.evolve(effect, data="".join(characters))
    return written
