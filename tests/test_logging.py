"""As a library streamfsm is silent unless the application configures logging: the "streamfsm"
logger holds a `NullHandler`, so not even Python's last-resort handler prints its records."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import engine  # noqa: F401  (importing the package sets the logger up)


def test_the_streamfsm_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("streamfsm").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_an_unconfigured_application_sees_no_log_output() -> None:
    # A fresh interpreter, so no test's logging configuration is in place.
    code = textwrap.dedent(
        """
        import logging
        import engine  # noqa: F401
        from engine.log.logs import log

        assert not logging.getLogger().handlers
        log.error("callback raised", error="ZeroDivisionError")
        logging.getLogger("streamfsm").warning("a warning")
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and run.stderr == ""
