"""Stage 6, plan: the API object an asset is, as the family that writes it names it.

CAI names assets by their full resource name; the writers write through the resource's own API, so each family
turns an asset name into the identifiers that API takes (`Remediator.target_for`). Pure: no client library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class UnsupportedTarget(ValueError):
    """The asset cannot be written by any family (the reason says why)."""


@dataclass(frozen=True)
class Target:
    """The object a writer reads and writes.

    api: the API (`resourcemanager`, `iam_admin`, `storage`, `pubsub`, `bigquery`, ..., `compute`, `kubernetes`).
    `resource` is the name that API takes: `projects/123`, `projects/p/topics/t`, `projects/_/buckets/b`,
    `projects/p/global/securityPolicies/n`, or `<cluster>/<Kind>/<namespace>/<name>` for Kubernetes objects.
    """

    family: str
    api: str
    resource: str
    project: str | None = None
    policy: str | None = None
    cluster: str | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        return cls(**d)


def target_for(asset_name: str, asset_type: str, family: str) -> Target:
    """The API object for an asset; UnsupportedTarget names what cannot be written and why."""
    from remediations.families import family as get_family

    return get_family(family).target_for(asset_name, asset_type)
