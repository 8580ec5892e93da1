"""Two `auditor serve` replicas with remediation on, electing a leader through a Lease in kmock.

Only the leader applies; when it stops (SIGTERM hands the Lease over), the other takes over and applies the next
drift. Real processes, the real kubernetes client against kmock, the real Google clients against the fake.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.daemon.support import Served, wait_until
from tests.fakes.gcp import FakeGcp
from tests.remediations.conftest import ORG, remediation_rules
from tests.remediations.kube import KubeServer

RULES = remediation_rules(default_deny=None)
POLICY = ("ml-research-sandbox", "notebook-gateway")
OPEN_RULE = 500


def _config(tmp_path: Path, name: str, endpoint: str, rules: Path) -> Path:
    cfg = {
        "sources": [f"cai://{ORG}"],
        "rules": [str(rules)],
        "state_path": str(tmp_path / f"{name}.db"),
        "listen": "127.0.0.1:0",
        "log_format": "json",
        "gcp_endpoint": endpoint,
        "schedule": {"interval_seconds": 1, "jitter_seconds": 0, "shutdown_grace_seconds": 5},
        "remediation": {
            "enabled": True,
            "leader_election": {"lease_name": "drift-auditor", "lease_namespace": "drift-auditor"},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _kubeconfig(kube: KubeServer, path: Path) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": kube.url}}],
        "users": [{"name": "kmock", "user": {"token": "t"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _outcomes(replica: Served) -> dict[str, float]:
    """auditor_remediations_total summed by outcome (non-zero ones), from the replica's /metrics."""
    status, body, _ = replica.get("/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for outcome, value in re.findall(r'^auditor_remediations_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', body.decode(),
                                     re.M):
        if float(value):
            out[outcome] = out.get(outcome, 0.0) + float(value)
    return out


def _holder(kube: KubeServer) -> str:
    from kubernetes import client

    lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease("drift-auditor", "drift-auditor")
    return str(lease.spec.holder_identity)


def _open_rule_present(fake: FakeGcp) -> bool:
    return any(int(r["priority"]) == OPEN_RULE for r in fake.state.security_policy(*POLICY)["rules"])


def test_only_the_leader_applies_and_the_other_takes_over(
    fake_gcp: FakeGcp, gcp_endpoint: str, kube: KubeServer, repo: Path, tmp_path: Path
) -> None:
    fake_gcp.load(repo / "examples" / "org")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    env = {"KUBECONFIG": str(_kubeconfig(kube, tmp_path / "kubeconfig"))}
    original = fake_gcp.state.security_policy(*POLICY)
    assert _open_rule_present(fake_gcp)

    with Served(_config(tmp_path, "a", gcp_endpoint, rules), env) as a, \
            Served(_config(tmp_path, "b", gcp_endpoint, rules), env) as b:
        replicas = {"a": a, "b": b}
        wait_until(lambda: not _open_rule_present(fake_gcp), 60, "the open rule to be removed")
        # Both replicas keep cycling; exactly one of them ever wrote.
        wait_until(lambda: len(a.cycles()) >= 3 and len(b.cycles()) >= 3, 60, "three cycles on each replica")
        applied = {name: _outcomes(r).get("applied", 0.0) for name, r in replicas.items()}
        assert sorted(applied.values()) == [0.0, 1.0], applied
        leader_name = next(n for n, v in applied.items() if v)
        leader, follower = replicas[leader_name], replicas["b" if leader_name == "a" else "a"]
        # The Lease names the process that applied (identity: hostname-pid), and the follower never wrote at all.
        assert _holder(kube).endswith(f"-{leader.proc.pid}")
        assert _outcomes(follower) == {}

        # The leader stops (a node drains): SIGTERM hands the Lease over, and the follower applies the next drift.
        assert leader.stop() == 0
        fake_gcp.state.write_security_policy(POLICY[0], original)
        assert _open_rule_present(fake_gcp)
        wait_until(lambda: not _open_rule_present(fake_gcp), 60, "the follower to remove the reintroduced rule")
        wait_until(lambda: _outcomes(follower) == {"applied": 1.0}, 30, "the follower's applied counter")
        assert _holder(kube).endswith(f"-{follower.proc.pid}")
