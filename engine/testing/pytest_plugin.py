"""The pytest plugin: recorded traces as test items (`pytest --streamfsm-replay PATH...`).

Installed with the package (entry point group `pytest11`, name `streamfsm`). Each PATH is a trace
file or a directory searched recursively for `*.jsonl` traces; the option may be given several
times. Every trace becomes one test item, `<trace path>::replay`, which replays the trace through
today's machines (`engine.replay`) and

- passes when every record replays identically;
- fails when a record differs, naming the first divergence (seq, recorded, replayed);
- errors (in setup: the item cannot run at all) when the file is not a valid trace.

A PATH that does not exist is a usage error. A relative PATH is taken from the directory pytest
was started in, or else from the rootdir, so that `--streamfsm-replay=DIR` in the project's
`addopts` works wherever pytest is started. Write it with `=` there: `--streamfsm-replay` takes
every following path, so without `=` it would swallow the test paths given on the command line.

The plugin imports `engine` only when a trace item runs, so installing streamfsm costs other
projects' test sessions nothing; it never imports Hypothesis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from engine.drivers.replay import ReplayReport

__all__ = ["ReplayDiverged", "TraceFile", "TraceItem"]

_TRACES = pytest.StashKey[list[Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register `--streamfsm-replay PATH...`."""
    group = parser.getgroup("streamfsm", "streamfsm trace replay")
    group.addoption(
        "--streamfsm-replay",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        dest="streamfsm_replay",
        help="replay streamfsm traces (files, or directories of *.jsonl) as test items: "
        "each passes when its replay is identical",
    )


def _resolve(config: pytest.Config, given: str) -> Path:
    path = Path(given).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [config.invocation_params.dir / path, config.rootpath / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise pytest.UsageError(f"--streamfsm-replay: no such file or directory: {given}")


def trace_paths(config: pytest.Config) -> list[Path]:
    """The trace files `--streamfsm-replay` names, in order, each once: a file as given, a
    directory's `*.jsonl` files sorted. Raises `pytest.UsageError` for a path that does not exist."""
    found: dict[Path, None] = {}
    for given in config.getoption("streamfsm_replay", default=None) or []:
        path = _resolve(config, given)
        if path.is_dir():
            found.update(dict.fromkeys(sorted(p for p in path.rglob("*.jsonl") if p.is_file())))
        else:
            found[path] = None
    return list(found)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check the paths before anything is collected: a missing one is a one-line usage error."""
    session.config.stash[_TRACES] = trace_paths(session.config)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Add one item per trace after the ordinary tests (first among the hooks, so `-k`, `-m`
    and `--lf` see the trace items too). Collected from the session, since the traces need not
    lie under `testpaths` or end in `.py`."""
    for path in config.stash.get(_TRACES, []):
        try:
            relative: str | None = path.relative_to(config.rootpath).as_posix()
        except ValueError:
            relative = None
        if relative is None:  # outside the rootdir: the node id is the absolute path
            trace_file = TraceFile.from_parent(session, path=path, nodeid=path.as_posix())
        else:
            trace_file = TraceFile.from_parent(session, path=path)
        items.extend(session.genitems(trace_file))


class ReplayDiverged(Exception):
    """A trace's replay differs from its recording; `report` holds the first divergence."""

    def __init__(self, report: ReplayReport) -> None:
        """Wrap the replay report of a diverging trace."""
        assert report.divergence is not None
        super().__init__(report.divergence.describe())
        self.report = report


class TraceFile(pytest.File):
    """One trace file, collected as the single item `replay`."""

    def collect(self) -> list[TraceItem]:
        """The trace's one item."""
        return [TraceItem.from_parent(self, name="replay")]


class TraceItem(pytest.Item):
    """Replaying one trace: identical passes, a divergence fails, an invalid trace errors."""

    def __init__(self, **kwargs: Any) -> None:
        """An item for the trace at its parent's path (pytest builds it via `from_parent`)."""
        super().__init__(**kwargs)
        self._report: ReplayReport | None = None
        self._raised: Exception | None = None

    def setup(self) -> None:
        """Read and replay the trace. An invalid trace fails here, so pytest reports an error
        (the item could not run) instead of a failure."""
        import engine

        invalid: str | None = None
        try:
            self._report = engine.replay(self.path)
        except engine.TraceError as error:
            invalid = str(error)
        except Exception as error:  # a replay that raises is a failed test, reported by runtest
            self._raised = error
        if invalid is not None:
            pytest.fail(f"invalid trace: {invalid}", pytrace=False)

    def runtest(self) -> None:
        """Fail unless the replay was identical."""
        if self._raised is not None:
            raise self._raised
        assert self._report is not None
        if self._report.divergence is not None:
            raise ReplayDiverged(self._report)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> Any:
        """The first divergence on one line (`Divergence.describe`: seq, recorded, replayed),
        without a traceback."""
        if isinstance(excinfo.value, ReplayDiverged):
            return f"first divergence: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[os.PathLike[str] | str, int | None, str]:
        """Where the item lives, for reports: the trace file, and "replay NAME" as its title."""
        return self.path, None, f"replay {self.path.name}"

