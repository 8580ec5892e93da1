"""Stage 5, metrics: a Prometheus collector over the last completed cycle (served at /metrics).

The collector exports a `MetricsView`, an immutable picture rebuilt from the state store after each cycle and
swapped in whole, so a scrape never sees half a cycle. Values come from the store, not from the cycle's result:
a failed or partial cycle leaves the findings and asset counts of what it could not read as they were (the last
good values), and the freshness gauges (`auditor_snapshot_age_seconds`, `auditor_last_success_timestamp_seconds`)
say how old they are. Counters live in the store too, so they survive restarts and never go backwards.

Labels are bounded: rule, severity, asset type, mode, outcome, stage, change, source (from the configuration),
error code, exemption (its ticket, or its position in the rule). Never a resource name or a member.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from auditor import __version__

if TYPE_CHECKING:
    from auditor.evaluate.rulebook import LoadedRule
    from auditor.state import Store

STAGES = ("collect_evaluate", "record", "report", "remediate", "sinks")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
OUTCOMES = ("success", "partial", "failed")

# Every metric name the exporter emits (the deploy tests check dashboards and alerts against a real scrape too).
METRIC_NAMES = (
    "auditor_findings",
    "auditor_findings_exempted",
    "auditor_assets",
    "auditor_cycle_duration_seconds",
    "auditor_cycles_total",
    "auditor_last_success_timestamp_seconds",
    "auditor_snapshot_age_seconds",
    "auditor_source_errors_total",
    "auditor_drift_events_total",
    "auditor_exemptions",
    "auditor_exemption_expiry_seconds",
    "auditor_rule_evaluated",
    "auditor_rules_loaded",
    "auditor_up",
    "auditor_build_info",
    "auditor_remediations_total",
    "auditor_plan_changes",
    "auditor_notifications_total",
    "auditor_notifications_queued",
    "auditor_notifications_oldest_age_seconds",
    "auditor_scc_writes_total",
)


@dataclass(frozen=True)
class ExemptionExpiry:
    rule: str
    exemption: str  # the ticket, or "#N" (its position in the rule) when the rule has no unique ticket for it
    expires_at: float  # the end of the last day it applies, UTC


@dataclass(frozen=True)
class MetricsView:
    """Everything one scrape exports, except what depends on the scrape time (ages) and the duration histogram."""

    findings: tuple[tuple[str, str, str, str, bool, int], ...] = ()  # rule, severity, asset_type, mode, exempted, n
    assets: tuple[tuple[str, int], ...] = ()
    cycles: tuple[tuple[str, float], ...] = ()  # outcome, count
    source_errors: tuple[tuple[str, str, float], ...] = ()  # source, code, count
    drift_events: tuple[tuple[str, str, str, float], ...] = ()  # rule, severity, change, count
    remediations: tuple[tuple[str, str, str, float], ...] = ()  # rule, kind, outcome, count
    plan_changes: tuple[tuple[str, str, int], ...] = ()  # rule, kind, count
    last_success_at: float | None = None
    data_at: float | None = None  # the oldest "last complete read" over the configured sources
    rules_loaded: int = 0
    exemptions: tuple[tuple[str, int], ...] = ()
    expiries: tuple[ExemptionExpiry, ...] = ()
    rule_evaluated: tuple[tuple[str, int], ...] = ()  # rule, 1 when the last cycle evaluated it, 0 when it could not
    notifications: tuple[tuple[str, str, float], ...] = ()  # sink, outcome (delivered/failed/dropped), count
    notifications_queued: tuple[tuple[str, int], ...] = ()  # sink, events waiting
    notifications_oldest: tuple[tuple[str, float], ...] = ()  # sink, when its oldest waiting event was queued
    scc_writes: tuple[tuple[str, float], ...] = ()  # outcome (created/updated/state_changed/failed), count


def exemption_expiries(rules: Iterable[LoadedRule]) -> list[ExemptionExpiry]:
    out = []
    for r in rules:
        tickets = Counter(e.ticket for e in r.rule.exemptions if e.ticket)
        for i, e in enumerate(r.rule.exemptions):
            if e.expires is None:
                continue
            label = e.ticket if e.ticket and tickets[e.ticket] == 1 else f"#{i}"
            end = datetime.combine(e.expires + timedelta(days=1), dtime(0), tzinfo=UTC)
            out.append(ExemptionExpiry(r.id, label, end.timestamp()))
    return out


def build_view(
    store: Store,
    rules: Sequence[LoadedRule],
    sources: Sequence[str],
    plan_changes: Iterable[tuple[str, str, int]] = (),
    rule_evaluated: Mapping[str, int] | None = None,
    queued: dict[str, int] | None = None,
    queue_oldest: Mapping[str, float | None] | None = None,
) -> MetricsView:
    """The view after a cycle (or at start, from what the store kept across the restart).

    `rule_evaluated`: rule id -> 1 or 0, whether the last cycle evaluated the rule (None before the first cycle).
    `queued`, `queue_oldest`: per notification sink, the events waiting and when the oldest was queued.
    """
    cycles = dict.fromkeys(OUTCOMES, 0.0)
    for labels, v in store.counters("cycles_total"):
        cycles[labels["outcome"]] = v
    # Drift counters start at zero for every rule, so the first event is an increase Prometheus can see.
    drift: dict[tuple[str, str, str], float] = {}
    for r in rules:
        for change in ("new", "resolved"):
            drift[(r.id, r.rule.severity.value, change)] = 0.0
    for labels, v in store.counters("drift_events_total"):
        drift[(labels["rule"], labels["severity"], labels["change"])] = v
    last = store.last_cycle(("success",))
    states = {s.source: s for s in store.sources()}
    data_times = [states[s].data_at if s in states else None for s in sources]
    data_at = None if not data_times or any(t is None for t in data_times) else min(t for t in data_times if t)
    return MetricsView(
        findings=tuple(store.finding_counts()),
        assets=tuple(sorted(store.asset_counts().items())),
        cycles=tuple(cycles.items()),
        source_errors=tuple(sorted((lb["source"], lb["code"], v) for lb, v in store.counters("source_errors_total"))),
        drift_events=tuple(sorted((*k, v) for k, v in drift.items())),
        remediations=tuple(
            sorted((lb["rule"], lb["kind"], lb["outcome"], v) for lb, v in store.counters("remediations_total"))
        ),
        plan_changes=tuple(sorted(plan_changes)),
        last_success_at=last.ended_at if last else None,
        data_at=data_at,
        rules_loaded=len(rules),
        exemptions=tuple(sorted((r.id, len(r.rule.exemptions)) for r in rules if r.rule.exemptions)),
        expiries=tuple(exemption_expiries(rules)),
        rule_evaluated=tuple(sorted((rule_evaluated or {}).items())),
        notifications=tuple(sorted((lb["sink"], lb["outcome"], v) for lb, v in store.counters("notifications_total"))),
        notifications_queued=tuple(sorted((queued or {}).items())),
        notifications_oldest=tuple(sorted((k, v) for k, v in (queue_oldest or {}).items() if v is not None)),
        scc_writes=tuple(sorted((lb["outcome"], v) for lb, v in store.counters("scc_writes_total"))),
    )


@dataclass
class StageHistogram:
    """Cycle durations by stage, accumulated in the process (a histogram restarts with the process, as usual)."""

    buckets: tuple[float, ...] = DURATION_BUCKETS
    _counts: dict[str, list[int]] = field(default_factory=dict)
    _sums: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            counts = self._counts.setdefault(stage, [0] * (len(self.buckets) + 1))
            counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sums[stage] = self._sums.get(stage, 0.0) + seconds

    def samples(self) -> list[tuple[str, list[tuple[str, float]], float]]:
        """(stage, cumulative [(le, count)...] ending with +Inf, sum) for every stage observed."""
        out = []
        with self._lock:
            for stage in sorted(self._counts):
                running, cumulative = 0, []
                for le, n in zip([*map(_fmt_le, self.buckets), "+Inf"], self._counts[stage], strict=True):
                    running += n
                    cumulative.append((le, float(running)))
                out.append((stage, cumulative, self._sums[stage]))
        return out


def _fmt_le(v: float) -> str:
    return repr(float(v))


class AuditorCollector(Collector):
    """Reads the current view at each scrape; ages are computed at scrape time so they keep growing."""

    def __init__(
        self,
        view: Callable[[], MetricsView],
        histogram: StageHistogram,
        up: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        const_labels: dict[str, str] | None = None,
    ) -> None:
        self._const = dict(const_labels or {})
        self._view = view
        self._histogram = histogram
        self._up = up
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on the data; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        """Every family, with the constant labels (the shard's `scope`) added to each sample."""
        if not self._const:
            yield from self._families()
            return
        for family in self._families():
            family.samples = [s._replace(labels={**s.labels, **self._const}) for s in family.samples]
            yield family

    def _families(self) -> Iterator[Metric]:
        v = self._view()
        now = self._clock()
        by_type = ["rule", "severity", "asset_type", "mode"]
        findings = GaugeMetricFamily(
            "auditor_findings", "Open findings of the last snapshot (not exempted).", labels=by_type
        )
        exempted = GaugeMetricFamily(
            "auditor_findings_exempted", "Open findings covered by an exemption.", labels=by_type
        )
        for rule, sev, atype, mode, is_exempted, count in v.findings:
            (exempted if is_exempted else findings).add_metric([rule, sev, atype, mode], count)
        yield findings
        yield exempted

        assets = GaugeMetricFamily("auditor_assets", "Assets in the last snapshot, by type.", labels=["asset_type"])
        for atype, n in v.assets:
            assets.add_metric([atype], n)
        yield assets

        hist = HistogramMetricFamily(
            "auditor_cycle_duration_seconds",
            "Time spent per cycle stage (collect_evaluate streams both: assets are evaluated as they are read).",
            labels=["stage"],
        )
        for stage, buckets, total in self._histogram.samples():
            hist.add_metric([stage], buckets, total)
        yield hist

        cycles = CounterMetricFamily("auditor_cycles_total", "Audit cycles by outcome.", labels=["outcome"])
        for outcome, total in v.cycles:
            cycles.add_metric([outcome], total)
        yield cycles

        last = GaugeMetricFamily(
            "auditor_last_success_timestamp_seconds",
            "End of the last cycle that read every source completely (0: never).",
        )
        last.add_metric([], v.last_success_at or 0.0)
        yield last

        age = GaugeMetricFamily(
            "auditor_snapshot_age_seconds",
            "Age of the data behind the metrics: now minus the oldest last-complete read over the sources.",
        )
        if v.data_at is not None:
            age.add_metric([], max(0.0, now - v.data_at))
        yield age

        errors = CounterMetricFamily(
            "auditor_source_errors_total", "Sources that failed to read completely, by error code.",
            labels=["source", "code"],
        )
        for source, code, total in v.source_errors:
            errors.add_metric([source, code], total)
        yield errors

        drift = CounterMetricFamily(
            "auditor_drift_events_total", "Findings that appeared or were resolved between cycles (not exempted).",
            labels=["rule", "severity", "change"],
        )
        for rule, sev, change, total in v.drift_events:
            drift.add_metric([rule, sev, change], total)
        yield drift

        exemptions = GaugeMetricFamily("auditor_exemptions", "Exemptions declared per rule.", labels=["rule"])
        for rule, n in v.exemptions:
            exemptions.add_metric([rule], n)
        yield exemptions

        expiry = GaugeMetricFamily(
            "auditor_exemption_expiry_seconds", "Seconds until an exemption expires (negative: expired).",
            labels=["rule", "exemption"],
        )
        for e in v.expiries:
            expiry.add_metric([e.rule, e.exemption], e.expires_at - now)
        yield expiry

        evaluated = GaugeMetricFamily(
            "auditor_rule_evaluated",
            "1 when the last cycle evaluated the rule; 0 when it could not (context missing from the snapshot, the "
            "cycle failed): its zero findings then mean nothing.",
            labels=["rule"],
        )
        for rule, flag in v.rule_evaluated:
            evaluated.add_metric([rule], flag)
        yield evaluated

        rules = GaugeMetricFamily("auditor_rules_loaded", "Rules loaded for the last cycle.")
        rules.add_metric([], v.rules_loaded)
        yield rules

        up = GaugeMetricFamily("auditor_up", "1 while the daemon runs and its scheduler is alive.")
        up.add_metric([], 1.0 if self._up() else 0.0)
        yield up

        info = GaugeMetricFamily("auditor_build_info", "The running version.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info

        rem = CounterMetricFamily(
            "auditor_remediations_total", "Remediation changes by rule, kind and outcome.",
            labels=["rule", "kind", "outcome"],
        )
        for rule, kind, outcome, total in v.remediations:
            rem.add_metric([rule, kind, outcome], total)
        yield rem

        plan = GaugeMetricFamily(
            "auditor_plan_changes", "Edits in the pending remediation plan, by rule and kind.", labels=["rule", "kind"]
        )
        for rule, kind, n in v.plan_changes:
            plan.add_metric([rule, kind], n)
        yield plan

        notes = CounterMetricFamily(
            "auditor_notifications_total",
            "Drift notifications per sink: delivered, failed tries, dropped (queue full).",
            labels=["sink", "outcome"],
        )
        for sink, outcome, total in v.notifications:
            notes.add_metric([sink, outcome], total)
        yield notes
        queued = GaugeMetricFamily(
            "auditor_notifications_queued", "Drift notifications waiting in a sink's on-disk queue.", labels=["sink"]
        )
        for sink, n in v.notifications_queued:
            queued.add_metric([sink], n)
        yield queued
        # An age, not only a count: a receiver that is down with little drift keeps a short queue whose events get
        # old, and undelivered drift is drift nobody saw. 0 for an empty queue, so every sink has a series to alert on.
        oldest_age = GaugeMetricFamily(
            "auditor_notifications_oldest_age_seconds",
            "Seconds the oldest drift notification waiting in a sink's queue has waited (0: none waits).",
            labels=["sink"],
        )
        oldest = dict(v.notifications_oldest)
        for sink, _ in v.notifications_queued:
            oldest_age.add_metric([sink], max(0.0, now - oldest[sink]) if sink in oldest else 0.0)
        yield oldest_age
        scc = CounterMetricFamily(
            "auditor_scc_writes_total", "Security Command Center writes by outcome.", labels=["outcome"]
        )
        for outcome, total in v.scc_writes:
            scc.add_metric([outcome], total)
        yield scc


def make_registry(collector: AuditorCollector) -> CollectorRegistry:
    """A registry of our own: no process/platform collectors from the default registry, nothing global."""
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def plan_change_counts(plan: dict[str, Any] | None) -> list[tuple[str, str, int]]:
    """(rule, kind, edits) from a plan's to_dict(): every edit counts once per rule that motivates it."""
    counts: Counter[tuple[str, str]] = Counter()
    for change in (plan or {}).get("changes", []) or []:
        for edit in change.get("edits", []) or []:
            for rule in edit.get("rules") or change.get("rules") or ["unknown"]:
                counts[(str(rule), str(edit.get("kind", "unknown")))] += 1
    return [(r, k, n) for (r, k), n in sorted(counts.items())]
