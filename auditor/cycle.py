"""One audit cycle, the only module that runs every stage: collect + evaluate -> record -> remediate -> report.

Stages and their timing (`auditor_cycle_duration_seconds{stage}`):
- collect_evaluate: auditor.scan.run_scan streams assets from the sources straight through the engine, so
  reading and evaluating are interleaved per asset and timed together;
- record: findings and drift written to the state store (one transaction);
- remediate: the remediation step, only when `remediation.enabled` and the `remediations` package provides it;
- report: the metrics view, /findings.json and the HTML report rebuilt from the store.

`Auditor.run_cycle` never raises: a cycle that fails (a source that cannot be opened, a rule file broken since
start, a bug) is recorded as `failed`, logged with its reason, counted, and leaves the last good values in place.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from auditor.collect.cai_feed import FeedChange
from auditor.errors import AuditorError, Cancelled, SourceError
from auditor.evaluate.rulebook import LoadedRule, load_rules
from auditor.logs import get_logger
from auditor.model import SourceStatus
from auditor.report.html import render_report
from auditor.report.metrics import MetricsView, StageHistogram, build_view, plan_change_counts
from auditor.scan import ScanResult, run_scan
from auditor.settings import Settings
from auditor.state import CycleInput, Recorded, Store, iso

REMEDIATION_MODULE = "remediations.cycle"


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
    failed_source: str | None = None  # which configured source, when known
    remediation: RemediationOutput | None = None


@dataclass(frozen=True)
class Published:
    """What the HTTP endpoints serve, rebuilt after each cycle and swapped in whole."""

    view: MetricsView
    findings_json: bytes
    report_html: bytes
    cycles_completed: int


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

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
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
        self._remediation: RemediationOutput | None = None
        self._remediation_missing_logged = False
        self._shrunk: dict[str, int] = {}  # sources treated as partial this cycle -> their last complete count
        # Changes reported by feeds since the last cycle (bounded: the cycle reconciles whatever is dropped).
        self.feed_changes: deque[FeedChange] = deque(maxlen=100_000)
        self.published = self._publish()

    def feed_change(self, change: FeedChange) -> None:
        """A change a Cloud Asset Inventory feed reported (already authenticated and ordered by auditor/feed.py)."""
        self.feed_changes.append(change)
        self.log.info("feed_change", asset=change.asset.name, asset_type=change.asset.asset_type,
                      deleted=change.deleted, content=change.content, window_start=change.window_start)

    # -- one cycle ---------------------------------------------------------------------------------------------------
    def run_cycle(self) -> CycleOutcome:
        with self._cycle_lock:
            self.running_since = self.clock()
            try:
                return self._run()
            finally:
                self.running_since = None

    def _check_cancel(self, _n: int = 0) -> None:
        if self.cancel.is_set():
            raise CycleAbandoned()

    def _run(self) -> CycleOutcome:
        s = self.settings
        started = self.clock()
        durations: dict[str, float] = {}
        out = CycleOutcome("failed", started, started, durations)
        self._shrunk = {}
        t = time.perf_counter()
        try:
            self._check_cancel()
            try:
                self.rules = load_rules(s.rules or None)
            except AuditorError as exc:
                raise AuditorError(f"rules: {exc}") from None
            out.result = run_scan(
                list(s.sources),
                self.rules,
                s.sources_options(),
                on_progress=self._check_cancel,
                jobs=s.jobs,
                threaded=True,  # the daemon's scheduler, server and elector threads run on
            )
            self._check_shrink(out.result)
            out.outcome = "success" if out.result.complete else "partial"
        except CycleAbandoned:
            out.outcome = "abandoned"
        except SourceError as exc:
            out.error, out.source_failed, out.failed_source = str(exc), True, exc.source
        except AuditorError as exc:
            out.error = str(exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # A bug, or a native library's panic (a BaseException): it must not stop the daemon's cycles. Logged with
            # its traceback and counted as a failed cycle.
            out.error = f"{type(exc).__name__}: {exc}"
            self.log.exception("cycle_error", stage="collect_evaluate", error=out.error)
        durations["collect_evaluate"] = time.perf_counter() - t
        if out.outcome == "abandoned" or self.cancel.is_set():
            out.outcome = "abandoned"
            out.ended_at = self.clock()
            self.log.warning("cycle_abandoned", reason="shutting down", duration_seconds=round(durations[
                "collect_evaluate"], 3))
            return out

        t = time.perf_counter()
        try:
            out.recorded = self.store.record_cycle(self._cycle_input(out))
            out.cycle_id = out.recorded.cycle_id
        except Exception as exc:
            # The store itself failed (disk full, locked for too long): nothing was recorded; say so loudly.
            out.outcome, out.error = "failed", f"state store: {type(exc).__name__}: {exc}"
            self.log.exception("cycle_error", stage="record", error=out.error)
        durations["record"] = time.perf_counter() - t

        if s.remediation.enabled and out.result is not None and out.recorded is not None:
            t = time.perf_counter()
            out.remediation = self._remediate(out.result)
            durations["remediate"] = time.perf_counter() - t

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

    def _cycle_input(self, out: CycleOutcome) -> CycleInput:
        r = out.result
        specs = list(self.settings.sources)
        if r is None:
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
            findings=r.findings,
            incomplete=r.incomplete_types(),
            snapshot_at=min(data_times) if data_times else None,
            assets_by_type=dict(r.evaluation.assets_by_type),
            rules=len(r.rules),
            durations=dict(out.durations),
            sources=sources,
            source_errors=errors,
            rule_ids=frozenset(rule.id for rule in r.rules),
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
    def _remediate(self, result: ScanResult) -> RemediationOutput | None:
        try:
            module = importlib.import_module(REMEDIATION_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name not in (REMEDIATION_MODULE, REMEDIATION_MODULE.split(".")[0]):
                raise
            if not self._remediation_missing_logged:
                self.log.warning("remediation_unavailable", reason=f"{REMEDIATION_MODULE} is not installed")
                self._remediation_missing_logged = True
            return None
        try:
            raw = module.run_remediation(result, self.settings, self.settings.state_target)
            out = normalise_remediation(raw)
        except Exception as exc:
            self.log.exception("cycle_error", stage="remediate", error=f"{type(exc).__name__}: {exc}")
            self.store.bump("remediations_total", {"rule": "unknown", "kind": "unknown", "outcome": "failed"})
            return None
        for rule, kind, outcome, n in out.counts:
            if n:
                self.store.bump("remediations_total", {"rule": rule, "kind": kind, "outcome": outcome}, n)
        self._plan_changes = plan_change_counts(out.plan)
        self._remediation = out
        return out

    # -- publishing --------------------------------------------------------------------------------------------------
    def _publish(self) -> Published:
        view = build_view(self.store, self.rules, self.settings.sources, self._plan_changes)
        now = self.clock()
        last, drift = self.store.last_drift()
        latest = self.store.last_cycle()
        findings = self.store.open_findings()
        stale = view.data_at is None or now - view.data_at > self.settings.staleness.snapshot_max_age_seconds
        doc = {
            "scope": self.settings.scope or None,
            "generated_at": iso(now),
            "cycle": latest.to_dict() if latest else None,
            "data_at": iso(view.data_at) if view.data_at else None,
            "stale": stale,
            "last_success_at": iso(view.last_success_at) if view.last_success_at else None,
            "findings": [f.to_dict(now) for f in findings],
            "drift": {"cycle": last.id if last else None, "events": [e.to_dict() for e in drift]},
            "plan": self._remediation.plan if self._remediation else None,
        }
        html = render_report(
            now=now,
            latest=latest,
            drift_cycle=last,
            drift=drift,
            findings=findings,
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
        return Published(view, json.dumps(doc, default=str).encode(), html.encode(), self.cycles_completed)

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
        if out.remediation is not None and out.remediation.counts:
            fields["remediation"] = {f"{r}/{k}/{o}": n for r, k, o, n in out.remediation.counts}
        level = "info" if out.outcome == "success" else "warning" if out.outcome == "partial" else "error"
        getattr(self.log, level)("cycle", **{k: v for k, v in fields.items() if v is not None})
        if rec is not None and rec.baseline:
            # The first findings are the state the organization was already in, not changes: one summary event
            # instead of one line per finding (they are all in the store, /findings.json and /report).
            self.log.info("baseline", cycle=rec.cycle_id, findings=rec.new_count,
                          exempted=self.store.drift_counts(rec.cycle_id).get(("new", True), 0))
            return
        # One event per change, read back from the store a page at a time (a cycle may change many findings).
        for e in self.store.iter_drift(rec.cycle_id) if rec else ():
            self.log.info(
                "drift", cycle=e.cycle_id, change=e.change, rule=e.rule, severity=e.severity, asset=e.asset,
                asset_type=e.asset_type, exempted=e.exempted, finding=e.finding_id, message=e.message,
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

