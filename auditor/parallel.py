"""Collect and evaluate over several processes: a large NDJSON export read in byte ranges, in parallel, and the
shards of a sharded export (plain or gzip) read a whole file per worker.

Each worker reads whole lines of its range (or its whole file), skips what no rule reads, runs the streamed checks
and returns its findings, counts and errors, together with the assets that checks with context need at the end. The
parent absorbs the parts in file order, then runs the checks with context once over the whole snapshot, so the
result is the one a single process gives: same findings in the same order, same counts, same problems with the same
line numbers.

The checks with context stay in the parent: run in forked workers, they took 3 s off a million-asset scan but
more than doubled its memory (each worker copied the pages of the snapshot it touched and built its own indexes).

Workers see line numbers counted from the start of their range; the parent renumbers what comes back (problems, and
the `origin` of the assets it keeps), since the lines before a range are only counted once every range is read.

One asset is one asset across workers too: each worker lists the assets it evaluated (a stable hash of what makes
an asset one, its update time, which findings and kept assets it gave; `_Copies`), and the parent merges the lists
in read order (`Duplicates.merge`, auditor/scan.py): a copy that loses to one read before it is left out with its
findings, and a copy read before that loses to a later one has its findings taken back when the scan settles.
"""

from __future__ import annotations

import gc
import gzip
import itertools
import multiprocessing
import sys
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.collect import SourceOptions
from auditor.collect.files import FileSource
from auditor.errors import AuditorError, RuleError
from auditor.evaluate.engine import Engine, Evaluation, EvaluationRun, Held
from auditor.evaluate.registry import get_check
from auditor.evaluate.rulebook import LoadedRule, Rule
from auditor.keys import UpdateTimes
from auditor.model import Asset, Finding
from auditor.report.spool import COPY_BYTES, META_BYTES, NO_COPY, NO_GEN, copy_tag, finding_mark

if TYPE_CHECKING:
    from auditor.scan import Collector, Duplicates, Merged

RANGES_PER_JOB = 4  # more ranges than processes, so that a slow range does not leave a core idle
MIN_RANGE_BYTES = 8 << 20
# A range's findings and kept assets wait whole in its worker, then in the parent until merged: ranges of about
# this size keep both small (at 52 MB a range, a worker's peak rose by about 40 MB), for a few milliseconds a range.
RANGE_BYTES = 8 << 20
AHEAD = 2  # ranges handed out per worker ahead of the parent's merging: the parts that may wait in the parent


@dataclass
class _Range:
    path: str
    start: int
    end: int  # -1: the whole file (a shard, perhaps compressed)
    cluster: str


@dataclass
class _Copies:
    """The assets a worker evaluated, in order: what the parent needs to tell copies of one asset apart."""

    keys: array[int] = field(default_factory=lambda: array("q"))  # scan.stable_key of each
    # update times, as `coder` encodes them (the usual form packed into the number; others named by it)
    times: array[int] = field(default_factory=lambda: array("Q"))
    coder: UpdateTimes = field(default_factory=UpdateTimes)
    types: list[str] = field(default_factory=list)  # the asset types met, and each copy's place in this list
    type_of: array[int] = field(default_factory=lambda: array("I"))
    lines: array[int] = field(default_factory=lambda: array("I"))  # line in the range
    iam: array[int] = field(default_factory=lambda: array("B"))  # 1: it carries an IAM policy
    findings: array[int] = field(default_factory=lambda: array("I"))  # findings made before it: then come its own
    held: array[int] = field(default_factory=lambda: array("I"))  # likewise the assets kept for the end

    def track(self, assets: Iterable[Asset], findings: Sized, held: list[Held]) -> Iterator[Asset]:
        from auditor.scan import stable_key

        index: dict[str, int] = {}
        keys, times, encode, type_of, lines, iam, made, kept = (
            self.keys, self.times, self.coder.encode, self.type_of, self.lines, self.iam, self.findings, self.held,
        )  # fmt: skip
        for a in assets:
            t = index.get(a.asset_type)
            if t is None:
                t = index[a.asset_type] = len(self.types)
                self.types.append(a.asset_type)
            keys.append(stable_key(a))
            times.append(encode(a.update_time))
            type_of.append(t)
            lines.append(a.line)
            iam.append(a.has_iam_policy)
            made.append(len(findings))
            kept.append(len(held))
            yield a

    def asset_type(self, i: int) -> str:
        return self.types[self.type_of[i]]


@dataclass
class _Group:
    """A range's findings of one report group (see report/spool.py's EncodingSink), in the order they were made:
    their lines one after the other (`ends`: where each ends), their records as the report spools them for a copy
    read first (generation 0: what nearly every copy is), the first 8 bytes of each id as a number, and the copy
    (its place in the range's `_Copies`) that made each.

    Grouped in the worker, a range's findings of a group usually go into the report as one piece: the parent's
    work for them is then a look-up of each id (`Collector.take_group`), not a copy and a record per finding."""

    lines: bytes
    records: bytes
    ids: array[int]
    ends: array[int]
    copies: array[int]


@dataclass
class _Encoded:
    """A worker's findings as the report writes them, by report group (in the order the groups were met).

    A few arrays and byte strings to pickle: findings pickled one by one cost the worker and the parent together
    about as much as evaluating them (30 microseconds a finding on the messy profile, most of it their remedies and
    details), and made `--jobs 2` cost more CPU than one process."""

    groups: list[str]
    parts: list[_Group]

    def __len__(self) -> int:
        return sum(len(g.ends) for g in self.parts)


class _Building:
    __slots__ = ("copies", "ends", "ids", "lines", "records")

    def __init__(self) -> None:
        self.lines, self.records = bytearray(), bytearray()
        self.ids, self.ends, self.copies = array("Q"), array("Q"), array("I")


class _Encoder:
    """The worker's evaluation sink when the parent's report takes encoded findings: each finding encoded as the
    report's `renderer` (a report/formats.py Renderer) does, into an `_Encoded`; `copies` tells which copy made it
    (the last one tracked). A copy's repeats of an id are left out here: whatever becomes of the copy, the
    parent's collector hands on at most one finding of an id per copy."""

    def __init__(self, renderer: Any, copies: _Copies) -> None:
        self.key, self.line_into = renderer.key, renderer.line_into
        self.copies = copies
        self.groups: dict[str, _Building] = {}
        self.made = 0
        self._copy, self._tag = -1, NO_COPY
        self._own: set[int] = set()  # the ids the copy being evaluated gave

    def __len__(self) -> int:  # the findings made so far (`_Copies.track`)
        return self.made

    def __call__(self, f: Finding) -> None:
        self.made += 1
        copy = len(self.copies.keys) - 1
        if copy != self._copy:
            self._copy, self._tag = copy, copy_tag(self.copies.keys[copy], 0)
            self._own.clear()
        key = int(f.id[:16], 16)
        if key in self._own:
            return  # the copy gave it already (a binding repeated in a policy): the parent would leave it out
        self._own.add(key)
        group = self.key(f)
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = _Building()
        self.line_into(f, g.lines)
        g.ends.append(len(g.lines))
        g.records += self._tag + finding_mark(f)
        g.ids.append(key)
        g.copies.append(copy)

    def done(self) -> _Encoded:
        return _Encoded(
            list(self.groups),
            [_Group(bytes(g.lines), bytes(g.records), g.ids, g.ends, g.copies) for g in self.groups.values()],
        )


@dataclass
class _Part:
    evaluation: Evaluation
    held: list[Held]
    lines: int
    copies: _Copies
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line in the range, reason)
    unknown: dict[str, int] = field(default_factory=dict)  # objects of kinds no reader knows, by kind
    failed: dict[str, str] = field(default_factory=dict)  # what could not be read (a corrupt gzip shard)
    encoded: _Encoded | None = None  # the findings, when the parent's report takes encoded lines (not `evaluation`)


_engine: Engine | None = None  # the worker's engine, built once per process
_renderer: Any = None  # the report's renderer, when the parent's report takes encoded lines


def _init(rules: list[tuple[Rule, str]], now: datetime, encoding: tuple[type[Any], list[Any]] | None) -> None:
    global _engine, _renderer
    from auditor.scan import GC_THRESHOLD

    # a worker does nothing but read and evaluate: the collector's pace of a scan (a forked worker inherits it)
    gc.set_threshold(max(GC_THRESHOLD, gc.get_threshold()[0]), *gc.get_threshold()[1:])
    loaded = []
    for rule, origin in rules:
        spec = get_check(rule.check)
        if spec is None:
            raise RuleError(f"{origin}: rule {rule.id}: check {rule.check!r} is not registered in a worker process")
        loaded.append(LoadedRule(rule=rule, spec=spec, params=spec.params.model_validate(rule.params), origin=origin))
    _engine = Engine(loaded, now=now)
    if encoding is not None:
        renderer_class, facts = encoding
        _renderer = renderer_class(facts)


def _scan_range(job: _Range) -> _Part:
    engine = _engine
    assert engine is not None, "worker not initialised"
    source = FileSource(job.path, SourceOptions(cluster=job.cluster))
    evaluation = Evaluation()
    source.select(engine.wants, evaluation.assets_by_type)
    held: list[Held] = []
    run = engine.start(evaluation, on_held=held.append)
    path = Path(job.path)
    copies = _Copies()
    encoder = _Encoder(_renderer, copies) if _renderer is not None else None
    evaluation.sink = encoder
    assets = source.file_assets(path) if job.end < 0 else source.range_assets(path, job.start, job.end)
    run.feed(copies.track(assets, encoder if encoder is not None else evaluation.findings, held))
    evaluation.sink = None
    encoded = encoder.done() if encoder is not None else None
    prefix = f"{path}:"
    problems = []
    failed = dict(source.status.failed_types)  # a file that could not be read (a corrupt gzip shard)
    unreadable = set(failed.values())
    for msg in source.status.errors:  # "path:line: reason", as FileSource writes them
        line, _, reason = msg[len(prefix) :].partition(": ")
        if msg not in unreadable and line.isdigit():
            problems.append((int(line), reason))
    return _Part(evaluation=evaluation, held=held, lines=source.lines_read, copies=copies, problems=problems,
                 unknown=dict(source.status.unknown), failed=failed, encoded=encoded)


def _context(threaded: bool) -> multiprocessing.context.BaseContext:
    # On Linux, fork: workers start at once, with the checks the parent registered, and without running the
    # caller's main module again (spawn would, so a script calling run_scan(jobs=...) would need a __main__ guard).
    # The workers only read files and run checks: no lock another parent thread may hold (a progress spinner's
    # console) is touched in them. A process running many threads for good (the daemon: scheduler, HTTP server,
    # leader election) uses a fork server instead: workers are forked from a clean single-threaded process that
    # imported the engine once, so no lock or state of those threads reaches them.
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    if threaded:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["auditor.parallel"])
        return ctx
    return multiprocessing.get_context("fork")


def _parts(pool: ProcessPoolExecutor, jobs: list[_Range], ahead: int = 4) -> Iterator[_Part]:
    """The workers' parts, in the order of `jobs`; at most `ahead` ranges are handed out beyond the one merged
    (`pool.map` hands out all at once: parts done early waited in the parent, its peak grew with the file)."""
    pending: deque[Future[_Part]] = deque()
    todo = iter(jobs)
    try:
        pending.extend(pool.submit(_scan_range, job) for job in itertools.islice(todo, ahead + 1))
        while pending:
            part = pending.popleft().result()
            following = next(todo, None)
            if following is not None:  # before the parent merges this part, so that no worker waits for it
                pending.append(pool.submit(_scan_range, following))
            yield part
    except BrokenProcessPool as exc:
        raise AuditorError(f"a scan worker process died ({exc}); out of memory? retry with fewer --jobs") from exc
    finally:
        for f in pending:
            f.cancel()


class ParallelReader:
    """Feeds an evaluation from sources, splitting each large NDJSON file over `jobs` processes."""

    def __init__(
        self, engine: Engine, jobs: int, cluster: str, threaded: bool = False, collector: Collector | None = None
    ) -> None:
        """`collector`: the scan's, when its report takes findings encoded (spool.EncodingSink): the workers then
        encode them, and the parent hands their lines on."""
        self.engine = engine
        self.collector = collector
        self.jobs = max(1, jobs)
        self.cluster = cluster
        self.threaded = threaded
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ParallelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            rules = [(r.rule, r.origin) for r in self.engine.rules]
            encoding = self.collector.out.encoding() if self.collector is not None else None  # type: ignore[attr-defined]
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=_context(self.threaded),
                initializer=_init,
                initargs=(rules, self.engine.now, encoding),
            )
        return self._pool

    def feed(
        self,
        source: FileSource,
        run: EvaluationRun,
        on_asset: Callable[[int], None] | None,
        dedupe: Duplicates,
    ) -> None:
        """Every asset of the source, in order: large NDJSON files in parallel ranges, other files here; `dedupe`
        sees them all (those read in workers through the lists of copies the workers give)."""
        plan = self._plan(source)
        batch: list[_Range] = []  # consecutive files' jobs, run together so that small shards share the workers
        for f, jobs in plan:
            if jobs is not None:
                batch += jobs
                continue
            self._run(batch, source, run, on_asset, dedupe)
            batch = []
            run.feed(self._progress(source, dedupe.stream(source.file_assets(f), source.status), on_asset))
        self._run(batch, source, run, on_asset, dedupe)
        source.finish()

    def _plan(self, source: FileSource) -> list[tuple[Path, list[_Range] | None]]:
        """Each file with its jobs: byte ranges of a large uncompressed NDJSON file, the whole file for an NDJSON
        shard (gzip or not), None for what is read here (JSON documents, Kubernetes lists, and everything when the
        files to share out are too small to be worth a worker)."""
        out: list[tuple[Path, list[_Range] | None]] = []
        shared = 0
        for f in source.files:
            if not source.is_ndjson(f):
                out.append((f, None))
                continue
            size = f.stat().st_size
            parts = max(self.jobs * RANGES_PER_JOB, -(-size // RANGE_BYTES))
            ranges = [] if source.is_gzip(f) else source.cut(f, parts, MIN_RANGE_BYTES)
            if len(ranges) > 1:
                out.append((f, [_Range(str(f), start, end, self.cluster) for start, end in ranges]))
            else:
                out.append((f, [_Range(str(f), 0, -1, self.cluster)]))
            shared += f.stat().st_size
        if shared < 2 * MIN_RANGE_BYTES:
            return [(f, None) for f, _ in out]
        return out

    def _run(
        self,
        jobs: list[_Range],
        source: FileSource,
        run: EvaluationRun,
        on_asset: Callable[[int], None] | None,
        dedupe: Duplicates,
    ) -> None:
        """Run the jobs in the workers; absorb their parts in order, numbering lines per file."""
        if not jobs:
            return
        base, path = 1, ""  # line number of the first line of the next range of `path`
        for job, part in zip(jobs, _parts(self._executor(), jobs, AHEAD * self.jobs), strict=True):
            if job.path != path:
                base, path = 1, job.path
            for line, reason in part.problems:
                source.report(f"{path}:{base + line - 1}", reason)
            for kind, n in part.unknown.items():
                source.status.unknown[kind] = source.status.unknown.get(kind, 0) + n
            for asset_type, reason in part.failed.items():
                source.status.fail(asset_type, reason)
                source.status.errors.append(reason)
            for asset, _ in part.held:
                asset.renumber(base - 1)
            source.status.assets += sum(part.evaluation.assets_by_type.values())
            held = _merge(part, job, base, source, run, dedupe, self.collector)
            run.absorb(part.evaluation, held)
            base += part.lines
            if on_asset is not None:
                on_asset(source.status.assets)

    @staticmethod
    def _progress(
        source: FileSource, assets: Iterator[Asset], on_asset: Callable[[int], None] | None
    ) -> Iterator[Asset]:
        if on_asset is None:
            yield from assets
            return
        for n, a in enumerate(assets, 1):
            if n % 1000 == 0:
                on_asset(source.status.assets)
            yield a


def _merge(
    part: _Part,
    job: _Range,
    base: int,
    source: FileSource,
    run: EvaluationRun,
    dedupe: Duplicates,
    collector: Collector | None = None,
) -> list[Held]:
    """Merge a worker's copies with those read before (see the module's docstring); hand on its findings, each
    tagged with its copy, but those of copies left out; the assets it kept for the end, but those of copies left
    out."""
    copies, evaluation = part.copies, part.evaluation
    merged = dedupe.merge(copies.keys, copies.times, copies.coder)
    if merged.replaced:
        # the copies read before, now replaced: their count, the checks with context still to run on them and, for
        # a sink that takes findings back by asset (the daemon's staging), their findings, before the later
        # copies' findings go out
        for i in merged.replaced.values():
            run.result.assets_by_type[copies.asset_type(i)] -= 1
        run.forget_hashed(merged.replaced, dedupe.key)
        withdraw = run.result.withdraw
        if withdraw is not None:
            names = _names_at(job, sorted({copies.lines[i] for i in merged.replaced.values()}))
            for i in merged.replaced.values():
                name = names.get(copies.lines[i])
                if name is not None:
                    withdraw(name, run.streamed_rule_ids(copies.asset_type(i), bool(copies.iam[i])))
    findings, evaluation.findings = evaluation.findings, []
    made, keys, dropped, gens = copies.findings, copies.keys, merged.dropped, merged.gens
    i = 0
    try:
        if part.encoded is not None:
            assert collector is not None
            _take(part.encoded, collector, keys, merged, dedupe)
        for j, f in enumerate(findings):
            i = bisect_right(made, j, i) - 1  # the copy that made it: the last one with no more findings before it
            if i in dropped:
                continue
            dedupe.cur_key, dedupe.cur_gen = keys[i], gens.get(i, 0)
            run.result.add(f)
    finally:
        dedupe.cur_gen = NO_GEN
    held = part.held
    if dropped:
        kept = copies.held
        held = [h for k, h in enumerate(held) if bisect_right(kept, k) - 1 not in dropped]
        for i in dropped:
            evaluation.assets_by_type[copies.asset_type(i)] -= 1
    if merged.notes:
        _note(merged, copies, job, base, source, dedupe)
    return held


def _take(
    encoded: _Encoded,
    collector: Collector,
    keys: array[int],
    merged: Merged,
    dedupe: Duplicates,
) -> None:
    """Hand on a worker's encoded findings, each tagged with its copy, but those of copies left out (as `_merge`
    does with finding objects). A group at a time: a finding's id is the same only for the same rule, so its
    repeats are all in one group, in the order they were made, and what is handed on is the same as in the order
    the findings were made. When every copy of the range was read first, each group goes as the worker recorded
    it (`Collector.take_group`)."""
    dropped, gens = merged.dropped, merged.gens
    for group, g in zip(encoded.groups, encoded.parts, strict=True):
        rule = group.partition("\x00")[0]  # a group is a rule, perhaps qualified after a NUL
        if not dropped and not gens:
            collector.take_group(rule, group, g.ids, g.lines, g.records, g.ends)
            continue
        lines, records, ends, copies = g.lines, g.records, g.ends, g.copies
        take = collector.take
        start = 0
        for j, end in enumerate(ends):
            i = copies[j]
            if i not in dropped:
                dedupe.cur_key, dedupe.cur_gen = keys[i], gens.get(i, 0)
                take(rule, group, lines[start:end], records[j * META_BYTES + COPY_BYTES : (j + 1) * META_BYTES])
            start = end


def _note(merged: Merged, copies: _Copies, job: _Range, base: int, source: FileSource, dedupe: Duplicates) -> None:
    """List the copies read again, by name (read again from the file: a worker sends no names)."""
    from auditor.scan import MAX_DUPLICATES_LISTED

    room = MAX_DUPLICATES_LISTED - len(source.status.duplicates)
    listed = itertools.islice(merged.notes, max(room, 0))
    names = _names_at(job, sorted({copies.lines[i] for i, _ in listed} - {0}))
    for i, what in merged.notes:
        line = copies.lines[i]
        where = f"{job.path}:{base + line - 1}" if line else job.path
        name = names.get(line, "an asset")
        dedupe.note(source.status, f"{name}: read again at {where} ({what})")


def _names_at(job: _Range, lines: list[int]) -> dict[int, str]:
    """The asset names on these lines of a range (numbered from 1)."""
    import msgspec

    out: dict[int, str] = {}
    if not lines:
        return out
    wanted, last = set(lines), lines[-1]
    path = Path(job.path)
    opener: Callable[[Path], Any] = gzip.open if FileSource.is_gzip(path) else open
    with opener(path) as fh:  # mode "rb" is both openers' default
        if job.end >= 0:
            fh.seek(job.start)
        for n, raw in enumerate(fh, 1):
            if n in wanted:
                try:
                    obj = msgspec.json.decode(raw)
                    out[n] = str(obj.get("name")) if isinstance(obj, dict) else "an asset"
                except msgspec.DecodeError:
                    out[n] = "an asset"
            if n >= last:
                break
    return out
