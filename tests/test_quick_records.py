"""The records made on the hot path (`machines.records.effect`, `sse_event`) are the records
their classes make: equal, hashed alike, as frozen; and the shortcut refuses a class whose
`__init__` does more than store its arguments."""

from __future__ import annotations

import attrs
import pytest

from machines.records import Effect, SseEvent, TurnPolicy, _slot_setters, effect, sse_event


def test_a_quick_effect_is_the_effect() -> None:
    for made, regular in [
        (effect("text_delta", 2, "hé"), Effect("text_delta", 2, "hé")),
        (effect("first_delta", 1, None), Effect("first_delta", 1)),
        (sse_event("response.output_text.delta", "{}", "7"), SseEvent("response.output_text.delta", "{}", "7")),
        (sse_event("message", "", None), SseEvent("message", "")),
    ]:
        assert type(made) is type(regular)
        assert made == regular and hash(made) == hash(regular) and repr(made) == repr(regular)
        assert attrs.asdict(made) == attrs.asdict(regular)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            made.data = "changed"  # type: ignore[misc]


def test_the_shortcut_is_refused_where_init_does_more() -> None:
    with pytest.raises(TypeError, match="does more than store it"):
        _slot_setters(TurnPolicy)  # validators
