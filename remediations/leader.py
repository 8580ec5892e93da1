"""Stage 6, apply: only one replica writes. Leader election through a Kubernetes Lease, or a lock file.

In a cluster the replicas share a `coordination.k8s.io/v1` Lease: the holder renews it; another replica takes it
over once it has not been renewed for `lease_duration` seconds. Every Lease write carries the resourceVersion read,
so two replicas racing for an expired Lease cannot both win. Outside a cluster an exclusive lock file
(`filelock`, on a volume the replicas share) plays the same role.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from auditor.logs import get_logger

LEASE_DURATION = 30.0
RENEW_EVERY = 10.0


def default_identity() -> str:
    """The pod name in a cluster (POD_NAME, else the hostname), with the process id."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"


class Elector(Protocol):
    identity: str

    def is_leader(self) -> bool: ...

    def stop(self) -> None: ...


class FileLockElector:
    """The leader is whoever holds an exclusive lock on the file; it holds it until `stop()` or exit."""

    def __init__(self, path: str, identity: str | None = None) -> None:
        from filelock import FileLock

        self.identity = identity or default_identity()
        self.path = path
        self._lock = FileLock(path, is_singleton=False)

    def is_leader(self) -> bool:
        from filelock import Timeout

        if self._lock.is_locked:
            return True
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        return True

    def stop(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)


def _micro(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


class LeaseElector:
    """Leader election on a Lease. `is_leader()` tries to acquire or renew; `start()` renews in the background."""

    def __init__(
        self,
        api_client: Any,
        name: str,
        namespace: str,
        identity: str | None = None,
        lease_duration: float = LEASE_DURATION,
        renew_every: float = RENEW_EVERY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api_client = api_client
        self.name = name
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_every = renew_every
        self.clock = clock
        self._leader_until: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log = get_logger("leader")

    def _api(self) -> Any:
        from kubernetes import client

        return client.CoordinationV1Api(self.api_client)

    def _read(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self._api().read_namespaced_lease(self.name, self.namespace, _preload_content=False,
                                                     _request_timeout=10)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        out = json.loads(resp.data)
        return out if isinstance(out, dict) else None

    def try_acquire(self) -> bool:
        """One round: create the Lease, renew it, or take it over when expired. True when this replica holds it."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        now = self.clock()
        duration = max(1, round(self.lease_duration))
        try:
            lease = self._read()
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                                 "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}}
                self._api().create_namespaced_lease(self.namespace, client.V1Lease.from_dict(body),
                                                    _request_timeout=10)
                return self._won(now)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
            ttl = timedelta(seconds=float(spec.get("leaseDurationSeconds") or duration))
            expired = renewed is None or renewed + ttl <= now
            if holder not in (self.identity, None, "") and not expired:
                self._leader_until = None
                return False
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": (lease.get("metadata") or {}).get("resourceVersion")},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration, "renewTime": _micro(now)},
            }
            if holder != self.identity:
                patch["spec"]["acquireTime"] = _micro(now)
                patch["spec"]["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            self._api().patch_namespaced_lease(self.name, self.namespace, patch,
                                               _content_type="application/merge-patch+json", _request_timeout=10)
            return self._won(now)
        except ApiException as exc:
            if exc.status != 409:  # 409: another replica wrote the Lease first
                self.log.warning("leader_election_error", status=exc.status, reason=str(exc.reason))
            self._leader_until = None
            return False
        except Exception as exc:  # the API server unreachable: not the leader, never a crash
            self.log.warning("leader_election_error", error=f"{type(exc).__name__}: {exc}")
            self._leader_until = None
            return False

    def _won(self, now: datetime) -> bool:
        self._leader_until = now + timedelta(seconds=self.lease_duration)
        return True

    def is_leader(self) -> bool:
        """Leader while the last successful renewal has not expired; otherwise one acquisition round now."""
        if self._leader_until is not None and self.clock() < self._leader_until - timedelta(seconds=self.renew_every):
            return True
        return self.try_acquire()

    def start(self) -> LeaseElector:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lease-elector", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.try_acquire()
            self._stop.wait(self.renew_every)

    def stop(self) -> None:
        """Stop renewing and give the Lease up (if held) so another replica takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_every + 5)
            self._thread = None
        # Released whenever the Lease names this replica, even if the last renewal lost a race (a 409 between the
        # renewing thread and a cycle's own check leaves `_leader_until` unset while the Lease is still ours).
        self._release()
        self._leader_until = None

    def _release(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            past = self.clock() - timedelta(seconds=self.lease_duration + 1)
            patch = {"metadata": {"resourceVersion": (lease.get("metadata") or {}).get("resourceVersion")},
                     "spec": {"renewTime": _micro(past)}}
            self._api().patch_namespaced_lease(self.name, self.namespace, patch,
                                               _content_type="application/merge-patch+json", _request_timeout=10)
        except (ApiException, OSError) as exc:
            self.log.warning("leader_release_error", error=str(exc))


class AlwaysLeader:
    """A single replica with no election configured."""

    def __init__(self) -> None:
        self.identity = default_identity()

    def is_leader(self) -> bool:
        return True

    def stop(self) -> None:
        pass
