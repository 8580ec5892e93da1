"""Only one replica writes: two electors on one Lease in kmock, and two on one lock file."""

from __future__ import annotations

import time
from pathlib import Path

from remediations.leader import FileLockElector, LeaseElector
from tests.remediations.kube import KubeServer

LEASE = ("auditor-remediation", "drift-auditor")


def _wait_for(cond, limit: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return bool(cond())


def _holder(kube: KubeServer) -> str | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease(*LEASE)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return lease.spec.holder_identity


def test_one_lease_holder_and_takeover_after_expiry(kube: KubeServer) -> None:
    # A lease of 5 s: long enough that a busy machine does not let it lapse between two lines of this test.
    a = LeaseElector(kube.api_client(), *LEASE, identity="replica-a", lease_duration=5, renew_every=0.5)
    b = LeaseElector(kube.api_client(), *LEASE, identity="replica-b", lease_duration=5, renew_every=0.5)
    assert a.is_leader()
    assert not b.is_leader()
    assert _holder(kube) == "replica-a"
    assert a.is_leader() and not b.is_leader(), "the holder keeps it while it renews"
    # replica-a stops renewing (it crashed): replica-b takes over once the lease has expired, within its duration.
    assert _wait_for(b.is_leader, limit=5 * 3)
    assert _holder(kube) == "replica-b"
    a._leader_until = None  # replica-a comes back: it has to ask again, and loses
    assert not a.is_leader()


def test_stopping_leader_hands_over_at_once(kube: KubeServer) -> None:
    a = LeaseElector(kube.api_client(), *LEASE, identity="replica-a", lease_duration=30, renew_every=10).start()
    b = LeaseElector(kube.api_client(), *LEASE, identity="replica-b", lease_duration=30, renew_every=10)
    assert _wait_for(lambda: _holder(kube) == "replica-a", limit=5)
    assert not b.is_leader()
    a.stop()
    assert b.is_leader()
    assert _holder(kube) == "replica-b"


def test_lock_file_one_holder(tmp_path: Path) -> None:
    lock = str(tmp_path / "remediation.lock")
    a, b = FileLockElector(lock, "a"), FileLockElector(lock, "b")
    try:
        assert a.is_leader()
        assert not b.is_leader()
        assert a.is_leader()
        a.stop()
        assert b.is_leader()
        assert not a.is_leader()
    finally:
        a.stop()
        b.stop()
