"""Fuzzing: Hypothesis strategies, the invariants they are checked against, the reference model
the invariants compare with, and `streamfsm fuzz` (needs `pip install 'streamfsm[fuzz]'`).

    strategies        Responses-API sessions (`engine.strategies` re-exports the public ones)
    tool_items        responses that carry tool calls of every kind, with their ground truth
    background        resumed background responses
    reference_output  the reference model's account of what a turn's output holds
    invariants        the rules every generated session is checked against
    app_lines         lines in the shape the real `codex app-server` writes
    app_strategies    codex app-server turns; app_invariants: their rules
    campaign          `streamfsm fuzz`: a long campaign outside the tests
"""
