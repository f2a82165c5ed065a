"""Hypothesis strategies for Responses-API sessions, and the runner that plays them.

The public home of `engine.fuzz.strategies` (needs the `fuzz` extra: `pip install
'streamfsm[fuzz]'`, which brings Hypothesis):

    from engine.strategies import run_session, sessions
"""

from engine.fuzz.strategies import *  # noqa: F401,F403
from engine.fuzz.strategies import __all__ as __all__
