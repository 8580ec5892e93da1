"""The daemon's Kubernetes watches: the `watch` settings, changes handed to Auditor.feed_change (the feed's entry
point), metrics, readiness for a watch that stays down, leader only (two replicas on a real PostgreSQL), and a clean
stop. The real kubernetes client against kmock (tests/fakes/kube.py)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from auditor.cycle import Auditor
from auditor.daemon import Daemon, respond
from auditor.settings import ConfigError, load_settings
from auditor.state import Store
from tests.daemon.support import example_org, free_port, wait_until, write_config
from tests.fakes.kube import KubeServer

RBAC = "rbac.authorization.k8s.io"
TENANT_ADMIN = {
    "metadata": {"name": "tenant-admin", "namespace": "vision"},
    "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
    "subjects": [{"kind": "Group", "apiGroup": RBAC, "name": "vision-users@example.com"}],
}


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    server = KubeServer().start()
    try:
        yield server
    finally:
        server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def watch_config(tmp_path: Path, kube: KubeServer, **overrides: Any) -> Path:
    example_org(tmp_path)
    kube.kubeconfig(tmp_path / "kubeconfig", context="fake")
    src = f"k8s://fake?kubeconfig={tmp_path / 'kubeconfig'}"
    cfg: dict[str, Any] = {"sources": [str(tmp_path / "org"), src], "watch": {"sources": [src]}}
    return write_config(tmp_path / "config.yaml", **{**cfg, **overrides})


def sample(d: Daemon, name: str, **labels: str) -> float | None:
    return d.registry.get_sample_value(name, labels)


@contextlib.contextmanager
def daemon(config: Path, clock: Clock | None = None, state: str | None = None) -> Iterator[Daemon]:
    settings = load_settings(config)
    with Store(state or settings.state_target) as store:
        d = Daemon(settings, Auditor(settings, store), clock=clock)
        try:
            yield d
        finally:
            d.watches.stop()


@pytest.mark.parametrize(
    ("watch", "problem"),
    [
        ({"sources": ["k8s://other"]}, "k8s://other is not one of `sources`"),
        ({"sources": ["SELF_ORG"]}, "is not a Kubernetes source"),
        ({"sources": [], "timeout_seconds": 1}, "greater than or equal to 10"),
        ({"switch": True}, "unknown key"),
    ],
)
def test_watch_settings_are_checked(tmp_path: Path, watch: dict[str, Any], problem: str) -> None:
    example_org(tmp_path)
    if watch.get("sources") == ["SELF_ORG"]:
        watch = {"sources": [str(tmp_path / "org")]}
    path = write_config(tmp_path / "config.yaml", watch=watch)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert problem in str(err.value) and str(path) in str(err.value)


def test_watched_changes_reach_the_feed_entry_point_and_the_metrics(tmp_path: Path, kube: KubeServer) -> None:
    with daemon(watch_config(tmp_path, kube)) as d:
        d.sync_watches()
        wait_until(lambda: kube.open_watches() == 7, 30, "the seven kinds' watches to open")
        assert d.watches.ready() == (True, "ok")
        rbac = client.RbacAuthorizationV1Api(kube.api_client())
        rbac.create_namespaced_role_binding("vision", TENANT_ADMIN)
        changes = wait_until(lambda: list(d.auditor.feed_changes), 30, "the change to reach the auditor")
        (change,) = changes
        assert change.source == "k8s-watch" and not change.deleted
        assert change.asset.name.endswith("/k8s/namespaces/vision/rbac.authorization.k8s.io/rolebindings/tenant-admin")
        assert change.asset.resource["roleRef"]["name"] == "cluster-admin"
        cluster = d.watches.running[d.settings.watch.sources[0]].source.cluster
        assert sample(d, "auditor_watch_events_total", cluster=cluster, kind="RoleBinding", type="ADDED") == 1
        assert sample(d, "auditor_watch_up", cluster=cluster, kind="RoleBinding") == 1
        assert (sample(d, "auditor_watch_last_event_timestamp_seconds", cluster=cluster) or 0) > 0
        assert sample(d, "auditor_watch_relists_total", cluster=cluster, kind="Namespace") == 0
        # Shutdown stops the watches first: the streams close.
        d.scheduler.start(paused=True)
        assert d.shutdown() == 0
        assert not d.watches.running
        wait_until(lambda: kube.open_watches() == 0, 30, "the streams to close")


def test_a_watch_down_for_long_makes_the_daemon_unready(tmp_path: Path, kube: KubeServer) -> None:
    clock = Clock()
    dead = tmp_path / "dead-kubeconfig"
    KubeServer.kubeconfig(kube, dead, context="fake")
    dead.write_text(dead.read_text().replace(kube.url, f"http://127.0.0.1:{free_port()}"))
    src = f"k8s://fake?kubeconfig={dead}"
    config = watch_config(tmp_path, kube, sources=[str(tmp_path / "org"), src],
                          watch={"sources": [src], "down_after_seconds": 120})
    with daemon(config, clock) as d:
        d.sync_watches()
        cluster = d.watches.running[src].source.cluster
        wait_until(lambda: (sample(d, "auditor_watch_errors_total", cluster=cluster, kind="RoleBinding") or 0) >= 1,
                   30, "the refused connection to be counted")
        assert sample(d, "auditor_watch_up", cluster=cluster, kind="RoleBinding") == 0
        assert d.watches.ready()[0], "down for less than down_after_seconds: still ready"
        clock.now += 121
        ok, why = d.watches.ready()
        assert not ok and "has been down for 121s" in why and cluster in why
        d.auditor.published = dataclasses.replace(d.auditor.published, cycles_completed=1)  # as after a cycle
        reply = respond(d, "GET", "/readyz", {})
        assert reply.status == 503 and b"watch" in reply.body


def test_only_the_leader_watches(tmp_path: Path, kube: KubeServer, postgres_url: str) -> None:
    config = watch_config(tmp_path, kube, state_url=postgres_url, ha={"enabled": True, "lease_seconds": 1})
    with daemon(config) as a, daemon(config) as b:
        a.schedule(), b.schedule()  # not started: the leader check runs by hand here
        a._poll_leadership()
        b._poll_leadership()
        assert a.auditor.leading and not b.auditor.leading
        wait_until(lambda: kube.open_watches() == 7, 30, "the leader's watches to open")
        assert a.watches.running and not b.watches.running
        a.watches.stop()
        a.auditor.close()  # the leader goes away: its lock is released
        wait_until(lambda: (b._poll_leadership(), b.auditor.leading)[1], 30, "b to take over")
        assert b.watches.running
        wait_until(lambda: kube.open_watches() == 7, 30, "the new leader's watches to open")
