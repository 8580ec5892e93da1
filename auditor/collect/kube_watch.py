"""Stage 1, collect: Kubernetes watches of the audited kinds, each event handed on as a `FeedChange`.

One watcher per kind (Namespaces, Roles, RoleBindings, ClusterRoles, ClusterRoleBindings, NetworkPolicies,
ResourceQuotas) and cluster source, each on its own thread, through the `kubernetes` client's `watch.Watch`:

- It starts with a list (paged, with the collector's retry policy) that gives the resourceVersion to watch from
  and the resourceVersion of every object. The first list hands nothing on: the daemon's cycle reads the same
  state. It then watches from there with `allowWatchBookmarks`, ending each watch after `timeout_seconds` (the
  server closes it) and resuming from the last resourceVersion seen, an event's or a BOOKMARK's.
- An event whose resourceVersion is not after the last one seen (for the kind, or for the object) is a replay and
  is dropped, so a reconnect gives no duplicate; resuming from the last resourceVersion means none is missed.
- `410 Gone` (the history the watch would resume from was compacted) relists at once. The relist is compared with
  what was known: an object gone is handed on as a deletion, an object whose resourceVersion moved (or a new one)
  as a change; the watch then resumes from the relist's resourceVersion.
- Any other error (refused connection, 5xx, 429 with Retry-After, a dropped stream) backs off with full jitter
  (auditor/collect/retry.py's policy; `sleep` is injectable so tests do not wait), then resumes; the error count
  goes to the observer, which the daemon turns into metrics and readiness.
- `stop()` ends every watcher at once: the open stream's socket is shut down (`Watch.stop`).

Each event's object becomes an asset through the collector's own conversion (`kubernetes_api.item_asset`), so a
watched asset is the asset a cycle reads.

Ordering: Kubernetes documents resourceVersions as opaque strings, only to be compared for equality. Every API
server backed by etcd sends etcd's revision, a decimal integer (int64), that grows with every write; the watch
relies on that: a numeric resourceVersion is compared as a number, and its `sequence` (on the FeedChange) is the
number zero-padded to 20 digits, so it sorts as a string. A resourceVersion that is not a decimal integer is never
taken as older or newer: it is compared for equality only (a replay of the same version is dropped, anything else is
handed on) and its change carries no `sequence`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from auditor.collect.cai_feed import FeedChange, time_key
from auditor.collect.kubernetes_api import KINDS, Kind, KubernetesApiSource, item_asset
from auditor.collect.retry import RetryPolicy, status_of
from auditor.model import Asset

log = logging.getLogger(__name__)

SOURCE = "k8s-watch"
DEFAULT_TIMEOUT_SECONDS = 300  # a watch is re-opened this often (the server ends it), from the last resourceVersion
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")
RV_DIGITS = 20  # an int64 has at most 19 digits
MIN_QUIET_STREAM_SECONDS = 1.0  # a stream ending sooner with no event counts as an error (backed off)


def rv_sequence(rv: str | None) -> str | None:
    """A key that sorts like the resourceVersion: a decimal one zero-padded to 20 digits, else None (not ordered)."""
    if rv is None or not rv.isascii() or not rv.isdigit() or len(rv) > RV_DIGITS:
        return None
    return rv.rjust(RV_DIGITS, "0")


def is_after(rv: str | None, last: str | None) -> bool:
    """Whether `rv` is a later state than `last`: by number for etcd's numeric versions; otherwise any version
    other than the last one counts as later (the safe side: handing on a change twice costs a re-evaluation,
    dropping one would hide drift until the next cycle)."""
    if last is None:
        return True
    if rv is None:
        return False
    a, b = rv_sequence(rv), rv_sequence(last)
    if a is not None and b is not None:
        return a > b
    return rv != last


class WatchObserver(Protocol):
    """What the daemon learns from the watchers (metrics and readiness). Labels are the cluster and the kind."""

    def event(self, cluster: str, kind: str, type_: str) -> None: ...
    def relisted(self, cluster: str, kind: str) -> None: ...
    def failed(self, cluster: str, kind: str, error: str) -> None: ...
    def connected(self, cluster: str, kind: str, up: bool) -> None: ...


class NullObserver:
    def event(self, cluster: str, kind: str, type_: str) -> None:
        pass

    def relisted(self, cluster: str, kind: str) -> None:
        pass

    def failed(self, cluster: str, kind: str, error: str) -> None:
        pass

    def connected(self, cluster: str, kind: str, up: bool) -> None:
        pass


@dataclass
class Known:
    """What the watcher knows of one object: its resourceVersion and asset type (a deletion found by a relist names
    both)."""

    rv: str
    asset_type: str


def _now_rfc3339(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KindWatcher:
    """Watches one kind of one cluster source and hands each change to `emit`."""

    def __init__(
        self,
        source: KubernetesApiSource,
        kind: Kind,
        emit: Callable[[FeedChange], None],
        *,
        observer: WatchObserver | None = None,
        timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
        backoff: RetryPolicy | None = None,
        sleep: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.source = source
        self.kind = kind
        self.emit = emit
        self.observer: WatchObserver = observer or NullObserver()
        self.timeout_seconds = timeout_seconds
        self.backoff = backoff or RetryPolicy()
        self.stop_event = stop or threading.Event()
        # sleep(seconds) -> True when stopped meanwhile; by default waits on the stop event, so a stop ends a backoff
        self.sleep = sleep or self.stop_event.wait
        self.clock = clock
        self.rv: str | None = None  # where the next watch resumes (None: list first)
        self.known: dict[str, Known] = {}  # asset name -> last state seen
        self.primed = False  # a first list has been read (later lists are compared with what is known)
        self.relists = 0
        self.failures = 0  # errors in a row (the backoff's attempt number)
        self._watch: Any = None
        self._lock = threading.Lock()
        self._stamped = ""

    @property
    def cluster(self) -> str:
        return self.source.cluster

    def _stamp(self) -> str:
        """The change's window start: the time it was received, strictly increasing for this watcher (two events
        of one object in the same microsecond must not look like a redelivery to whoever orders by it)."""
        key = time_key(_now_rfc3339(self.clock))
        if key <= self._stamped:
            head, _, nanos = self._stamped.rpartition(".")
            key = f"{head}.{int(nanos) + 1:09d}" if int(nanos) < 999_999_999 else key
        self._stamped = max(key, self._stamped)
        return key

    # -- the loop ---------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Watch until stopped: list when needed, watch, resume; relist on 410; back off on errors."""
        gone = 0
        while not self.stop_event.is_set():
            try:
                if self.rv is None:
                    self._relist()
                    gone = 0
                self._watch_once()
            except Exception as exc:
                if self.stop_event.is_set():
                    break
                if status_of(exc) == 410 and gone == 0:
                    # The client raises 410 from a watch's ERROR event (or a list's expired continue token): the
                    # history to resume from is compacted. Relist at once; a second 410 in a row backs off.
                    gone += 1
                    self.rv = None
                    continue
                self.failures += 1
                self.observer.connected(self.cluster, self.kind.kind, False)
                reason = f"{status_of(exc) or type(exc).__name__}: {exc}".replace("\n", " ")[:500]
                self.observer.failed(self.cluster, self.kind.kind, reason)
                wait = self.backoff.wait_seconds(self.failures, exc)
                log.warning("%s: watching %s failed (%s), error %d in a row; again in %.1f s",
                            self.source.uri, self.kind.kind, reason, self.failures, wait)
                if self.sleep(wait):
                    break
        self.observer.connected(self.cluster, self.kind.kind, False)

    def stop(self) -> None:
        """End the loop; an open stream is cut at once (its socket shut down)."""
        self.stop_event.set()
        with self._lock:
            w = self._watch
        if w is not None:
            with contextlib.suppress(Exception):
                w.stop()

    # -- list -------------------------------------------------------------------------------------------------------
    def _list_fn(self) -> Callable[..., Any]:
        from kubernetes import client

        api = getattr(client, self.kind.api_class)(self.source.api_client())
        fn: Callable[..., Any] = getattr(api, self.kind.method)
        return fn

    def _relist(self) -> None:
        """List the kind; after the first list, hand on what changed while the watch was not looking."""
        list_fn = self._list_fn()
        token: str | None = None
        list_rv: str | None = None
        listed: dict[str, tuple[str, Asset]] = {}
        page_no = 0
        while True:
            doc = self.source._page(list_fn, token)
            page_no += 1
            meta = doc.get("metadata") or {}
            if list_rv is None:
                list_rv = str(meta.get("resourceVersion") or "") or None
            origin = f"{self.source.uri} {self.kind.kind} relist page {page_no}"
            for obj in doc.get("items") or ():
                if not isinstance(obj, dict):
                    continue
                asset = self._asset(obj, origin)
                if asset is not None:
                    listed[asset.name] = (str((obj.get("metadata") or {}).get("resourceVersion") or ""), asset)
            token = meta.get("continue") or None
            if not token:
                break
        if self.primed:
            self.relists += 1
            self.observer.relisted(self.cluster, self.kind.kind)
            for name, known in list(self.known.items()):
                if name not in listed:
                    # Gone as of the list's resourceVersion: that is the deletion's place in the order (a later
                    # re-creation has a later resourceVersion).
                    gone = Asset(name=name, asset_type=known.asset_type, origin=f"{self.source.uri} relist")
                    self._hand_on(gone, True, list_rv, "relist", self._stamp())
                    self.known.pop(name, None)
            for name, (rv, asset) in listed.items():
                known_now = self.known.get(name)
                if known_now is None or known_now.rv != rv:
                    self._hand_on(asset, False, rv or None, "relist", self._stamp())
                    self.known[name] = Known(rv, asset.asset_type)
        else:
            self.known = {name: Known(rv, asset.asset_type) for name, (rv, asset) in listed.items()}
            self.primed = True
        self.rv = list_rv
        log.info("%s: listed %d %s object(s) at resourceVersion %s", self.source.uri, len(listed), self.kind.kind,
                 list_rv)

    def _asset(self, obj: dict[str, Any], origin: str) -> Asset | None:
        try:
            return item_asset(obj, self.kind, self.cluster, origin)
        except ValueError as exc:  # malformed: said once, the next cycle reports it as the collector does
            log.warning("%s: %s: %s", self.source.uri, origin, exc)
            return None

    # -- watch ------------------------------------------------------------------------------------------------------
    def _stream(self) -> Iterator[dict[str, Any]]:
        from kubernetes import watch

        # return_type "object": events are left as the JSON sent (no model validation, no renamed fields)
        w = watch.Watch(return_type="object")
        with self._lock:
            self._watch = w
        if self.stop_event.is_set():
            return
        try:
            self.source.status.requests += 1
            yield from w.stream(
                self._list_fn(),
                resource_version=self.rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.timeout_seconds,
                _request_timeout=(10.0, self.timeout_seconds + 30.0),
            )
        finally:
            with self._lock:
                self._watch = None

    def _watch_once(self) -> None:
        """One watch request, until the server ends it (timeout), the stream breaks, or a stop."""
        connected = False
        opened = time.monotonic()
        for event in self._stream():
            if self.stop_event.is_set():
                break
            if not connected:
                connected = True
                self.failures = 0
                self.observer.connected(self.cluster, self.kind.kind, True)
            self._event(event)
        if not connected and not self.stop_event.is_set():
            if time.monotonic() - opened < MIN_QUIET_STREAM_SECONDS:
                # Ended at once with nothing in it (a proxy closing streams, a server going away): an error, backed
                # off, or the watcher would reconnect in a tight loop.
                raise ConnectionError("the watch stream ended at once, with no event")
            # The stream stayed open and ended with nothing in it (a quiet server without bookmarks): up.
            self.failures = 0
            self.observer.connected(self.cluster, self.kind.kind, True)

    def _event(self, event: dict[str, Any]) -> None:
        type_ = str(event.get("type") or "")
        obj = event.get("raw_object")
        if not isinstance(obj, dict) or type_ not in EVENT_TYPES:
            log.warning("%s: %s watch: an event of unknown type %r skipped", self.source.uri, self.kind.kind, type_)
            return
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        rv = str(rv) if rv is not None else None
        if type_ == "BOOKMARK":
            # Nothing changed up to this version: resume from here (a resume point the server still keeps).
            if rv is not None and is_after(rv, self.rv):
                self.rv = rv
            self.observer.event(self.cluster, self.kind.kind, type_)
            return
        if rv is None or not is_after(rv, self.rv):
            return  # a replay of what was seen before a reconnect
        asset = self._asset(obj, f"{self.source.uri} {self.kind.kind} watch")
        if asset is None:
            self.rv = rv
            return
        known = self.known.get(asset.name)
        if known is not None and not is_after(rv, known.rv):
            self.rv = rv
            return
        self.observer.event(self.cluster, self.kind.kind, type_)
        self._hand_on(asset, type_ == "DELETED", rv, "watch", self._stamp())
        if type_ == "DELETED":
            self.known.pop(asset.name, None)
        else:
            self.known[asset.name] = Known(rv, asset.asset_type)
        self.rv = rv

    def _hand_on(self, asset: Asset, deleted: bool, rv: str | None, how: str, received: str) -> None:
        """Give the change to the daemon. Should that fail, the watch relists (after a backoff): the relist's
        comparison hands the change on again, so it is not lost."""
        change = FeedChange(
            asset=asset,
            deleted=deleted,
            window_start=received,
            content="resource",
            message_id=f"{SOURCE}:{self.cluster}:{self.kind.kind}:{how}:{rv or '-'}:{asset.name.rsplit('/', 1)[-1]}",
            publish_time=_now_rfc3339(self.clock),
            source=SOURCE,
            sequence=rv_sequence(rv),
        )
        try:
            self.emit(change)
        except Exception:
            self.rv = None  # relist: what is known is older than the cluster, so the change comes again
            raise


class ClusterWatch:
    """The watchers of one cluster source (`k8s://CONTEXT` or `k8s://in-cluster`), one thread each."""

    def __init__(
        self,
        source: KubernetesApiSource,
        emit: Callable[[FeedChange], None],
        *,
        observer: WatchObserver | None = None,
        timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
        backoff: RetryPolicy | None = None,
        sleep: Callable[[float], bool] | None = None,
        kinds: tuple[Kind, ...] = KINDS,
    ) -> None:
        self.source = source
        self.stop_event = threading.Event()
        self.watchers = [
            KindWatcher(source, k, emit, observer=observer, timeout_seconds=timeout_seconds, backoff=backoff,
                        sleep=sleep, stop=self.stop_event)
            for k in kinds
        ]
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self.source.api_client()  # a kubeconfig problem is said now, by the caller
        self.source.resolve_cluster()
        for w in self.watchers:
            t = threading.Thread(target=w.run, name=f"watch-{w.kind.kind}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        for w in self.watchers:
            w.stop()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            if self.source._api_client is not None:
                self.source._api_client.close()
        self.source._api_client = None
        self.threads = []

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)
