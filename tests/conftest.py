"""Hypothesis settings profiles for the test suite, chosen by the HYPOTHESIS_PROFILE variable.

    ci        (default) bounded: the whole suite stays within a few minutes on two cores
    dev       more examples, for a local run before a push
    thorough  many examples; the long campaign is `streamfsm fuzz`, not this

The property tests take their example counts from the profile; nothing else sets them.
"""

from __future__ import annotations

import os

import pytest
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


#: Examples the per-test timeout (pyproject's `timeout`) is sized for.
CI_EXAMPLES = 150


def pytest_report_header(config: object) -> str:
    return f"hypothesis profile: {PROFILE} (max_examples={settings().max_examples})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under a profile with more examples, a property test's time limit grows in proportion
    (the per-test timeout is sized for the ci profile)."""
    scale = settings().max_examples / CI_EXAMPLES
    limit = config.getini("timeout")
    if scale <= 1 or not limit:
        return
    for item in items:
        function = getattr(item, "obj", None)
        if getattr(function, "is_hypothesis_test", False) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(float(limit) * scale))
