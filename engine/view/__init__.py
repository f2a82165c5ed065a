"""Seeing a recorded turn: `streamfsm show` (`timeline`: the steps of a trace, for the terminal
and as JSON) and `streamfsm show --html` (`page`: one self-contained HTML page)."""
