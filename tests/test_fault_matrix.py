"""The fault matrix in the suite: two shapes cut at a bounded sample of byte offsets (every frame
boundary and its neighbours, the first and last bytes, every 500th byte), closed with FIN and with
RST, then healed by a retry, over real HTTP with the openai client. The full sweep of every
offset is `python bench/bench_faults.py`."""

from __future__ import annotations

import pytest

from engine.testing.fault_matrix import body_of, sample_offsets, sweep
from engine.simulator.shapes import SHAPES


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["happy_text", "function_call"])
def test_a_cut_anywhere_then_a_retry_loses_nothing_and_repeats_nothing(shape: str) -> None:
    body = body_of(SHAPES[shape].replies[0])
    offsets = sample_offsets(body, stride=500)
    report = sweep(shape, offsets, replay_every=7)
    assert report.turns == 2 * len(offsets)
    assert report.failures == ()
    assert report.retried == report.turns  # every cut, even after the last byte, is retried


def test_the_sample_covers_every_frame_boundary() -> None:
    body = body_of(SHAPES["happy_text"].replies[0])
    offsets = set(sample_offsets(body, stride=500))
    boundaries = [i for i in range(len(body) - 1) if body[i : i + 2] == b"\n\n"]
    assert boundaries and all(end + 2 in offsets or end + 2 >= len(body) for end in boundaries)
