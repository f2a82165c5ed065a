"""Text delivered to the user exactly once, whatever the server sends again.

Both protocols stream text that the other side may start over: a Responses turn retries (the new
attempt answers again from its first delta; a resumed background response continues instead),
and codex restarts a message on its own stream retries (the same message's deltas again from the
beginning). Either way the user gets each piece of text once: a new *run* first catches up with
what was already delivered on its channel, and only what goes past that reaches the user; a run
that says something else than what was delivered delivers nothing more (the machine still keeps
the run's own text for the result, never a mix of two runs).

`Delivery` is one channel of such text (answer text, commentary, a refusal, reasoning, one codex
message): the pieces delivered so far and the current run's place in them. Catching up compares
each delta with the delivered text at the current position, so a run that repeats a long answer
costs time linear in its length. `DeliveryLedger` holds a Responses turn's channels; its attempts
share it (a resume continues the broken attempt's run instead of starting one). Every channel
follows the same rule, each on its own: a retry that repeats the commentary but says another
answer still delivers nothing more of the answer.

Commentary may reach the user on the same callback as the answer (`on_text_delta`, when the
caller has no commentary callback), so the ledger also notes where each run of commentary fell
among the answer's text (`shown`) and which message it belongs to (`commentary_messages`): what
the user saw is then known under either routing. Only commentary pays for that (one mark per run
of commentary deltas with no answer text between them); answer text does not.

Delivered text is kept as a few long pieces (`machines.text_pieces`), not a string per delta, so
a long answer costs little more than its text.
"""

from __future__ import annotations

from typing import Final

from machines.text_pieces import JOIN_AT, add_piece

__all__ = ["CHANNELS", "Delivery", "DeliveryLedger"]


class Delivery:
    """One channel of delivered text and the current run's place in it."""

    __slots__ = ("pieces", "length", "in_step", "diverged", "_behind", "_position")

    def __init__(self) -> None:
        #: What reached the user, in order (pieces joined as they grow), and its total length.
        self.pieces: list[str] = []
        self.length = 0
        #: The current run has repeated everything delivered before it: its deltas go out as
        #: they come.
        self.in_step = True
        #: The current run said something else than what was delivered: it delivers nothing.
        self.diverged = False
        self._behind = ""
        self._position = 0

    def delivered(self) -> str:
        """Everything delivered on this channel so far, joined."""
        return "".join(self.pieces)

    def restart(self) -> None:
        """A new run begins: it must repeat what was delivered before anything new goes out."""
        self._behind = self.delivered()
        self._position = 0
        self.in_step = not self._behind
        self.diverged = False

    def take(self, delta: str) -> str:
        """One delta of the current run: the part new to the user ("" while the run repeats
        delivered text, or once it diverged), recorded as delivered."""
        if not self.in_step:
            delta = self._catch_up(delta)
        if delta:
            pieces = self.pieces
            if len(pieces) < JOIN_AT - 1:
                pieces.append(delta)  # `add_piece` joins nothing before JOIN_AT pieces
            else:
                add_piece(pieces, delta)
            self.length += len(delta)
        return delta

    def finish(self, text: str) -> str:
        """The current run's whole text is known (a completed message): deliver the tail of it
        the deltas did not ("" when there is none, or when the run said something else)."""
        if self.diverged:
            return ""
        shown = self.delivered()
        if len(text) <= len(shown) or not text.startswith(shown):
            return ""
        tail = text[len(shown):]
        add_piece(self.pieces, tail)
        self.length += len(tail)
        self.in_step = True
        return tail

    def _catch_up(self, delta: str) -> str:
        if self.diverged:
            return ""
        behind = self._behind
        position = self._position
        left = len(behind) - position
        if len(delta) <= left:
            if behind.startswith(delta, position):
                self._position = position + len(delta)
            else:
                self.diverged = True
            return ""
        if not delta.startswith(behind[position:]):
            self.diverged = True
            return ""
        self.in_step = True
        self._position = len(behind)
        return delta[left:]


#: The channels of a Responses turn's ledger.
CHANNELS: Final = ("text", "reasoning", "commentary", "refusal")


class DeliveryLedger:
    """What reached the user in one Responses turn, per channel, shared by its attempts."""

    __slots__ = ("text", "reasoning", "commentary", "refusal", "_marks")

    def __init__(self) -> None:
        self.text = Delivery()
        self.reasoning = Delivery()
        self.commentary = Delivery()
        self.refusal = Delivery()
        #: For each run of delivered commentary (deltas of one message with no answer text
        #: between them): how much answer text had been delivered before it, the message it
        #: belongs to (its output index) and where it starts in the delivered commentary.
        self._marks: list[tuple[int, int, int]] = []

    def take_commentary(self, delta: str, message: int) -> str:
        """One commentary delta of message `message` (its output index): the part new to the
        user, as `Delivery.take` decides, noted with where it falls among the answer text."""
        piece = self.commentary.take(delta)
        if piece:
            marks, answered = self._marks, self.text.length
            if not marks or marks[-1][0] != answered or marks[-1][1] != message:
                marks.append((answered, message, self.commentary.length - len(piece)))
        return piece

    def _runs(self) -> list[tuple[int, int, str]]:
        """Each run of delivered commentary: the answer text delivered before it, its message,
        its text."""
        commentary = self.commentary.delivered()
        ends = [start for _, _, start in self._marks[1:]] + [len(commentary)]
        return [
            (answered, message, commentary[start:end])
            for (answered, message, start), end in zip(self._marks, ends)
        ]

    def shown(self) -> str:
        """The answer text and the commentary delivered, in the order they were delivered (what
        `on_text_delta` got when commentary had no callback of its own)."""
        text = self.text.delivered()
        out: list[str] = []
        at = 0
        for mark, _, run in self._runs():
            out += (text[at:mark], run)
            at = mark
        out.append(text[at:])
        return "".join(out)

    def commentary_messages(self) -> list[str]:
        """The commentary delivered, one string per message (runs of one message delivered
        one after another, across attempts too, are one message)."""
        out: list[str] = []
        last: int | None = None
        for _, message, run in self._runs():
            if out and message == last:
                out[-1] += run
            else:
                out.append(run)
            last = message
        return out

    def channel(self, name: str) -> Delivery:
        """The channel called `name` (one of `CHANNELS`)."""
        found: Delivery = getattr(self, name)
        return found

    def delivered(self, name: str) -> str:
        """Everything delivered on channel `name` so far, joined."""
        return self.channel(name).delivered()

    def restart(self) -> None:
        """A new attempt answers again from its beginning: every channel starts a run."""
        for name in CHANNELS:
            self.channel(name).restart()
