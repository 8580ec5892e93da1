"""One audit cycle, the only module that runs every stage: collect + evaluate -> record -> remediate -> report.

Stages and their timing (`auditor_cycle_duration_seconds{stage}`):
- collect_evaluate: auditor.scan.run_scan streams assets from the sources straight through the engine, so
  reading and evaluating are interleaved per asset and timed together;
- record: drift computed and written in the state store (one transaction). The findings themselves went into the
  store's staging table a batch at a time as the evaluation made them (`CycleFindings`): the daemon never holds
  them all, only their counts;
- remediate: the remediation step, only when `remediation.enabled` and a plugin registers it (the remediations);
- report: the metrics view, /findings.json and the HTML report rebuilt from the store.

`Auditor.run_cycle` never raises: a cycle that fails (a source that cannot be opened, a rule file broken since
start, a bug) is recorded as `failed`, logged with its reason, counted, and leaves the last good values in place.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from auditor import plugins
from auditor.collect.cai_feed import FeedChange
from auditor.errors import AuditorError, Cancelled, SourceError
from auditor.evaluate.rulebook import LoadedRule, load_rules
from auditor.incremental import EVENT_GRACE_SECONDS, Incremental
from auditor.logs import bind_labels, get_logger, unbind_labels
from auditor.model import SEVERITIES, Finding, Mode, SourceStatus
from auditor.report.html import MAX_ROWS, render_report
from auditor.report.metrics import MetricsView, StageHistogram, build_view, plan_change_counts
from auditor.report.pages import FindingQuery
from auditor.report.spool import Tally
from auditor.scan import ScanResult, run_scan
from auditor.settings import Settings
from auditor.sinks.step import OutboundStep
from auditor.state import AdvisoryLeader, CycleInput, NotLeader, Recorded, Store, iso
from auditor.state.staging import Staging

REMEDIATION_STEP = "remediate"  # the cycle step a plugin registers in auditor.plugins.cycle_steps
REPORT_FINDINGS = 1000  # the worst open findings the report lists; every one is a page of /findings.json away
REPORT_NEWEST = 20
PROGRESS_EVERY = 10.0  # seconds between `progress` events of a running cycle


class CycleFindings:
    """The findings of a cycle as the evaluation makes them: staged in the state store a batch at a time, never all
    in memory (the store counts them and drops repeated ids). With remediation on, the ones a plan can answer (their
    rule names a remediation, in dryrun or enforce mode, not exempted) are also kept for the remediation step."""

    def __init__(self, staging: Staging, rules: Sequence[LoadedRule], keep_remediable: bool) -> None:
        self.staging = staging
        self._remediable = frozenset(
            r.id for r in rules if r.rule.remediation is not None and r.rule.mode is not Mode.audit
        ) if keep_remediable else frozenset()
        self._kept: list[Finding] = []

    def add(self, finding: Finding) -> None:
        self.staging.add(finding)
        if finding.rule in self._remediable and finding.exempted is None:
            self._kept.append(finding)

    def withdraw(self, asset: str, rules: frozenset[str]) -> None:
        self.staging.withdraw(asset, rules)
        if self._kept:
            self._kept = [f for f in self._kept if f.asset != asset or f.rule not in rules]

    def tally(self) -> Tally:
        """The counts of the distinct findings staged (what the summary, the log and the exit status read)."""
        tally = Tally()
        for rule, severity, exempted, n in self.staging.counts():
            if exempted:
                tally.exempted_by_rule[rule] += n
                continue
            tally.open_by_severity[severity] += n
            tally.open_by_rule[rule] += n
            if severity in SEVERITIES:
                tally.worst_rank = max(tally.worst_rank, SEVERITIES.index(severity))
        return tally

    def remediable(self) -> list[Finding]:
        """The kept findings, one per id, in the engine's order (worst first)."""
        seen: set[str] = set()
        out = []
        for f in sorted(self._kept, key=lambda f: (-f.severity.rank, f.rule, f.asset, f.id)):
            if f.id not in seen:
                seen.add(f.id)
                out.append(f)
        return out


class CycleAbandoned(Cancelled):
    """Raised inside the scan stream when the daemon shuts down: the cycle stops without recording anything."""


@dataclass
class RemediationOutput:
    """What the remediation step reports, normalised from whatever shape `run_remediation` returns."""

    counts: list[tuple[str, str, str, int]] = field(default_factory=list)  # rule, kind, outcome, n
    plan: dict[str, Any] | None = None
    html: str | None = None  # a fragment rendered by our own templates: trusted
    markdown: str | None = None


@dataclass
class CycleOutcome:
    outcome: str  # success | partial | failed | abandoned
    started_at: float
    ended_at: float
    durations: dict[str, float]
    cycle_id: int | None = None
    result: ScanResult | None = None
    recorded: Recorded | None = None
    error: str | None = None
    source_failed: bool = False  # the error came from opening or reading a source
    invalid_input: bool = False  # the error was bad input or rules (AuditorError): `serve --once` exits 2
    failed_source: str | None = None  # which configured source, when known
    remediation: RemediationOutput | None = None
    outbound: dict[str, Any] | None = None  # what the sinks step did (notifications, SCC)


@dataclass(frozen=True)
class Published:
    """What the HTTP endpoints serve, rebuilt after each cycle and swapped in whole. Bounded in size whatever the
    number of findings: the report lists the worst and the newest, /findings.json pages are read from the store."""

    view: MetricsView
    findings_json: bytes  # the first page of /findings.json
    report_html: bytes
    cycles_completed: int
    header: dict[str, Any] = field(default_factory=dict)  # the /findings.json keys other than the page


_CODES = (
    "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE",
    "INVALID_ARGUMENT", "FAILED_PRECONDITION", "ABORTED", "INTERNAL",
)
_HTTP = {"401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED", "404": "NOT_FOUND", "429": "RESOURCE_EXHAUSTED",
         "500": "INTERNAL", "502": "UNAVAILABLE", "503": "UNAVAILABLE", "504": "DEADLINE_EXCEEDED"}


def error_code(reason: str) -> str:
    """A bounded error code for a failure reason (metric label): a gRPC status name, or a coarse class."""
    upper = reason.upper()
    for code in _CODES:
        if code in upper or code.replace("_", " ") in upper:
            return code.lower()
    m = re.search(r"\b(40[134]|429|50[0234])\b", reason)
    if m:
        return _HTTP[m[1]].lower()
    low = reason.lower()
    if low.startswith("shrank"):
        return "shrunk"
    if "malformed" in low or "not valid" in low:
        return "malformed"
    if "no such file" in low or "cannot read" in low:
        return "unreadable"
    if "timed out" in low or "timeout" in low:
        return "deadline_exceeded"
    if "connection" in low or "refused" in low:
        return "unavailable"
    return "incomplete"


def _data_time(spec: str, status: SourceStatus | None, fallback: float) -> float:
    """When the data of a source was true: CAI's read_time, the newest export file, or when it was read."""
    if status is not None and status.read_time:
        try:
            return datetime.fromisoformat(status.read_time.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    if "://" not in spec:
        p = Path(spec)
        try:
            if p.is_file():
                return min(p.stat().st_mtime, fallback)
            if p.is_dir():
                times = [f.stat().st_mtime for f in p.rglob("*") if f.is_file()]
                return min(max(times), fallback) if times else fallback
        except OSError:
            pass
    return fallback


def _source_for(message: str, specs: Iterable[str]) -> str:
    for s in sorted(specs, key=len, reverse=True):
        if s in message:
            return s
    return "unknown"


class Auditor:
    """Runs cycles for the daemon (and `auditor serve --once`), and publishes what the endpoints serve."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time,
                 publish_at_start: bool = True, retain: bool = True) -> None:
        """`publish_at_start`: what the endpoints serve is read from the store now (the daemon serves it before its
        first cycle); `serve --once` serves nothing and skips it. `retain`: cycles keep the index changes from events
        are evaluated against (auditor.incremental); `serve --once` records no event and keeps none."""
        self.settings = settings
        self.store = store
        self.clock = clock
        self.log = get_logger("auditor.cycle")
        # Loaded once at start so a broken rule file refuses to start (exit 2); reloaded each cycle for edits.
        try:
            self.rules: list[LoadedRule] = load_rules(settings.rules or None)
        except AuditorError:
            raise
        except Exception as exc:  # an unreadable file (not UTF-8, permissions): refuse to start, on one line
            raise AuditorError(f"rules: {type(exc).__name__}: {exc}") from None
        self.histogram = StageHistogram()
        self.cancel = threading.Event()
        self._cycle_lock = threading.Lock()
        self.running_since: float | None = None
        self.cycles_completed = 0
        self.last_finished_at: float | None = None  # end of the last cycle that finished (any outcome but abandoned)
        self._plan_changes: list[tuple[str, str, int]] = []
        self._rule_evaluated: dict[str, int] | None = None  # rule id -> 1/0 for the last cycle (None before it)
        self._remediation: RemediationOutput | None = None
        self._remediation_missing_logged = False
        self._reader: Store | None = None
        # On a shared PostgreSQL state only the holder of the leader lock records cycles (auditor.state.leader).
        self.leader = AdvisoryLeader(store.db) if store.dialect == "postgresql" and settings.ha.enabled else None
        self._was_leader: bool | None = None
        self._assets_read = 0
        self.progress_every = PROGRESS_EVERY
        self._reader_lock = threading.Lock()
        step = OutboundStep(settings, store)
        self.outbound: OutboundStep | None = step if step.enabled else None
        self._shrunk: dict[str, int] = {}  # sources treated as partial this cycle -> their last complete count
        # The last changes events reported (bounded; for inspection): each is recorded by `incremental`.
        self.feed_changes: deque[FeedChange] = deque(maxlen=1000)
        self._remediate_lock = threading.Lock()
        self.incremental = Incremental(self, clock)
        self.retain = retain
        self.published = self._publish() if publish_at_start else Published(MetricsView(), b"{}", b"", 0)
        self.incremental.refresh_missed()

    def feed_change(self, change: FeedChange) -> None:
        """A change an event reported (a Cloud Asset Inventory feed, authenticated and ordered by auditor/feed.py; a
        Kubernetes watch). Written to the store's inbox before this returns, then recorded by the incremental worker
        (auditor.incremental): raises when it could not be written, so that the sender retries."""
        self.incremental.submit(change)
        self.feed_changes.append(change)
        self.log.debug("feed_change", asset=change.asset.name, asset_type=change.asset.asset_type,
                       deleted=change.deleted, content=change.content, window_start=change.window_start)

    def refresh_view(self) -> None:
        """The metrics view rebuilt from the store (changes recorded between cycles); the rest as published."""
        view = build_view(self.store, self.rules, self.settings.sources, self._plan_changes,
                          queued=self.outbound.queued() if self.outbound is not None else None,
                          rule_evaluated=self._rule_evaluated)
        self.published = dataclasses.replace(self.published, view=view)

    # -- one cycle ---------------------------------------------------------------------------------------------------
    def run_cycle(self) -> CycleOutcome:
        with self._cycle_lock:
            if self.leader is not None and not self.leader.is_leader():
                return self._follow()
            self.running_since = self.clock()
            # Every event of this cycle carries its id and scope as Cloud Logging labels. The store numbers cycles
            # only when it records one, so the label is the run's own id (start time and a random suffix).
            run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.running_since)) + "-" + secrets.token_hex(3)
            labels = {"cycle_id": run_id, "scope": self.settings.scope or None}
            bind_labels(**labels)
            self._assets_read = 0
            done = threading.Event()
            reporter = threading.Thread(target=self._report_progress, args=(done, labels), name="progress",
                                        daemon=True)
            reporter.start()
            try:
                return self._run()
            finally:
                done.set()
                reporter.join()
                unbind_labels(*labels)
                self.running_since = None

    # -- several replicas on one PostgreSQL database ------------------------------------------------------------------
    def _follow(self) -> CycleOutcome:
        """A follower records nothing: it serves /metrics and /report from what the leader recorded."""
        now = self.clock()
        self.published = self._publish()
        if self.store.last_cycle() is not None:
            self.published = dataclasses.replace(self.published, cycles_completed=max(1, self.cycles_completed))
        if self._was_leader is not False:
            self.log.info("follower", reason="another replica holds the leader lock", state=self.store.db.name)
        self._was_leader = False
        return CycleOutcome("follower", now, now, {})

    @property
    def leading(self) -> bool:
        """Whether this replica leads: always without HA; with it, since a leader check found it holds the lock."""
        return self.leader is None or self._was_leader is True

    def poll_leadership(self) -> bool:
        """Every lease period: True when this replica has just become the leader (run a cycle now); a follower
        refreshes what it serves from the shared store."""
        if self.leader is None:
            return False
        with self._cycle_lock:
            try:
                leader = self.leader.is_leader()
            except Exception as exc:  # the database is unreachable: stay as we are, say so
                self.log.warning("leader_check_failed", error=f"{type(exc).__name__}: {exc}")
                return False
            if not leader:
                self._follow()
                return False
            became = self._was_leader is not True
            if became:
                self.log.info("leader", identity=self.leader.identity, state=self.store.db.name)
            self._was_leader = True
            return became

    def _on_progress(self, n: int = 0) -> None:
        self._assets_read = n
        self._check_cancel()

    def _report_progress(self, done: threading.Event, labels: Mapping[str, str | None]) -> None:
        """A `progress` event every `progress_every` seconds while the cycle runs: a long cycle is not silent."""
        bind_labels(**labels)
        t0 = time.perf_counter()
        while not done.wait(self.progress_every):
            elapsed = time.perf_counter() - t0
            n = self._assets_read
            self.log.info("progress", source=", ".join(self.settings.sources), assets_read=n,
                          rate_per_second=round(n / elapsed, 1) if elapsed > 0 else 0.0,
                          elapsed_seconds=round(elapsed, 1))

    def _check_cancel(self, _n: int = 0) -> None:
        if self.cancel.is_set():
            raise CycleAbandoned()

    def _run(self) -> CycleOutcome:
        s = self.settings
        started = self.clock()
        durations: dict[str, float] = {}
        out = CycleOutcome("failed", started, started, durations)
        self._shrunk = {}
        findings: CycleFindings | None = None
        t = time.perf_counter()
        try:
            self._check_cancel()
            try:
                self.rules = load_rules(s.rules or None)
            except AuditorError as exc:
                raise AuditorError(f"rules: {exc}") from None
            observe = self.incremental.cycle_started().observe if self.retain else None
            findings = CycleFindings(self.store.staging(), self.rules, s.remediation.enabled)
            out.result = run_scan(
                list(s.sources),
                self.rules,
                s.sources_options(),
                on_progress=self._on_progress,
                jobs=s.jobs,
                threaded=True,  # the daemon's scheduler, server and elector threads run on
                sink=findings,
                observe=observe,  # what changes between cycles are evaluated against
            )
            out.result.tally = findings.tally()
            out.result.evaluation.findings = findings.remediable()
            self._check_shrink(out.result)
            out.outcome = "success" if out.result.complete else "partial"
        except CycleAbandoned:
            out.outcome = "abandoned"
        except SourceError as exc:
            out.error, out.source_failed, out.failed_source = str(exc), True, exc.source
            out.invalid_input = True
        except AuditorError as exc:
            out.error, out.invalid_input = str(exc), True
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # A bug, or a native library's panic (a BaseException): it must not stop the daemon's cycles. Logged with
            # its traceback and counted as a failed cycle.
            out.error = f"{type(exc).__name__}: {exc}"
            self.log.exception("cycle_error", stage="collect_evaluate", error=out.error)
        durations["collect_evaluate"] = time.perf_counter() - t
        unevaluated = {n.rule_id for n in out.result.evaluation.not_evaluated} if out.result is not None else None
        self._rule_evaluated = {
            rule.id: 0 if unevaluated is None or rule.id in unevaluated else 1 for rule in self.rules
        }
        if findings is not None and out.result is None:
            findings.staging.discard()  # what a failed scan staged is not recorded
        if out.outcome == "abandoned" or self.cancel.is_set():
            if findings is not None:
                findings.staging.discard()
            out.outcome = "abandoned"
            out.ended_at = self.clock()
            self.log.warning("cycle_abandoned", reason="shutting down", duration_seconds=round(durations[
                "collect_evaluate"], 3))
            return out

        t = time.perf_counter()
        try:
            out.recorded = self.store.record_cycle(self._cycle_input(out, findings),
                                                   fence=self.leader.fence if self.leader else None,
                                                   events_since=out.started_at - EVENT_GRACE_SECONDS)
            out.cycle_id = out.recorded.cycle_id
            if out.result is not None:
                self.incremental.cycle_ended(out.result.complete, out.result.incomplete_types())
        except NotLeader as exc:
            # Leadership was lost during the cycle (the connection dropped): the new leader records its own cycle.
            out.outcome, out.error = "abandoned", str(exc)
            out.ended_at = self.clock()
            self.log.warning("cycle_abandoned", reason=str(exc))
            return out
        except Exception as exc:
            # The store itself failed (disk full, locked for too long): nothing was recorded; say so loudly.
            out.outcome, out.error = "failed", f"state store: {type(exc).__name__}: {exc}"
            self.log.exception("cycle_error", stage="record", error=out.error)
        durations["record"] = time.perf_counter() - t

        if s.remediation.enabled and out.result is not None and out.recorded is not None:
            t = time.perf_counter()
            out.remediation = self._remediate(out.result)
            durations["remediate"] = time.perf_counter() - t

        if self.outbound is not None and out.recorded is not None:
            # Drift notifications and Security Command Center; neither can fail the cycle.
            t = time.perf_counter()
            out.outbound = self.outbound.run(out.recorded, {r.id: r.rule.labels for r in self.rules})
            durations["sinks"] = time.perf_counter() - t

        t = time.perf_counter()
        try:
            self.published = self._publish()
        except Exception as exc:
            self.log.exception("cycle_error", stage="report", error=f"{type(exc).__name__}: {exc}")
        durations["report"] = time.perf_counter() - t
        out.ended_at = self.clock()
        for stage, seconds in durations.items():
            self.histogram.observe(stage, seconds)
        if out.cycle_id is not None:
            try:
                self.store.update_durations(out.cycle_id, durations)
                self.store.prune(s.history_days * 86400.0, now=out.ended_at)
            except Exception as exc:
                self.log.exception("cycle_error", stage="record", error=f"{type(exc).__name__}: {exc}")
        self._log_cycle(out)  # logged before /readyz can say so: whoever saw it ready finds the cycle in the log
        self.cycles_completed += 1
        self.last_finished_at = out.ended_at
        self.published = dataclasses.replace(self.published, cycles_completed=self.cycles_completed)
        return out

    def _cycle_input(self, out: CycleOutcome, findings: CycleFindings | None) -> CycleInput:
        r = out.result
        specs = list(self.settings.sources)
        if r is None or findings is None:
            # A source that cannot be opened is a source error (counted, named); a broken rule file or a bug is not:
            # the sources were not read, so their state is left as it was.
            source = out.failed_source if out.failed_source in specs else _source_for(out.error or "", specs)
            failed_source = out.source_failed or source != "unknown"
            return CycleInput(
                started_at=out.started_at,
                ended_at=self.clock(),
                outcome="failed",
                findings=None,
                rules=len(self.rules),
                durations=dict(out.durations),
                sources=[{"source": source, "complete": False, "failed": [], "error": out.error}]
                if failed_source and source != "unknown" else [],
                source_errors=[(source, error_code(out.error or ""))] if failed_source else [],
                error=out.error,
            )
        statuses = dict(zip(specs, r.sources, strict=False))
        sources = []
        errors = []
        for spec in specs:
            st = statuses.get(spec)
            d: dict[str, Any] = st.to_dict() if st else {"source": spec, "complete": False}
            d["source"] = spec
            d["data_at"] = _data_time(spec, st, out.started_at)
            if spec in self._shrunk:
                d["shrunk_from"] = self._shrunk[spec]
            sources.append(d)
            if st is not None and not st.complete:
                errors.append((spec, error_code("; ".join(st.failed_types.values()))))
        data_times = [float(d["data_at"]) for d in sources if d.get("complete")]
        return CycleInput(
            started_at=out.started_at,
            ended_at=self.clock(),
            outcome=out.outcome,
            findings=findings.staging,
            incomplete=r.incomplete_types(),
            snapshot_at=min(data_times) if data_times else None,
            assets_by_type=dict(r.evaluation.assets_by_type),
            rules=len(r.rules),
            durations=dict(out.durations),
            sources=sources,
            source_errors=errors,
            rule_ids=frozenset(rule.id for rule in r.rules),
            # A rule that could not run (at all, or on an asset) keeps the findings it did not see open, stale.
            not_evaluated=[*((n.rule_id, "") for n in r.not_evaluated),
                           *((e.rule, e.asset) for e in r.evaluation.errors)],
        )

    def _check_shrink(self, result: ScanResult) -> None:
        """A source that read far fewer assets than at its last complete read is partial for this cycle, so that
        the findings it no longer shows stay open (stale) rather than resolve and come back as new."""
        self._shrunk = {}
        limits = self.settings.source_shrink
        if limits.max_drop_fraction >= 1:
            return
        for spec, st in zip(self.settings.sources, result.sources, strict=False):
            if not st.complete:
                continue
            last = self.store.source_reads(spec, 1, complete=True)
            before = int(last[0].get("assets") or 0) if last else 0
            if before <= 0 or st.assets >= before * (1 - limits.max_drop_fraction):
                continue
            drop = 1 - st.assets / before
            streak = 0
            for read in self.store.source_reads(spec, max(limits.accept_after_cycles, 1)):
                if "shrunk_from" not in read:
                    break
                streak += 1
            if limits.accept_after_cycles and streak >= limits.accept_after_cycles:
                self.log.warning("source_shrink_accepted", source=spec, assets=st.assets, before=before,
                                 cycles=streak, reason="the smaller count held for that many cycles: taken as real")
                continue
            reason = (f"shrank: {st.assets} assets where its last complete read had {before} (-{drop:.0%}, more than "
                      f"{limits.max_drop_fraction:.0%}); treated as partial, its findings are kept open")
            st.fail("*", reason)
            self._shrunk[spec] = before
            self.log.warning("source_shrunk", source=spec, assets=st.assets, before=before, drop=round(drop, 3),
                             max_drop_fraction=limits.max_drop_fraction, cycles=streak + 1)

    # -- remediation (optional) --------------------------------------------------------------------------------------
    def remediate_findings(self, result: ScanResult) -> RemediationOutput | None:
        """The remediation step on findings recorded between cycles (auditor.incremental): applied and counted as a
        cycle's, without replacing the cycle's pending plan."""
        return self._remediate(result, publish=False)

    def _remediate(self, result: ScanResult, publish: bool = True) -> RemediationOutput | None:
        with self._remediate_lock:
            return self._remediate_step(result, publish)

    def _remediate_step(self, result: ScanResult, publish: bool) -> RemediationOutput | None:
        step = plugins.cycle_steps.get(REMEDIATION_STEP)
        if step is None:
            if not self._remediation_missing_logged:
                self.log.warning("remediation_unavailable", reason="no remediation step is installed")
                self._remediation_missing_logged = True
            return None
        try:
            # On a shared database the leader lock also decides who applies: one replica writes, whatever the Lease.
            extra = {"elector": self.leader} if self.leader is not None else {}
            raw = step(result, self.settings, self.settings.state_target, **extra)
            out = normalise_remediation(raw)
        except Exception as exc:
            self.log.exception("cycle_error", stage="remediate", error=f"{type(exc).__name__}: {exc}")
            self.store.bump("remediations_total", {"rule": "unknown", "kind": "unknown", "outcome": "failed"})
            return None
        for rule, kind, outcome, n in out.counts:
            if n:
                self.store.bump("remediations_total", {"rule": rule, "kind": kind, "outcome": outcome}, n)
        if publish:
            self._plan_changes = plan_change_counts(out.plan)
            self._remediation = out
        return out

    # -- publishing --------------------------------------------------------------------------------------------------
    def findings_json(self, query: Mapping[str, Sequence[str]]) -> bytes:
        """One page of /findings.json, read from the store (a connection of its own: a request never waits for a
        cycle's write). Raises ValueError for a bad query."""
        q = FindingQuery.parse(query)
        with self._reader_lock:
            if self._reader is None:
                self._reader = self.store.reopen()
            return self._findings_page(self._reader, self.published.header, q, self.clock())

    @staticmethod
    def _findings_page(store: Store, header: Mapping[str, Any], q: FindingQuery, now: float) -> bytes:
        total, page = store.find(severities=q.severities, rules=q.rules, asset_types=q.asset_types, stale=q.stale,
                                 exempted=q.exempted, limit=q.per_page, offset=q.offset)
        pages = max(1, -(-total // q.per_page))
        doc = {
            **header,
            "total": total,
            "page": q.page,
            "per_page": q.per_page,
            "pages": pages,
            "next": q.link(q.page + 1) if q.page < pages else None,
            "findings": [f.to_dict(now) for f in page],
        }
        return json.dumps(doc, default=str).encode()

    def close(self) -> None:
        self.incremental.stop()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self.store.close()

    def _publish(self) -> Published:
        store = self.store
        view = build_view(
            store,
            self.rules,
            self.settings.sources,
            self._plan_changes,
            queued=self.outbound.queued() if self.outbound is not None else None,
            queue_oldest=self.outbound.oldest() if self.outbound is not None else None,
            rule_evaluated=self._rule_evaluated,
        )
        now = self.clock()
        last, drift = store.last_drift(limit=MAX_ROWS)
        n_new, n_resolved = store.drift_totals(last) if last is not None else (0, 0)
        latest = store.last_cycle()
        # Bounded whatever the number of findings: the worst ones and the newest, with counts of all.
        _, worst = store.find(exempted=False, limit=REPORT_FINDINGS, count=False)
        exempted_total, exempted = store.find(exempted=True, limit=MAX_ROWS)
        _, newest = store.find(limit=REPORT_NEWEST, newest=True, count=False)
        counts: dict[str, int] = {}
        rule_counts: dict[tuple[str, str], int] = {}
        for rule, severity, _type, _mode, is_exempted, n in view.findings:  # counted once, for the metrics
            if not is_exempted:
                counts[severity] = counts.get(severity, 0) + n
                rule_counts[(severity, rule)] = rule_counts.get((severity, rule), 0) + n
        stale = view.data_at is None or now - view.data_at > self.settings.staleness.snapshot_max_age_seconds
        header = {
            "scope": self.settings.scope or None,
            "generated_at": iso(now),
            "cycle": latest.to_dict() if latest else None,
            "data_at": iso(view.data_at) if view.data_at else None,
            "stale": stale,
            "last_success_at": iso(view.last_success_at) if view.last_success_at else None,
            "drift": {"cycle": last.id if last else None, "new": n_new, "resolved": n_resolved,
                      "events": [e.to_dict() for e in drift]},
            "plan": self._remediation.plan if self._remediation else None,
        }
        first_page = self._findings_page(store, header, FindingQuery(), now)
        html = render_report(
            now=now,
            latest=latest,
            drift_cycle=last,
            drift=drift,
            findings=[*worst, *exempted],
            counts=counts,
            rule_counts=rule_counts,
            exempted_total=exempted_total,
            drift_counts=(n_new, n_resolved),
            newest=newest,
            rules=self.rules,
            sources=self.store.sources(),
            data_at=view.data_at,
            stale=stale,
            last_success_at=view.last_success_at,
            success_overdue=view.last_success_at is None
            or now - view.last_success_at > self.settings.staleness.success_max_age_seconds,
            history=self.store.cycles(10),
            remediation_html=self._remediation.html if self._remediation else None,
            remediation_markdown=self._remediation.markdown if self._remediation else None,
            plan=self._remediation.plan if self._remediation else None,
        )
        return Published(view, first_page, html.encode(), self.cycles_completed, header)

    def _log_cycle(self, out: CycleOutcome) -> None:
        rec = out.recorded
        summary = out.result.summary() if out.result else {}
        fields: dict[str, Any] = {
            "scope": self.settings.scope or None,
            "cycle": out.cycle_id,
            "outcome": out.outcome,
            "assets": summary.get("assets"),
            "findings": summary.get("findings"),
            "exempted": summary.get("exempted"),
            "evaluation_errors": summary.get("evaluation_errors") or None,
            "by_severity": {k: v for k, v in (summary.get("by_severity") or {}).items() if v},
            "new": rec.new_count if rec else 0,
            "resolved": rec.resolved_count if rec else 0,
            "still_open": rec.still_open if rec else None,
            "open": rec.open if rec else None,
            "stale": rec.stale if rec else None,
            "retired": rec.retired if rec and rec.retired else None,
            "baseline": True if rec and rec.baseline else None,
            "durations": {k: round(v, 4) for k, v in out.durations.items()},
        }
        if out.result is not None and not out.result.complete:
            fields["incomplete"] = out.result.incomplete_types()
        if out.error:
            fields["error"] = out.error
        if out.outbound:
            fields["outbound"] = out.outbound
        if out.remediation is not None and out.remediation.counts:
            fields["remediation"] = {f"{r}/{k}/{o}": n for r, k, o, n in out.remediation.counts}
        level = "info" if out.outcome == "success" else "warning" if out.outcome == "partial" else "error"
        getattr(self.log, level)("cycle", **{k: v for k, v in fields.items() if v is not None})
        if rec is not None and rec.baseline:
            # The first findings are the state the organization was already in, not changes: one summary event
            # instead of one line per finding (they are all in the store, /findings.json and /report).
            self.log.info("baseline", cycle=rec.cycle_id, findings=rec.new_count, exempted=rec.new_exempted)
            return
        # One event per change, read back from the store a page at a time (a cycle may change many findings).
        for e in self.store.iter_drift(rec.cycle_id) if rec else ():
            self.log.info(
                "drift", cycle=e.cycle_id, change=e.change, rule=e.rule, finding_severity=e.severity, asset=e.asset,
                asset_type=e.asset_type, exempted=e.exempted, finding=e.finding_id, finding_message=e.message,
            )


def normalise_remediation(raw: Any) -> RemediationOutput:
    """Accept a dict or an object with `counts` (mapping (rule, kind, outcome) -> n, or rows), `plan` (a Plan or
    its dict) and an `html` / `markdown` fragment."""

    def get(*names: str) -> Any:
        for n in names:
            if isinstance(raw, Mapping) and n in raw:
                return raw[n]
            if not isinstance(raw, Mapping) and hasattr(raw, n):
                return getattr(raw, n)
        return None

    counts: list[tuple[str, str, str, int]] = []
    c = get("counts", "outcomes")
    if isinstance(c, Mapping):
        for key, n in c.items():
            rule, kind, outcome = (key.split("/") if isinstance(key, str) else key)[:3]
            counts.append((str(rule), str(kind), str(outcome), int(n)))
    elif isinstance(c, Iterable):
        for row in c:
            if isinstance(row, Mapping):
                counts.append((str(row["rule"]), str(row["kind"]), str(row["outcome"]), int(row.get("count", 1))))
            else:
                rule, kind, outcome, *rest = row
                counts.append((str(rule), str(kind), str(outcome), int(rest[0]) if rest else 1))
    plan = get("plan")
    if plan is not None and not isinstance(plan, Mapping) and hasattr(plan, "to_dict"):
        plan = plan.to_dict()
    html = get("html", "report_html", "fragment_html")
    md = get("markdown", "report_markdown", "fragment_markdown")
    return RemediationOutput(counts, dict(plan) if plan is not None else None, html, md)

