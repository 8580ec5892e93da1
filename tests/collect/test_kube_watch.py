"""Kubernetes watches: the real kubernetes client's `watch.Watch` against kmock with watch streaming
(tests/fakes/kube.py): resume from a resourceVersion, 410 Gone and relist, bookmarks, backoff, stop, conversion."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from auditor.collect import SourceOptions
from auditor.collect.cai_feed import FeedChange
from auditor.collect.kube_watch import SOURCE, ClusterWatch, KindWatcher, is_after, rv_sequence
from auditor.collect.kubernetes_api import KINDS, KubernetesApiSource
from auditor.collect.retry import RetryPolicy
from tests.collect.test_kubernetes_api import CLUSTER, TENANTS
from tests.fakes.kube import KubeFault, KubeServer

RBAC = "rbac.authorization.k8s.io"
ROLE_BINDING = next(k for k in KINDS if k.kind == "RoleBinding")
PREFIX = f"//container.googleapis.com/{CLUSTER}/k8s"


def binding(name: str, role: str = "view", namespace: str = "vision", subject: str = "vision@example.com") -> dict:
    return {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "Group", "apiGroup": RBAC, "name": subject}]}


def wait_until(cond: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    """Poll until `cond()` is truthy (a generous bound: the condition, not the time, is what is tested)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Recorder:
    """The observer: what the watchers told the daemon."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.relists: list[str] = []
        self.failures: list[str] = []
        self.up: dict[str, bool] = {}

    def event(self, cluster: str, kind: str, type_: str) -> None:
        self.events.append((kind, type_))

    def relisted(self, cluster: str, kind: str) -> None:
        self.relists.append(kind)

    def failed(self, cluster: str, kind: str, error: str) -> None:
        self.failures.append(error)

    def connected(self, cluster: str, kind: str, up: bool) -> None:
        self.up[kind] = up


class Gate:
    """An injected backoff sleep: records each wait and holds the watcher there until the test opens it."""

    def __init__(self, open_: bool = True) -> None:
        self.waits: list[float] = []
        self.opened = threading.Event()
        if open_:
            self.opened.set()
        self.waiting = threading.Event()

    def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.waiting.set()
        self.opened.wait(30)
        return False


@pytest.fixture
def source(kubeconfig: str) -> KubernetesApiSource:
    options = SourceOptions(cluster=CLUSTER, extra={"retry_sleep": lambda s: None})
    return KubernetesApiSource(f"k8s://{kubeconfig}", options)


@pytest.fixture
def running() -> Iterator[Callable[[KindWatcher], KindWatcher]]:
    started: list[tuple[KindWatcher, threading.Thread]] = []

    def start(w: KindWatcher) -> KindWatcher:
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        started.append((w, t))
        return w

    yield start
    for w, t in started:
        w.stop()
        t.join(10)
        assert not t.is_alive(), "a watcher did not stop"


def watcher(source: KubernetesApiSource, changes: queue.Queue[FeedChange], **kw: Any) -> KindWatcher:
    kw.setdefault("backoff", RetryPolicy(initial=1.0, maximum=8.0, jitter=random.Random(7)))
    return KindWatcher(source, kw.pop("kind", ROLE_BINDING), changes.put, timeout_seconds=kw.pop("timeout", 60), **kw)


def drain(changes: queue.Queue[FeedChange], n: int) -> list[FeedChange]:
    return [changes.get(timeout=90) for _ in range(n)]


def short(change: FeedChange) -> tuple[str, str, bool]:
    data = change.asset.resource or {}
    role = (data.get("roleRef") or {}).get("name", "") if isinstance(data, dict) else ""
    return change.asset.name.rsplit("/", 1)[-1], role, change.deleted


def test_resource_versions_sort_when_numeric_and_are_only_compared_for_equality_otherwise() -> None:
    assert rv_sequence("9") == "0" * 19 + "9"
    assert str(rv_sequence("9")) < str(rv_sequence("10")) < str(rv_sequence("100"))
    assert rv_sequence("9223372036854775807") == "09223372036854775807"
    assert rv_sequence("a1b2") is None and rv_sequence("") is None and rv_sequence(None) is None
    assert is_after("10", "9") and not is_after("9", "10") and not is_after("9", "9")
    # opaque (non-numeric) versions: never taken as older, so a change is handed on rather than dropped
    assert is_after("b", "c") and is_after("10", "x") and not is_after("x", "x")


def test_watch_resumes_from_its_resource_version_without_duplicates_or_gaps(
    kube_api: KubeServer, source: KubernetesApiSource, running: Callable[[KindWatcher], KindWatcher]
) -> None:
    kube_api.load(binding("trainers"))
    changes: queue.Queue[FeedChange] = queue.Queue()
    gate, seen = Gate(open_=False), Recorder()
    w = running(watcher(source, changes, sleep=gate, observer=seen))
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 1, "the watch to open")
    assert changes.empty(), "the first list hands nothing on: the cycle reads that state"
    rbac = client.RbacAuthorizationV1Api(kube_api.api_client())
    rbac.create_namespaced_role_binding("vision", binding("admins", role="admin"))
    first = drain(changes, 1)
    assert [short(c) for c in first] == [("admins", "admin", False)]
    resume_at = first[0].sequence

    # The connection drops and the reconnect fails: while the watcher backs off, the cluster changes.
    kube_api.inject(KubeFault(status=500, watch=True, times=1))
    kube_api.close_watches()
    wait_until(gate.waiting.is_set, "the watcher to back off")
    rbac.create_namespaced_role_binding("vision", binding("tenant-admin", role="cluster-admin", subject="speech"))
    rbac.patch_namespaced_role_binding("admins", "vision", {"roleRef": {"apiGroup": RBAC, "kind": "ClusterRole",
                                                                       "name": "edit"}})
    gate.opened.set()
    after = drain(changes, 2)
    assert [short(c) for c in after] == [("tenant-admin", "cluster-admin", False), ("admins", "edit", False)]
    assert all(c.source == SOURCE and c.content == "resource" for c in first + after)
    assert [c.sequence for c in first + after] == sorted(c.sequence or "" for c in first + after)
    time.sleep(0.3)
    assert changes.empty(), "a reconnect hands nothing on twice"

    resumed = kube_api.watch_requests("rolebindings")
    assert [r["resourceVersion"] for r in resumed] == ["1", str(int(resume_at or 0)), str(int(resume_at or 0))], (
        "watched from the list's version, then resumed (the failed try and the good one) from the last event seen")
    assert all(r["allowWatchBookmarks"] for r in resumed)
    assert len(kube_api.list_requests("rolebindings")) == 1, "a resume is not a relist"
    assert w.relists == 0 and len(seen.failures) == 1 and "500" in seen.failures[0]
    assert len(gate.waits) == 1 and 0 <= gate.waits[0] <= 1.0


def test_410_gone_relists_and_reports_what_changed_in_the_gap(
    kube_api: KubeServer, source: KubernetesApiSource, running: Callable[[KindWatcher], KindWatcher]
) -> None:
    kube_api.load(binding("trainers"), binding("borrowed", role="edit", subject="speech@example.com"),
                  binding("readers"))
    changes: queue.Queue[FeedChange] = queue.Queue()
    gate, seen = Gate(open_=False), Recorder()
    w = running(watcher(source, changes, sleep=gate, observer=seen))
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 1, "the watch to open")

    kube_api.inject(KubeFault(status=503, watch=True, times=1))
    kube_api.close_watches()
    wait_until(gate.waiting.is_set, "the watcher to back off")
    # In the gap: one binding deleted, one changed, one created, one untouched; then etcd compacts the history.
    kube_api.remove("RoleBinding", "borrowed", "vision")
    kube_api.load(binding("trainers", role="admin"), binding("tenant-admin", role="cluster-admin"))
    kube_api.compact()
    gate.opened.set()

    relisted = drain(changes, 3)
    got = {short(c) for c in relisted}
    assert got == {("borrowed", "", True), ("trainers", "admin", False), ("tenant-admin", "cluster-admin", False)}
    # each in the order of resourceVersions: a deletion found by the relist is placed at the list's version
    list_rv = str(kube_api.call(lambda: kube_api.handler.rv))
    gone = next(c for c in relisted if c.deleted)
    assert gone.sequence == list_rv.rjust(20, "0")
    assert all(c.sequence and c.sequence <= gone.sequence for c in relisted)
    time.sleep(0.3)
    assert changes.empty(), "the untouched binding is not handed on"
    assert w.relists == 1 and seen.relists == ["RoleBinding"]
    assert len(kube_api.list_requests("rolebindings")) == 2
    assert f"{PREFIX}/namespaces/vision/{RBAC}/rolebindings/borrowed" not in w.known

    # The watch goes on from the relist: a later change arrives once.
    client.RbacAuthorizationV1Api(kube_api.api_client()).delete_namespaced_role_binding("readers", "vision")
    assert [short(c) for c in drain(changes, 1)] == [("readers", "view", True)]
    # and a re-creation of the binding deleted in the gap comes after its deletion
    kube_api.load(binding("borrowed", role="edit", subject="speech@example.com"))
    [again] = drain(changes, 1)
    assert short(again) == ("borrowed", "edit", False) and str(again.sequence) > str(gone.sequence)


def test_bookmarks_advance_the_resume_point_so_a_compaction_needs_no_relist(
    kube_api: KubeServer, source: KubernetesApiSource, running: Callable[[KindWatcher], KindWatcher]
) -> None:
    kube_api.call(setattr, kube_api.handler, "bookmark_interval", 0.05)
    kube_api.load(binding("trainers"))
    changes: queue.Queue[FeedChange] = queue.Queue()
    seen = Recorder()
    w = running(watcher(source, changes, observer=seen))
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 1, "the watch to open")
    start = w.rv
    # Writes to other kinds move the server's resourceVersion; only bookmarks tell this watch about it.
    kube_api.load({"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole", "metadata": {"name": f"r{i}"}, "rules": []}
                  for i in range(5))
    server_rv = str(kube_api.call(lambda: kube_api.handler.rv))
    wait_until(lambda: w.rv == server_rv, "a bookmark to carry the server's resourceVersion")
    assert int(server_rv) > int(start or 0)
    assert ("RoleBinding", "BOOKMARK") in seen.events and changes.empty()

    kube_api.compact()  # the history before the bookmark is gone
    kube_api.close_watches()
    wait_until(lambda: len(kube_api.watch_requests("rolebindings")) >= 2, "the watch to resume")
    assert kube_api.watch_requests("rolebindings")[1]["resourceVersion"] == server_rv
    kube_api.load(binding("tenant-admin", role="cluster-admin"))
    assert [short(c) for c in drain(changes, 1)] == [("tenant-admin", "cluster-admin", False)]
    assert w.relists == 0 and len(kube_api.list_requests("rolebindings")) == 1


def test_errors_back_off_with_jitter_and_honour_retry_after(
    kube_api: KubeServer, source: KubernetesApiSource, running: Callable[[KindWatcher], KindWatcher]
) -> None:
    for status, after in ((500, None), (503, None), (500, None), (429, 7.0)):
        kube_api.inject(KubeFault(status=status, watch=True, times=1, retry_after=after))
    changes: queue.Queue[FeedChange] = queue.Queue()
    gate, seen = Gate(), Recorder()
    w = running(watcher(source, changes, sleep=gate, observer=seen))
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 1, "the watch to open after the errors")
    assert len(gate.waits) == 4 and len(seen.failures) == 4
    for attempt, wait in enumerate(gate.waits[:3], start=1):
        assert 0 <= wait <= min(8.0, 2 ** (attempt - 1)), (attempt, wait)  # full jitter under a doubling ceiling
    assert len(set(gate.waits[:3])) == 3, "jittered, not a fixed schedule"
    assert gate.waits[3] >= 7.0, "Retry-After is the least wait"
    assert [f.split(":")[0] for f in seen.failures] == ["500", "503", "500", "429"]
    wait_until(lambda: seen.up.get("RoleBinding"), "the watch to report itself up")
    assert w.failures == 0, "a working watch starts its backoff afresh"
    assert len(kube_api.list_requests("rolebindings")) == 1, "errors resume the watch, they do not relist"


def test_a_change_that_cannot_be_handed_on_comes_again(
    kube_api: KubeServer, source: KubernetesApiSource, running: Callable[[KindWatcher], KindWatcher]
) -> None:
    got: list[FeedChange] = []
    refused = threading.Event()

    def emit(change: FeedChange) -> None:
        if not refused.is_set():
            refused.set()
            raise RuntimeError("the daemon could not take it")
        got.append(change)

    w = running(KindWatcher(source, ROLE_BINDING, emit, sleep=Gate(), timeout_seconds=60))
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 1, "the watch to open")
    kube_api.load(binding("tenant-admin", role="cluster-admin"))
    wait_until(lambda: got, "the change to come again")
    assert [short(c) for c in got] == [("tenant-admin", "cluster-admin", False)]
    assert w.relists == 1, "the refused change was found again by a relist"


def test_stop_ends_an_open_watch(kube_api: KubeServer, source: KubernetesApiSource) -> None:
    changes: queue.Queue[FeedChange] = queue.Queue()
    w = watcher(source, changes, timeout=3600)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 1, "the watch to open")
    w.stop()
    t.join(10)
    assert not t.is_alive()
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 0, "the server to see the stream closed")


def test_watched_assets_are_the_collectors_assets(kube_api: KubeServer, source: KubernetesApiSource,
                                                  public_data: Path) -> None:
    """Every kind, events from creation: each asset equals the one the collector lists afterwards."""
    got: list[FeedChange] = []
    lock = threading.Lock()

    def emit(change: FeedChange) -> None:
        with lock:
            got.append(change)

    cw = ClusterWatch(source, emit, sleep=Gate(), timeout_seconds=60)
    cw.start()
    try:
        wait_until(lambda: kube_api.open_watches() == len(KINDS), "every kind's watch to open")
        objects = list(yaml.safe_load(TENANTS)["items"])
        objects += yaml.safe_load((public_data / "k8s-bootstrap-rbac" / "cluster-roles.yaml").read_text())["items"]
        kube_api.load(*objects)
        wait_until(lambda: len(got) == len(objects), f"{len(objects)} changes")
    finally:
        cw.stop()
    assert not cw.alive
    listed = KubernetesApiSource(source.uri, source.options)
    expected = {a.name: a for a in listed.assets()}
    watched = {c.asset.name: c.asset for c in got}
    assert set(watched) == set(expected) and len(got) == len(expected)
    for name, a in expected.items():
        b = watched[name]
        assert (b.asset_type, b.resource, b.iam_policy, b.ancestors, b.update_time) == (
            a.asset_type, a.resource, a.iam_policy, a.ancestors, a.update_time), name
    assert {c.asset.asset_type for c in got} == {k.asset_type for k in KINDS}


def test_changes_of_one_object_get_increasing_window_starts_even_in_one_microsecond(
    kube_api: KubeServer, source: KubernetesApiSource, running: Callable[[KindWatcher], KindWatcher]
) -> None:
    """Whoever orders changes by window start must not take the second of two quick changes for a redelivery."""
    changes: queue.Queue[FeedChange] = queue.Queue()
    running(watcher(source, changes, clock=lambda: 1_800_000_000.0))  # a clock that does not move
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 1, "the watch to open")
    kube_api.load(binding("tenant-admin", role="cluster-admin"))
    kube_api.load(binding("tenant-admin", role="view"))
    kube_api.remove("RoleBinding", "tenant-admin", "vision")
    got = drain(changes, 3)
    assert [short(c) for c in got] == [("tenant-admin", "cluster-admin", False), ("tenant-admin", "view", False),
                                       ("tenant-admin", "view", True)]
    starts = [c.window_start for c in got]
    assert starts == sorted(set(starts)) and starts[0] == "2027-01-15T08:00:00.000000000"


def test_streams_that_end_at_once_are_backed_off_not_reopened_in_a_loop(
    kube_api: KubeServer, source: KubernetesApiSource, running: Callable[[KindWatcher], KindWatcher]
) -> None:
    changes: queue.Queue[FeedChange] = queue.Queue()
    gate, seen = Gate(), Recorder()
    running(watcher(source, changes, sleep=gate, observer=seen))
    wait_until(lambda: kube_api.open_watches("RoleBinding") == 1, "the watch to open")
    kube_api.load(binding("trainers"))
    drain(changes, 1)  # the first stream carried an event: its end is not an error
    kube_api.inject(KubeFault(status=200, watch=True, times=3))  # three empty streams, closed at once
    kube_api.close_watches()
    wait_until(lambda: len(kube_api.watch_requests("rolebindings")) == 5 and kube_api.open_watches("RoleBinding"),
               "the watch to reopen")
    assert [f.split(":")[0] for f in seen.failures] == ["ConnectionError"] * 3 and len(gate.waits) == 3
    kube_api.load(binding("tenant-admin", role="cluster-admin"))
    assert [short(c) for c in drain(changes, 1)] == [("tenant-admin", "cluster-admin", False)]
