"""A BigQuery dataset's access list as IAM bindings, and a new list from edited bindings.

CAI shows a dataset's access as an IAM policy (`roles/bigquery.dataOwner` for OWNER, `user:` for `userByEmail`,
`projectOwner:P` for the special group `projectOwners`...); the BigQuery API keeps it as `access` entries. Entries
that are no member (authorized views, routines, datasets) are never touched; an entry is removed only when its
(role, member, condition) left the bindings, and a binding's new member becomes a new entry.
"""

from __future__ import annotations

import copy
import json
from typing import Any

BASIC_ROLES = {"OWNER": "roles/bigquery.dataOwner", "WRITER": "roles/bigquery.dataEditor",
               "READER": "roles/bigquery.dataViewer"}
_SPECIAL = {"projectOwners": "projectOwner", "projectWriters": "projectEditor", "projectReaders": "projectViewer"}
_SPECIAL_BACK = {v: k for k, v in _SPECIAL.items()}


def role_of(entry: dict[str, Any]) -> str:
    role = str(entry.get("role") or "")
    return BASIC_ROLES.get(role, role)


def member_of(entry: dict[str, Any], project: str) -> str | None:
    """The IAM member an access entry grants to; None for entries that are no member (views, routines...)."""
    if entry.get("userByEmail"):
        email = str(entry["userByEmail"])
        kind = "serviceAccount" if email.endswith("gserviceaccount.com") else "user"
        return f"{kind}:{email}"
    if entry.get("groupByEmail"):
        return f"group:{entry['groupByEmail']}"
    if entry.get("domain"):
        return f"domain:{entry['domain']}"
    if entry.get("iamMember"):
        return str(entry["iamMember"])
    special = entry.get("specialGroup")
    if special == "allAuthenticatedUsers":
        return "allAuthenticatedUsers"
    if special in _SPECIAL:
        return f"{_SPECIAL[special]}:{project}"
    return None


def entry_for(role: str, member: str, condition: dict[str, Any] | None) -> dict[str, Any]:
    """The access entry that grants `role` to `member`."""
    entry: dict[str, Any] = {"role": role}
    kind, _, value = member.partition(":")
    if kind in ("user", "serviceAccount"):
        entry["userByEmail"] = value
    elif kind == "group":
        entry["groupByEmail"] = value
    elif kind == "domain":
        entry["domain"] = value
    elif kind in _SPECIAL_BACK:
        entry["specialGroup"] = _SPECIAL_BACK[kind]
    elif member == "allAuthenticatedUsers":
        entry["specialGroup"] = "allAuthenticatedUsers"
    else:
        entry["iamMember"] = member
    if condition:
        entry["condition"] = condition
    return entry


def _cond_key(cond: Any) -> str:
    return json.dumps(cond or {}, sort_keys=True)


def grants(access: list[dict[str, Any]], project: str) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(role, member, condition key, condition) of every member entry."""
    out = []
    for entry in access:
        member = member_of(entry, project)
        if member is not None:
            cond = entry.get("condition") or None
            out.append((role_of(entry), member, _cond_key(cond), cond))
    return out


def policy_from_access(dataset: dict[str, Any]) -> dict[str, Any]:
    """The dataset as the IAM family's state: bindings (version 3), the etag, and the access list as read."""
    project = str((dataset.get("datasetReference") or {}).get("projectId") or "")
    access = list(dataset.get("access") or [])
    bindings: dict[tuple[str, str], dict[str, Any]] = {}
    for role, member, key, cond in grants(access, project):
        b = bindings.setdefault((role, key), {"role": role, "members": []})
        if cond:
            b["condition"] = cond
        if member not in b["members"]:
            b["members"].append(member)
    return {"version": 3, "etag": dataset.get("etag"), "bindings": list(bindings.values()), "access": access,
            "project": project}


def access_from_policy(state: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The access list that grants what `new`'s bindings grant, keeping every other entry of `state` as it was."""
    project = str(state.get("project") or "")
    want = {(b.get("role"), m, _cond_key(b.get("condition"))): b.get("condition")
            for b in new.get("bindings") or () for m in b.get("members") or ()}
    out: list[dict[str, Any]] = []
    have: set[tuple[Any, str, str]] = set()
    for entry in state.get("access") or ():
        member = member_of(entry, project)
        if member is None:
            out.append(copy.deepcopy(entry))
            continue
        key = (role_of(entry), member, _cond_key(entry.get("condition") or None))
        if key in want:
            out.append(copy.deepcopy(entry))
            have.add(key)
    for key, cond in want.items():
        if key not in have:
            out.append(entry_for(str(key[0]), key[1], cond))
    return out
