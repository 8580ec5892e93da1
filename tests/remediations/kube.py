"""kmock as a Kubernetes API server for the RBAC appliers, with what it lacks: resourceVersion.

kmock keeps objects and merges patches but has no optimistic concurrency. `VersionedKube` adds it as the real
API server does: every write gives the object a new `metadata.resourceVersion`; a patch carrying an old one, or a
delete whose preconditions name an old one, is refused with 409 Conflict. The server runs on its own event loop
in a thread, so the synchronous `kubernetes` client can call it from a test.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import kmock
import pytest
import yaml
from kmock._internal.enums import action
from kmock._internal.k8s import KubernetesError

from tests.fakes.kube import KubeServer as FakeKubeServer

GROUP, VERSION = "rbac.authorization.k8s.io", "v1"
PLURALS = {"Role": "roles", "RoleBinding": "rolebindings", "ClusterRole": "clusterroles",
           "ClusterRoleBinding": "clusterrolebindings", "Namespace": "namespaces", "ResourceQuota": "resourcequotas",
           "NetworkPolicy": "networkpolicies"}


def resource_of(obj: dict[str, Any]) -> Any:
    group, _, version = str(obj.get("apiVersion", "v1")).rpartition("/")
    return kmock.resource(group, version, PLURALS[obj["kind"]])


@attrs.define(kw_only=True)
class VersionedKube(kmock.KubernetesEmulator):
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    writes: list[tuple[str, str | None, str | None]] = attrs.field(factory=list, init=False)

    def next_version(self) -> str:
        return str(next(self._versions))

    def _current(self, key: Any) -> dict[str, Any] | None:
        if key not in self._objects or self._objects[key].deleted:
            return None
        return dict(self._objects[key].raw)

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.action in (action.UPDATE, action.DELETE, action.CREATE):
            data = request.data if isinstance(request.data, dict) else {}
            key = (request.resource, request.namespace, request.name)
            current = self._current(key) if request.name else None
            have = ((current or {}).get("metadata") or {}).get("resourceVersion")
            if request.action == action.UPDATE:
                sent = (data.get("metadata") or {}).get("resourceVersion")
                if current is not None and sent and sent != have:
                    raise _conflict(request)
                data.setdefault("metadata", {})["resourceVersion"] = self.next_version()
            elif request.action == action.DELETE:
                sent = (data.get("preconditions") or {}).get("resourceVersion")
                if current is not None and sent and sent != have:
                    raise _conflict(request)
            else:
                data.setdefault("metadata", {})["resourceVersion"] = self.next_version()
            self.writes.append((str(request.action), request.namespace, request.name))
        return await super()._handle(request)


def _conflict(request: Any) -> KubernetesError:
    return KubernetesError(
        status=409,
        reason="Conflict",
        message=f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details={"name": request.name},
    )


class KubeServer(FakeKubeServer):
    """A VersionedKube served on 127.0.0.1 from a background thread, with helpers for the appliers' tests."""

    def __init__(self) -> None:
        super().__init__(emulator=VersionedKube)
        self.start()

    def close(self) -> None:
        self.stop()

    @property
    def k(self) -> VersionedKube:
        assert isinstance(self.api, VersionedKube)
        return self.api

    def put(self, obj: dict[str, Any], keep_version: bool = False) -> dict[str, Any]:
        """Store an object (as `kubectl apply` would), with a fresh resourceVersion unless `keep_version`."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not keep_version or not meta.get("resourceVersion"):
            meta["resourceVersion"] = self.k.next_version()
        meta.setdefault("uid", f"uid-{meta['name']}")
        self.k.objects[resource_of(obj), meta.get("namespace"), meta["name"]] = obj
        return obj

    def load_cai(self, path: Path, cluster: str) -> int:
        """The Kubernetes objects of one cluster from a CAI export (their resourceVersions kept)."""
        n = 0
        prefix = f"//container.googleapis.com/{cluster}/k8s/"
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line) if line.strip() else {}
            data = (rec.get("resource") or {}).get("data") or {}
            if str(rec.get("name", "")).startswith(prefix) and data.get("kind") in PLURALS:
                self.put(data, keep_version=True)
                n += 1
        return n

    def stored(self) -> list[dict[str, Any]]:
        """Every object kmock holds (not deleted), as stored."""
        out = []
        for key in list(self.k.objects):
            obj = self.k.objects[key]
            if not obj.deleted:
                out.append(copy.deepcopy(dict(obj.raw)))
        return out

    def export(self, path: Path) -> Path:
        """Every object as a `kubectl get -o yaml` List, for a scan of the cluster as it is now."""
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": self.stored()}),
                        encoding="utf-8")
        return path

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        res = kmock.resource(GROUP if kind != "Namespace" else "", VERSION, PLURALS[kind])
        key = (res, namespace, name)
        if key not in self.k.objects or self.k.objects[key].deleted:
            return None
        return copy.deepcopy(dict(self.k.objects[key].raw))

@pytest.fixture
def kube() -> Iterator[KubeServer]:
    server = KubeServer()
    try:
        yield server
    finally:
        server.close()
