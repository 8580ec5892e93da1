"""Stage: evaluate (rule loading). Config Validator constraint files read as they are.

A YAML document with `apiVersion: constraints.gatekeeper.sh/...` and one of the supported kinds becomes one rule:
id `metadata.name`, the check of the kind (auditor.evaluate.checks.config_validator), params `spec.parameters`
unchanged, severity `spec.severity`, and match from `spec.match`:

- `ancestries` / `excludedAncestries` (and the older spellings `target` / `exclude`, at the top of `match` or under
  `match.gcp`) become our ancestry globs; the singular paths of old constraints (`organization/1/folder/2`) are
  read as `organizations/1/folders/2`. Without `ancestries` every asset is in scope: snapshots without CAI
  ancestors would otherwise match nothing.
- `assetType` of the kinds that have it narrows the rule's asset types.

Any other kind is refused by name with the list of supported kinds; so is a constraint without a name.
"""

from __future__ import annotations

import re
from typing import Any

from auditor.evaluate.checks.iam import HIERARCHY_TYPES
from auditor.evaluate.rulebook import register_converter
from auditor.model import SEVERITIES

KINDS: dict[str, str] = {
    "GCPIAMAllowedBindingsConstraintV3": "config_validator.allowed_bindings",
    "GCPIAMAllowBanRolesConstraintV1": "config_validator.allow_ban_roles",
    "GCPIAMAllowedPolicyMemberDomainsConstraintV2": "config_validator.member_domains",
    "GCPIAMRequiredBindingsConstraintV1": "config_validator.required_bindings",
    "GCPIAMAuditLogConstraintV1": "config_validator.audit_log",
}
_SEVERITY_ALIASES = {"warning": "medium", "warn": "medium", "error": "high"}
_SINGULAR = re.compile(r"(?<![A-Za-z])(organization|folder|project)(?=/)")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ancestry(path: Any, where: str) -> str:
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: expected ancestry path strings, got {path!r}")
    return _SINGULAR.sub(lambda m: m.group(1) + "s", path)


def _paths(match: dict[str, Any], *keys: str) -> list[str] | None:
    for scope in (match, _mapping(match.get("gcp"))):
        for k in keys:
            v = scope.get(k)
            if v is not None:
                if isinstance(v, str):
                    v = [v]
                if not isinstance(v, list):
                    raise ValueError(f"spec.match.{k}: expected a list of ancestry paths, got {v!r}")
                return [_ancestry(p, f"spec.match.{k}") for p in v]
    return None


def convert(doc: dict[str, Any], file: str, line: int) -> list[dict[str, Any]]:
    """The rule dict of one constraint document; ValueError says what is wrong (the loader adds file and line)."""
    kind = doc.get("kind")
    check = KINDS.get(str(kind))
    if check is None:
        raise ValueError(f"unsupported constraint kind {kind!r}; supported kinds: {', '.join(KINDS)}")
    meta = _mapping(doc.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} constraint has no metadata.name")
    spec = _mapping(doc.get("spec"))
    params = spec.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"{kind} {name}: spec.parameters must be a mapping")
    severity = str(spec.get("severity") or "medium").lower()
    severity = _SEVERITY_ALIASES.get(severity, severity)
    if severity not in SEVERITIES:
        raise ValueError(f"{kind} {name}: spec.severity {spec.get('severity')!r} is not one of {', '.join(SEVERITIES)}")
    match = _mapping(spec.get("match"))
    ancestries = _paths(match, "ancestries", "target") or ["**"]
    excluded = _paths(match, "excludedAncestries", "exclude") or []
    asset_types = ["*"]
    if check == "config_validator.audit_log":
        asset_types = list(HIERARCHY_TYPES)
    elif isinstance(params.get("assetType"), str):
        asset_types = [params["assetType"]]
    annotations = _mapping(meta.get("annotations"))
    description = str(annotations.get("description") or f"Config Validator constraint {kind} {name}.")
    return [
        {
            "id": name,
            "check": check,
            "severity": severity,
            "description": description,
            "rationale": str(annotations.get("rationale") or f"Constraint read as it is from {file}:{line}."),
            "match": {"asset_types": asset_types, "ancestries": ancestries, "excluded_ancestries": excluded},
            "params": params,
            "mode": "audit",
        }
    ]


register_converter("constraints.gatekeeper.sh/", convert)
