"""A Kubernetes API server for tests: kmock's in-memory emulator, over real HTTP, behind the real kubernetes client.

kmock serves stateful create/get/patch/delete and lists. This module adds what the auditor and the RBAC
remediations rely on and kmock lacks:
- `metadata.resourceVersion` (one counter for the whole server, like etcd), set on create and bumped on every
  write; a PATCH or PUT naming a stale resourceVersion is refused with 409 Conflict, as the real API server does;
- PUT (replace) on a named object;
- paged lists: `limit` and `continue` (an opaque token; `remainingItemCount`), with `kind`/`apiVersion` on the list
  and, as the real server does, not on its items;
- discovery for the types the auditor reads, so a type with no objects lists as empty instead of 404;
- injected faults: N answers with a status (429 with Retry-After, 500, 403, 410 for an expired continue token),
  matched by resource plural and page (lists) or as watches (`KubeFault(watch=True)`);
- watches (`?watch=true`), which kmock 0.8 serves without resourceVersions (it replays every object as ADDED on
  each connection, ignores `resourceVersion`, `allowWatchBookmarks` and `timeoutSeconds`, and does not stream
  Namespaces or objects stored by PUT): here every write is kept in an event history, like etcd's, and a watch
  from resourceVersion N streams the events after N, then live ones, as newline-delimited JSON; with no
  resourceVersion (or "0") it starts with a synthetic ADDED per object, as the real API server does. A watch
  from before the compacted history (`KubeServer.compact()`) gets a `410 Gone` ERROR event (reason Expired);
  with `allowWatchBookmarks=true` a BOOKMARK carrying the newest resourceVersion written is sent every
  `bookmark_interval` seconds without events; `timeoutSeconds` ends the stream; `KubeServer.close_watches()`
  drops every open stream (a connection lost, an API server restarted).

The server runs on its own event loop in a thread, so synchronous code (the kubernetes client) can call it.
`KubeServer.kubeconfig(path, context)` writes a kubeconfig that points a context at it.
Fixtures: `kube_api` (a started, empty server; `kube_api.load(...)` objects or YAML files) and `kubeconfig`.
By hand: `python -m tests.fakes.kube --kubeconfig /tmp/kubeconfig --load examples/k8s`, then
`KUBECONFIG=/tmp/kubeconfig auditor scan --source k8s://fake`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import kmock
import pytest
import yaml
from typing_extensions import override

T = TypeVar("T")

# kind -> (group, version, plural, namespaced)
KINDS: dict[str, tuple[str, str, str, bool]] = {
    "Namespace": ("", "v1", "namespaces", False),
    "ResourceQuota": ("", "v1", "resourcequotas", True),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings", True),
    "ClusterRole": ("rbac.authorization.k8s.io", "v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", False),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies", True),
}
_BY_PLURAL = {(g, p): k for k, (g, _, p, _) in KINDS.items()}


def resource_path(kind: str) -> str:
    group, version, plural, _ = KINDS[kind]
    return f"{group}/{version}/{plural}" if group else f"{version}/{plural}"


@dataclass
class KubeFault:
    """Fail matching requests: `plural` (e.g. "roles"), `page` (1 = a request without `continue`), `times`."""

    status: int = 500
    times: int | None = 1
    plural: str | None = None
    page: int | None = None
    retry_after: float | None = None
    reason: str = "InternalError"
    message: str = "injected failure"
    hits: int = 0
    # True: fails watch requests only (a 410 is then an ERROR event, as the API server sends; a 200, a stream that
    # ends at once with no event)
    watch: bool = False


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code,
            "reason": reason, "message": message}  # fmt: skip


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386), as a PATCH with application/merge-patch+json applies it."""
    for k, v in patch.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> aiohttp.web.Response:
    return aiohttp.web.json_response(data, status=status, headers=headers)


class KubeApi(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator with resourceVersions, paging, PUT, discovery of the audited kinds, and faults."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.rv = 0
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.faults: list[KubeFault] = []
        self.list_requests: list[dict[str, Any]] = []  # {"plural", "limit", "continue", "status"} per list
        # Watches: every write as (resourceVersion, kind, event), the first resourceVersion still kept, the open
        # streams (kind, namespace, queue), and each watch request's parameters.
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.compacted = 0
        self.watchers: list[tuple[str, str | None, asyncio.Queue[dict[str, Any] | None]]] = []
        self.watch_requests: list[dict[str, Any]] = []
        self.bookmark_interval = 0.5
        self.recorded_rv = 0  # the newest resourceVersion in the history: what a bookmark may promise
        self._write_lock = asyncio.Lock()
        for kind, (_, _, _, namespaced) in KINDS.items():
            info = self.resources[resource_path(kind)]
            info.kind = kind
            info.namespaced = namespaced
            info.singular = kind.lower()
            info.verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.method == "GET" and raw_request.query.get("watch") in ("true", "1"):
            target = _watch_target(raw_request.path)
            if target is not None:
                return await self._watch(raw_request, *target)
        # kmock 0.8 cannot parse `/api/v1/namespaces[/NAME]` (it takes `namespaces` for the namespace prefix of a
        # namespaced path), so Namespaces are stored and served here.
        m = re.match(r"^/api/v1/namespaces(?:/([^/]+))?/?$", raw_request.path)
        if m is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        data = json.loads(body) if body else None
        return self._namespace_call(raw_request.method, m.group(1), dict(raw_request.query), data)

    def _namespace_call(
        self, method: str, name: str | None, params: dict[str, str], data: Any
    ) -> aiohttp.web.Response:
        page = 2 if params.get("continue") else 1
        fault = self._fault("namespaces", page)
        if fault is not None:
            if method == "GET" and name is None:
                self.list_requests.append({"plural": "namespaces", "page": page, "status": fault.status})
            return self._fault_response(fault)
        if name is None and method == "GET":
            return self._list_items("Namespace", [copy.deepcopy(o) for _, o in sorted(self.namespaces.items())],
                                    params)
        if name is None and method == "POST" and isinstance(data, dict):
            new_name = (data.get("metadata") or {}).get("name")
            if not new_name:
                return _json(_status(422, "Invalid", "metadata.name: Required value"), 422)
            if new_name in self.namespaces:
                return _json(_status(409, "AlreadyExists", f'namespaces "{new_name}" already exists'), 409)
            self.put({**data, "kind": "Namespace", "apiVersion": "v1"})
            return _json(self.namespaces[new_name], 201)
        stored = self.namespaces.get(name or "")
        if stored is None or name is None:
            return _json(_status(404, "NotFound", f'namespaces "{name}" not found'), 404)
        if method == "GET":
            return _json(stored)
        if method == "DELETE":
            del self.namespaces[name]
            self._record("Namespace", "DELETED", stored, bump=True)
            return _json(stored)
        if method in ("PUT", "PATCH") and isinstance(data, dict):
            sent = (data.get("metadata") or {}).get("resourceVersion")
            if sent is not None and sent != stored["metadata"]["resourceVersion"]:
                return self._conflict("Namespace", name)
            new = copy.deepcopy(data) if method == "PUT" else _merge(copy.deepcopy(stored), data)
            new.setdefault("metadata", {})
            new["metadata"]["name"] = name
            new["metadata"]["uid"] = stored["metadata"].get("uid")
            new["metadata"]["resourceVersion"] = self.next_rv()
            self.namespaces[name] = new
            self._record("Namespace", "MODIFIED", new)
            return _json(new)
        return _json(_status(405, "MethodNotAllowed", f"{method} is not supported on namespaces"), 405)

    def _fault(self, plural: str, page: int | None, watch: bool = False) -> KubeFault | None:
        for f in self.faults:
            if (f.times is not None and f.hits >= f.times) or f.watch != watch:
                continue
            if (f.plural is None or f.plural == plural) and (f.page is None or page is None or f.page == page):
                f.hits += 1
                return f
        return None

    @staticmethod
    def _fault_response(f: KubeFault) -> aiohttp.web.Response:
        headers = {"Retry-After": _fmt(f.retry_after)} if f.retry_after is not None else None
        return _json(_status(f.status, f.reason, f.message), f.status, headers)

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    # -- state ------------------------------------------------------------------------------------------------------
    def put(self, obj: dict[str, Any]) -> None:
        """Store an object as the API server would (resourceVersion, uid, creationTimestamp filled in)."""
        kind = obj.get("kind")
        if kind not in KINDS:
            raise ValueError(f"the fake serves {sorted(KINDS)}, not {kind!r}")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        namespaced = KINDS[kind][3]
        if namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        meta["resourceVersion"] = self.next_rv()
        meta.setdefault("uid", str(uuid.uuid4()))
        if kind == "Namespace":
            existed = meta["name"] in self.namespaces
            self.namespaces[meta["name"]] = obj
        else:
            group, _, plural, _ = KINDS[kind]
            existed = self._stored(group, plural, meta.get("namespace"), meta["name"]) is not None
            self.objects[resource_path(kind), meta.get("namespace"), meta["name"]] = obj
        self._record(kind, "MODIFIED" if existed else "ADDED", obj)

    def remove(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete an object as the API server would (a DELETED event at a new resourceVersion)."""
        if kind == "Namespace":
            obj = self.namespaces.pop(name)
        else:
            group, _, plural, _ = KINDS[kind]
            stored = self._stored(group, plural, namespace, name)
            if stored is None:
                raise KeyError(f"no {kind} {namespace}/{name}")
            obj = copy.deepcopy(stored.raw)
            stored.delete()
        self._record(kind, "DELETED", obj, bump=True)

    # -- watch ------------------------------------------------------------------------------------------------------
    def _record(self, kind: str, type_: str, obj: dict[str, Any], bump: bool = False) -> None:
        """Keep a write in the history and hand it to the open watches of its kind (and namespace).

        A deletion is an event at a new resourceVersion (`bump`), as etcd gives one to the delete itself."""
        obj = copy.deepcopy(obj)
        group, version, _, _ = KINDS[kind]
        obj["kind"] = kind
        obj["apiVersion"] = f"{group}/{version}" if group else version
        meta = obj.setdefault("metadata", {})
        if bump:
            meta["resourceVersion"] = self.next_rv()
        event = {"type": type_, "object": obj}
        self.history.append((int(meta["resourceVersion"]), kind, event))
        self.recorded_rv = max(self.recorded_rv, int(meta["resourceVersion"]))
        for wkind, namespace, queue in self.watchers:
            if wkind == kind and namespace in (None, meta.get("namespace")):
                queue.put_nowait(event)

    def compact(self) -> None:
        """Forget the history up to now (etcd compaction): a watch from an older resourceVersion gets 410 Gone."""
        self.compacted = self.rv
        self.history.clear()

    def close_watches(self) -> None:
        for _, _, queue in self.watchers:
            queue.put_nowait(None)

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, kind: str, namespace: str | None
    ) -> aiohttp.web.StreamResponse:
        group, version, plural, _ = KINDS[kind]
        params = dict(raw.query)
        since = params.get("resourceVersion") or ""
        bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(params.get("timeoutSeconds") or 0) or None
        self.watch_requests.append({"plural": plural, "namespace": namespace, "resourceVersion": since or None,
                                    "allowWatchBookmarks": bookmarks, "timeoutSeconds": timeout})
        fault = self._fault(plural, None, watch=True)
        if fault is not None and fault.status not in (200, 410):
            return self._fault_response(fault)
        if fault is not None and fault.status == 200:  # a stream closed at once, empty (a proxy, a restart)
            empty = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await empty.prepare(raw)
            await empty.write_eof()
            return empty
        resp = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(raw)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        backlog: list[dict[str, Any]] = []
        if fault is not None or (since not in ("", "0") and int(since) < self.compacted):
            message = f"too old resource version: {since} ({self.compacted})" if fault is None else fault.message
            backlog = [{"type": "ERROR", "object": _status(410, "Expired", message)}]
        elif since in ("", "0"):
            current = (self._live(group, plural) if namespace is None else
                       [o for o in self._live(group, plural) if o["metadata"].get("namespace") == namespace])
            backlog = [{"type": "ADDED", "object": {**o, "kind": kind, "apiVersion": f"{group}/{version}"
                                                   if group else version}} for o in current]
        else:
            backlog = [e for rv, k, e in self.history if rv > int(since) and k == kind
                       and namespace in (None, e["object"]["metadata"].get("namespace"))]
        entry = (kind, namespace, queue)
        if not (backlog and backlog[0]["type"] == "ERROR"):
            self.watchers.append(entry)  # no await since the backlog was read: no event falls between the two
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        # One pending get at a time, kept across bookmark timeouts: wait_for(queue.get()) can lose an item that
        # arrives as its timeout fires (Python before 3.12).
        getter: asyncio.Future[dict[str, Any] | None] | None = None
        try:
            for event in backlog:
                await resp.write(json.dumps(event).encode() + b"\n")
            while entry in self.watchers:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=wait)
                if not done:
                    # A bookmark promises every event up to its version was sent: never while one is on its way
                    # (still queued, or taken by the getter but not yet handed over).
                    idle = queue.empty() and not getter.done()
                    if idle and bookmarks and (deadline is None or loop.time() < deadline):
                        mark = {"kind": kind, "apiVersion": f"{group}/{version}" if group else version,
                                "metadata": {"resourceVersion": str(self.recorded_rv)}}
                        await resp.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                    continue
                event, getter = getter.result(), None
                if event is None:
                    break
                await resp.write(json.dumps(event).encode() + b"\n")
            await resp.write_eof()
        except ConnectionResetError:  # the client went away
            pass
        finally:
            if getter is not None:
                getter.cancel()
            if entry in self.watchers:
                self.watchers.remove(entry)
        return resp

    def _live(self, group: str, plural: str) -> list[dict[str, Any]]:
        if (group, plural) == ("", "namespaces"):
            return [copy.deepcopy(o) for _, o in sorted(self.namespaces.items())]
        out = []
        for (res, _ns, _name), obj in self.objects.items():
            if res.group == group and res.plural == plural and not obj.deleted:
                out.append(copy.deepcopy(obj.raw))
        out.sort(key=lambda o: ((o.get("metadata") or {}).get("namespace") or "", o["metadata"]["name"]))
        return out

    def _stored(self, group: str, plural: str, namespace: str | None, name: str) -> Any:
        for (res, ns, nm), obj in self.objects.items():
            if res.group == group and res.plural == plural and ns == namespace and nm == name and not obj.deleted:
                return obj
        return None

    # -- serving ----------------------------------------------------------------------------------------------------
    @override
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None or (res.group, res.plural) not in _BY_PLURAL:
            return await super()._handle(request)
        kind = _BY_PLURAL[(res.group, res.plural)]
        page = 2 if request.params.get("continue") else 1
        fault = self._fault(res.plural, page)
        if fault is not None:
            if request.action == kmock.action.LIST:
                self.list_requests.append({"plural": res.plural, "page": page, "status": fault.status})
            return self._fault_response(fault)
        if request.action == kmock.action.LIST:
            return self._list(request, kind)
        # Writes one at a time, as etcd orders them: each resourceVersion is recorded (and streamed) before the next
        # is handed out, so watches see events in resourceVersion order.
        async with self._write_lock:
            return await self._write(request, kind)

    async def _write(self, request: kmock.Request, kind: str) -> aiohttp.web.StreamResponse:
        res = request.resource
        if request.method == kmock.method.PUT and request.name:
            return self._replace(request, kind)
        where: tuple[str | None, str | None] = (request.namespace, request.name)
        before: dict[str, Any] | None = None
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = self.next_rv()
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            if KINDS[kind][3]:  # the API server fills in the namespace of the path
                meta.setdefault("namespace", request.namespace or "default")
            where = (meta.get("namespace"), meta.get("name"))
        if request.action == kmock.action.UPDATE and request.name:
            stored = self._stored(res.group, res.plural, request.namespace, request.name)
            if stored is not None and isinstance(request.data, dict):
                sent = (request.data.get("metadata") or {}).get("resourceVersion")
                current = (stored.raw.get("metadata") or {}).get("resourceVersion")
                if sent is not None and sent != current:
                    return self._conflict(kind, request.name)
                request.data.setdefault("metadata", {})["resourceVersion"] = self.next_rv()
        if request.action == kmock.action.DELETE and request.name:
            stored = self._stored(res.group, res.plural, request.namespace, request.name)
            before = copy.deepcopy(stored.raw) if stored is not None else None
        resp = await super()._handle(request)
        if resp.status < 300 and request.action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            if request.action == kmock.action.DELETE:
                if before is not None:
                    self._record(kind, "DELETED", before, bump=True)
            else:
                after = self._stored(res.group, res.plural, where[0], where[1] or "")
                if after is not None:
                    self._record(kind, "ADDED" if request.action == kmock.action.CREATE else "MODIFIED", after.raw)
        return resp

    def _conflict(self, kind: str, name: str) -> aiohttp.web.Response:
        _, _, plural, _ = KINDS[kind]
        group = KINDS[kind][0]
        what = f"{plural}.{group}" if group else plural
        return _json(
            _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {what} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            ),
            409,
        )

    def _replace(self, request: kmock.Request, kind: str) -> aiohttp.web.Response:
        group, _, plural, _ = KINDS[kind]
        stored = self._stored(group, plural, request.namespace, request.name)
        if stored is None:
            return _json(_status(404, "NotFound", f'{plural} "{request.name}" not found'), 404)
        body = request.data if isinstance(request.data, dict) else {}
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent is not None and sent != stored.raw["metadata"].get("resourceVersion"):
            return self._conflict(kind, request.name)
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        for keep in ("uid", "creationTimestamp"):
            if keep in stored.raw["metadata"]:
                meta[keep] = stored.raw["metadata"][keep]
        meta["resourceVersion"] = self.next_rv()
        self.objects[resource_path(kind), request.namespace, request.name] = new
        self._record(kind, "MODIFIED", new)
        return _json(new)

    def _list(self, request: kmock.Request, kind: str) -> aiohttp.web.Response:
        group, _, plural, _ = KINDS[kind]
        items = self._live(group, plural)
        if request.namespace:
            items = [o for o in items if o["metadata"].get("namespace") == request.namespace]
        return self._list_items(kind, items, dict(request.params))

    def _list_items(self, kind: str, items: list[dict[str, Any]], params: dict[str, str]) -> aiohttp.web.Response:
        group, version, plural, _ = KINDS[kind]
        token = params.get("continue") or ""
        start, list_rv = 0, str(self.rv)
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                start, list_rv = int(state["start"]), str(state["rv"])
            except (ValueError, KeyError, TypeError):
                return _json(_status(400, "BadRequest", "invalid continue token"), 400)
        limit = int(params.get("limit") or 0)
        end = start + limit if limit > 0 else len(items)
        page = items[start:end]
        for o in page:  # the real API server leaves these out of list items; kubectl adds them back
            o.pop("kind", None)
            o.pop("apiVersion", None)
        meta: dict[str, Any] = {"resourceVersion": list_rv}
        if end < len(items):
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"start": end, "rv": list_rv}).encode()).decode()
            meta["remainingItemCount"] = len(items) - end
        self.list_requests.append({"plural": plural, "page": 2 if token else 1, "limit": limit, "status": 200})
        api_version = f"{group}/{version}" if group else version
        return _json({"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta, "items": page})


class KubeServer:
    """A kmock emulator (`KubeApi` by default) served on 127.0.0.1 from a thread with its own event loop.

    Other test packages serve their own emulator subclass through it (`KubeServer(emulator=...)`).
    """

    def __init__(self, emulator: Callable[[], Any] | None = None) -> None:
        self._emulator = emulator or KubeApi
        self.loop = asyncio.new_event_loop()
        self.api: Any = None
        self.url = ""
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-api", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self._emulator() as api, kmock.Server(api, host="127.0.0.1") as server:
            self.api = api
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> KubeServer:
        self._thread.start()
        if not self._ready.wait(timeout=20) or self._error is not None or self.api is None:
            raise RuntimeError(f"the Kubernetes fake did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def api_client(self) -> Any:
        """A kubernetes ApiClient for this server (no credentials: kmock accepts any)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the server's loop (the emulator's state is not thread-safe)."""

        async def go() -> Any:
            return fn(*args)

        return self.run(go())

    # -- helpers for tests ------------------------------------------------------------------------------------------
    @property
    def handler(self) -> KubeApi:
        assert self.api is not None
        return self.api

    def load(self, *sources: str | Path | dict[str, Any] | Iterable[dict[str, Any]]) -> int:
        """Store objects: dicts, lists of dicts, or YAML/JSON files (kubectl lists or single objects)."""
        objs = list(_objects(sources))
        self.call(lambda: [self.handler.put(o) for o in objs])
        return len(objs)

    def inject(self, fault: KubeFault) -> KubeFault:
        self.call(self.handler.faults.append, fault)
        return fault

    def list_requests(self, plural: str | None = None) -> list[dict[str, Any]]:
        reqs: list[dict[str, Any]] = self.call(lambda: list(self.handler.list_requests))
        return [r for r in reqs if plural is None or r["plural"] == plural]

    def remove(self, kind: str, name: str, namespace: str | None = None) -> None:
        self.call(self.handler.remove, kind, name, namespace)

    def compact(self) -> None:
        self.call(self.handler.compact)

    def close_watches(self) -> None:
        self.call(self.handler.close_watches)

    def open_watches(self, kind: str | None = None) -> int:
        return int(self.call(lambda: sum(1 for k, _, _ in self.handler.watchers if kind in (None, k))))

    def watch_requests(self, plural: str | None = None) -> list[dict[str, Any]]:
        reqs: list[dict[str, Any]] = self.call(lambda: list(self.handler.watch_requests))
        return [r for r in reqs if plural is None or r["plural"] == plural]

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """The stored objects of a kind, as a GET would return them."""
        group, _, plural, _ = KINDS[kind]
        return list(self.call(self.handler._live, group, plural))

    def kubeconfig(self, path: Path, context: str = "fake", namespace: str = "default") -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": "fake-token"}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path


_WATCH_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/v1)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)/?$")


def _watch_target(path: str) -> tuple[str, str | None] | None:
    """(kind, namespace or None) for the path of a collection of an audited kind."""
    m = _WATCH_PATH.match(path)
    if m is None:
        return None
    kind = _BY_PLURAL.get((m["group"] or "", m["plural"]))
    if kind is None or (m["ns"] is not None and not KINDS[kind][3]):
        return None
    return kind, m["ns"]


def _objects(sources: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for src in sources:
        if isinstance(src, dict):
            yield from (src.get("items") or []) if "items" in src else [src]
        elif isinstance(src, str | Path):
            path = Path(src)
            suffixes = (".yaml", ".yml", ".json")
            files = sorted(p for p in path.rglob("*") if p.suffix in suffixes) if path.is_dir() else [path]
            for f in files:
                for doc in yaml.safe_load_all(f.read_text(encoding="utf-8")):
                    if isinstance(doc, dict):
                        yield from _objects([doc])
        else:
            yield from _objects(list(src))


@pytest.fixture
def kube_api() -> Iterator[KubeServer]:
    """A started, empty Kubernetes fake; `kube_api.load(...)` what the test needs."""
    server = KubeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(kube_api: KubeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kubeconfig (KUBECONFIG) whose context `fake` points at `kube_api`; returns the context name."""
    path = kube_api.kubeconfig(tmp_path / "kubeconfig", context="fake")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return "fake"


def main(argv: list[str] | None = None) -> None:
    import argparse
    import time

    ap = argparse.ArgumentParser(prog="python -m tests.fakes.kube", description="A Kubernetes API fake (kmock).")
    ap.add_argument("--kubeconfig", required=True, type=Path, help="write a kubeconfig (context `fake`) here")
    ap.add_argument("--load", nargs="*", default=[], help="Kubernetes list files or folders (YAML/JSON)")
    args = ap.parse_args(argv)
    server = KubeServer().start()
    n = server.load(*args.load)
    server.kubeconfig(args.kubeconfig, context="fake")
    print(f"Kubernetes fake on {server.url} ({n} objects); KUBECONFIG={args.kubeconfig} context fake", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
