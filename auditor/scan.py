"""One scan: open the sources, stream their assets through the engine, and say how complete the snapshot was.

Shared by `auditor scan`, `auditor plan` and each cycle of the daemon.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from auditor import __version__
from auditor.collect import Source, SourceOptions, open_source
from auditor.errors import AuditorError, Cancelled, SourceError
from auditor.evaluate.engine import Engine, Evaluation
from auditor.evaluate.rulebook import LoadedRule
from auditor.model import Asset, Finding, SourceStatus
from auditor.report.spool import Tally


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
    def complete(self) -> bool:
        return all(s.complete for s in self.sources)

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


def _chain(sources: list[Source], on_asset: Callable[[int], None] | None) -> Iterator[Asset]:
    stream: Iterator[Asset] = itertools.chain.from_iterable(_read(s) for s in sources)
    if on_asset is None:
        yield from stream
        return
    for n, a in enumerate(stream, 1):
        if n % 1000 == 0:
            # readers may skip assets no rule reads: the count read so far is theirs when they keep one
            on_asset(max(n, sum(s.status.assets for s in sources)))
        yield a


def _parallel(
    engine: Engine,
    sources: list[Source],
    evaluation: Evaluation,
    jobs: int,
    cluster: str,
    on_progress: Callable[[int], None] | None,
    threaded: bool,
) -> None:
    from auditor.collect.files import FileSource
    from auditor.parallel import ParallelReader

    run = engine.start(evaluation)
    with ParallelReader(engine, jobs, cluster, threaded) as reader:
        for source in sources:
            if isinstance(source, FileSource):
                with attributed(source.uri):
                    reader.feed(source, run, on_progress)
            else:
                run.feed(_chain([source], on_progress))
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
) -> ScanResult:
    """Scan the named sources with the given rules. Sources that cannot be opened raise SourceError.

    With `jobs` > 1, large uncompressed NDJSON exports are read and evaluated in that many processes (same result;
    a malformed line is then reported once its range is read). `--strict` scans stay in one process. `threaded`:
    the caller runs other threads for good (the daemon), and workers come from a fork server (auditor/parallel.py).
    `on_finding`: each finding is handed to it as it is made and not kept (a report written as it goes); the
    result then counts them (`tally`) but its `findings` is empty.
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

        def sink(f: Finding) -> None:
            count(f)
            out(f)

        evaluation.sink = sink
    for source in sources:
        select = getattr(source, "select", None)
        if select is not None:  # the reader skips building assets no rule reads, and counts them
            select(engine.wants, evaluation.assets_by_type)
    with fewer_collections():
        if jobs > 1 and not options.strict:
            _parallel(engine, sources, evaluation, jobs, options.cluster, on_progress, threaded)
        else:
            engine.evaluate(_chain(sources, on_progress), evaluation)
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
