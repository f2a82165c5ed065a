"""The options of `streamfsm fuzz`, apart from the campaign that runs it.

The command line builds its parser (every subcommand's options) for every command it runs; the
campaign imports Hypothesis and the fuzzing strategies, which only `streamfsm fuzz` needs. So the
options live here, with nothing heavier than `argparse`, and `engine.fuzz.campaign` runs them.
"""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_EXAMPLES", "DEFAULT_FIXTURES", "DEFAULT_SAVE_TO", "add_arguments"]

DEFAULT_EXAMPLES = 10_000
DEFAULT_SAVE_TO = "fuzz-findings"
DEFAULT_FIXTURES = "replay_fixtures"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `streamfsm fuzz`."""
    parser.add_argument(
        "--examples",
        type=_positive_int,
        default=DEFAULT_EXAMPLES,
        metavar="N",
        help=f"sessions to check in all, exactly (default {DEFAULT_EXAMPLES:,}; the sessions "
        "tried while shrinking a finding are not counted)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="replay the same campaign: the same seed, --examples and --workers check the same "
        "sessions (the example database is not replayed first)",
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=None,
        metavar="S",
        help="stop after about S seconds even if examples remain",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="W",
        help="worker processes (default: one per core)",
    )
    parser.add_argument(
        "--save-to",
        default=DEFAULT_SAVE_TO,
        metavar="DIR",
        help=f"where findings are saved as traces (default {DEFAULT_SAVE_TO}/)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="share Hypothesis's example database through this Redis server "
        "(needs hypothesis[redis]), e.g. redis://fuzz-db:6379/0",
    )
    parser.add_argument(
        "--callbacks",
        default=None,
        metavar="MODULE:FACTORY",
        help="fuzz your callbacks: FACTORY() returns a fresh engine.Callbacks",
    )
    parser.add_argument(
        "--progress-every",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines (default 5)",
    )
    parser.add_argument(
        "--promote",
        default=None,
        metavar="TRACE",
        help="instead of fuzzing: re-record a finding as a regression fixture",
    )
    parser.add_argument("--name", default=None, help="the fixture's name, with --promote")
    parser.add_argument("--json", action="store_true",
                        help="progress and findings as one JSON object per line on stdout")
    parser.add_argument(
        "--fixtures",
        default=DEFAULT_FIXTURES,
        metavar="DIR",
        help=f"where --promote writes (default {DEFAULT_FIXTURES}/)",
    )
