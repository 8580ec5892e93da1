"""One scan: open the sources, stream their assets through the engine, and say how complete the snapshot was.

Shared by `auditor scan`, `auditor plan` and each cycle of the daemon.

The exit contract of `scan` and `serve --once` is decided here (`exit_status`), from the result alone:
0 clean, 1 open findings at or above --fail-on, 3 a partial result (records skipped, asset types not read, rules
not evaluated, evaluation errors) and nothing worse, or with findings: a partial result is never "clean". 2 (bad
input, rules or usage) is raised before there is a result. `--allow-partial` turns 3 back into 0 or 1.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from auditor import __version__
from auditor.collect import Source, SourceOptions, open_source
from auditor.errors import AuditorError, Cancelled, SourceError
from auditor.evaluate.engine import Engine, Evaluation, EvaluationRun
from auditor.evaluate.rulebook import LoadedRule
from auditor.model import SEVERITIES, Asset, Finding, NotEvaluated, SourceStatus
from auditor.report.spool import Tally

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_INVALID = 2
EXIT_PARTIAL = 3


class FindingSink(Protocol):
    """Where a scan hands each finding as it is made, and that can take back those of an asset a later copy
    replaces (the daemon's state staging): the scan keeps none of them."""

    def add(self, finding: Finding) -> None: ...

    def withdraw(self, asset: str, rules: frozenset[str]) -> None: ...


@dataclass
class ScanResult:
    scanned_at: datetime
    rules: list[LoadedRule]
    evaluation: Evaluation
    sources: list[SourceStatus]
    durations: dict[str, float] = field(default_factory=dict)
    stale_exemptions: list[dict[str, Any]] = field(default_factory=list)
    # The counts of the findings, kept as they passed when they went to a sink rather than into `findings`
    tally: Tally | None = None

    @property
    def findings(self) -> list[Finding]:
        """The findings, when the scan kept them (not when they were streamed to a report: see `run_scan`)."""
        return self.evaluation.findings

    def counts(self) -> Tally:
        if self.tally is not None:
            return self.tally
        tally = Tally()
        for f in self.findings:
            tally.add(f)
        return tally

    @property
    def not_evaluated(self) -> list[NotEvaluated]:
        """Rules that could not be evaluated, with the reason (set by the engine and its checks)."""
        return self.evaluation.not_evaluated

    @property
    def complete(self) -> bool:
        """Checked and whole: every source read completely, every rule evaluated on every asset without error."""
        return not self.partial_reasons()

    def partial_reasons(self) -> list[str]:
        """Why the result is partial, one line a reason; empty when it is complete."""
        out = [f"{t}: {r}" for t, r in sorted(self.incomplete_types().items())]
        out += [f"rule {n.rule_id} not evaluated: {n.reason}" for n in self.not_evaluated]
        errors = self.evaluation.errors
        if errors:
            first = errors[0]
            out.append(f"{len(errors)} evaluation error(s); first: rule {first.rule} on {first.asset}: {first.error}")
        return out

    def exit_status(self, fail_on: str = "low", allow_partial: bool = False) -> int:
        """The exit status of the contract (see the module's docstring); `fail_on` is a severity or "never"."""
        if not self.complete and not allow_partial:
            return EXIT_PARTIAL
        if fail_on != "never" and self.worst_open_rank() >= SEVERITIES.index(fail_on):
            return EXIT_FINDINGS
        return EXIT_CLEAN

    def incomplete_types(self) -> dict[str, str]:
        """Asset type -> reason, for every type some source did not read completely ("*" for all types)."""
        out: dict[str, str] = {}
        for s in self.sources:
            for t, reason in s.failed_types.items():
                out[t] = f"{s.source}: {reason}"
        return out

    def summary(self) -> dict[str, Any]:
        tally = self.counts()
        return {
            "assets": self.evaluation.assets,
            "findings": tally.open,
            "exempted": tally.exempted,
            "by_severity": tally.by_severity(),
            "rules": len(self.rules),
            "skipped_records": sum(s.skipped for s in self.sources),
            "evaluation_errors": len(self.evaluation.errors),
            "not_evaluated": len(self.not_evaluated),
            "duplicate_assets": sum(s.duplicate_count for s in self.sources),
            "unknown_objects": sum(sum(s.unknown.values()) for s in self.sources),
            "complete": self.complete,
        }

    def to_dict(self, findings: bool = True) -> dict[str, Any]:
        """The JSON report, with its findings or (`findings=False`) without them."""
        out = {
            "version": 1,
            "tool_version": __version__,
            "scanned_at": self.scanned_at.isoformat().replace("+00:00", "Z"),
            "complete": self.complete,
            "sources": [s.to_dict() for s in self.sources],
            "summary": self.summary(),
            "findings": [f.to_dict() for f in self.findings] if findings else [],
            "errors": [e.to_dict() for e in self.evaluation.errors],
            "not_evaluated": [n.to_dict() for n in self.not_evaluated],
            "partial_reasons": self.partial_reasons(),
            "stale_exemptions": self.stale_exemptions,
        }
        if not findings:
            del out["findings"]
        return out

    def worst_open_rank(self) -> int:
        return self.counts().worst_rank


_gc_lock = threading.Lock()
_gc_scans = 0
_gc_saved: tuple[int, int, int] | None = None
GC_THRESHOLD = 10_000  # allocations between young-generation collections while a scan runs (Python's default: 700)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage less often while assets stream by.

    A scan allocates millions of short-lived objects (records, decoded policies) while it keeps a few hundred
    thousand (context): at Python's default threshold the cyclic collector ran thousands of times over them,
    about a fifth of a million-asset scan. Nothing a scan makes relies on prompt cycle collection. Scans running
    at once (daemon threads) share the setting; the last one to finish restores it.
    """
    global _gc_scans, _gc_saved
    with _gc_lock:
        if _gc_scans == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(max(GC_THRESHOLD, _gc_saved[0]), *_gc_saved[1:])
        _gc_scans += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_scans -= 1
            if _gc_scans == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)


@contextlib.contextmanager
def attributed(source: str) -> Iterator[None]:
    """Errors while opening or reading a source name it: a reader's unexpected error (a corrupt gzip, nesting
    beyond the recursion limit) becomes a SourceError of that source, never a failure of "unknown" origin."""
    try:
        yield
    except SourceError as exc:
        if exc.source is None:
            exc.source = source
        raise
    except (AuditorError, Cancelled):  # rules, workers, shutting down: not this source's doing
        raise
    except Exception as exc:
        raise SourceError(f"{source}: {type(exc).__name__}: {exc}", source=source) from exc


def _read(source: Source) -> Iterator[Asset]:
    with attributed(source.uri):
        yield from source.assets()


MAX_DUPLICATES_LISTED = 100


class Duplicates:
    """One asset is one asset: the same asset (its name, and whether it carries its resource and its IAM policy:
    a CAI export gives those in two files) read twice, from two files or two sources, is evaluated once.

    The copy with the later update time is kept: a later copy read second replaces the first (whose findings are
    withdrawn, `EvaluationRun.forget`); otherwise the copy read second is dropped. When findings are streamed to
    a report as they are made, a first copy's findings cannot be withdrawn (the daemon's state staging can take them
    back: `FindingSink.withdraw`): a newer copy read second is then not read, and the source is marked partial,
    naming it. Each source's status lists the
    copies it gave that were dropped or replaced. Memory: a hash and an update time for each asset a rule reads
    (the assets no rule reads are never built); assets read in other processes (`--jobs`) are deduplicated by
    finding id only (`unique_findings`).
    """

    def __init__(self, run: EvaluationRun) -> None:
        self.run = run
        # hash of (name, has resource, has IAM policy) -> the kept copy's update time (a string the asset held)
        self.seen: dict[int, str | None] = {}

    def stream(self, assets: Iterable[Asset], status: SourceStatus) -> Iterator[Asset]:
        seen, run = self.seen, self.run
        missing = object()
        for a in assets:
            key = hash((a.name, a.has_resource, a.has_iam_policy))
            kept: Any = seen.get(key, missing)
            if kept is missing:
                seen[key] = a.update_time
                yield a
                continue
            times = f"update times {kept or 'unknown'} and {a.update_time or 'unknown'}"
            later = a.update_time is not None and (kept is None or a.update_time > kept)
            if later and run.result.sink is not None and run.result.withdraw is None:
                # the first copy's findings are already written (a streamed report): it stays, and the result
                # says that a newer copy was not read
                self._note(status, f"{a.name}: read again at {a.origin} ({times}); the copy read first was "
                                   "already reported and is kept")
                status.fail("*", f"{a.name}: a newer copy at {a.origin} was read after the older one was reported")
                continue
            if later:
                run.forget(a)
                seen[key] = a.update_time
                self._note(status, f"{a.name}: read again at {a.origin} ({times}); the later copy replaces the first")
                yield a
            else:
                self._note(status, f"{a.name}: read again at {a.origin} ({times}); the copy read first is kept")

    @staticmethod
    def _note(status: SourceStatus, what: str) -> None:
        status.duplicate_count += 1
        if len(status.duplicates) < MAX_DUPLICATES_LISTED:
            status.duplicates.append(what)


def unique_findings(findings: list[Finding]) -> int:
    """Drop repeated findings (the same id: rule, asset and detail), keeping the first; the number dropped.
    `findings` is in the engine's order, where findings with one id are next to each other."""
    out: list[Finding] = []
    last = None
    for f in findings:
        if f.id != last:
            out.append(f)
            last = f.id
    dropped = len(findings) - len(out)
    if dropped:
        findings[:] = out
    return dropped


def _chain(sources: list[Source], on_asset: Callable[[int], None] | None,
           dedupe: Duplicates | None = None, observe: Callable[[Asset], None] | None = None) -> Iterator[Asset]:
    if dedupe is not None:
        stream: Iterator[Asset] = itertools.chain.from_iterable(dedupe.stream(_read(s), s.status) for s in sources)
    else:
        stream = itertools.chain.from_iterable(_read(s) for s in sources)
    if observe is not None:
        stream = _observed(stream, observe)
    if on_asset is None:
        yield from stream
        return
    for n, a in enumerate(stream, 1):
        if n % 1000 == 0:
            # readers may skip assets no rule reads: the count read so far is theirs when they keep one
            on_asset(max(n, sum(s.status.assets for s in sources)))
        yield a


def _observed(stream: Iterator[Asset], observe: Callable[[Asset], None]) -> Iterator[Asset]:
    for a in stream:
        observe(a)
        yield a


def _parallel(
    engine: Engine,
    sources: list[Source],
    evaluation: Evaluation,
    jobs: int,
    cluster: str,
    on_progress: Callable[[int], None] | None,
    threaded: bool,
    observe: Callable[[Asset], None] | None = None,
) -> None:
    from auditor.collect.files import FileSource
    from auditor.parallel import ParallelReader

    run = engine.start(evaluation)
    dedupe = Duplicates(run)
    with ParallelReader(engine, jobs, cluster, threaded) as reader:
        for source in sources:
            if isinstance(source, FileSource):
                with attributed(source.uri):
                    reader.feed(source, run, on_progress, dedupe)
            else:
                run.feed(_chain([source], on_progress, dedupe, observe))
    run.finish()


def run_scan(
    source_specs: list[str],
    rules: list[LoadedRule],
    options: SourceOptions | None = None,
    *,
    now: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    threaded: bool = False,
    on_finding: Callable[[Finding], None] | None = None,
    sink: FindingSink | None = None,
    observe: Callable[[Asset], None] | None = None,
) -> ScanResult:
    """Scan the named sources with the given rules. Sources that cannot be opened raise SourceError.

    With `jobs` > 1, large uncompressed NDJSON exports are read and evaluated in that many processes (same result;
    a malformed line is then reported once its range is read). `--strict` scans stay in one process. `threaded`:
    the caller runs other threads for good (the daemon), and workers come from a fork server (auditor/parallel.py).
    `on_finding`: each finding is handed to it as it is made and not kept (a report written as it goes); the
    result then counts them (`tally`) but its `findings` is empty.
    `sink`: each finding is handed to it as it is made, repeated ids included, and none is kept or counted (the
    daemon stages them in its state store, which counts them and drops repeats).
    `observe`: each asset read is shown to it (the daemon's retained index, auditor.incremental; not the assets of
    export files read by worker processes).
    """
    options = options or SourceOptions()
    engine = Engine(rules, now=now)
    options.asset_types = engine.asset_type_globs()
    options.extra.setdefault("needs_iam", engine.needs_iam())
    started = now or datetime.now(UTC)
    t0 = time.perf_counter()
    sources = []
    for spec in source_specs:
        with attributed(spec):
            sources.append(open_source(spec, options))
    evaluation = Evaluation()
    tally: Tally | None = None
    if on_finding is not None:
        tally = Tally()
        count, out = tally.add, on_finding
        # one finding per id (a binding repeated in a policy, an asset read twice): 8 bytes of the id a finding
        sent: set[int] = set()

        def send(f: Finding) -> None:
            key = int(f.id[:16], 16)
            if key in sent:
                return
            sent.add(key)
            count(f)
            out(f)

        evaluation.sink = send
    elif sink is not None:
        evaluation.sink, evaluation.withdraw = sink.add, sink.withdraw
    for source in sources:
        select = getattr(source, "select", None)
        if select is not None:  # the reader skips building assets no rule reads, and counts them
            select(engine.wants, evaluation.assets_by_type)
    with fewer_collections():
        if jobs > 1 and not options.strict:
            _parallel(engine, sources, evaluation, jobs, options.cluster, on_progress, threaded, observe)
        else:
            run = engine.start(evaluation)
            run.feed(_chain(sources, on_progress, Duplicates(run), observe))
            run.finish()
    unique_findings(evaluation.findings)
    elapsed = time.perf_counter() - t0
    stale = [
        {
            "rule": r.id,
            "resource": e.resource,
            "owner": e.owner,
            "ticket": e.ticket,
            "expires": e.expires.isoformat() if e.expires else None,
        }
        for r, _, e in engine.stale_exemptions(evaluation)
    ]
    return ScanResult(
        scanned_at=started,
        rules=rules,
        evaluation=evaluation,
        sources=[s.status for s in sources],
        durations={"collect_and_evaluate": elapsed},
        stale_exemptions=stale,
        tally=tally,
    )
