"""Fuzz throughput: examples per second of the campaign's property, and where the time goes.

The property is the one `streamfsm fuzz` and the CI profile run: `check_session` (every rule,
trace written, read back and replayed) over `engine.strategies.sessions()`. Each run plays a
fixed number of examples with a fixed seed (Hypothesis `derandomize`), generation only (no
shrinking, no example database), in a fresh process.

    python bench/bench_fuzz.py                                  # this checkout
    python bench/bench_fuzz.py --baseline-path /work/baseline   # and another one, paired
    python bench/bench_fuzz.py --examples 300 --rounds 5 --no-profile

With `--baseline-path`, every round runs the baseline checkout (that path first on `sys.path`)
and this one in separate processes, taking turns which goes first, and the ratio of the two
rates is taken per round (load from other processes that comes and goes between rounds lands
on both). The figures reported are medians over rounds.

Time split, measured without a profiler in every run: *generation* is everything outside the
property (Hypothesis drawing the session, its engine), *play* is `play_session` (the session
through the machines), *checks* is the rest of the property (result, trace written, read back,
replayed, reference model, rules). With `--profile` (default) one more run per checkout under
cProfile splits *checks* further (*trace_write*: `TurnRecording.finish`, the result and the trace
written; *trace_read_replay*: read back and replayed; *reference*: the reference model) and lists
the functions that cost the most. cProfile's own overhead is per call, so it inflates
Hypothesis's many small calls most: read its split for where the time goes, the timed split for
how much.

The last line is `RESULT {json}` with every figure.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: cProfile categories: (file name ends with, function name) whose cumulative time is counted.
PROFILE_PARTS: dict[str, list[tuple[str, str]]] = {
    "play": [("strategies.py", "play_session")],
    "trace_write": [("recording.py", "finish")],
    "trace_read_replay": [
        ("invariants.py", "_check_replay"),
        ("invariants.py", "_replay_violations"),
        ("invariants.py", "replay_violations"),
    ],
    "reference": [("invariants.py", "reference_turn"), ("reference.py", "reference_turn")],
}


# --------------------------------------------------------------------------------------------
# One run, in a worker process


def _imports() -> tuple[Any, Any, Any]:
    """(strategies module, invariants module, check_session) from whichever layout is first on
    the path: `engine.fuzz.invariants` today, `engine.invariants` in older checkouts."""
    import importlib

    strategies = importlib.import_module("engine.strategies")
    try:
        invariants = importlib.import_module("engine.fuzz.invariants")
    except ImportError:
        invariants = importlib.import_module("engine.invariants")
    return strategies, invariants, invariants.check_session


def _run(examples: int, profile: bool, top: int) -> dict[str, Any]:
    from hypothesis import HealthCheck, Phase, given, settings

    strategies, invariants, check_session = _imports()
    clock = time.perf_counter
    spent = {"property": 0.0, "play": 0.0}
    count = [0]

    original_play = invariants.play_session

    def timed_play(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return original_play(*args, **kwargs)
        finally:
            spent["play"] += clock() - start

    invariants.play_session = timed_play

    def prop(session: Any) -> None:
        start = clock()
        try:
            check_session(session)
        finally:
            spent["property"] += clock() - start
            count[0] += 1

    def build(n: int) -> Any:
        return settings(
            max_examples=n,
            database=None,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
            print_blob=False,
        )(given(strategies.sessions())(prop))

    build(10)()  # warm-up: imports, strategy caches, first calls
    spent.update(property=0.0, play=0.0)
    count[0] = 0

    test = build(examples)
    profiler = cProfile.Profile() if profile else None
    start, cpu = clock(), time.process_time()
    if profiler is not None:
        profiler.enable()
    test()
    if profiler is not None:
        profiler.disable()
    total, cpu = clock() - start, time.process_time() - cpu
    n = count[0]
    out: dict[str, Any] = {
        "path": str(Path(strategies.__file__).resolve().parent.parent),
        "examples": n,
        "seconds": total,
        "examples_per_s": n / total,
        "examples_per_cpu_s": n / cpu,
        "ms_per_example": {
            "total": 1000 * total / n,
            "generation": 1000 * (total - spent["property"]) / n,
            "play": 1000 * spent["play"] / n,
            "checks": 1000 * (spent["property"] - spent["play"]) / n,
        },
    }
    if profiler is not None:
        out["profile"] = _profile_parts(profiler, total, spent["property"], n, top)
    return out


def _profile_parts(
    profiler: cProfile.Profile, total: float, in_property: float, n: int, top: int
) -> dict[str, Any]:
    stats = pstats.Stats(profiler)
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    parts: dict[str, float] = {}
    for part, keys in PROFILE_PARTS.items():
        parts[part] = sum(
            row[3]
            for (filename, _, name), row in table.items()
            for suffix, wanted in keys
            if name == wanted and filename.endswith(suffix)
        )
    # the timed wrapper lives in this file: its cumulative time is the property's
    prop = sum(
        row[3]
        for (filename, _, name), row in table.items()
        if name == "prop" and filename.endswith("bench_fuzz.py")
    )
    ms = {
        "total": 1000 * total / n,
        "generation": 1000 * (total - prop) / n,
        **{part: 1000 * seconds / n for part, seconds in parts.items()},
        "other_checks": 1000
        * (prop - parts["play"] - parts["trace_write"] - parts["trace_read_replay"] - parts["reference"])
        / n,
    }
    heaviest = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return {
        "ms_per_example": ms,
        "top_tottime": [
            {
                "function": f"{Path(filename).name}:{line}:{name}",
                "tottime_ms_per_example": round(1000 * row[2] / n, 4),
                "calls_per_example": round(row[1] / n, 1),
            }
            for (filename, line, name), row in heaviest
        ],
    }


# --------------------------------------------------------------------------------------------
# The driver: rounds of worker processes


def _spawn(path: Path, examples: int, profile: bool, top: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    env["PYTHONHASHSEED"] = "0"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--examples", str(examples)]
    if profile:
        command += ["--cprofile", "--top", str(top)]
    done = subprocess.run(command, env=env, cwd=path, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker for {path} failed:\n{done.stdout}\n{done.stderr}")
    line = [x for x in done.stdout.splitlines() if x.startswith("WORKER ")][-1]
    result: dict[str, Any] = json.loads(line.removeprefix("WORKER "))
    if Path(result["path"]) != path.resolve():
        raise SystemExit(f"worker meant for {path} imported the code at {result['path']}")
    return result


def _show_split(name: str, ms: dict[str, float]) -> str:
    return f"  {name:<9}" + "  ".join(f"{k} {v:6.2f}" for k, v in ms.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=400, help="examples per run (400)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per checkout (3)")
    parser.add_argument("--baseline-path", type=Path, help="another checkout, run in the same rounds")
    parser.add_argument("--profile", dest="profile", action="store_true", default=True)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--top", type=int, default=15, help="functions listed from the profile")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cprofile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = _run(args.examples, args.cprofile, args.top)
        print("WORKER " + json.dumps(result))
        return 0

    checkouts = {"candidate": ROOT}
    if args.baseline_path is not None:
        checkouts = {"baseline": args.baseline_path.resolve(), "candidate": ROOT}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
    names = list(checkouts)
    for number in range(args.rounds):
        order = names if number % 2 == 0 else names[::-1]
        for name in order:
            run = _spawn(checkouts[name], args.examples, False, args.top)
            runs[name].append(run)
            print(
                f"round {number + 1} {name:<9} {run['examples']} examples "
                f"{run['examples_per_s']:7.1f}/s ({run['examples_per_cpu_s']:7.1f} per CPU s)",
                flush=True,
            )

    summary: dict[str, Any] = {"examples": args.examples, "rounds": args.rounds}
    for name, results in runs.items():
        split = {
            k: statistics.median(r["ms_per_example"][k] for r in results)
            for k in results[0]["ms_per_example"]
        }
        summary[name] = {"path": str(checkouts[name])}
        for key in ("examples_per_s", "examples_per_cpu_s"):
            rates = [r[key] for r in results]
            summary[name][key] = round(statistics.median(rates), 2)
            summary[name][key + "_runs"] = [round(r, 1) for r in rates]
        summary[name]["ms_per_example"] = {k: round(v, 3) for k, v in split.items()}
    if "baseline" in runs:
        for key, label in (("examples_per_s", "ratio"), ("examples_per_cpu_s", "ratio_cpu")):
            ratios = [c[key] / b[key] for b, c in zip(runs["baseline"], runs["candidate"])]
            summary[label] = round(statistics.median(ratios), 3)
            summary[label + "_runs"] = [round(r, 3) for r in ratios]

    if args.profile:
        for name, path in checkouts.items():
            profiled = _spawn(path, args.examples, True, args.top)["profile"]
            summary[name]["profile"] = profiled

    print()
    print(f"{args.examples} examples per run, {args.rounds} round(s), medians; ms per example:")
    for name in checkouts:
        s = summary[name]
        print(
            f"{name}: {s['examples_per_s']:.1f} examples/s, {s['examples_per_cpu_s']:.1f} per CPU "
            f"second  ({s['path']})"
        )
        print(_show_split("timed", s["ms_per_example"]))
        if "profile" in s:
            print(_show_split("cProfile", {k: round(v, 2) for k, v in s["profile"]["ms_per_example"].items()}))
            for row in s["profile"]["top_tottime"]:
                print(
                    f"    {row['tottime_ms_per_example']:7.3f} ms {row['calls_per_example']:8.1f} calls"
                    f"  {row['function']}"
                )
    if "ratio" in summary:
        print(
            f"candidate / baseline examples/s: {summary['ratio']:.2f} wall (per round "
            f"{summary['ratio_runs']}), {summary['ratio_cpu']:.2f} CPU (per round "
            f"{summary['ratio_cpu_runs']})"
        )
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
