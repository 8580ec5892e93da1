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
import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from auditor import __version__
from auditor.collect import Source, SourceOptions, open_source
from auditor.errors import AuditorError, Cancelled, SourceError
from auditor.evaluate.engine import Engine, Evaluation, EvaluationRun, finding_order
from auditor.evaluate.rulebook import LoadedRule
from auditor.keys import KeyMap, KeySet, UpdateTimes
from auditor.model import SEVERITIES, Asset, Finding, NotEvaluated, SourceStatus
from auditor.report.spool import (
    COPY_BYTES,
    META_BYTES,
    NO_COPY,
    NO_GEN,
    EncodingSink,
    FindingSink,
    Spot,
    Tally,
    copy_tag,
    finding_meta,
    matching,
)

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_INVALID = 2
EXIT_PARTIAL = 3


class StagingSink(Protocol):
    """Where a scan hands each finding as it is made, and that can take back those of an asset a later copy
    replaces, by asset and rules (the daemon's state staging): the scan keeps and counts none of them."""

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


JOBS_AUTO = "auto"
Jobs = int | Literal["auto"]  # processes for `--jobs`: a number, or "auto" (`usable_cores`)


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may keep busy: those it may run on (`os.sched_getaffinity`: a cpuset, `taskset`),
    fewer when a CPU quota (a container's CPU limit, cgroup v2 `cpu.max`) allows less; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 limit readable here: the affinity alone
        pass
    return max(1, cores)


def resolve_jobs(jobs: Jobs) -> int:
    """`jobs` as a number of processes ("auto": `usable_cores`)."""
    if jobs == JOBS_AUTO:
        return usable_cores()
    if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1:
        return jobs
    raise ValueError(f"jobs must be a number of processes (1 or more) or {JOBS_AUTO!r}, not {jobs!r}")


_gc_lock = threading.Lock()
_gc_scans = 0
_gc_saved: tuple[int, int, int] | None = None
GC_THRESHOLD = 100_000  # allocations between young-generation collections while a scan runs (Python default: 700)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage less often while assets stream by.

    A scan allocates millions of short-lived objects (records, decoded policies) while it keeps a few hundred
    thousand (context): at Python's default threshold the cyclic collector ran thousands of times over them,
    about a fifth of a million-asset scan. At 10,000 it still cost about a tenth of a scan of large Cloud Armor
    policies (the thousands of objects one policy's checks make were alive at each collection); at 100,000 most
    have been freed by then, and the peak is the same. Nothing a scan makes relies on prompt cycle collection.
    Scans running at once (daemon threads) share the setting; the last one to finish restores it.
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


def local_key(a: Asset) -> int:
    """What makes two assets one (its name, and whether it carries its resource and its IAM policy: a CAI export
    gives those in two files), hashed for this process."""
    return hash((a.name, a.has_resource, a.has_iam_policy))


def stable_key(a: Asset) -> int:
    """`local_key`, the same in every process (worker processes of `--jobs` may start with another hash seed)."""
    digest = hashlib.blake2b(a.name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) ^ (a.has_resource << 1 | a.has_iam_policy)


def is_later(update_time: str | None, kept: str | None) -> bool:
    """Whether a copy read after the kept one replaces it: its update time is later (RFC 3339 times, compared as
    text), or it has one and the kept copy has none. On a tie the copy read first stays (files are read in sorted
    order, sources in the order given): a copy of an export beside itself changes nothing."""
    return update_time is not None and (kept is None or update_time > kept)


class Duplicates:
    """One asset is one asset: the same asset (see `local_key`) read twice, from two files or two sources, is
    evaluated once: the copy with the later update time (`is_later`) is kept.

    A later copy read second replaces the first: the first's count and the checks with context still to run on it
    are withdrawn (`EvaluationRun.forget`), and its findings, already handed on (a report streams them as they are
    made), are taken back by the scan's `Collector` once the scan is over: every finding goes out tagged with the
    copy that gave it (`cur_key`, `cur_gen`), and `losers` names the copies replaced; a sink that takes findings
    back by asset (the daemon's staging) is told at once, by `forget`. Otherwise the copy read second is
    dropped before it is evaluated. Copies read in worker processes (`--jobs`) are merged the same way, in read
    order (`merge`). Each source's status lists the copies it gave that were dropped or replaced. Memory: for each
    asset a rule reads (the assets no rule reads are never built), its hash and its update time in 16 to 32 bytes
    (`KeyMap`; a time of an unusual form is kept once as text, `UpdateTimes`), and a little for each asset read
    more than once.
    """

    def __init__(self, run: EvaluationRun, key: Callable[[Asset], int] = local_key) -> None:
        self.run = run
        self.key = key
        # hash of what makes an asset one -> the kept copy's update time, as `times` encodes it
        self.seen = KeyMap()
        self.times = UpdateTimes()
        self.closed = False  # `read_all`: every source was read
        self.gens: dict[int, int] = {}  # hash -> copies of it replaced so far (only assets read more than once)
        self.losers: set[bytes] = set()  # copy tags (auditor/report/spool.py) of the copies replaced
        # the copy being evaluated: its hash and generation (how many copies it replaced); NO_GEN between copies
        self.cur_key, self.cur_gen = 0, NO_GEN

    def read_all(self) -> None:
        """Every source is read: the table of the copies read is let go before the checks with context run, whose
        indexes grow while it would sit unused (17 MB of a scan's peak at a million assets). No copy may come
        after this."""
        self.seen, self.times, self.closed = KeyMap(), UpdateTimes(), True

    def _refuse_if_closed(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(f"{what} after every source was read: their repeats would go unnoticed")

    def stream(self, assets: Iterable[Asset], status: SourceStatus) -> Iterator[Asset]:
        self._refuse_if_closed("assets read")
        seen, run, keyof, encode = self.seen, self.run, self.key, self.times.encode
        for a in assets:
            key = keyof(a)
            place = seen.add(key, encode(a.update_time))
            if place < 0:  # read first
                self.cur_key, self.cur_gen = key, 0
                yield a
                continue
            kept = self.times.decode(seen.value_at(place))
            times = f"update times {kept or 'unknown'} and {a.update_time or 'unknown'}"
            if is_later(a.update_time, kept):
                run.forget(a)
                self.cur_key, self.cur_gen = key, self.replace(key, a.update_time)
                self.note(status, f"{a.name}: read again at {a.origin} ({times}); the later copy replaces the first")
                yield a
            else:
                self.note(status, f"{a.name}: read again at {a.origin} ({times}); the copy read first is kept")
        self.cur_gen = NO_GEN

    def replace(self, key: int, update_time: str | None, handed_on: bool = True) -> int:
        """A copy with this update time replaces the kept one; the new copy's generation. `handed_on`: the kept
        copy's findings were handed on (otherwise they are simply left out, and nothing is taken back)."""
        gen = self.gens.get(key, 0)
        if handed_on:
            self.losers.add(copy_tag(key, gen))
        self.gens[key] = gen + 1
        self.seen.put(key, self.times.encode(update_time))
        return gen + 1

    def merge(self, keys: Sequence[int], times: Sequence[int], coder: UpdateTimes) -> Merged:
        """The copies a worker read, in order (their hashes, and their update times as the worker's `coder`
        encoded them), against those read before.

        Copies read earlier in the same batch are ones whose findings were not handed on yet: a copy of them that
        loses is left out (`dropped`), not taken back."""
        self._refuse_if_closed("assets merged")
        out = Merged()
        seen, encode, decode = self.seen, self.times.encode, self.times.decode
        here: dict[int, int] = {}  # hash -> the copy of this batch that is kept
        for i, (key, code) in enumerate(zip(keys, times, strict=True)):
            if code & 1:  # a time of an unusual form, named by the worker's number for it: this scan's number
                code = encode(coder.decode(code))
            place = seen.add(key, code)
            if place < 0:  # read first
                here[key] = i
                continue
            t, kept = decode(code), decode(seen.value_at(place))
            notes = out.notes
            times_ = f"update times {kept or 'unknown'} and {t or 'unknown'}"
            if is_later(t, kept):
                first = here.get(key)
                if first is None:
                    out.replaced[key] = i
                else:
                    out.dropped.add(first)
                out.gens[i] = self.replace(key, t, handed_on=first is None)
                here[key] = i
                notes.append((i, f"{times_}; the later copy replaces the first"))
            else:
                out.dropped.add(i)
                notes.append((i, f"{times_}; the copy read first is kept"))
        return out

    @staticmethod
    def note(status: SourceStatus, what: str | Callable[[], str]) -> None:
        """Count a copy read again; list what happened (`what`, asked only while the list has room)."""
        status.duplicate_count += 1
        if len(status.duplicates) < MAX_DUPLICATES_LISTED:
            status.duplicates.append(what if isinstance(what, str) else what())


@dataclass
class Merged:
    """What `Duplicates.merge` decided for a batch of copies read in a worker (by their place in the batch)."""

    dropped: set[int] = field(default_factory=set)  # copies left out: a copy kept elsewhere is as late or later
    gens: dict[int, int] = field(default_factory=dict)  # copies that replaced one: their generation
    # hashes whose copy read before this batch was replaced -> the copy of the batch that replaced it
    replaced: dict[int, int] = field(default_factory=dict)
    notes: list[tuple[int, str]] = field(default_factory=list)  # (copy, what happened) for each copy read again


class KeptFindings:
    """The findings a scan keeps (when no report takes them as they come), each with the asset copy that gave it."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._copies = bytearray()  # COPY_BYTES a finding, in the order of `findings`

    def add(self, f: Finding, copy: bytes) -> None:
        self.findings.append(f)
        self._copies += copy

    def find(self, match: Callable[[bytes], bool]) -> list[Spot]:
        out = []
        for i, f in enumerate(self.findings):
            meta = finding_meta(f, bytes(self._copies[i * COPY_BYTES : (i + 1) * COPY_BYTES]))
            if match(meta):
                out.append(Spot(f.rule, i, meta))
        return out

    def drop(self, spots: Iterable[Spot]) -> None:
        gone = {s.place for s in spots}
        self.findings = [f for i, f in enumerate(self.findings) if i not in gone]


class _Calls:
    """A plain function given as `on_finding`: it gets each finding as it is made and cannot take one back."""

    def __init__(self, fn: Callable[[Finding], None]) -> None:
        self.fn = fn

    def add(self, f: Finding, copy: bytes) -> None:
        self.fn(f)

    def find(self, match: Callable[[bytes], bool]) -> list[Spot]:
        return []

    def drop(self, spots: Iterable[Spot]) -> None:
        pass


class Collector:
    """The sink of a scan's evaluation: one finding per id (a binding repeated in a policy, an asset read twice),
    counted, handed to `out` with the asset copy that gave it; `settle` takes back those of replaced copies.

    A copy that replaced another may report what the other reported (the same id): that finding is handed on again
    (a claim), and kept once the other's is taken back. Memory: 8 bytes of the id a finding in a table at most half
    full (`KeySet`: 16 to 32 bytes a finding), and 20 bytes a claim.
    """

    def __init__(self, out: FindingSink, dedupe: Duplicates, tally: Tally) -> None:
        self.out = out
        self.dedupe = dedupe
        self.tally = tally
        self.sent = KeySet()  # the ids handed on (their first 8 bytes)
        # the ids handed on by the copy being evaluated, when it replaced another: a copy's findings come one after
        # the other (its streamed checks run as it passes; its deferred ones at the end, as no copy's)
        self.own_copy, self.own = NO_COPY, set[int]()
        self.claims: set[bytes] = set()  # copy + id: handed on again by a copy that replaced another

    def __call__(self, f: Finding) -> None:
        d = self.dedupe
        gen = d.cur_gen
        key = int(f.id[:16], 16)
        if gen == 0:  # a copy read first (nearly every finding's): `_admit`'s first case, without the call
            if self.sent.add(key) < 0:
                self.tally.add(f)
                self.out.add(f, copy_tag(d.cur_key, 0))
            return
        copy = NO_COPY if gen == NO_GEN else copy_tag(d.cur_key, gen)
        if self._admit(key, copy, gen):
            self.tally.add(f)
            self.out.add(f, copy)

    def take(self, rule: str, group: str, line: bytes, mark: bytes) -> None:
        """A finding encoded by a worker process (`--jobs`): its rule, report group, line and record but the copy
        (`finding_mark`); `out` is then an EncodingSink. The same decisions as for a finding object."""
        d = self.dedupe
        gen = d.cur_gen
        copy = NO_COPY if gen == NO_GEN else copy_tag(d.cur_key, gen)
        if self._admit(int.from_bytes(mark[:8], "big"), copy, gen):
            self.tally.add_record(rule, mark[8], bool(mark[9]))
            self.out.add_line(group, line, copy + mark)  # type: ignore[attr-defined]

    def take_group(self, rule: str, group: str, ids: Iterable[int], lines: bytes, records: bytes,
                   ends: Sequence[int]) -> None:
        """Findings of one report group encoded by a worker process, all of copies read first (generation 0): the
        first 8 bytes of their ids as numbers, their lines one after the other (`ends`: where each ends) and
        their records. The same decisions as `take` for each, the group handed on in one piece when none was
        handed on before (the usual case)."""
        add = self.sent.add
        repeated = [j for j, key in enumerate(ids) if add(key) >= 0]
        if not repeated:
            self.tally.add_records(rule, records)
            self.out.add_line(group, lines, records)  # type: ignore[attr-defined]
            return
        skip = set(repeated)
        start = 0
        for j, end in enumerate(ends):
            if j not in skip:
                record = records[j * META_BYTES : (j + 1) * META_BYTES]
                self.tally.add_record(rule, record[COPY_BYTES + 8], bool(record[COPY_BYTES + 9]))
                self.out.add_line(group, lines[start:end], record)  # type: ignore[attr-defined]
            start = end

    def _admit(self, key: int, copy: bytes, gen: int) -> bool:
        """Whether a finding (the first 8 bytes of its id, as a number) of this copy is handed on."""
        if 0 < gen < NO_GEN:
            if copy != self.own_copy:
                self.own_copy, self.own = copy, set()
            own = self.own
            if key in own:
                return False
            own.add(key)
            if self.sent.add(key) >= 0:  # handed on before
                self.claims.add(copy + key.to_bytes(8, "big"))
            return True
        return self.sent.add(key) < 0

    def settle(self) -> int:
        """Take back the findings of the replaced copies, and the claims that turn out to be repeats of a copy that
        stays; the number taken back."""
        losers = self.dedupe.losers
        if not losers and not self.claims:
            return 0
        spots = self.out.find(matching(losers, self.claims))
        taken = {(s.copy[:8], s.id) for s in spots if s.copy in losers}
        drop = [s for s in spots if s.copy in losers or (s.copy[:8], s.id) not in taken]
        self.out.drop(drop)
        for s in drop:
            self.tally.remove(s.rule, s.rank, s.exempted)
        return len(drop)


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
    run: EvaluationRun,
    sources: list[Source],
    dedupe: Duplicates,
    jobs: int,
    cluster: str,
    on_progress: Callable[[int], None] | None,
    threaded: bool,
    observe: Callable[[Asset], None] | None = None,
    collector: Collector | None = None,
) -> None:
    from auditor.collect.files import FileSource
    from auditor.parallel import ParallelReader

    with ParallelReader(run.engine, jobs, cluster, threaded, collector) as reader:
        for source in sources:
            if isinstance(source, FileSource):
                with attributed(source.uri):
                    reader.feed(source, run, on_progress, dedupe)
            else:
                run.feed(_chain([source], on_progress, dedupe, observe))


def run_scan(
    source_specs: list[str],
    rules: list[LoadedRule],
    options: SourceOptions | None = None,
    *,
    now: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
    jobs: Jobs = 1,
    threaded: bool = False,
    on_finding: FindingSink | Callable[[Finding], None] | None = None,
    sink: StagingSink | None = None,
    observe: Callable[[Asset], None] | None = None,
) -> ScanResult:
    """Scan the named sources with the given rules. Sources that cannot be opened raise SourceError.

    With `jobs` > 1, large uncompressed NDJSON exports are read and evaluated in that many processes (same result;
    a malformed line is then reported once its range is read); "auto": as many as `usable_cores`. `--strict` scans
    stay in one process. `threaded`: the caller runs other threads for good (the daemon), and workers come from a
    fork server (auditor/parallel.py).
    `on_finding`: each finding is handed to it as it is made and not kept (a report written as it goes); the
    result then counts them (`tally`) but its `findings` is empty. A FindingSink (a StreamedReport) is also asked to
    take back the findings of an asset copy that a later copy replaced (see `Duplicates`); a plain function gets
    every finding and cannot take one back.
    `sink`: each finding is handed to it as it is made, repeated ids included, and none is kept or counted (the
    daemon stages them in its state store, which counts them and drops repeats); the findings of a copy a later
    one replaces are withdrawn from it by asset and rules as the later copy arrives.
    `observe`: each asset read is shown to it (the daemon's retained index, auditor.incremental; not the assets of
    export files read by worker processes).
    """
    options = options or SourceOptions()
    jobs = resolve_jobs(jobs)
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
    parallel = jobs > 1 and not options.strict
    run = engine.start(evaluation)
    dedupe = Duplicates(run, stable_key if parallel else local_key)
    tally: Tally | None = Tally()
    kept: KeptFindings | None = None
    collector: Collector | None = None
    out: FindingSink
    if sink is not None and on_finding is None:
        evaluation.sink, evaluation.withdraw, tally = sink.add, sink.withdraw, None
    else:
        if on_finding is None:
            out = kept = KeptFindings()
        elif isinstance(on_finding, FindingSink):
            out = on_finding
        else:
            out = _Calls(on_finding)
        assert tally is not None
        collector = Collector(out, dedupe, tally)
        evaluation.sink = collector
    for source in sources:
        select = getattr(source, "select", None)
        if select is not None:  # the reader skips building assets no rule reads, and counts them
            select(engine.wants, evaluation.assets_by_type)
    with fewer_collections():
        if parallel:
            # a report that takes encoded lines gets them from the workers: no finding crosses as an object
            encoded = collector if collector is not None and isinstance(collector.out, EncodingSink) else None
            _parallel(run, sources, dedupe, jobs, options.cluster, on_progress, threaded, observe, encoded)
        else:
            run.feed(_chain(sources, on_progress, dedupe, observe))
        dedupe.read_all()
        run.finish()
    if collector is not None:
        collector.settle()
    if kept is not None:
        evaluation.sink, tally = None, None
        evaluation.findings = sorted(kept.findings, key=finding_order)
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
