"""What an input object is, and the assets it gives: one reader (converter) per shape, in a registry.

A file is cut into objects by `files.py` (NDJSON lines, a JSON document or array, concatenated JSON objects, YAML
documents); each object is then recognised here by the first registered reader that matches it:
- `cai-asset`: a Cloud Asset Inventory asset, in the export's snake_case or the API's camelCase, with `ancestors`
  or Config Validator's `ancestry_path`;
- `cai-listing`: a ListAssets response saved to a file (`{"assets": [...]}`);
- `kubernetes-list` and `kubernetes-object`: `kind: List` (or `*List`) and the RBAC, Namespace, quota and network
  policy objects the checks read (`k8s_objects.py`);
- `compute-security-policy` and `compute-security-policy-list`: Compute API responses
  (`compute#securityPolicy`, `compute#securityPolicyList`, `compute#securityPolicyAggregatedList`) and gcloud's
  JSON or YAML of them, turned into the CAI `compute.googleapis.com/SecurityPolicy` asset CAI would give.
An object no reader knows is counted by its kind (`describe`) and shown in the report; it is never an asset.

Fields of the wrong type (an `iam_policy` that is a string, `bindings` that is a mapping, `members` that is one
string, `metadata` that is a list) make the record malformed, with the reason: never skipped silently, never
iterated per character.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from auditor.collect.k8s_objects import KINDS, object_asset
from auditor.model import Asset
from auditor.plugins import Registry

_NO_RAW = msgspec.Raw(b"")  # msgspec cannot make Raw optional; an empty Raw means "absent"
_NULL = msgspec.Raw(b"null")

SECURITY_POLICY = "compute.googleapis.com/SecurityPolicy"


class _Resource(msgspec.Struct, gc=False):
    data: msgspec.Raw = _NO_RAW
    parent: str | None = None


class _Record(msgspec.Struct, gc=False):
    """One CAI asset in either spelling; unknown keys are skipped without being decoded."""

    name: str | None = None
    asset_type: str | None = None
    assetType: str | None = None
    resource: _Resource | None = None
    iam_policy: msgspec.Raw = _NO_RAW
    iamPolicy: msgspec.Raw = _NO_RAW
    ancestors: list[str] | None = None
    ancestry_path: str | None = None
    update_time: str | None = None
    updateTime: str | None = None


# The shape of an IAM policy, checked once where a reader builds an asset that carries one: what the checks iterate
# must be what they expect (a list of bindings, each with a role and a list of members).
class _Binding(msgspec.Struct, gc=False):
    role: str = ""
    members: list[str] = []


class _Policy(msgspec.Struct, gc=False):
    bindings: list[_Binding] | None = None


record_decoder = msgspec.json.Decoder(_Record)
_policy_decoder = msgspec.json.Decoder(_Policy)
_any_decoder = msgspec.json.Decoder()


def _is_null(raw: msgspec.Raw | bytes) -> bool:
    return len(raw) == 4 and bytes(raw) == b"null"


def _starts_object(raw: msgspec.Raw | bytes) -> bool:
    return bytes(memoryview(raw)[:64]).lstrip()[:1] == b"{"


_SEGMENTS = {"organization": "organizations", "folder": "folders", "project": "projects"}


def ancestors_of_path(path: str) -> tuple[str, ...]:
    """`organizations/1/folders/2/projects/3` (Config Validator's `ancestry_path`; `organization/1/...` too) as CAI
    `ancestors`: from the asset upwards, `projects/3`, `folders/2`, `organizations/1`. ValueError when malformed."""
    parts = [p for p in path.strip().strip("/").split("/") if p]
    if not parts or len(parts) % 2:
        raise ValueError(f"ancestry_path {path!r} is not TYPE/ID pairs (organizations/1/folders/2/projects/3)")
    out = []
    for kind, ident in zip(parts[::2], parts[1::2], strict=True):
        kind = _SEGMENTS.get(kind, kind)
        if kind not in ("organizations", "folders", "projects"):
            raise ValueError(f"ancestry_path {path!r}: {kind!r} is not organizations, folders or projects")
        out.append(f"{kind}/{ident}")
    return tuple(reversed(out))


def check_iam_policy(raw: msgspec.Raw | bytes) -> None:
    """ValueError naming what is wrong when an IAM policy is not the shape the checks read."""
    if not _starts_object(raw):
        raise ValueError("'iam_policy' is not an object")
    try:
        _policy_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ValueError(f"'iam_policy' has a field of the wrong type ({exc})") from None


def record_to_asset(rec: _Record, origin: str, line: int = 0) -> Asset:
    """The Asset for one decoded record (read at `origin`, or at line `line` of file `origin`); ValueError names
    what is missing or of the wrong type."""
    asset_type = rec.asset_type or rec.assetType
    if not rec.name:
        raise ValueError("asset has no 'name'")
    if not asset_type:
        raise ValueError(f"asset {rec.name} has no 'asset_type' (export spelling) or 'assetType' (API spelling)")
    iam = rec.iam_policy or rec.iamPolicy
    data = rec.resource.data if rec.resource is not None else _NO_RAW
    has_iam = bool(iam) and not _is_null(iam)
    has_data = bool(data) and not _is_null(data)
    if has_data and not _starts_object(data):
        raise ValueError(f"asset {rec.name}: 'resource.data' is not an object")
    if has_iam:
        try:
            check_iam_policy(iam)
        except ValueError as exc:
            raise ValueError(f"asset {rec.name}: {exc}") from None
    return Asset(
        name=rec.name,
        asset_type=asset_type,
        resource=data if has_data else None,
        iam_policy=iam if has_iam else None,
        ancestors=_ancestors(rec),
        update_time=rec.update_time or rec.updateTime,
        origin=origin,
        line=line,
    )


def _ancestors(rec: _Record) -> tuple[str, ...]:
    if rec.ancestors:
        return tuple(rec.ancestors)
    if rec.ancestry_path:
        return ancestors_of_path(rec.ancestry_path)
    return ()


def decode_record(line: bytes | str) -> _Record:
    return record_decoder.decode(line)


# -- readers of objects ------------------------------------------------------------------------------------------
class Nested(NamedTuple):
    """An object inside another (an item of a list), classified again; `where` says where it is."""

    obj: Any
    where: str


Item = Asset | Nested
ReadFn = Callable[[dict[str, Any], str, str], Iterator[Item]]  # (object, cluster, where) -> assets and nested objects


@dataclass(frozen=True)
class ObjectReader:
    name: str
    shape: str  # what the reader reads, for messages
    matches: Callable[[dict[str, Any]], bool]
    read: ReadFn


READERS: Registry[ObjectReader] = Registry("input reader")


def reader(name: str, shape: str, matches: Callable[[dict[str, Any]], bool]) -> Callable[[ReadFn], ReadFn]:
    """Register a reader of the objects `matches` accepts (tried in registration order)."""

    def deco(fn: ReadFn) -> ReadFn:
        READERS.add(name, ObjectReader(name, shape, matches, fn))
        return fn

    return deco


def classify(obj: Any) -> ObjectReader | None:
    if not isinstance(obj, dict):
        return None
    for r in READERS.values():
        if r.matches(obj):
            return r
    return None


def describe(obj: Any) -> str:
    """What an object no reader knows looks like, for the count of unknown kinds and the error messages."""
    if isinstance(obj, dict):
        kind = obj.get("kind")
        if isinstance(kind, str) and kind:
            api = obj.get("apiVersion")
            return f"{api}/{kind}" if isinstance(api, str) and api else kind
        keys = sorted(str(k) for k in obj)
        more = ", ..." if len(keys) > 6 else ""
        return "a mapping with keys " + ", ".join(keys[:6]) + more if keys else "an empty mapping"
    if isinstance(obj, list):
        return "a list"
    if obj is None:
        return "null"
    return f"a {type(obj).__name__} value"


def known_shapes() -> str:
    return "; ".join(r.shape for r in READERS.values())


def _is_cai_asset(obj: dict[str, Any]) -> bool:
    return "name" in obj and ("asset_type" in obj or "assetType" in obj)


@reader("cai-asset", "CAI assets (NDJSON, a JSON array, YAML documents)", _is_cai_asset)
def _cai_asset(obj: dict[str, Any], cluster: str, where: str) -> Iterator[Item]:
    try:
        rec = record_decoder.decode(msgspec.json.encode(obj))
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError) as exc:
        raise ValueError(f"malformed asset ({exc})") from None
    yield record_to_asset(rec, where)


@reader("cai-listing", 'a ListAssets response ({"assets": [...]})', lambda o: "assets" in o and "kind" not in o)
def _cai_listing(obj: dict[str, Any], cluster: str, where: str) -> Iterator[Item]:
    assets = obj["assets"]
    if not isinstance(assets, list):
        raise ValueError("'assets' is not a list")
    for i, a in enumerate(assets):
        yield Nested(a, f"{where}: asset {i}")


def _is_compute(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: o.get("kind") == kind


@reader("compute-security-policy", "a Compute compute#securityPolicy (gcloud describe, JSON or YAML)",
        _is_compute("compute#securityPolicy"))
def _security_policy(obj: dict[str, Any], cluster: str, where: str) -> Iterator[Item]:
    yield security_policy_asset(obj, where)


@reader("compute-security-policy-list", "a Compute compute#securityPolicyList (securityPolicies.list)",
        lambda o: o.get("kind") in ("compute#securityPolicyList", "compute#securityPolicyAggregatedList"))
def _security_policy_list(obj: dict[str, Any], cluster: str, where: str) -> Iterator[Item]:
    items = obj.get("items") or []
    if isinstance(items, dict):  # aggregatedList: {"global": {"securityPolicies": [...]}, "regions/R": {...}}
        scoped = []
        for scope, part in items.items():
            policies = part.get("securityPolicies") if isinstance(part, dict) else None
            if policies is not None and not isinstance(policies, list):
                raise ValueError(f"items.{scope}.securityPolicies is not a list")
            scoped += [(f"{where}: {scope} item {i}", p) for i, p in enumerate(policies or [])]
    elif isinstance(items, list):
        scoped = [(f"{where}: item {i}", p) for i, p in enumerate(items)]
    else:
        raise ValueError("'items' is not a list")
    for at, policy in scoped:
        if not isinstance(policy, dict):
            raise ValueError(f"{at}: a security policy that is not an object")
        yield Nested(policy if "kind" in policy else {**policy, "kind": "compute#securityPolicy"}, at)


_COMPUTE_PREFIXES = ("https://www.googleapis.com/compute/", "https://compute.googleapis.com/compute/")


def security_policy_asset(policy: dict[str, Any], origin: str) -> Asset:
    """The CAI asset for a Compute security policy: named from its selfLink
    (`//compute.googleapis.com/projects/P/global/securityPolicies/NAME`, or `regions/R` for a regional one)."""
    name = policy.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("security policy without a 'name'")
    link = policy.get("selfLink")
    if not isinstance(link, str):
        raise ValueError(f"security policy {name} has no 'selfLink': its project cannot be told")
    for prefix in _COMPUTE_PREFIXES:
        if link.startswith(prefix):
            path = link[len(prefix) :].split("/", 1)[-1]  # past the API version (v1, beta, alpha)
            break
    else:
        raise ValueError(f"security policy {name}: selfLink {link!r} is not a Compute API URL")
    parts = path.split("/")
    if len(parts) < 2 or parts[0] != "projects" or parts[-1] != name:
        raise ValueError(f"security policy {name}: selfLink {link!r} does not name projects/P/.../{name}")
    rules = policy.get("rules", policy.get("rule"))
    if rules is not None and not isinstance(rules, list):
        raise ValueError(f"security policy {name}: 'rules' is not a list")
    if rules and not all(isinstance(r, dict) for r in rules):
        raise ValueError(f"security policy {name}: a rule that is not an object")
    data = {k: v for k, v in policy.items() if k != "kind"}
    return Asset(
        name=f"//compute.googleapis.com/{path}",
        asset_type=SECURITY_POLICY,
        resource=msgspec.json.encode(data),
        ancestors=(f"projects/{parts[1]}",),
        update_time=policy.get("creationTimestamp") if isinstance(policy.get("creationTimestamp"), str) else None,
        origin=origin,
    )


def _is_k8s_list(obj: dict[str, Any]) -> bool:
    kind = obj.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and "items" in obj and "apiVersion" in obj


@reader("kubernetes-list", "a Kubernetes List (kubectl get -o yaml|json)", _is_k8s_list)
def _k8s_list(obj: dict[str, Any], cluster: str, where: str) -> Iterator[Item]:
    items = obj["items"]
    if not isinstance(items, list):
        raise ValueError("'items' of a Kubernetes List is not a list")
    for i, item in enumerate(items):
        yield Nested(item, f"{where}: item {i}")


def _is_k8s_object(obj: dict[str, Any]) -> bool:
    return obj.get("kind") in KINDS and "apiVersion" in obj


@reader("kubernetes-object", "Kubernetes RBAC, Namespace, ResourceQuota and NetworkPolicy objects", _is_k8s_object)
def _k8s_object(obj: dict[str, Any], cluster: str, where: str) -> Iterator[Item]:
    asset = object_asset(obj, cluster, origin=where)
    if asset is not None:
        yield asset
