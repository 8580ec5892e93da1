"""The daemon's Kubernetes watches: one `ClusterWatch` per source in `watch.sources`, run only on the leader.

Each change a watch reports is handed to the daemon through the entry point feed pushes use
(`Auditor.feed_change`). The watches start when this replica leads (always, without HA; after the leader lock is
won, with it), stop when it loses the lock, and stop on shutdown before the last cycle is waited for.

Metrics (labels: the cluster, as assets name it, and the kind; both bounded by the configuration):
`auditor_watch_events_total{cluster,kind,type}` (ADDED, MODIFIED, DELETED, BOOKMARK),
`auditor_watch_relists_total{cluster,kind}` (after 410 Gone), `auditor_watch_errors_total{cluster,kind}` (each
error is followed by a backoff and a restart of the watch), `auditor_watch_up{cluster,kind}` and
`auditor_watch_last_event_timestamp_seconds{cluster}`. Readiness: not ready while a watch of the leader has been
down for `watch.down_after_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge
from prometheus_client.registry import CollectorRegistry

from auditor.collect.cai_feed import FeedChange
from auditor.collect.kube_watch import EVENT_TYPES, ClusterWatch
from auditor.collect.kubernetes_api import KINDS, KubernetesApiSource
from auditor.collect.retry import RetryPolicy
from auditor.logs import get_logger
from auditor.settings import Settings


class WatchMetrics:
    """The watchers' observer: Prometheus metrics, and how long each watch has been down (for readiness)."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.events = Counter("auditor_watch_events", "Kubernetes watch events received, by cluster, kind and type.",
                              ["cluster", "kind", "type"], registry=registry)
        self.relists = Counter("auditor_watch_relists", "Relists after a watch's resourceVersion expired (410 Gone).",
                               ["cluster", "kind"], registry=registry)
        self.errors = Counter("auditor_watch_errors", "Watch errors, each followed by a backoff and a restart.",
                              ["cluster", "kind"], registry=registry)
        self.up = Gauge("auditor_watch_up", "1 while the watch is connected, 0 while it is down.",
                        ["cluster", "kind"], registry=registry)
        self.last_event = Gauge("auditor_watch_last_event_timestamp_seconds",
                                "When the last watch event (bookmarks included) of the cluster was received.",
                                ["cluster"], registry=registry)
        self._down_since: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def starting(self, cluster: str, kind: str) -> None:
        """A watch that has not connected yet counts as down from now."""
        self.up.labels(cluster, kind).set(0)
        self.errors.labels(cluster, kind)
        self.relists.labels(cluster, kind)
        for t in EVENT_TYPES:
            self.events.labels(cluster, kind, t)
        with self._lock:
            self._down_since.setdefault((cluster, kind), self.clock())

    def stopped(self, cluster: str, kind: str) -> None:
        with self._lock:
            self._down_since.pop((cluster, kind), None)

    def event(self, cluster: str, kind: str, type_: str) -> None:
        self.events.labels(cluster, kind, type_).inc()
        self.last_event.labels(cluster).set(self.clock())

    def relisted(self, cluster: str, kind: str) -> None:
        self.relists.labels(cluster, kind).inc()

    def failed(self, cluster: str, kind: str, error: str) -> None:
        self.errors.labels(cluster, kind).inc()

    def connected(self, cluster: str, kind: str, up: bool) -> None:
        self.up.labels(cluster, kind).set(1 if up else 0)
        with self._lock:
            if up:
                self._down_since.pop((cluster, kind), None)
            else:
                self._down_since.setdefault((cluster, kind), self.clock())

    def down_longest(self) -> tuple[str, str, float] | None:
        """(cluster, kind, seconds) of the watch down the longest, or None when all are up."""
        with self._lock:
            if not self._down_since:
                return None
            (cluster, kind), since = min(self._down_since.items(), key=lambda kv: kv[1])
        return cluster, kind, self.clock() - since


class KubeWatches:
    """The configured watches, started and stopped with leadership."""

    def __init__(self, settings: Settings, registry: CollectorRegistry, on_change: Callable[[FeedChange], None],
                 *, clock: Callable[[], float] = time.time, sleep: Callable[[float], bool] | None = None) -> None:
        self.settings = settings
        self.on_change = on_change
        self.metrics = WatchMetrics(registry, clock)
        self.sleep = sleep
        self.log = get_logger("auditor.watch")
        self.running: dict[str, ClusterWatch] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.watch.sources)

    def sync(self, leading: bool) -> None:
        """Run the watches when this replica leads, stop them when it does not."""
        if not self.enabled:
            return
        if leading:
            self.start()
        else:
            self.stop()

    def start(self) -> None:
        """Start the watches not running yet (one whose source could not be opened is tried again next time)."""
        with self._lock:
            w = self.settings.watch
            backoff = RetryPolicy(initial=w.backoff_initial_seconds, maximum=w.backoff_max_seconds)
            options = self.settings.sources_options()
            for uri in w.sources:
                if uri in self.running:
                    continue
                try:
                    source = KubernetesApiSource(uri, options)
                    source.api_client()
                    cluster = source.resolve_cluster()
                except Exception as exc:  # a kubeconfig problem: said, and the watch counts as down (readiness)
                    self.metrics.starting(uri, "*")
                    self.log.error("watch_not_started", source=uri, error=f"{type(exc).__name__}: {exc}")
                    continue
                self.metrics.stopped(uri, "*")
                for k in KINDS:  # down until each watch has connected
                    self.metrics.starting(cluster, k.kind)
                cw = ClusterWatch(source, self.on_change, observer=self.metrics, timeout_seconds=w.timeout_seconds,
                                  backoff=backoff, sleep=self.sleep)
                cw.start()
                self.running[uri] = cw
                self.log.info("watching", source=uri, cluster=source.cluster, kinds=[k.kind for k in KINDS])

    def stop(self) -> None:
        with self._lock:
            running, self.running = self.running, {}
            for uri in self.settings.watch.sources:
                self.metrics.stopped(uri, "*")
        for uri, cw in running.items():
            cw.stop()
            for k in KINDS:
                self.metrics.stopped(cw.source.cluster, k.kind)
            self.log.info("watch_stopped", source=uri)

    def ready(self) -> tuple[bool, str]:
        """Not ready while a watch has been down for longer than watch.down_after_seconds."""
        down = self.metrics.down_longest()
        limit = self.settings.watch.down_after_seconds
        if down is not None and down[2] > limit:
            cluster, kind, seconds = down
            return False, (f"not ready: the {kind} watch of {cluster} has been down for {seconds:.0f}s "
                           f"(limit {limit:.0f}s)")
        return True, "ok"
