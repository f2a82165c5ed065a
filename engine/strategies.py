"""Hypothesis strategies for Responses-API sessions, and the runner that plays them.

The public home of `engine.testing.strategies` (needs the `fuzz` extra: `pip install
'streamfsm[fuzz]'`, which brings Hypothesis):

    from engine.strategies import run_session, sessions
"""

from engine.testing.strategies import *  # noqa: F401,F403
from engine.testing.strategies import __all__ as __all__
