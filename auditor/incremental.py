"""Drift in seconds: the daemon records each change an event reports (Cloud Asset Inventory feeds, Kubernetes
watches) as it arrives, between cycles; the periodic cycle stays the reconciler.

The path of a change (`Incremental`):
1. `submit` (from `Auditor.feed_change`, on the HTTP thread or a watch's): the change is written to the store's
   inbox (auditor.state.changes) and the caller answered. Every replica on a shared PostgreSQL state accepts pushes
   (a follower's answer means the same: the change is in the shared inbox); only the leader records them.
2. A worker thread drains the inbox in batches (off the HTTP threads): changes not newer than the state the store
   has recorded for their asset and content (window start time, or a resourceVersion key) change nothing; the others
   update the retained index, then each changed asset and its dependents are evaluated with the loaded rules
   against the retained context, and their verdicts recorded in one transaction with the inbox rows they came from
   (new / resolved / reopened: the same drift records, ages and counters as a cycle's).
3. After the commit: the drift is logged, notified (the notification sinks of the outbound step; Security Command
   Center catches up at the next cycle), and, when remediation is on, the findings of the changed assets whose rule
   is in enforce mode are handed to the remediation step (found in the plugin registry, as the cycle does), which
   re-reads each resource, applies within its guards and journals, as after a cycle.

The retained index (`Retained`): the daemon does not keep the organization's assets; a cycle feeds each asset it
reads to `Retained.observe` (its one call in the cycle's per-asset path), which keeps only what re-evaluating a
change needs: the assets the rules read as context (Organization, folders, projects, GKE clusters) and the
Kubernetes objects of each cluster (they are small), as their JSON bytes. There is one index: a cycle updates it in
place as it reads (a copy filled beside the serving one doubled its memory), except the assets a change recorded
during the cycle (newer than the cycle's snapshot); once the cycle is recorded, the assets of the types it read
completely that it did not see are dropped. Dependents:
- a Role or ClusterRole: the bindings of its cluster that reference it;
- a Namespace: the bindings of its cluster (tenancy), the cluster, and the Namespace itself;
- a ResourceQuota or NetworkPolicy: its Namespace and the cluster;
- a GKE cluster: the bindings of the cluster (legacy ABAC), and the IAM policies of its project and ancestors;
- an IAM policy of an organization, folder or project: the retained IAM policies below it (inherited audit
  configuration);
- the Organization resource (its domain): every IAM policy may change verdict, and those are not retained: an early
  full cycle is asked for (`early_cycle` log event, `auditor_early_cycles_total{reason}`), as for a project created
  or deleted (the projects whose service accounts count as internal).
Anything else a change may affect is the reconciler's: the next cycle records it, counted in
`auditor_reconcile_missed_total{asset_type}` (drift a cycle found on the asset types events report).

Metrics: `auditor_event_to_drift_seconds` (publish time to drift recorded), `auditor_incremental_changes_total
{outcome}`, `auditor_early_cycles_total{reason}`, `auditor_incremental_pending` (inbox rows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from auditor import plugins
from auditor.collect.cai_feed import FeedChange, FeedMessageError, epoch
from auditor.collect.files import decode_record, record_to_asset
from auditor.evaluate.engine import Engine, Evaluation
from auditor.evaluate.gke_posture import cluster_key
from auditor.evaluate.registry import Context
from auditor.evaluate.rulebook import LoadedRule
from auditor.logs import get_logger
from auditor.model import Asset, Finding, Mode
from auditor.state import NotLeader, Recorded
from auditor.state.changes import AssetVerdict, ChangeInput, ChangesRecorded
from auditor.vocabulary import (
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    FOLDER,
    GKE_CLUSTER,
    HIERARCHY_TYPES,
    NAMESPACE,
    NETWORK_POLICY,
    ORGANIZATION,
    PROJECT,
    RESOURCE_QUOTA,
    ROLE,
    ROLE_BINDING,
)

if TYPE_CHECKING:
    from auditor.cycle import Auditor

BATCH = 200  # changes recorded per transaction
POLL_SECONDS = 1.0  # the worker looks at the inbox this often without being woken (a follower's pushes, a restart)
VIEW_EVERY_SECONDS = 1.0  # the metrics view is rebuilt at most this often while changes are recorded
# A change recorded this long before a cycle started still wins over the cycle's snapshot for its asset: a listing
# may lag behind the feed by a few seconds (CAI is eventually consistent).
EVENT_GRACE_SECONDS = 30.0
K8S_KINDS = (ROLE, ROLE_BINDING, CLUSTER_ROLE, CLUSTER_ROLE_BINDING, NAMESPACE, RESOURCE_QUOTA, NETWORK_POLICY)
BINDINGS = (ROLE_BINDING, CLUSTER_ROLE_BINDING)
RETAINED = frozenset({*K8S_KINDS, GKE_CLUSTER, *HIERARCHY_TYPES})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

Key = tuple[str, bool, bool]  # an asset's name, and whether the copy carries its resource, its IAM policy


def order_of(change: FeedChange) -> tuple[str, str]:
    """(mark, ordering key) of a change: the store keeps the newest key per asset and mark. A source's changes are
    ordered among themselves (a feed's by window start time, a watch's by resourceVersion `sequence`, else by the
    time it was received): a feed and a watch reporting the same object are both recorded (the second finds the
    verdict unchanged)."""
    source = getattr(change, "source", "cai-feed")
    mark = change.content if source == "cai-feed" else f"{change.content}:{source}"
    return mark, getattr(change, "sequence", None) or change.window_start


def _key(a: Asset) -> Key:
    return (a.name, a.has_resource, a.has_iam_policy)


def _compact(a: Asset) -> Asset:
    """A copy holding its own JSON bytes (decoded when read, then dropped): what the index keeps of an asset. Taken
    as the asset pickles itself: raw JSON as bytes, not decoded (a reader's Raw would keep its whole block alive)."""
    import msgspec

    _, parts = a.__reduce__()
    res, iam = parts[2], parts[3]
    return Asset(a.name, a.asset_type,
                 resource=res if res is None or isinstance(res, bytes) else msgspec.json.encode(res),
                 iam_policy=iam if iam is None or isinstance(iam, bytes) else msgspec.json.encode(iam),
                 ancestors=a.ancestors, update_time=a.update_time, origin=a.origin)


def retained_types(rules: Iterable[LoadedRule]) -> frozenset[str]:
    """What the index keeps: the Kubernetes kinds, GKE clusters, the hierarchy, and every type a rule reads as
    context."""
    return RETAINED | {t for r in rules for t in (*r.spec.context_types, *r.spec.context_names)}


class Retained:
    """The compact index of the assets re-evaluating a change needs (see the module's docstring). Thread-safe: a
    cycle updates it while the incremental worker reads it."""

    def __init__(self, types: frozenset[str] = RETAINED) -> None:
        self.types = types
        self.by_type: dict[str, dict[Key, Asset]] = {}
        self.version = 0
        self.lock = threading.RLock()
        self._seen: dict[str, set[Key]] | None = None  # what the running cycle read, by type
        self._held: set[str] = set()  # names a change recorded during the running cycle: the cycle's copy is older

    def observe(self, asset: Asset) -> None:
        """One asset a cycle read: kept when its type is retained (the cycle's per-asset hook)."""
        if asset.asset_type not in self.types:
            return
        key = _key(asset)
        with self.lock:
            if self._seen is not None:
                self._seen.setdefault(asset.asset_type, set()).add(key)
            if asset.name not in self._held:
                self.by_type.setdefault(asset.asset_type, {})[key] = _compact(asset)

    def put(self, asset: Asset) -> None:
        if asset.asset_type in self.types:
            with self.lock:
                self.by_type.setdefault(asset.asset_type, {})[_key(asset)] = _compact(asset)
                self.version += 1

    def drop(self, asset_type: str, name: str) -> None:
        with self.lock:
            kept = self.by_type.get(asset_type)
            if kept:
                for k in [k for k in kept if k[0] == name]:
                    del kept[k]
                self.version += 1

    def hold(self, name: str) -> None:
        """A change recorded for this asset during the running cycle: the cycle's copy does not replace it."""
        with self.lock:
            if self._seen is not None:
                self._held.add(name)

    def begin(self, types: frozenset[str]) -> None:
        """A cycle starts reading: it will update the index in place (`observe`), then `end`."""
        with self.lock:
            self.types = types
            self._seen, self._held = {}, set()

    def end(self, complete: bool, incomplete: Iterable[str] = ()) -> None:
        """The cycle was recorded: the assets it did not see, of the types it read completely (all of them when
        `complete`; none when it was not recorded), are gone. Assets of types no longer retained are dropped."""
        from auditor.evaluate.globs import compile_glob

        with self.lock:
            seen, self._seen, self._held = self._seen, None, set()
            if seen is None:
                return
            unread = [compile_glob(t) for t in incomplete]
            for t in list(self.by_type):
                if t not in self.types:
                    del self.by_type[t]
                elif (complete or incomplete) and not any(p.match(t) for p in unread):
                    kept, saw = self.by_type[t], seen.get(t, set())
                    for k in [k for k in kept if k not in saw]:
                        del kept[k]
            self.version += 1

    def assets(self, asset_type: str) -> Iterator[Asset]:
        with self.lock:
            kept = list(self.by_type.get(asset_type, {}).values())
        yield from kept

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.by_type.values())

    def context(self, now: datetime) -> Context:
        ctx = Context(now=now)
        with self.lock:
            for t, kept in self.by_type.items():
                ctx.by_type[t] = list(kept.values())
        return ctx

    # -- dependents ----------------------------------------------------------------------------------------------
    def dependents(self, asset: Asset) -> list[Asset]:
        """The retained assets whose rules with context read `asset` (see the module's docstring)."""
        t, name = asset.asset_type, asset.name
        if t in K8S_KINDS or t == GKE_CLUSTER:
            return self._in_cluster(asset)
        if t in HIERARCHY_TYPES and asset.has_iam_policy:
            node = name.split("/", 3)[-1] if name.startswith("//") else name
            return [a for ht in HIERARCHY_TYPES for a in self.assets(ht)
                    if a.has_iam_policy and a.name != name and node in a.ancestors]
        return []

    def _in_cluster(self, asset: Asset) -> list[Asset]:
        t = asset.asset_type
        cluster = cluster_key(asset.name)
        ns = _namespace(asset.name)
        out: list[Asset] = []

        def of_cluster(kind: str) -> Iterator[Asset]:
            return (a for a in self.assets(kind) if cluster_key(a.name) == cluster)

        if t in (ROLE, CLUSTER_ROLE):
            role = asset.name.rsplit("/", 1)[-1]
            kind = "Role" if t == ROLE else "ClusterRole"
            for b in (a for bt in BINDINGS for a in of_cluster(bt)):
                ref = _dict(b.resource.get("roleRef"))
                if ref.get("kind") == kind and ref.get("name") == role and (t != ROLE or _namespace(b.name) == ns):
                    out.append(b)
                b.release()
        elif t in (NAMESPACE, GKE_CLUSTER):
            out += [a for bt in BINDINGS for a in of_cluster(bt)]
            if t == NAMESPACE:
                out += list(of_cluster(GKE_CLUSTER))
            else:
                project = asset.project
                ancestors = set(asset.ancestors) | ({project} if project else set())
                out += [a for ht in HIERARCHY_TYPES for a in self.assets(ht)
                        if a.has_iam_policy and a.name.split("/", 3)[-1] in ancestors]
        elif t in (RESOURCE_QUOTA, NETWORK_POLICY):
            out += [a for a in of_cluster(NAMESPACE) if a.name.rsplit("/", 1)[-1] == ns]
            out += list(of_cluster(GKE_CLUSTER))
        return out


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _namespace(name: str) -> str | None:
    _, sep, rest = name.partition("/k8s/namespaces/")
    return rest.split("/", 1)[0] if sep else None


# -- changes in the inbox --------------------------------------------------------------------------------------------
def encode_change(change: FeedChange, received_at: float) -> str:
    """A change as the inbox keeps it: every field of FeedChange (assets in the export spelling)."""
    doc: dict[str, Any] = {}
    for f in dataclasses.fields(change):
        v = getattr(change, f.name)
        doc[f.name] = {"__asset__": v.to_dict()} if isinstance(v, Asset) else v
    doc["__received_at__"] = received_at
    return json.dumps(doc, default=str, separators=(",", ":"))


def decode_change(payload: str) -> FeedChange:
    doc = json.loads(payload)
    names = {f.name for f in dataclasses.fields(FeedChange)}
    kw: dict[str, Any] = {}
    for k, v in doc.items():
        if k not in names:
            continue
        if isinstance(v, dict) and "__asset__" in v:
            v = record_to_asset(decode_record(json.dumps(v["__asset__"])), f"inbox:{doc.get('message_id', '')}")
        kw[k] = v
    return FeedChange(**kw)


@dataclasses.dataclass
class _Work:
    inbox_id: int
    change: FeedChange
    received_at: float
    targets: list[tuple[Asset, bool]] = dataclasses.field(default_factory=list)  # (asset, context rules only)
    verdicts: list[AssetVerdict] = dataclasses.field(default_factory=list)


class Incremental:
    """Records changes from events between cycles, for one Auditor (see the module's docstring)."""

    def __init__(self, auditor: Auditor, clock: Callable[[], float] = time.time) -> None:
        self.auditor = auditor
        self.clock = clock
        self.log = get_logger("auditor.incremental")
        self.retained = Retained(retained_types(auditor.rules))
        self.filled = False  # a cycle of this process filled the index: changes can be evaluated
        self._inbox: Any = None  # a store connection of its own for `submit` (never waits on a cycle's write)
        self._inbox_lock = threading.Lock()
        self._work_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: tuple[int, Any, Engine] | None = None
        self._view_at = 0.0
        self._ctx: tuple[int, float, Retained, Context] | None = None
        self.missed: list[tuple[str, float]] = []  # auditor_reconcile_missed_total, as the store last said
        self.request_cycle: Callable[[str], None] | None = None  # set by the daemon: run a full cycle now
        self._early_pending: str | None = None
        self.latency = Histogram("auditor_event_to_drift_seconds",
                                 "Seconds from an event's publish time to its drift being recorded.",
                                 buckets=LATENCY_BUCKETS, registry=None)
        self.changes = Counter("auditor_incremental_changes", "Changes from events handled, by outcome.",
                               ["outcome"], registry=None)
        for o in ("recorded", "redelivery", "out_of_order", "unreadable"):
            self.changes.labels(o)
        self.early = Counter("auditor_early_cycles", "Full cycles run early because a change fans out beyond the "
                             "retained index, by reason.", ["reason"], registry=None)
        self._pending = 0

    # -- receiving -----------------------------------------------------------------------------------------------
    def submit(self, change: FeedChange) -> None:
        """Write the change to the inbox (durable once this returns), and wake the worker. Raises when it could
        not be written: the caller answers so that the sender retries."""
        now = self.clock()
        mark, order = order_of(change)
        row = (now, change.asset.name, mark, order, encode_change(change, now))
        with self._inbox_lock:
            if self._inbox is None:
                self._inbox = self.auditor.store.reopen()
            self._inbox.enqueue_changes([row])
        self._wake.set()

    # -- the cycle's side ----------------------------------------------------------------------------------------
    def cycle_started(self) -> Retained:
        """The index, for the cycle to update in place (returned: its `observe` is the per-asset hook)."""
        self.retained.begin(retained_types(self.auditor.rules))
        return self.retained

    def cycle_ended(self, complete: bool, incomplete: Iterable[str] = ()) -> None:
        """The cycle was recorded (or not: `complete` False with nothing recorded drops nothing). A partial cycle
        keeps the assets of the types it did not read completely."""
        with self._work_lock:
            self.retained.end(complete, incomplete)
            if complete or incomplete:
                self.filled = True
        self.log.info("retained_index", assets=self.retained.count(),
                      types={t: len(v) for t, v in sorted(self.retained.by_type.items()) if v})
        self.refresh_missed()
        if self._early_pending is not None:
            reason, self._early_pending = self._early_pending, None
            self._ask_cycle(reason)
        self._wake.set()

    # -- the worker ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="incremental", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._inbox_lock:
            if self._inbox is not None:
                self._inbox.close()
                self._inbox = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self.step():
                    pass
            except Exception as exc:  # the store is unreachable, a bug: the changes stay in the inbox
                self.log.exception("incremental_error", error=f"{type(exc).__name__}: {exc}")
                self._stop.wait(POLL_SECONDS)

    def ready(self) -> bool:
        """Changes are recorded by the leader, once a cycle of this process has filled the index."""
        if not self.filled:
            return False
        leader = self.auditor.leader
        return leader is None or leader.is_leader()

    def drain(self) -> int:
        """Record every change of the inbox now (tests, and `step` until empty); the number handled."""
        n = 0
        while True:
            k = self.step()
            if not k:
                return n
            n += k

    def step(self, limit: int = BATCH) -> int:
        """One batch: the number of changes handled (0: nothing to do, or not ready)."""
        with self._work_lock:
            if not self.ready():
                # what waits (the gauge): the inbox a follower shares, or one no cycle has yet let this one record
                with contextlib.suppress(Exception):
                    self._pending = self.auditor.store.pending_change_count()
                return 0
            store = self.auditor.store
            rows = store.pending_changes(limit)
            self._pending = len(rows)
            if not rows:
                return 0
            works, unreadable = [], []
            for inbox_id, received_at, payload in rows:
                try:
                    works.append(_Work(inbox_id, decode_change(payload), received_at))
                except Exception as exc:  # written by this code, so a bug or a version change: said, not kept
                    self.log.error("change_unreadable", inbox_id=inbox_id, error=f"{type(exc).__name__}: {exc}")
                    unreadable.append(inbox_id)
            if unreadable:
                store.discard_changes(unreadable)
                self.changes.labels("unreadable").inc(len(unreadable))
            accepted = self._accepted(works)
            self._plan([w for w in works if w.inbox_id in accepted])
            items = self._evaluate(works, accepted)
            now = self.clock()
            try:
                rec = store.record_changes(items, now, fence=self.auditor.leader.fence if self.auditor.leader
                                           else None)
            except NotLeader:
                self.log.warning("changes_not_recorded", reason="this replica no longer holds the leader lock")
                return 0
            if rec is None:
                self.filled = False  # no cycle has recorded findings: wait for one
                return 0
            self._pending = 0 if len(rows) < limit else store.pending_change_count()
        self._after(works, rec)
        return len(rows)

    def _accepted(self, works: Sequence[_Work]) -> set[int]:
        """The inbox ids of the changes newer than what the store recorded for their asset (in order)."""
        keys = [(w.change.asset.name, *order_of(w.change)) for w in works]
        known = self.auditor.store.change_marks([(name, mark) for name, mark, _ in keys])
        out = set()
        for w, (name, mark, order) in zip(works, keys, strict=True):
            last = known.get((name, mark))
            if last is not None and order <= last:
                continue
            known[(name, mark)] = order
            out.add(w.inbox_id)
        return out

    def _apply(self, index: Retained, change: FeedChange) -> None:
        a = change.asset
        if change.deleted:
            index.drop(a.asset_type, a.name)
        else:
            index.put(a)

    def _plan(self, works: Iterable[_Work]) -> None:
        """Apply the accepted changes to the index, then list what each one re-evaluates."""
        for w in works:
            c = w.change
            if c.asset.asset_type in self.retained.types:
                self._apply(self.retained, c)
                self.retained.hold(c.asset.name)
            self._fan_out(c)
        for w in works:
            c = w.change
            if not c.deleted:
                w.targets.append((c.asset, False))
            w.targets += [(d, True) for d in self.retained.dependents(c.asset if not c.deleted else c.prior
                                                                        or c.asset)]

    def _fan_out(self, c: FeedChange) -> None:
        t = c.asset.asset_type
        reason = None
        if t == ORGANIZATION and c.content == "resource" and self._reads_context(ORGANIZATION):
            reason = "organization_changed"
        elif t in (PROJECT, FOLDER) and c.content == "resource" and (c.deleted or c.prior is None) \
                and self._reads_context(t):
            reason = "hierarchy_changed"
        if reason is not None:
            self.log.info("early_cycle", reason=reason, asset=c.asset.name,
                          why="rules read it as context for assets the daemon does not retain")
            self._ask_cycle(reason)

    def _reads_context(self, asset_type: str) -> bool:
        return any(asset_type in r.spec.context_types or asset_type in r.spec.context_names
                   for r in self.auditor.rules)

    def _ask_cycle(self, reason: str) -> None:
        self.early.labels(reason).inc()
        if self.auditor.running_since is not None:
            self._early_pending = reason  # the running cycle may have read the asset before it changed: once more
        if self.request_cycle is not None:
            self.request_cycle(reason)

    def _engine_for(self, rules: list[LoadedRule]) -> Engine:
        today = datetime.now(UTC).date()
        if self._engine is None or self._engine[0] != id(rules) or self._engine[1] != today:
            self._engine = (id(rules), today, Engine(rules))
        return self._engine[2]

    def _context(self, engine: Engine) -> Context:
        """The context of the retained index, kept while the index does not change (the indexes checks derive from
        it are built once), for a minute at most (the evaluation time)."""
        now = self.clock()
        hit = self._ctx
        if hit is None or hit[0] != self.retained.version or now - hit[1] > 60 or hit[2] is not self.retained:
            engine.now = datetime.now(UTC)
            hit = self._ctx = (self.retained.version, now, self.retained, self.retained.context(engine.now))
        return hit[3]

    def _evaluate(self, works: Sequence[_Work], accepted: set[int]) -> list[ChangeInput]:
        engine = self._engine_for(self.auditor.rules)
        ctx = self._context(engine)
        memo: dict[tuple[Key, bool], AssetVerdict] = {}
        items = []
        for w in works:
            c = w.change
            mark, order = order_of(c)
            item = ChangeInput(c.asset.name, mark, c.asset.asset_type, order, w.inbox_id)
            if w.inbox_id in accepted:
                if c.deleted:
                    item.verdicts.append(AssetVerdict(c.asset.name, None, ()))
                for asset, context_only in w.targets:
                    key = (_key(asset), context_only)
                    v = memo.get(key) if context_only else None
                    if v is None:
                        v = self._verdict(engine, asset, ctx, context_only)
                        if context_only:
                            memo[key] = v
                    item.verdicts.append(v)
            w.verdicts = item.verdicts
            items.append(item)
        return items

    @staticmethod
    def _verdict(engine: Engine, asset: Asset, ctx: Context, context_only: bool) -> AssetVerdict:
        result = Evaluation()
        ran = engine.evaluate_one(asset, ctx, result, context_only=context_only)
        failed = {e.rule for e in result.errors} | {n.rule_id for n in result.not_evaluated}
        # An IAM policy's copy answers for the rules that read IAM policies, a resource's for the others (CAI gives
        # them as two assets of one name); a rule that could not run keeps its findings as they are.
        rules = frozenset(
            r.id for r in ran if r.id not in failed
            and (r.spec.needs_iam if not asset.has_resource else not r.spec.needs_iam or asset.has_iam_policy)
        )
        return AssetVerdict(asset.name, rules, [f for f in result.findings if f.rule in rules])

    # -- after the commit ----------------------------------------------------------------------------------------
    def _after(self, works: Sequence[_Work], rec: ChangesRecorded) -> None:
        now = self.clock()
        for w, o in zip(works, rec.outcomes, strict=False):
            self.changes.labels(o.outcome).inc()
            if o.outcome == "recorded" and (o.new or o.resolved) and w.change.publish_time:
                with contextlib.suppress(FeedMessageError):
                    self.latency.observe(max(0.0, now - epoch(w.change.publish_time)))
        if rec.first_event is not None:
            events = list(self.auditor.store.event_drift(rec))
            for e in events:
                self.log.info("drift", cycle=e.cycle_id, change=e.change, rule=e.rule, finding_severity=e.severity,
                              asset=e.asset, asset_type=e.asset_type, exempted=e.exempted, finding=e.finding_id,
                              finding_message=e.message, origin="event")
            self._notify(rec, events)
            if now - self._view_at >= VIEW_EVERY_SECONDS:
                self._view_at = now
                self.auditor.refresh_view()
        self._remediate(works, rec)

    def _notify(self, rec: ChangesRecorded, events: list[Any]) -> None:
        outbound = self.auditor.outbound
        if outbound is None or outbound.notifier is None:
            return
        from auditor.sinks.ledger import Ledger

        recorded = Recorded(rec.cycle_id, rec.new_count, rec.resolved_count, baseline=rec.baseline,
                            load_drift=lambda: iter(events))
        labels = {r.id: r.rule.labels for r in self.auditor.rules}
        try:
            with Ledger(self.auditor.store) as ledger:
                outbound.notifier.announce(recorded.drift, ledger, baseline=rec.baseline,
                                           scope=self.auditor.settings.scope, labels=labels)
            outbound.notifier.flush()
        except Exception as exc:  # delivered later from the queue; never loses the recorded drift
            self.log.exception("notify_error", error=f"{type(exc).__name__}: {exc}")

    def _remediate(self, works: Sequence[_Work], rec: ChangesRecorded) -> None:
        s = self.auditor.settings
        if not s.remediation.enabled:
            return
        # What the changed assets violate now, of the rules in enforce mode (new or still open: the live state
        # changed, and the cycle would plan them too); the step re-reads each resource before writing.
        enforced = {r.id for r in self.auditor.rules if r.rule.mode == Mode.enforce}
        findings: list[Finding] = []
        seen: set[str] = set()
        for w, o in zip(works, rec.outcomes, strict=False):
            if o.outcome != "recorded":
                continue
            for f in (f for v in w.verdicts for f in v.findings):
                if f.rule in enforced and f.exempted is None and f.id not in seen:
                    seen.add(f.id)
                    findings.append(f)
        if not findings:
            return
        step = plugins.cycle_steps.get("remediate")
        if step is None:
            return
        from auditor.scan import ScanResult

        result = ScanResult(datetime.now(UTC), list(self.auditor.rules), Evaluation(findings=findings), [])
        self.auditor.remediate_findings(result)

    # -- metrics -------------------------------------------------------------------------------------------------
    def refresh_missed(self) -> None:
        self.missed = sorted((lb.get("asset_type", ""), v) for lb, v in
                             self.auditor.store.counters("reconcile_missed_total"))

    def register(self, registry: CollectorRegistry) -> None:
        for c in (self.latency, self.changes, self.early, _StoreCounters(self)):
            registry.register(c)


class _StoreCounters(Collector):
    """`auditor_reconcile_missed_total` (kept in the store: it survives restarts) and the inbox's size."""

    def __init__(self, inc: Incremental) -> None:
        self.inc = inc

    def collect(self) -> Iterator[Metric]:
        missed = CounterMetricFamily("auditor_reconcile_missed",
                                     "Drift a cycle found that no event had reported, by asset type.",
                                     labels=["asset_type"])
        for asset_type, v in self.inc.missed:
            missed.add_metric([asset_type], v)
        yield missed
        yield GaugeMetricFamily("auditor_incremental_pending", "Changes from events received, not yet recorded.",
                                value=self.inc._pending)
