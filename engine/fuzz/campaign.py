"""`streamfsm fuzz`: a long property-testing campaign over generated sessions, outside the tests.

Theory of operation
===================

The campaign runs one property, `check_session(session)` (`engine.fuzz.invariants`) over
`sessions()` (`engine.strategies`), with Hypothesis as the engine: it generates, finds, shrinks,
and keeps what it found in its example database. The test suite runs the same property with a
small, bounded number of examples; this command is the long run.

Parallelism: `--workers W` processes (default: one per core), each running the property in
batches of a few seconds' worth of examples, each batch with a fresh random seed, until the
campaign's `--examples` (shared out between the workers) or `--seconds` run out. The parent
process prints progress (examples so far, examples per second, findings) and a summary line.

Counting: an example is one generated session checked against the rules. The sessions
Hypothesis tries while it shrinks a failing one are not examples (they are counted apart, as
shrink steps), and a worker checks no session past its share: `--examples N` checks exactly N
(unless `--seconds` stops the campaign first).

Replaying a campaign: `--seed N` makes it deterministic. Each worker's batches take their seeds
from N, the worker's number and the batch's number; batches have a fixed size instead of one
sized by the clock; and the example database is not replayed first (it is still written to). So
the same `--seed`, `--examples` and `--workers` (and `--callbacks`) check the same sessions in the
same order and find the same findings, on any machine, as long as `--seconds` does not cut the
run short.

Findings: when a batch fails, Hypothesis shrinks the failing session to a small one and the
worker saves it in `--save-to` (default `fuzz-findings/`) as a trace file in the standard trace
format (`RULE-HASH.jsonl`, replayable with `streamfsm replay`), with a `.txt` beside it that
names the rules broken and shows the session readably. The same finding found twice is saved
once. The exit code is 0 when nothing was found, 1 otherwise.

Several machines: `--redis URL` puts Hypothesis's example database in a Redis server
(`hypothesis.extra.redis.RedisExampleDatabase`, from the `hypothesis[redis]` extra), so every
worker on every machine replays what any of them found before generating new examples. Without
it, Hypothesis's local database (`.hypothesis/` in the working directory) is used.

Fixtures: `--promote FINDING --name NAME` turns a saved finding (or any trace) into a regression
fixture `replay_fixtures/NAME.jsonl`, re-recorded through today's machines. It refuses while
the session still breaks a rule: fix the bug first, then promote, so the fixture records the
correct behaviour and `streamfsm replay` / the test suite keep it that way. From Python,
`save_fixture(session, name)` does the same for a session in hand.

Your own callbacks: `--callbacks MODULE:FACTORY` calls `FACTORY()` for a fresh
`engine.Callbacks` per session; an exception they raise is a finding (`callback_raised`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import multiprocessing
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.log.eventlog import Callbacks
from engine.fuzz.invariants import InvariantViolation, Violation, check_session, session_violations
from engine.fuzz.strategies import Session, run_session, session_from_trace, sessions
from engine.fuzz.options import DEFAULT_FIXTURES, DEFAULT_SAVE_TO, add_arguments
from engine.log.trace import TraceError

__all__ = [
    "add_arguments",
    "main",
    "run",
    "save_finding",
    "save_fixture",
]

#: A worker sizes its batches to take about this long, so a deadline is kept to within it.
BATCH_S = 2.0
#: The size of every batch of a seeded campaign (`--seed`): fixed, so the run does not depend
#: on how fast the machine is.
SEEDED_BATCH = 100


# --------------------------------------------------------------------------------------------
# Findings and fixtures


def _fingerprint(session: Session) -> str:
    return hashlib.sha256(repr(session).encode()).hexdigest()[:10]


def save_finding(
    session: Session,
    violations: Sequence[Violation],
    directory: str | os.PathLike[str] = DEFAULT_SAVE_TO,
) -> Path:
    """Write a failing session as `DIRECTORY/RULE-HASH.jsonl` (a trace) plus a `.txt` that says
    what broke; return the trace's path. Saving the same session again rewrites the same files."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    rules = sorted({v.rule for v in violations}) or ["finding"]
    path = folder / f"{rules[0]}-{_fingerprint(session)}.jsonl"
    try:
        run_session(session, trace=path, reraise=False)
    except Exception:  # playing raises (rule no_raise): run_session wrote what it recorded
        pass
    text = [
        f"rules broken: {', '.join(rules)}",
        *(f"  - {v}" for v in violations),
        "",
        session.describe(),
        "",
    ]
    path.with_suffix(".txt").write_text("\n".join(text), encoding="utf-8")
    return path


def save_fixture(
    session: Session,
    name: str,
    directory: str | os.PathLike[str] = DEFAULT_FIXTURES,
    callbacks: Callbacks | None = None,
) -> Path:
    """Record `session` through today's machines as the regression fixture `DIRECTORY/NAME.jsonl`.

    Raises `InvariantViolation` (and writes nothing) while the session still breaks a rule: a
    fixture records correct behaviour, which replay then holds in place."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"fixture name must be a plain file name, not {name!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name if name.endswith(".jsonl") else f"{name}.jsonl")
    scratch = path.with_name(path.name + ".checking")
    try:
        check_session(session, callbacks, trace=scratch)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# The campaign: one property, in batches, in worker processes


def _load_factory(spec: str | None) -> Callable[[], Callbacks] | None:
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--callbacks wants MODULE:FACTORY, not {spec!r}")
    factory: Callable[[], Callbacks] = getattr(importlib.import_module(module_name), attribute)
    if not callable(factory):
        raise ValueError(f"{spec} is not callable")
    return factory


def _database(redis_url: str | None) -> Any:
    if not redis_url:
        from hypothesis import settings

        default = settings.default
        assert default is not None  # Hypothesis always has a current profile once imported
        return default.database
    try:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase
    except ImportError:
        raise RuntimeError(
            "--redis needs the redis client: pip install 'hypothesis[redis]'"
        ) from None
    return RedisExampleDatabase(redis.Redis.from_url(redis_url), key_prefix=b"streamfsm-fuzz:")


class _Campaign:
    """One worker's property and what it saw; `property` is what Hypothesis calls.

    A finding is keyed by the rules it breaks. Once a worker has saved one, sessions breaking
    the same rules are counted as repeats and not raised again, so the campaign goes on
    generating instead of shrinking the same bug over and over."""

    def __init__(self, factory: Callable[[], Callbacks] | None, counter: Any, repeats: Any) -> None:
        self.factory = factory
        self.counter = counter
        self.repeats = repeats
        self.unreported = 0
        self.known: set[frozenset[str]] = set()
        self.last_failure: tuple[Session, list[Violation]] | None = None
        #: examples checked so far (shrink steps not counted)
        self.examples = 0
        #: sessions tried while shrinking a failing one
        self.shrink_steps = 0
        #: examples this worker may still check
        self.allowed = 0
        self.shrinking = False

    def start_batch(self, size: int) -> None:
        """Allow `size` more examples; Hypothesis is not shrinking anything yet."""
        self.allowed = size
        self.shrinking = False
        self.last_failure = None

    def flush(self) -> None:
        if self.unreported:
            with self.counter.get_lock():
                self.counter.value += self.unreported
            self.unreported = 0

    def property(self, session: Session) -> None:
        if self.shrinking:
            self.shrink_steps += 1
        elif self.allowed <= 0:
            return  # past this worker's share: not checked, not counted
        else:
            self.allowed -= 1
            self.examples += 1
            self.unreported += 1
            if self.unreported >= 25:
                self.flush()
        callbacks = self.factory() if self.factory is not None else None
        _, found = session_violations(session, callbacks)
        if found:
            if frozenset(v.rule for v in found) in self.known:
                with self.repeats.get_lock():
                    self.repeats.value += 1
                return
            self.shrinking = True  # every session Hypothesis tries from now on is a shrink step
            self.last_failure = (session, found)
            raise InvariantViolation(found, session)


def fuzz_property(session: Session) -> None:  # the database key: one name for every machine
    """Every rule of `engine.fuzz.invariants` holds for `session` (the campaign's property)."""
    campaign = _CURRENT
    assert campaign is not None
    campaign.property(session)


_CURRENT: _Campaign | None = None


def _run_batch(
    campaign: _Campaign, size: int, database: Any, reuse: bool, seed: int | None = None
) -> None:
    """`size` examples of the property. `reuse`: first replay what the database holds (a
    worker does this in its first batch and after each new finding; replaying a repeat, which
    now passes, would make Hypothesis drop it from a shared database). `seed`: the batch's
    random seed (None: a fresh one)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as seeded

    global _CURRENT
    _CURRENT = campaign
    campaign.start_batch(size)
    phases = [Phase.explicit, *([Phase.reuse] if reuse else []), Phase.generate, Phase.shrink]
    test = settings(
        database=database,
        max_examples=size,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=phases,
        report_multiple_bugs=False,
        print_blob=False,
    )(given(sessions())(fuzz_property))
    if seed is not None:
        test = seeded(seed)(test)
    test()


def batch_seed(campaign_seed: int, worker: int, batch: int) -> int:
    """The seed of one batch of a seeded campaign: the same numbers give the same seed on any
    machine and in any Python (no salted hash)."""
    digest = hashlib.sha256(f"{campaign_seed}:{worker}:{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _worker(
    number: int,
    quota: int,
    deadline: float | None,
    save_to: str,
    redis_url: str | None,
    factory_spec: str | None,
    counter: Any,
    repeats: Any,
    findings: Any,
    stop: Any,
    campaign_seed: int | None = None,
) -> None:
    import logging

    logging.getLogger("streamfsm").setLevel(logging.CRITICAL)
    campaign = _Campaign(None, counter, repeats)
    try:
        campaign.factory = _load_factory(factory_spec)
        database = _database(redis_url)
        size = SEEDED_BATCH if campaign_seed is not None else 50
        reuse = campaign_seed is None
        batches = 0
        while campaign.examples < quota and not stop.is_set():
            if deadline is not None and time.time() >= deadline:
                break
            batch = min(size, quota - campaign.examples)
            before = campaign.examples
            started = time.time()
            seed = None if campaign_seed is None else batch_seed(campaign_seed, number, batches)
            batches += 1
            try:
                _run_batch(campaign, batch, database, reuse, seed)
                reuse = False
            except Exception as error:
                failure = campaign.last_failure
                if failure is None:
                    findings.put(("crash", number, f"{type(error).__name__}: {error}", []))
                    return
                session, violations = failure
                rules = frozenset(v.rule for v in violations)
                if rules not in campaign.known:
                    campaign.known.add(rules)
                    path = save_finding(session, violations, save_to)
                    findings.put(("finding", number, str(path), sorted(rules)))
                reuse = campaign_seed is None
            campaign.flush()
            if campaign.examples == before:
                break  # Hypothesis generated nothing more: the quota cannot be reached
            if campaign_seed is None:
                took = max(time.time() - started, 1e-3)
                size = max(10, min(5000, int(batch * BATCH_S / took)))
                if deadline is not None:
                    size = max(1, min(size, int(batch * max(deadline - time.time(), 0.5) / took)))
    except KeyboardInterrupt:
        pass
    finally:
        findings.put(("done", number, str(campaign.shrink_steps), []))


def _print(line: str, out: Any) -> None:
    print(line, file=out, flush=True)


class _Report:
    """What the campaign says on stdout: a line of text, or with `--json` one JSON object per
    line (`event` names what it is: start, progress, finding, worker_stopped, interrupted, done,
    promoted, not_promoted)."""

    def __init__(self, out: Any, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def __call__(self, event: str, text: str, **fields: Any) -> None:
        if self.as_json:
            _print(json.dumps({"event": event, **fields}), self.out)
        else:
            _print(text, self.out)


def _usage_error(text: str) -> int:
    """A bad argument: one line on stderr, exit status 2."""
    _print(f"streamfsm: error: {text}", sys.stderr)
    return 2


def _campaign(args: argparse.Namespace, out: Any) -> int:
    workers = max(1, args.workers or os.cpu_count() or 1)
    total = args.examples
    deadline = time.time() + args.seconds if args.seconds else None
    save_to = str(Path(args.save_to))
    try:
        _load_factory(args.callbacks)
        if args.redis:
            _database(args.redis)
    except (ImportError, AttributeError, ValueError, RuntimeError) as error:
        return _usage_error(f"fuzz: {error}")
    report = _Report(out, args.json)
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    repeats = context.Value("q", 0)
    findings = context.Queue()
    stop = context.Event()
    quotas = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
    where = f"redis {args.redis}" if args.redis else "local .hypothesis/"
    limit = f", at most {args.seconds:g} s" if args.seconds else ""
    seeded = f", seed {args.seed}" if args.seed is not None else ""
    report(
        "start",
        f"fuzz: {total} examples{limit}, {workers} worker(s){seeded}, database {where}, "
        f"findings to {save_to}/",
        examples=total, seconds=args.seconds, workers=workers, database=where, save_to=save_to,
        seed=args.seed,
    )
    started = time.time()
    processes = [
        context.Process(
            target=_worker,
            args=(
                i,
                quotas[i],
                deadline,
                save_to,
                args.redis,
                args.callbacks,
                counter,
                repeats,
                findings,
                stop,
                args.seed,
            ),
            name=f"streamfsm-fuzz-{i}",
            daemon=True,
        )
        for i in range(workers)
        if quotas[i] > 0
    ]
    for process in processes:
        process.start()
    found: list[tuple[str, list[str]]] = []
    crashed: list[str] = []
    shrink_steps = 0
    running = len(processes)
    next_report = started + args.progress_every
    try:
        while running:
            try:
                kind, number, detail, rules = findings.get(timeout=0.25)
            except queue.Empty:
                kind = ""
            if kind == "done":
                running -= 1
                shrink_steps += int(detail or 0)
            elif kind == "finding":
                found.append((detail, rules))
                report("finding", f"fuzz: FOUND {', '.join(rules)} (worker {number}): {detail}",
                       rules=rules, worker=number, trace=detail)
            elif kind == "crash":
                crashed.append(detail)
                report("worker_stopped", f"fuzz: worker {number} stopped: {detail}",
                       worker=number, detail=detail)
            elif not any(p.is_alive() for p in processes):
                break
            now = time.time()
            if now >= next_report:
                elapsed = now - started
                count = counter.value
                report(
                    "progress",
                    f"fuzz: {elapsed:7.1f} s  {count:>9,} examples  {count / elapsed:7.1f}/s  "
                    f"findings {len(found)}",
                    seconds=round(elapsed, 3), examples=count,
                    per_second=round(count / elapsed, 1), findings=len(found),
                )
                next_report = now + args.progress_every
    except KeyboardInterrupt:
        stop.set()
        report("interrupted", "fuzz: interrupted, stopping workers")
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
    elapsed = time.time() - started
    count = counter.value
    report(
        "done",
        f"fuzz: done: {count:,} examples in {elapsed:.1f} s, {count / max(elapsed, 1e-9):.1f} "
        f"examples/s, {workers} worker(s), {len(found)} finding(s)"
        + (f" ({repeats.value:,} repeats of them)" if repeats.value else "")
        + (f", {shrink_steps:,} shrink steps" if shrink_steps else ""),
        examples=count, seconds=round(elapsed, 3), workers=workers, repeats=repeats.value,
        shrink_steps=shrink_steps,
        findings=[{"rules": rules, "trace": path} for path, rules in found],
    )
    if found and not report.as_json:
        for path, rules in found:
            _print(f"  {', '.join(rules)}: {path}", out)
        _print(
            "  read the .txt beside each trace; after the fix, keep it as a regression test:\n"
            f"  streamfsm fuzz --promote {found[0][0]} --name NAME_OF_THE_BUG",
            out,
        )
    if crashed:
        return 2
    return 1 if found else 0


def _promote(args: argparse.Namespace, out: Any) -> int:
    if not args.name:
        return _usage_error("fuzz --promote needs --name NAME (the fixture's file name)")
    report = _Report(out, args.json)
    try:
        session = session_from_trace(args.promote)
        path = save_fixture(session, args.name, args.fixtures)
    except (TraceError, ValueError) as error:
        return _usage_error(f"fuzz: {error}")
    except InvariantViolation as error:
        report(
            "not_promoted",
            f"streamfsm fuzz: not promoted, the session still breaks a rule; fix the bug, "
            f"then promote:\n{error}",
            trace=args.promote, violations=str(error),
        )
        return 1
    report("promoted", f"fuzz: fixture written: {path} (replay it: streamfsm replay {path})",
           fixture=str(path))
    return 0


# --------------------------------------------------------------------------------------------
# Command line


def run(args: argparse.Namespace, out: Any = None) -> int:
    """Run `streamfsm fuzz` with parsed arguments: 0 nothing found, 1 findings, 2 bad input."""
    out = out if out is not None else sys.stdout
    if args.promote:
        return _promote(args, out)
    return _campaign(args, out)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m engine.fuzz.campaign [OPTIONS]`: parse the command line and run the campaign or
    the promotion; the exit status is `run`'s."""
    parser = argparse.ArgumentParser(
        prog="streamfsm fuzz",
        description="Property-test the stream machines on generated Responses-API sessions.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
