"""A local fake of the Google Cloud REST APIs the auditor reads and writes (test support for collect and apply).

Plain HTTP on 127.0.0.1, stateful, serving what the real `google-cloud-*` clients send with `transport="rest"`:

- Cloud Asset Inventory v1: `GET /v1/{parent}/assets` (assetTypes as exact types or RE2 regexes, contentType as
  the integer the REST client sends or its name, pageSize capped at 1000 and at `max_page_size`, pageToken,
  readTime: every asset keeps its history, so a listing at a read time sees the state of that moment);
  `POST /v1/{parent}:exportAssets` with a long-running operation (`GET /v1/{parent}/operations/...`) that writes
  NDJSON objects (export spelling) into the fake Cloud Storage below.
- Cloud Storage JSON API (read side of exports): list objects, object metadata and media download.
- Resource Manager v3: `:getIamPolicy` / `:setIamPolicy` on organizations, folders and projects.
- IAM v1: `:getIamPolicy` / `:setIamPolicy` on `projects/*/serviceAccounts/*`.
- Compute v1 security policies: list, get, patch, addRule, patchRule, removeRule, getRule, and the global
  operations the compute client polls.

Concurrency tokens work as in the real APIs: an IAM policy carries an `etag`; setIamPolicy with a stale etag is
refused with 409 ABORTED. A security policy carries a `fingerprint`; patch with a stale one is refused with 412
(conditionNotMet). Every write bumps the token. getIamPolicy honours `requestedPolicyVersion`: below 3, conditional
bindings come back the way the real API shows them to old clients (role suffixed `_withcond_...`, no condition).
IAM writes and security-policy writes are visible in later CAI listings (with a new update time).

Faults are injected with `FakeGcp.inject(Fault(...))`: N answers with a status (429 with Retry-After, 500, 503,
403 naming a permission), slow answers, a broken page in the middle of a listing, matched by method, path,
asset type, content type and page number. Every request is recorded in `FakeGcp.requests`.

Use it in tests through the `fake_gcp` fixture (`tests.fakes.gcp` is a pytest plugin module), or run it by hand:
`python -m tests.fakes.gcp --port 8089 --load examples/org` and point the auditor at it with
`AUDITOR_GCP_ENDPOINT=http://127.0.0.1:8089`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import gzip
import hashlib
import itertools
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CONTENT_TYPES = {"0": "CONTENT_TYPE_UNSPECIFIED", "1": "RESOURCE", "2": "IAM_POLICY", "4": "ORG_POLICY",
                 "5": "ACCESS_POLICY", "6": "OS_INVENTORY", "7": "RELATIONSHIP"}  # fmt: skip
CAI_MAX_PAGE = 1000
ENDPOINT_ENV = "AUDITOR_GCP_ENDPOINT"
DROPPED = -1  # the status of a request served but never answered (Fault.drop)
DEFAULT_RULE_PRIORITY = 2147483647
LIST_PERMISSIONS = {"RESOURCE": "cloudasset.assets.listResource", "IAM_POLICY": "cloudasset.assets.listIamPolicy"}
EXPORT_PERMISSIONS = {"RESOURCE": "cloudasset.assets.exportResource", "IAM_POLICY": "cloudasset.assets.exportIamPolicy"}
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED",
                 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}  # fmt: skip


class ApiError(Exception):
    """An error answer in the Google JSON error shape."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS_NAMES.get(code, "UNKNOWN")
        self.reason = reason
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.reason:
            err["errors"] = [{"message": self.message, "domain": "global", "reason": self.reason}]
        if self.details:
            err["details"] = self.details
        return {"error": err}


def permission_denied(permission: str, resource: str, domain: str = "cloudasset.googleapis.com") -> ApiError:
    """403 as Google sends it: a generic message, and the permission only in the ErrorInfo detail."""
    return ApiError(
        403,
        "The caller does not have permission",
        reason="forbidden",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "IAM_PERMISSION_DENIED",
                "domain": domain,
                "metadata": {"permission": permission, "resource": resource},
            }
        ],
    )


@dataclass
class Fault:
    """An injected failure. Matches requests by method, path regex, asset type, content type and page number.

    `times=None` fails every matching request; otherwise the first `times` matching requests. `page` counts the
    pages of one listing from 1 (page 2 is the first request that carries a pageToken). `delay` sleeps before
    answering (with `status=None` the answer is then normal: a slow response). `permission` makes a 403 with an
    ErrorInfo naming it.
    """

    status: int | None = 500
    times: int | None = 1
    method: str | None = None
    path: str | None = None  # regex searched in the path
    asset_type: str | None = None
    content_type: str | None = None  # "RESOURCE" or "IAM_POLICY"
    page: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    message: str | None = None
    permission: str | None = None
    error_info: bool = True  # a 403 carries the ErrorInfo naming the permission (the real API usually does)
    # Serve the request (its write is done), then close the connection without an answer: a lost response.
    drop: bool = False
    hits: int = 0

    def matches(self, req: RecordedRequest) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and self.method.upper() != req.method:
            return False
        if self.path and not re.search(self.path, req.path):
            return False
        if self.asset_type is not None and self.asset_type not in req.query.get("assetTypes", []):
            return False
        if self.content_type is not None and req.content_type != self.content_type:
            return False
        return self.page is None or self.page == req.page

    def error(self, req: RecordedRequest) -> ApiError:
        assert self.status is not None
        headers = {"Retry-After": _fmt_number(self.retry_after)} if self.retry_after is not None else {}
        if self.status == 403:
            perm = self.permission or LIST_PERMISSIONS.get(req.content_type or "", "cloudasset.assets.listResource")
            err = permission_denied(perm, req.path)
            err.headers = headers
            if not self.error_info:
                err.details = []
            return err
        return ApiError(self.status, self.message or f"injected {self.status}", headers=headers)


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any = None
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str | None:
        raw = (self.query.get("contentType") or [None])[0]
        if raw is None and isinstance(self.body, dict):
            raw = self.body.get("contentType")
        if raw is None:
            return None
        return CONTENT_TYPES.get(str(raw), str(raw))

    @property
    def page(self) -> int:
        token = (self.query.get("pageToken") or [""])[0]
        if not token:
            return 1
        try:
            return int(_decode_token(token).get("page", 1))
        except ValueError:
            return 0


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(s: str) -> datetime:
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    # Python 3.11 accepts up to 6 fractional digits; the clients may send nanoseconds.
    m = re.match(r"^(.*\.\d{6})\d*(\+.*)$", s)
    if m:
        s = m.group(1) + m.group(2)
    return datetime.fromisoformat(s).astimezone(UTC)


def _encode_token(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, sort_keys=True).encode()).decode()


def _decode_token(token: str) -> dict[str, Any]:
    try:
        out = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"bad page token {token!r}") from exc
    if not isinstance(out, dict):
        raise ValueError(f"bad page token {token!r}")
    return out


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _token(prefix: str, n: int) -> str:
    """A base64 concurrency token, as etags and fingerprints are on the wire."""
    return base64.b64encode(hashlib.sha256(f"{prefix}:{n}".encode()).digest()[:8]).decode()


# -- state ----------------------------------------------------------------------------------------------------------


@dataclass
class _Version:
    at: datetime
    asset: dict[str, Any] | None  # API spelling; None: deleted at that moment


class FakeGcpState:
    """Assets with history (for read_time), IAM policies and security policies derived from them, operations."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.history: dict[str, list[_Version]] = {}
        self.security_policies: dict[tuple[str, str], dict[str, Any]] = {}  # (project, name) -> Compute shape
        self.operations: dict[str, dict[str, Any]] = {}
        self.compute_operations: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, str], bytes] = {}  # (bucket, object) -> bytes, the fake Cloud Storage
        self.export_delay_polls = 1  # operations report done after this many polls
        self.version = 0  # bumped on every change
        self._counter = itertools.count(1)
        self.created = _now() - timedelta(days=1)

    # -- loading ----------------------------------------------------------------------------------------------------
    def load(self, *paths: str | Path) -> int:
        """Load CAI export files or folders (either spelling; resource and IAM lines of one name are merged), and
        Compute `securityPolicies` API responses (cloud-custodian recordings `{"headers", "body"}` or bare)."""
        n = 0
        for p in paths:
            path = Path(p)
            files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
            for f in files:
                n += self._load_file(f)
        return n

    def _load_file(self, path: Path) -> int:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        name = path.name.lower().removesuffix(".gz")
        if name.endswith((".yaml", ".yml")) or not raw.strip():
            return 0
        text = raw.decode("utf-8")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and "body" in doc and "headers" in doc:
            return self._load_compute(doc["body"], str(path))
        if isinstance(doc, dict) and str(doc.get("kind", "")).startswith("compute#securityPolic"):
            return self._load_compute(doc, str(path))
        if isinstance(doc, list):
            records: Iterable[Any] = doc
        elif isinstance(doc, dict) and isinstance(doc.get("assets"), list):
            records = doc["assets"]
        elif isinstance(doc, dict) and "name" in doc:
            records = [doc]
        else:
            records = (json.loads(line) for line in text.splitlines() if line.strip())
        n = 0
        for rec in records:
            if isinstance(rec, dict) and rec.get("name") and (rec.get("asset_type") or rec.get("assetType")):
                self.put_asset(_api_asset(rec), at=self.created, merge=True)
                n += 1
        return n

    def _load_compute(self, body: Any, origin: str) -> int:
        items = body.get("items", []) if isinstance(body, dict) and "items" in body else [body]
        n = 0
        for pol in items:
            if not isinstance(pol, dict) or "name" not in pol:
                continue
            project = _project_of_link(pol.get("selfLink", "")) or "fake-project"
            self.put_security_policy(project, copy.deepcopy(pol), at=self.created)
            n += 1
        return n

    # -- assets -----------------------------------------------------------------------------------------------------
    def put_asset(self, asset: dict[str, Any], *, at: datetime | None = None, merge: bool = False) -> None:
        """Record a new version of an asset (API spelling). `merge` keeps the parts the new record lacks."""
        at = at or _now()
        with self.lock:
            self.version += 1  # listings cached for paging are keyed by it
            versions = self.history.setdefault(asset["name"], [])
            new = copy.deepcopy(asset)
            if merge and versions and versions[-1].asset is not None:
                old = copy.deepcopy(versions[-1].asset)
                old.update({k: v for k, v in new.items() if v is not None})
                new = old
            new.setdefault("updateTime", _ts(at))
            if not merge:
                new["updateTime"] = _ts(at)
            if merge and versions:
                versions[-1] = _Version(versions[-1].at, new)
            else:
                versions.append(_Version(at, new))
            if new.get("assetType") == "compute.googleapis.com/SecurityPolicy" and new.get("resource"):
                key = _policy_key(new["name"])
                if key is not None and key not in self.security_policies:
                    self.security_policies[key] = _compute_policy(new["resource"].get("data") or {}, key)

    def delete_asset(self, name: str) -> None:
        with self.lock:
            self.history.setdefault(name, []).append(_Version(_now(), None))

    def asset(self, name: str, at: datetime | None = None) -> dict[str, Any] | None:
        with self.lock:
            versions = self.history.get(name) or []
            found: dict[str, Any] | None = None
            for v in versions:
                if at is not None and v.at > at:
                    break
                found = v.asset
            return copy.deepcopy(found) if found is not None else None

    def snapshot(self, at: datetime) -> list[dict[str, Any]]:
        """Every asset as it was at `at`, sorted by name (shared, not copied: callers must not modify them)."""
        out = []
        with self.lock:
            for name in sorted(self.history):
                found = None
                for v in self.history[name]:
                    if v.at > at:
                        break
                    found = v.asset
                if found is not None:
                    out.append(found)
        return out

    def update_asset(self, name: str, **parts: Any) -> dict[str, Any]:
        with self.lock:
            cur = self.asset(name) or {"name": name}
            cur.update(parts)
            cur.pop("updateTime", None)
            self.put_asset(cur)
            return cur

    def next_id(self) -> int:
        return next(self._counter)

    # -- IAM --------------------------------------------------------------------------------------------------------
    def iam_asset_name(self, resource: str) -> str:
        """The CAI name of the resource an IAM request addresses, or a 403 (the real APIs hide what does not exist)."""
        with self.lock:
            if resource.startswith(("organizations/", "folders/", "projects/")) and resource.count("/") == 1:
                name = f"//cloudresourcemanager.googleapis.com/{resource}"
                if name in self.history and self.asset(name) is not None:
                    return name
                if resource.startswith("projects/"):
                    pid = resource.split("/", 1)[1]
                    for n in self.history:
                        a = self.asset(n)
                        if (
                            a
                            and a.get("assetType") == "cloudresourcemanager.googleapis.com/Project"
                            and ((a.get("resource") or {}).get("data") or {}).get("projectId") == pid
                        ):
                            return n
                raise permission_denied(
                    "resourcemanager.projects.getIamPolicy", resource, "cloudresourcemanager.googleapis.com"
                )
            if "/serviceAccounts/" in resource:
                name = f"//iam.googleapis.com/{resource}"
                if self.asset(name) is not None:
                    return name
                account = resource.partition("/serviceAccounts/")[2]
                for n in self.history:
                    a = self.asset(n)
                    if not a or a.get("assetType") != "iam.googleapis.com/ServiceAccount":
                        continue
                    data = (a.get("resource") or {}).get("data") or {}
                    ids = (data.get("email"), data.get("uniqueId"))
                    if account in ids or n.endswith(f"/serviceAccounts/{account}"):
                        return n
                raise ApiError(404, f"Unknown service account {resource}")
            # Every other resource with a policy: its CAI name is //SERVICE/RESOURCE.
            for host in IAM_HOSTS:
                name = f"//{host}/{resource}"
                if self.asset(name) is not None:
                    return name
            if any(f"/{c}/" in resource for c in IAM_COLLECTIONS):
                raise ApiError(404, f"Resource not found: {resource}")
        raise ApiError(400, f"unsupported IAM resource {resource}")

    def get_policy(self, resource: str, requested_version: int) -> dict[str, Any]:
        name = self.iam_asset_name(resource)
        with self.lock:
            policy = copy.deepcopy((self.asset(name) or {}).get("iamPolicy") or {})
        policy.setdefault("etag", _token(name, 0))
        policy.setdefault("version", 1)
        if requested_version < 3 and any(b.get("condition") for b in policy.get("bindings", [])):
            # What the real API does for old clients: the condition is hidden and the role name says so.
            for b in policy["bindings"]:
                cond = b.pop("condition", None)
                if cond:
                    digest = hashlib.sha256(json.dumps(cond, sort_keys=True).encode()).hexdigest()[:16]
                    b["role"] = f"{b['role']}_withcond_{digest}"
            policy["version"] = 1
        return policy

    def set_policy(self, resource: str, policy: dict[str, Any]) -> dict[str, Any]:
        name = self.iam_asset_name(resource)
        with self.lock:
            current = (self.asset(name) or {}).get("iamPolicy") or {}
            current_etag = current.get("etag") or _token(name, 0)
            sent = policy.get("etag")
            if sent and sent != current_etag:
                raise ApiError(
                    409,
                    "There were concurrent policy changes. Please retry the whole read-modify-write with "
                    "exponential backoff.",
                    status="ABORTED",
                    reason="aborted",
                )
            bindings = policy.get("bindings") or []
            conditional = any(b.get("condition") for b in bindings)
            version = int(policy.get("version") or 1)
            if conditional and version < 3:
                raise ApiError(400, "Policy version 3 is required for bindings with conditions")
            for b in bindings:
                if "_withcond_" in b.get("role", ""):
                    raise ApiError(400, f"Role {b['role']} is a placeholder for a conditional binding; request v3")
                if not b.get("members"):
                    raise ApiError(400, f"Binding for role {b.get('role')} has no members")
            new = {k: copy.deepcopy(v) for k, v in policy.items() if k != "etag"}
            new["bindings"] = [b for b in new.get("bindings", [])]
            new["version"] = 3 if conditional else version
            new["etag"] = _token(name, self.next_id())
            self.update_asset(name, iamPolicy=new)
            return copy.deepcopy(new)

    # -- security policies ------------------------------------------------------------------------------------------
    def put_security_policy(self, project: str, pol: dict[str, Any], at: datetime | None = None) -> None:
        with self.lock:
            pol = _compute_policy(pol, (project, pol["name"]))
            self.security_policies[(project, pol["name"])] = pol
            name = f"//compute.googleapis.com/projects/{project}/global/securityPolicies/{pol['name']}"
            cur = self.asset(name) or {
                "name": name,
                "assetType": "compute.googleapis.com/SecurityPolicy",
                "ancestors": [f"projects/{project}"],
            }
            cur["resource"] = {
                "version": "v1",
                "discoveryDocumentUri": "https://www.googleapis.com/discovery/v1/apis/compute/v1/rest",
                "discoveryName": "SecurityPolicy",
                "parent": f"//cloudresourcemanager.googleapis.com/projects/{project}",
                "data": copy.deepcopy(pol),
                **{k: v for k, v in (cur.get("resource") or {}).items() if k in ("parent",)},
            }
            cur.pop("updateTime", None)
            self.put_asset(cur, at=at)

    def security_policy(self, project: str, name: str) -> dict[str, Any]:
        with self.lock:
            pol = self.security_policies.get((project, name))
            if pol is None:
                raise ApiError(
                    404,
                    f"The resource 'projects/{project}/global/securityPolicies/{name}' was not found",
                    reason="notFound",
                )
            return pol

    def write_security_policy(self, project: str, pol: dict[str, Any]) -> None:
        pol["fingerprint"] = _token(f"{project}/{pol['name']}", self.next_id())
        self.put_security_policy(project, pol)

    def compute_operation(self, project: str, kind: str, target: str) -> dict[str, Any]:
        n = self.next_id()
        now = _ts(_now())
        op = {
            "kind": "compute#operation",
            "id": str(1000 + n),
            "name": f"operation-{n}-{kind}",
            "operationType": kind,
            "targetLink": target,
            "status": "DONE",
            "progress": 100,
            "insertTime": now,
            "startTime": now,
            "endTime": now,
            "selfLink": f"https://compute.googleapis.com/compute/v1/projects/{project}/global/operations/"
            f"operation-{n}-{kind}",
        }
        with self.lock:
            self.compute_operations[op["name"]] = op
        return op


def _project_of_link(link: str) -> str | None:
    m = re.search(r"/projects/([^/]+)/", link)
    return m.group(1) if m else None


def _policy_key(asset_name: str) -> tuple[str, str] | None:
    m = re.match(r"^//compute\.googleapis\.com/projects/([^/]+)/global/securityPolicies/([^/]+)$", asset_name)
    return (m.group(1), m.group(2)) if m else None


def _compute_policy(data: dict[str, Any], key: tuple[str, str]) -> dict[str, Any]:
    """The Compute API shape of a security policy (CAI data may spell `rule` and `srcIpRange`)."""
    pol = copy.deepcopy(data)
    if "rule" in pol and "rules" not in pol:
        pol["rules"] = pol.pop("rule")
    for r in pol.get("rules") or []:
        cfg = (r.get("match") or {}).get("config")
        if isinstance(cfg, dict) and "srcIpRange" in cfg and "srcIpRanges" not in cfg:
            cfg["srcIpRanges"] = cfg.pop("srcIpRange")
    pol.setdefault("kind", "compute#securityPolicy")
    pol.setdefault("name", key[1])
    pol.setdefault("fingerprint", _token("/".join(key), 0))
    pol.setdefault(
        "selfLink", f"https://www.googleapis.com/compute/v1/projects/{key[0]}/global/securityPolicies/{key[1]}"
    )
    return pol


def _api_asset(rec: dict[str, Any]) -> dict[str, Any]:
    """One CAI record in the API (camelCase) spelling; the content of `data` and of policies is kept as is."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        ck = _camel(k)
        if ck == "resource" and isinstance(v, dict):
            v = {_camel(rk): rv for rk, rv in v.items()}
        out[ck] = v
    return out


def _export_record(asset: dict[str, Any], content: str) -> dict[str, Any] | None:
    """One line of an export to Cloud Storage: snake_case, with only the part the content type asks for."""
    part = "resource" if content == "RESOURCE" else "iamPolicy"
    if not asset.get(part):
        return None
    out: dict[str, Any] = {"name": asset["name"], "asset_type": asset["assetType"]}
    if part == "resource":
        out["resource"] = {_snake(k): v for k, v in asset["resource"].items()}
    else:
        out["iam_policy"] = asset["iamPolicy"]
    if asset.get("ancestors"):
        out["ancestors"] = asset["ancestors"]
    if asset.get("updateTime"):
        out["update_time"] = asset["updateTime"]
    return out


def type_filter(patterns: list[str]) -> re.Pattern[str] | None:
    """CAI's assetTypes: exact types, or RE2 regular expressions matched against the whole type."""
    if not patterns:
        return None
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns))
    except re.error as exc:
        raise ApiError(400, f"Invalid asset type regular expression: {exc}") from exc


# -- HTTP -----------------------------------------------------------------------------------------------------------

_Route = tuple[str, re.Pattern[str], str]
# The services whose resources have getIamPolicy/setIamPolicy (`POST /vN/RESOURCE:setIamPolicy`, reads by GET with
# `options.requestedPolicyVersion` or by POST), and the collections their resource names go through.
IAM_HOSTS = ("pubsub.googleapis.com", "cloudkms.googleapis.com", "secretmanager.googleapis.com",
             "artifactregistry.googleapis.com", "run.googleapis.com", "ml.googleapis.com")
IAM_COLLECTIONS = ("topics", "subscriptions", "keyRings", "cryptoKeys", "secrets", "repositories", "services",
                   "models")
_ROUTES: list[_Route] = [
    ("GET", re.compile(r"^/v1/(?P<parent>(?:organizations|folders|projects)/[^/]+)/assets$"), "list_assets"),
    ("POST", re.compile(r"^/v1/(?P<parent>(?:organizations|folders|projects)/[^/]+):exportAssets$"), "export_assets"),
    ("GET", re.compile(r"^/v1/(?P<name>(?:organizations|folders|projects)/[^/]+/operations/.+)$"), "get_operation"),
    ("POST", re.compile(r"^/v3/(?P<resource>(?:organizations|folders|projects)/[^/:]+):getIamPolicy$"), "get_iam"),
    ("POST", re.compile(r"^/v3/(?P<resource>(?:organizations|folders|projects)/[^/:]+):setIamPolicy$"), "set_iam"),
    ("POST", re.compile(r"^/v1/(?P<resource>projects/[^/]+/serviceAccounts/[^/:]+):getIamPolicy$"), "get_iam"),
    ("POST", re.compile(r"^/v1/(?P<resource>projects/[^/]+/serviceAccounts/[^/:]+):setIamPolicy$"), "set_iam"),
    ("GET", re.compile(r"^/v[12]/(?P<resource>projects/[^:]+):getIamPolicy$"), "get_iam"),
    ("POST", re.compile(r"^/v[12]/(?P<resource>projects/[^:]+):getIamPolicy$"), "get_iam"),
    ("POST", re.compile(r"^/v[12]/(?P<resource>projects/[^:]+):setIamPolicy$"), "set_iam"),
    ("GET", re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets/(?P<dataset>[^/]+)$"), "get_dataset"),
    ("PATCH", re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets/(?P<dataset>[^/]+)$"),
     "patch_dataset"),
    ("GET", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/securityPolicies$"), "list_sp"),
    ("GET", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/securityPolicies/(?P<sp>[^/]+)$"), "get_sp"),
    ("PATCH", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/securityPolicies/(?P<sp>[^/]+)$"),
     "patch_sp"),
    ("POST", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/securityPolicies/(?P<sp>[^/]+)/addRule$"),
     "add_rule"),
    ("POST", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/securityPolicies/(?P<sp>[^/]+)/patchRule$"),
     "patch_rule"),
    ("POST", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/securityPolicies/(?P<sp>[^/]+)/removeRule$"),
     "remove_rule"),
    ("GET", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/securityPolicies/(?P<sp>[^/]+)/getRule$"),
     "get_rule"),
    ("GET", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/operations/(?P<op>[^/]+)$"), "compute_op"),
    ("POST", re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/operations/(?P<op>[^/]+)/wait$"),
     "compute_op"),
    ("GET", re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)$"), "gcs_bucket"),
    ("GET", re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o$"), "gcs_list"),
    ("GET", re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>.+)$"), "gcs_get"),
    ("GET", re.compile(r"^/download/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>.+)$"), "gcs_get"),
]  # fmt: skip


# Fakes of other APIs kept in their own modules (tests/fakes/gcp_outbound.py: Security Command Center, Pub/Sub)
# register here: (method, path pattern, handler(fake, request, **groups)). Their state lives in `FakeGcp.ext`.
EXTRA_ROUTES: list[tuple[str, re.Pattern[str], Any]] = []


class FakeGcp:
    """The fake server: `start()` binds a free port on 127.0.0.1 and serves from a thread; `url` is the endpoint."""

    def __init__(self, *load: str | Path, max_page_size: int = CAI_MAX_PAGE) -> None:
        self.state = FakeGcpState()
        self.max_page_size = max_page_size
        self.faults: list[Fault] = []
        self.requests: list[RecordedRequest] = []
        self._listings: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        # An export operation that ends in this google.rpc.Status, as when the Cloud Asset service agent may not
        # write to the bucket: {"code": 7, "message": "..."}.
        self.export_error: dict[str, Any] | None = None
        self.ext: dict[str, Any] = {}  # state of the fakes in other modules, by their name
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if load:
            self.state.load(*load)

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> FakeGcp:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-gcp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGcp:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test controls ----------------------------------------------------------------------------------------------
    def load(self, *paths: str | Path) -> int:
        return self.state.load(*paths)

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, filtered by method and by a regex searched in the path."""
        with self._lock:
            reqs = list(self.requests)
        return [r for r in reqs if (method is None or r.method == method) and (path is None or re.search(path, r.path))]

    def list_asset_calls(self) -> list[RecordedRequest]:
        return self.calls("GET", r"^/v1/[^/]+/[^/]+/assets$")

    # -- dispatch ---------------------------------------------------------------------------------------------------
    def _fault_for(self, req: RecordedRequest) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(req):
                    f.hits += 1
                    return f
        return None

    def handle(self, req: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(req)
        try:
            fault = self._fault_for(req)
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.drop:
                    with contextlib.suppress(ApiError):
                        self.route(req)
                    return DROPPED, None, {}
                if fault.status is not None:
                    raise fault.error(req)
            return 200, self.route(req), {}
        except ApiError as err:
            return err.code, err.body(), err.headers

    def route(self, req: RecordedRequest) -> Any:
        """The answer of the method the request names (ApiError for an unknown one)."""
        for method, pattern, action in self.routes():
            if method != req.method:
                continue
            m = pattern.match(req.path)
            if m:
                return getattr(self, "_" + action)(req, **m.groupdict())
        for method, pattern, handler in EXTRA_ROUTES:
            m = pattern.match(req.path) if method == req.method else None
            if m:
                return handler(self, req, **m.groupdict())
        raise ApiError(404, f"no such method: {req.method} {req.path}")

    def routes(self) -> list[_Route]:
        return _ROUTES

    # -- Cloud Asset Inventory --------------------------------------------------------------------------------------
    def _list_assets(self, req: RecordedRequest, parent: str) -> dict[str, Any]:
        q = req.query
        content = req.content_type or "CONTENT_TYPE_UNSPECIFIED"
        types = q.get("assetTypes", [])
        page_size = int((q.get("pageSize") or ["100"])[0] or 100)
        if page_size <= 0:
            page_size = 100
        if page_size > CAI_MAX_PAGE:
            raise ApiError(400, f"page_size must be at most {CAI_MAX_PAGE}")
        page_size = min(page_size, self.max_page_size)
        token = (q.get("pageToken") or [""])[0]
        fingerprint = hashlib.sha256(json.dumps([parent, content, sorted(types)]).encode()).hexdigest()[:12]
        if token:
            try:
                t = _decode_token(token)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from exc
            if t.get("q") != fingerprint:
                raise ApiError(400, "page token does not belong to this request")
            offset, read_time, page = int(t["offset"]), _parse_ts(t["readTime"]), int(t["page"])
        else:
            offset, page = 0, 1
            rt = (q.get("readTime") or [""])[0]
            read_time = _parse_ts(rt) if rt else _now()
            if read_time > _now() + timedelta(seconds=5):
                raise ApiError(400, "read_time must not be in the future")
        key = (fingerprint, _ts(read_time), self.state.version)
        with self._lock:
            assets = self._listings.get(key)
        if assets is None:
            assets = self._select(parent, content, types, read_time)
            with self._lock:
                # The pages of one listing slice one selection, as the real API pages one snapshot.
                self._listings[key] = assets
                while len(self._listings) > 32:
                    self._listings.pop(next(iter(self._listings)))
        chunk = assets[offset : offset + page_size]
        out: dict[str, Any] = {"readTime": _ts(read_time), "assets": chunk}
        if offset + page_size < len(assets):
            out["nextPageToken"] = _encode_token(
                {"offset": offset + page_size, "readTime": _ts(read_time), "page": page + 1, "q": fingerprint}
            )
        return out

    def _select(self, parent: str, content: str, types: list[str], read_time: datetime) -> list[dict[str, Any]]:
        if content not in ("RESOURCE", "IAM_POLICY", "CONTENT_TYPE_UNSPECIFIED"):
            raise ApiError(400, f"content type {content} is not served by the fake")
        rx = type_filter(types)
        out = []
        for a in self.state.snapshot(read_time):
            if rx is not None and not rx.fullmatch(a.get("assetType", "")):
                continue
            if not _under(a, parent):
                continue
            item: dict[str, Any] = {k: v for k, v in a.items() if k not in ("resource", "iamPolicy")}
            if content == "RESOURCE":
                if not a.get("resource"):
                    continue
                item["resource"] = a["resource"]
            elif content == "IAM_POLICY":
                if not a.get("iamPolicy"):
                    continue
                item["iamPolicy"] = a["iamPolicy"]
            out.append(item)
        return out

    def _export_assets(self, req: RecordedRequest, parent: str) -> dict[str, Any]:
        body = req.body or {}
        content = req.content_type or "CONTENT_TYPE_UNSPECIFIED"
        if content not in ("RESOURCE", "IAM_POLICY"):
            raise ApiError(400, "the fake exports RESOURCE or IAM_POLICY content")
        gcs = ((body.get("outputConfig") or {}).get("gcsDestination")) or {}
        uri = gcs.get("uri") or gcs.get("uriPrefix")
        if not uri or not str(uri).startswith("gs://"):
            raise ApiError(400, "output_config.gcs_destination.uri or uri_prefix (gs://...) is required")
        rt = body.get("readTime")
        read_time = _parse_ts(rt) if rt else _now()
        assets = self._select(parent, content, body.get("assetTypes") or [], read_time)
        bucket, _, obj = str(uri)[5:].partition("/")
        written: list[str] = []
        if gcs.get("uri"):
            groups = {obj: assets}
        else:  # uriPrefix: one object per asset type, as CAI shards a prefix export
            groups = {}
            for a in assets:
                groups.setdefault(f"{obj.rstrip('/')}/{a['assetType']}/0", []).append(a)
        for key, items in groups.items():
            lines = [_export_record(a, content) for a in items]
            data = "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines if x is not None)
            with self.state.lock:
                self.state.objects[(bucket, key)] = data.encode()
            written.append(f"gs://{bucket}/{key}")
        n = self.state.next_id()
        name = f"{parent}/operations/ExportAssets/{content}/{n}"
        result = {
            "@type": "type.googleapis.com/google.cloud.asset.v1.ExportAssetsResponse",
            "readTime": _ts(read_time),
            "outputConfig": body.get("outputConfig"),
            "outputResult": {"gcsResult": {"uris": written}},
        }
        op = {
            "name": name,
            "metadata": {"@type": "type.googleapis.com/google.cloud.asset.v1.ExportAssetsRequest", **body},
            "done": False,
            "_polls": 0,
            "_result": result,
        }
        with self.state.lock:
            self.state.operations[name] = op
        return _public_op(op)

    def _get_operation(self, req: RecordedRequest, name: str) -> dict[str, Any]:
        with self.state.lock:
            op = self.state.operations.get(name)
            if op is None:
                raise ApiError(404, f"operation {name} not found")
            op["_polls"] += 1
            if op["_polls"] >= self.state.export_delay_polls:
                op["done"] = True
                if self.export_error is not None:
                    op["error"] = self.export_error
                else:
                    op["response"] = op["_result"]
            return _public_op(op)

    # -- Cloud Storage (read side) ----------------------------------------------------------------------------------
    def _gcs_bucket(self, req: RecordedRequest, bucket: str) -> dict[str, Any]:
        # Every bucket exists (exports create objects in any bucket they are given).
        return {"kind": "storage#bucket", "id": bucket, "name": bucket, "location": "US", "metageneration": "1"}

    def _gcs_list(self, req: RecordedRequest, bucket: str) -> dict[str, Any]:
        prefix = (req.query.get("prefix") or [""])[0]
        with self.state.lock:
            keys = sorted(k for (b, k) in self.state.objects if b == bucket and k.startswith(prefix))
            items = [_gcs_meta(bucket, k, self.state.objects[(bucket, k)]) for k in keys]
        return {"kind": "storage#objects", "items": items}

    def _gcs_get(self, req: RecordedRequest, bucket: str, object: str) -> Any:
        key = urllib.parse.unquote(object)
        with self.state.lock:
            data = self.state.objects.get((bucket, key))
        if data is None:
            raise ApiError(404, f"No such object: {bucket}/{key}")
        if (req.query.get("alt") or [""])[0] == "media" or req.path.startswith("/download/"):
            return RawBody(data, "application/octet-stream")
        return _gcs_meta(bucket, key, data)

    # -- IAM policies -----------------------------------------------------------------------------------------------
    def _get_iam(self, req: RecordedRequest, resource: str) -> dict[str, Any]:
        body = req.body or {}
        version = int(((body.get("options") or {}).get("requestedPolicyVersion")) or 0)
        if not version:
            version = int((req.query.get("options.requestedPolicyVersion") or ["0"])[0] or 0)
        return self.state.get_policy(urllib.parse.unquote(resource), version)

    def _set_iam(self, req: RecordedRequest, resource: str) -> dict[str, Any]:
        body = req.body or {}
        policy = body.get("policy")
        if not isinstance(policy, dict):
            raise ApiError(400, "setIamPolicy needs a 'policy'")
        mask = body.get("updateMask")
        resource = urllib.parse.unquote(resource)
        if mask:
            # Fields outside the mask keep their current value (only bindings and etag are implied).
            fields = {f.strip() for f in str(mask).split(",")} | {"bindings", "etag"}
            current = self.state.get_policy(resource, 3)
            policy = {**{k: v for k, v in current.items() if k not in fields}, **policy}
        return self.state.set_policy(resource, policy)

    # -- BigQuery datasets: the access list is the policy; patch takes the etag in If-Match ---------------------------
    def _dataset_asset(self, project: str, dataset: str) -> str:
        name = f"//bigquery.googleapis.com/projects/{project}/datasets/{dataset}"
        if self.state.asset(name) is None:
            raise ApiError(404, f"Not found: Dataset {project}:{dataset}", reason="notFound")
        return name

    def _dataset_body(self, name: str, project: str, dataset: str) -> dict[str, Any]:
        asset = self.state.asset(name) or {}
        policy = asset.get("iamPolicy") or {}
        extra = ((asset.get("resource") or {}).get("data") or {}).get("access") or []
        access = [e for e in extra if not _access_member(e)] + _bindings_to_access(policy.get("bindings") or [])
        return {"kind": "bigquery#dataset", "id": f"{project}:{dataset}",
                "datasetReference": {"projectId": project, "datasetId": dataset},
                "etag": _dataset_etag(policy.get("etag") or _token(name, 0)), "access": access}

    def _get_dataset(self, req: RecordedRequest, project: str, dataset: str) -> dict[str, Any]:
        with self.state.lock:
            return self._dataset_body(self._dataset_asset(project, dataset), project, dataset)

    def _patch_dataset(self, req: RecordedRequest, project: str, dataset: str) -> dict[str, Any]:
        body = req.body if isinstance(req.body, dict) else {}
        with self.state.lock:
            name = self._dataset_asset(project, dataset)
            current = self._dataset_body(name, project, dataset)
            sent = req.headers.get("If-Match")
            if sent and sent != current["etag"]:
                raise ApiError(412, "Precondition check failed.", status="FAILED_PRECONDITION",
                               reason="conditionNotMet")
            if "access" in body:
                access = body["access"] or []
                bindings = _access_to_bindings(access, project)
                policy = {"version": 3 if any(b.get("condition") for b in bindings) else 1, "bindings": bindings,
                          "etag": _token(name, self.state.next_id())}
                asset = self.state.asset(name) or {}
                res = copy.deepcopy(asset.get("resource") or {"data": {}})
                res.setdefault("data", {})["access"] = [e for e in access if not _access_member(e)]
                self.state.update_asset(name, iamPolicy=policy, resource=res)
            return self._dataset_body(name, project, dataset)

    # -- Compute security policies ----------------------------------------------------------------------------------
    def _list_sp(self, req: RecordedRequest, project: str) -> dict[str, Any]:
        with self.state.lock:
            items = [copy.deepcopy(p) for (pr, _), p in sorted(self.state.security_policies.items()) if pr == project]
        return {
            "kind": "compute#securityPolicyList",
            "id": f"projects/{project}/global/securityPolicies",
            "items": items,
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/global/securityPolicies",
        }

    def _get_sp(self, req: RecordedRequest, project: str, sp: str) -> dict[str, Any]:
        return copy.deepcopy(self.state.security_policy(project, sp))

    def _check_fingerprint(self, pol: dict[str, Any], sent: str | None) -> None:
        if sent and sent != pol.get("fingerprint"):
            raise ApiError(
                412,
                "Supplied fingerprint does not match current metadata fingerprint.",
                status="FAILED_PRECONDITION",
                reason="conditionNotMet",
            )

    def _patch_sp(self, req: RecordedRequest, project: str, sp: str) -> dict[str, Any]:
        body = req.body or {}
        with self.state.lock:
            pol = copy.deepcopy(self.state.security_policy(project, sp))
            self._check_fingerprint(pol, body.get("fingerprint"))
            for k, v in body.items():
                if k in ("fingerprint", "name", "id", "selfLink", "kind"):
                    continue
                pol[k] = v
            self._validate_rules(pol.get("rules") or [])
            self.state.write_security_policy(project, pol)
        return self.state.compute_operation(project, "patch", pol["selfLink"])

    @staticmethod
    def _validate_rules(rules: list[dict[str, Any]]) -> None:
        prios = [int(r.get("priority", -1)) for r in rules]
        if len(prios) != len(set(prios)):
            raise ApiError(400, "Invalid value for field 'resource.rules': two rules with one priority")
        if DEFAULT_RULE_PRIORITY not in prios:
            raise ApiError(400, "The default rule (priority 2147483647) cannot be removed")

    @staticmethod
    def _priority(req: RecordedRequest, default: int | None = None) -> int:
        raw = (req.query.get("priority") or [None])[0]
        if raw is None:
            if default is None:
                raise ApiError(400, "Required field 'priority' not specified")
            return default
        return int(raw)

    def _add_rule(self, req: RecordedRequest, project: str, sp: str) -> dict[str, Any]:
        rule = copy.deepcopy(req.body or {})
        if "priority" not in rule:
            raise ApiError(400, "Required field 'priority' not specified")
        rule["priority"] = int(rule["priority"])
        with self.state.lock:
            pol = copy.deepcopy(self.state.security_policy(project, sp))
            rules = pol.setdefault("rules", [])
            if any(int(r.get("priority", -1)) == rule["priority"] for r in rules):
                raise ApiError(400, f"Cannot have rules with the same priorities ({rule['priority']}).")
            rule.setdefault("kind", "compute#securityPolicyRule")
            rule.setdefault("preview", False)
            rules.append(rule)
            rules.sort(key=lambda r: int(r.get("priority", 0)))
            self.state.write_security_policy(project, pol)
        return self.state.compute_operation(project, "addRule", pol["selfLink"])

    def _find_rule(self, pol: dict[str, Any], priority: int) -> dict[str, Any]:
        for r in pol.get("rules") or []:
            if int(r.get("priority", -1)) == priority:
                return r
        raise ApiError(400, f"Invalid value for field 'priority': '{priority}'. The rule does not exist.")

    def _patch_rule(self, req: RecordedRequest, project: str, sp: str) -> dict[str, Any]:
        priority = self._priority(req)
        with self.state.lock:
            pol = copy.deepcopy(self.state.security_policy(project, sp))
            rule = self._find_rule(pol, priority)
            for k, v in (req.body or {}).items():
                rule[k] = int(v) if k == "priority" else v
            self._validate_rules(pol["rules"])
            pol["rules"].sort(key=lambda r: int(r.get("priority", 0)))
            self.state.write_security_policy(project, pol)
        return self.state.compute_operation(project, "patchRule", pol["selfLink"])

    def _remove_rule(self, req: RecordedRequest, project: str, sp: str) -> dict[str, Any]:
        priority = self._priority(req, default=0)
        with self.state.lock:
            pol = copy.deepcopy(self.state.security_policy(project, sp))
            rule = self._find_rule(pol, priority)
            if priority == DEFAULT_RULE_PRIORITY:
                raise ApiError(400, "The default rule (priority 2147483647) cannot be removed")
            pol["rules"] = [r for r in pol["rules"] if r is not rule]
            self.state.write_security_policy(project, pol)
        return self.state.compute_operation(project, "removeRule", pol["selfLink"])

    def _get_rule(self, req: RecordedRequest, project: str, sp: str) -> dict[str, Any]:
        priority = self._priority(req, default=0)
        pol = self.state.security_policy(project, sp)
        return copy.deepcopy(self._find_rule(pol, priority))

    def _compute_op(self, req: RecordedRequest, project: str, op: str) -> dict[str, Any]:
        with self.state.lock:
            found = self.state.compute_operations.get(op)
        if found is None:
            raise ApiError(404, f"The resource 'projects/{project}/global/operations/{op}' was not found")
        return dict(found)


_DATASET_ROLES = {"OWNER": "roles/bigquery.dataOwner", "WRITER": "roles/bigquery.dataEditor",
                  "READER": "roles/bigquery.dataViewer"}
_SPECIAL_GROUPS = {"projectOwners": "projectOwner", "projectWriters": "projectEditor",
                   "projectReaders": "projectViewer"}


def _dataset_etag(policy_etag: str) -> str:
    """The dataset's own etag (datasets.get), which moves with its access list but is not the etag CAI shows on
    the dataset's IAM policy: the two APIs' tokens are never comparable."""
    return base64.b64encode(hashlib.sha256(f"dataset:{policy_etag}".encode()).digest()[:12]).decode()


def _access_member(e: dict[str, Any], project: str = "") -> str | None:
    """The IAM member a dataset access entry grants to (as CAI shows it), None for views, routines, datasets."""
    if e.get("userByEmail"):
        email = str(e["userByEmail"])
        return ("serviceAccount:" if email.endswith("gserviceaccount.com") else "user:") + email
    for key, kind in (("groupByEmail", "group"), ("domain", "domain")):
        if e.get(key):
            return f"{kind}:{e[key]}"
    if e.get("iamMember"):
        return str(e["iamMember"])
    group = e.get("specialGroup")
    if group == "allAuthenticatedUsers":
        return group
    return f"{_SPECIAL_GROUPS[group]}:{project}" if group in _SPECIAL_GROUPS else None


def _access_to_bindings(access: list[dict[str, Any]], project: str) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in access:
        member = _access_member(e, project)
        if member is None:
            continue
        role = _DATASET_ROLES.get(str(e.get("role")), str(e.get("role")))
        cond = e.get("condition")
        b = out.setdefault(role + json.dumps(cond, sort_keys=True), {"role": role, "members": []})
        if cond:
            b["condition"] = cond
        b["members"].append(member)
    return list(out.values())


def _bindings_to_access(bindings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bindings as the access entries the BigQuery API shows (the basic roles by their short names)."""
    short = {v: k for k, v in _DATASET_ROLES.items()}
    back = {v: k for k, v in _SPECIAL_GROUPS.items()}
    out = []
    for b in bindings:
        for m in b.get("members") or ():
            kind, _, value = m.partition(":")
            e: dict[str, Any] = {"role": short.get(b["role"], b["role"])}
            if kind in ("user", "serviceAccount"):
                e["userByEmail"] = value
            elif kind == "group":
                e["groupByEmail"] = value
            elif kind == "domain":
                e["domain"] = value
            elif kind in back:
                e["specialGroup"] = back[kind]
            elif m == "allAuthenticatedUsers":
                e["specialGroup"] = m
            else:
                e["iamMember"] = m
            if b.get("condition"):
                e["condition"] = b["condition"]
            out.append(e)
    return out


def _public_op(op: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in op.items() if not k.startswith("_")}


def _gcs_meta(bucket: str, key: str, data: bytes) -> dict[str, Any]:
    return {
        "kind": "storage#object",
        "id": f"{bucket}/{key}/1",
        "name": key,
        "bucket": bucket,
        "generation": "1",
        "metageneration": "1",
        "size": str(len(data)),
        "contentType": "application/x-ndjson",
        "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),  # what GCS reports
        "timeCreated": _ts(_now()),
        "updated": _ts(_now()),
    }


def _under(asset: dict[str, Any], parent: str) -> bool:
    """Whether an asset lies under `parent`; assets without ancestors belong to every parent (as in small dumps)."""
    ancestors = asset.get("ancestors") or []
    if not ancestors:
        return True
    if parent in ancestors:
        return True
    # A project may be addressed by id; the ancestors name it by number.
    return parent.startswith("projects/") and asset.get("name", "").startswith(
        f"//cloudresourcemanager.googleapis.com/{parent}"
    )


@dataclass
class RawBody:
    data: bytes
    content_type: str


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeGcp
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet in tests

    def _serve(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, ApiError(400, "request body is not JSON").body(), {})
                return
        req = RecordedRequest(self.command, urllib.parse.unquote(parsed.path), query, body,
                              headers={k: v for k, v in self.headers.items()})
        status, payload, headers = self.server_fake.handle(req)
        req.status = status
        if status == DROPPED:
            self.close_connection = True
            return
        self._send(status, payload, headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        rng = self.headers.get("Range")
        if isinstance(payload, RawBody):
            data, ctype = payload.data, payload.content_type
            m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
            if m and status == 200:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                headers = {**headers, "Content-Range": f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"}
                data, status = data[start : end + 1], 206
        else:
            data, ctype = json.dumps(payload).encode(), "application/json; charset=UTF-8"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to answer

    do_GET = _serve
    do_POST = _serve
    do_PATCH = _serve
    do_PUT = _serve
    do_DELETE = _serve


# -- pytest fixture and command line ----------------------------------------------------------------------------------


@pytest.fixture
def fake_gcp() -> Iterator[FakeGcp]:
    """An empty, started fake; tests load what they need (`fake_gcp.load(path)`)."""
    with FakeGcp() as fake:
        yield fake


@pytest.fixture
def gcp_endpoint(fake_gcp: FakeGcp, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fake's URL, also set as AUDITOR_GCP_ENDPOINT so every client of the auditor uses it."""
    monkeypatch.setenv(ENDPOINT_ENV, fake_gcp.url)
    return fake_gcp.url


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.fakes.gcp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8089, help="0 picks a free port (printed)")
    ap.add_argument("--load", nargs="*", default=[], help="CAI export files or folders, Compute API responses")
    ap.add_argument("--max-page-size", type=int, default=CAI_MAX_PAGE)
    args = ap.parse_args(argv)
    fake = FakeGcp(*args.load, max_page_size=args.max_page_size).start(args.port)
    print(f"fake Google Cloud APIs on {fake.url} ({len(fake.state.history)} assets); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


# The outbound APIs register their routes on import (at the end: they use ApiError and EXTRA_ROUTES from here).
from tests.fakes import gcp_container, gcp_outbound  # noqa: E402, F401

if __name__ == "__main__":
    main()
