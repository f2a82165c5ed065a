"""The import graph keeps the layers apart. Every module under engine/ and machines/ is parsed
(with `ast`, nothing is imported) and its imports are read:

- no import cycles among the project's modules, counting every import that runs: at module level
  and inside functions and methods (a lazy import that closes a cycle hides it; it does not remove
  it); only imports under `if TYPE_CHECKING:` (never executed) are left out. An edge goes to the module
  named, or to the submodule for `from package import submodule`; the implicit import of a
  module's parent packages is not an edge, since `engine/__init__.py` re-exports the drivers
  on purpose;
- `machines/` (the pure state machines) imports nothing from `engine`, anywhere in its code;
- the runtime (everything under engine/ except `engine/testing/`, `engine/fuzz/`, the
  `engine.strategies` re-export, and the command line `engine/cli.py` + `engine/__main__.py`,
  which is an application) imports nothing from `engine.testing`, `engine.fuzz` or `hypothesis`,
  not even lazily; the simulator (`engine/simulator/`) is part of the runtime;
- the command line and the pytest plugin do not import Hypothesis at module level, directly or
  through the modules they import (the CLI imports the simulator and the shapes for `demo` and
  `serve`; only `streamfsm fuzz` needs Hypothesis, and it imports it when it runs).

A last test imports the package in a fresh interpreter in which `import hypothesis` fails.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "machines")
APPLICATION = {"engine.cli", "engine.__main__"}


@attrs.frozen
class Imports:
    """One module's imports of other modules (dotted names), split by when they run."""

    top: frozenset[str]  # executed when the module is imported
    lazy: frozenset[str]  # inside a function or method


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path, known: set[str]) -> Imports:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top: set[str] = set()
    lazy: set[str] = set()

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        found = [base] if base else []
        for alias in node.names:
            if f"{base}.{alias.name}" in known:  # `from package import submodule`
                found.append(f"{base}.{alias.name}")
        return found

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.orelse:
                    visit(statement, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else top).update(targets(child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return Imports(frozenset(top), frozenset(lazy))


def _graph() -> dict[str, Imports]:
    paths = {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    known = set(paths)
    return {module: _imports(module, path, known) for module, path in paths.items()}


GRAPH = _graph()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _project(name: str) -> bool:
    return any(_within(name, package) for package in PACKAGES)


def _reachable(start: str) -> dict[str, str]:
    """Every module `start` imports at module level, transitively: name -> the module importing it."""
    seen: dict[str, str] = {}
    stack = [start]
    while stack:
        module = stack.pop()
        for name in GRAPH[module].top if module in GRAPH else ():
            if name not in seen and name != start:
                seen[name] = module
                stack.append(name)
    return seen


def test_the_graph_holds_every_module() -> None:
    assert {"engine", "engine.cli", "engine.drivers.sse", "engine.fuzz.campaign",
            "machines.stream_attempt", "machines.records"} <= set(GRAPH)
    assert "machines.records" in GRAPH["machines.stream_attempt"].top
    assert "engine.fuzz.campaign" in GRAPH["engine.cli"].lazy  # `from engine.fuzz import campaign`


def test_no_import_cycles_among_project_modules() -> None:
    edges = {
        module: sorted(
            name for name in imports.top | imports.lazy if name in GRAPH and name != module
        )
        for module, imports in GRAPH.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for name in edges[module]:
            if state.get(name) == 1:
                cycles.append([*path[path.index(name):], name])
            elif name not in state:
                visit(name)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_machines_import_nothing_from_engine() -> None:
    found = {
        module: sorted(name for name in imports.top | imports.lazy if _within(name, "engine"))
        for module, imports in GRAPH.items()
        if _within(module, "machines")
    }
    assert {module: names for module, names in found.items() if names} == {}


def _runtime(module: str) -> bool:
    return (
        _within(module, "engine")
        and not _within(module, "engine.testing")
        and not _within(module, "engine.fuzz")
        and module != "engine.strategies"
        and module not in APPLICATION
    )


def test_the_runtime_imports_neither_engine_testing_nor_fuzzing_nor_hypothesis() -> None:
    runtime = [module for module in GRAPH if _runtime(module)]
    assert {"engine.drivers.sync", "engine.log.trace", "engine.simulator.server"} <= set(runtime)
    found = {
        module: sorted(
            name
            for name in GRAPH[module].top | GRAPH[module].lazy
            if any(_within(name, banned) for banned in ("engine.testing", "engine.fuzz", "hypothesis"))
        )
        for module in runtime
    }
    assert {module: names for module, names in found.items() if names} == {}


@pytest.mark.parametrize(
    "module", ["engine", "engine.cli", "engine.__main__", "engine.testing.pytest_plugin"]
)
def test_no_module_level_path_to_hypothesis(module: str) -> None:
    reached = _reachable(module)
    offending = sorted(name for name in reached if _within(name, "hypothesis"))
    chains = []
    for name in offending:
        chain = [name]
        while chain[-1] in reached:
            chain.append(reached[chain[-1]])
        chains.append(" <- ".join(chain))
    assert chains == []
    # The modules that are reached are all the project's own or third-party, never fuzzing ones.
    assert not any(_within(name, "engine.fuzz") for name in reached)


def test_engine_works_where_hypothesis_cannot_be_imported() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc
        import json
        import sys

        class NoHypothesis(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "hypothesis" or name.startswith("hypothesis."):
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
                return None

        sys.meta_path.insert(0, NoHypothesis())
        try:
            import hypothesis  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker let hypothesis through")

        import engine

        def event(obj):
            return f"event: {obj['type']}\\ndata: {json.dumps(obj)}\\n\\n".encode()

        response = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
        delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                 "content_index": 0}
        chunks = [
            event({"type": "response.created", "sequence_number": 0, "response": response}),
            event({**delta, "sequence_number": 1, "delta": "Hello, "}),
            event({**delta, "sequence_number": 2, "delta": "world"}),
            event({"type": "response.completed", "sequence_number": 3,
                   "response": {**response, "status": "completed"}}),
        ]
        delivered = []
        result = engine.consume(chunks, callbacks=engine.Callbacks(on_text_delta=delivered.append))
        assert result.outcome == "completed", result.outcome
        assert result.output_text == "Hello, world" and delivered == ["Hello, ", "world"]

        import engine.cli
        import engine.testing.pytest_plugin  # noqa: F401

        assert engine.cli.main(["diagram", "stream_attempt"]) == 0
        # the optional command says how to get it instead of vanishing
        assert "pip install 'streamfsm[fuzz]'" in engine.cli.build_parser().format_help()
        assert engine.cli.main(["fuzz", "--examples", "5", "--seed", "1"]) == 2
        leaked = sorted(name for name in sys.modules if name.split(".")[0] == "hypothesis")
        assert not leaked, leaked
        print("ok")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("ok")
