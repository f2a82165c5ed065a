"""Hypothesis settings profiles for the test suite, chosen by the HYPOTHESIS_PROFILE variable.

    ci        (default) bounded: the whole suite stays within a few minutes on two cores
    dev       more examples, for a local run before a push
    thorough  many examples; the long campaign is `streamfsm fuzz`, not this

The property tests take their example counts from the profile; nothing else sets them.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,  # a shared CI machine's timing says nothing about the code
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

settings.register_profile("ci", max_examples=150, **_COMMON)
settings.register_profile("dev", max_examples=1_000, **_COMMON)
settings.register_profile("thorough", max_examples=10_000, **_COMMON)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def pytest_report_header(config: object) -> str:
    return f"hypothesis profile: {PROFILE} (max_examples={settings().max_examples})"
