"""End to end: `auditor serve` watching a cluster (the real kubernetes client against kmock), a RoleBinding that hands
a tenant's group cluster-admin, created after the daemon's first cycle, becomes a drift recorded in the store by the
watch (no second cycle runs). The condition is waited for with a generous bound; the time is not asserted (the
latency is measured by bench/watch_latency.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from auditor.state import Store
from tests.daemon.support import Served, wait_until
from tests.fakes.kube import KubeServer

RBAC = "rbac.authorization.k8s.io"
CLUSTER = "projects/ml-platform-prod/locations/us-central1/clusters/training"
RULE = "rbac-no-cluster-admin-for-humans"
TENANT = """
- {apiVersion: v1, kind: Namespace, metadata: {name: vision, labels: {tenant: vision}}}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: trainers, namespace: vision}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
  subjects: [{kind: Group, apiGroup: rbac.authorization.k8s.io, name: vision@example.com}]
"""
TENANT_ADMIN = {
    "metadata": {"name": "tenant-admin", "namespace": "vision"},
    "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
    "subjects": [{"kind": "Group", "apiGroup": RBAC, "name": "vision@example.com"}],
}
ASSET = f"//container.googleapis.com/{CLUSTER}/k8s/namespaces/vision/{RBAC}/rolebindings/tenant-admin"


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    server = KubeServer().start()
    try:
        yield server
    finally:
        server.stop()


def config(tmp_path: Path, kube: KubeServer) -> Path:
    kube.kubeconfig(tmp_path / "kubeconfig", context="fake")
    src = f"k8s://fake?kubeconfig={tmp_path / 'kubeconfig'}&cluster={CLUSTER}"
    cfg = {
        "sources": [src],
        "watch": {"sources": [src]},
        "state_path": str(tmp_path / "state.db"),
        "listen": "127.0.0.1:0",
        "log_format": "json",
        "schedule": {"interval_seconds": 3600, "jitter_seconds": 0, "shutdown_grace_seconds": 5},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def event_drift(state: Path) -> list[tuple[str, str, str]]:
    with Store(state) as store:
        rows = store.db.rows("SELECT change, rule, asset FROM drift_events WHERE origin = 'event' ORDER BY id")
    return [(r[0], r[1], r[2]) for r in rows]


def test_a_tenant_bound_to_cluster_admin_after_the_first_cycle_is_recorded_drift(tmp_path: Path,
                                                                                 kube: KubeServer) -> None:
    kube.load(yaml.safe_load(TENANT))
    with Served(config(tmp_path, kube)) as d:
        d.wait_event(lambda e: e.get("event") == "cycle" and e.get("outcome") == "success", 120, "the first cycle")
        wait_until(lambda: kube.open_watches() == 7, 60, "the daemon's watches to open")
        assert not event_drift(tmp_path / "state.db")
        client.RbacAuthorizationV1Api(kube.api_client()).create_namespaced_role_binding("vision", TENANT_ADMIN)
        wait_until(lambda: ("new", RULE, ASSET) in event_drift(tmp_path / "state.db"), 60, "the drift to be recorded")
        assert len(d.cycles()) == 1, "recorded by the watch, not by a second cycle"
        with Store(tmp_path / "state.db") as store:
            assert any(f.rule == RULE and f.asset == ASSET for f in store.open_findings())
        status, body, _ = d.get("/metrics")
        assert status == 200 and b'auditor_watch_events_total{cluster="' + CLUSTER.encode() in body
        assert d.stop() == 0
