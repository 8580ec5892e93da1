"""Stage: evaluate. Checks across layers: Google Cloud IAM grants that decide what happens inside GKE clusters.

GKE authorizes a Kubernetes API request if either RBAC or IAM allows it. A project-level (or folder, or
organization) grant of roles/container.admin, roles/container.clusterAdmin or roles/container.developer therefore
gives its holder power inside every cluster of the project, whatever the clusters' RBAC says: these checks read
the IAM policies of the resource hierarchy and the `container.googleapis.com/Cluster` assets of the snapshot.

How a cluster is tied to a project: by its CAI ancestors when the snapshot has them, else by its name
(`//container.googleapis.com/[v1/]projects/P/{locations,zones}/L/clusters/C`, where P is a project id or number).
Project ids and numbers are reconciled with the Project assets' data (`projectId`, `projectNumber`); folders and
the organization are reached through the ancestors, or the parents recorded in Folder and Project data. A cluster
named by a project id whose Project asset is not in the snapshot is still tied to grants on `projects/<that id>`,
but not to grants on the project's number, nor to grants on its folders.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator

from pydantic import Field

from auditor.evaluate.checks.iam import (
    HIERARCHY_TYPES,
    PROJECT,
    MemberFilter,
    grants,
    hierarchy_index,
    member_violation,
    roles_prefilter,
)
from auditor.evaluate.gke_posture import clusters as gke_clusters
from auditor.evaluate.globs import any_match
from auditor.evaluate.policy import asset_bindings
from auditor.evaluate.registry import Context, Violation, check
from auditor.model import Asset
from auditor.vocabulary import GKE_CLUSTER

GKE_ROLES = ["roles/container.admin", "roles/container.clusterAdmin", "roles/container.developer"]
_CLUSTER_NAME = re.compile(
    r"^//container\.googleapis\.com/(?:v1[a-z0-9]*/)?(projects/[^/]+/(?:locations|zones)/[^/]+/clusters/[^/]+)$"
)


def _short(name: str) -> str:
    return name.split("googleapis.com/", 1)[-1]


def _project_aliases(ctx: Context) -> dict[str, str]:
    """`projects/<id>` and `projects/<number>` -> the project's short asset name (CAI names projects by number)."""

    def build() -> dict[str, str]:
        out: dict[str, str] = {}
        for p in ctx.assets(PROJECT):
            short = _short(p.name)
            out[short] = short
            data = p.resource
            for k in ("projectId", "projectNumber"):
                if data.get(k):
                    out[f"projects/{data[k]}"] = short
        return out

    result: dict[str, str] = ctx.memo("cross_layer.project_aliases", build)
    return result


def _clusters_by_scope(ctx: Context) -> dict[str, list[str]]:
    """Project, folder and organization short names -> the clusters under them (`projects/P/locations/L/clusters/C`)."""

    def build() -> dict[str, list[str]]:
        aliases = _project_aliases(ctx)
        _, parents = hierarchy_index(ctx)
        out: dict[str, set[str]] = defaultdict(set)
        for c in ctx.assets(GKE_CLUSTER):
            m = _CLUSTER_NAME.match(c.name)
            label = m.group(1) if m else _short(c.name)
            named_project = "/".join(label.split("/")[:2]) if label.startswith("projects/") else None
            chain: list[str] = list(c.ancestors)
            if not chain and named_project:
                project = aliases.get(named_project, named_project)
                chain = [project]
                while chain[-1] in parents and len(chain) < 32 and parents[chain[-1]] not in chain:
                    chain.append(parents[chain[-1]])
            keys = set(chain)
            if named_project:
                keys.add(named_project)
            for k in list(keys):
                if k.startswith("projects/"):
                    keys.add(aliases.get(k, k))
            for k in keys:
                out[k].add(label)
        return {k: sorted(v) for k, v in out.items()}

    result: dict[str, list[str]] = ctx.memo("cross_layer.clusters", build)
    return result


class GkeIamParams(MemberFilter):
    roles: list[str] = Field(default_factory=lambda: list(GKE_ROLES), description="IAM role globs that reach into GKE.")
    include_without_clusters: bool = Field(
        default=False, description="Also report grants where the snapshot has no cluster (they reach future ones)."
    )


def _grants_to(asset: Asset, params: MemberFilter, roles: list[str], member: str = "") -> bool:
    """Screen: whether the policy grants one of `roles` to a member (containing `member`) the rule judges."""
    return any(member in m and not params.skipped(m, b.role) for b, m in grants(asset, roles))


def _screen_gke_grants(asset: Asset, params: GkeIamParams, ctx: Context) -> bool:
    return _grants_to(asset, params, params.roles)


@check(
    "cross_layer.gke_iam_reaches_clusters",
    params=GkeIamParams,
    iam=True,
    asset_types=HIERARCHY_TYPES,
    context=[GKE_CLUSTER, *HIERARCHY_TYPES],
    screen=_screen_gke_grants,
    prefilter=roles_prefilter(lambda p: p.roles),
)
def gke_iam_reaches_clusters(asset: Asset, params: GkeIamParams, ctx: Context) -> Iterator[Violation]:
    """GKE roles granted on a project, folder or organization, with the clusters they reach.

    An IAM grant of a GKE role (roles/container.admin, clusterAdmin, developer) on a project, folder or
    organization: its holder has that power inside every cluster below, whatever the clusters' RBAC says. Each
    finding lists the clusters it reaches (details `clusters`, `cluster_count`) next to `role`, `member` and
    `condition`. Grant such roles per cluster through RBAC (or on a dedicated project) instead.

    ```yaml
    - id: gke-project-iam-reaches-clusters
      check: cross_layer.gke_iam_reaches_clusters
      severity: high
      params:
        roles: [roles/container.admin, roles/container.clusterAdmin, roles/container.developer]
        except_members: ["group:gke-platform-admins@example.com"]
    ```
    """
    scopes = _clusters_by_scope(ctx)
    keys = {_short(asset.name)}
    if asset.asset_type == PROJECT:
        aliases = _project_aliases(ctx)
        keys.add(aliases.get(_short(asset.name), _short(asset.name)))
        for k in ("projectId", "projectNumber"):
            if asset.resource.get(k):
                keys.add(f"projects/{asset.resource[k]}")
    clusters = sorted({c for k in keys for c in scopes.get(k, ())})
    if not clusters and not params.include_without_clusters:
        return
    level = asset.asset_type.rsplit("/", 1)[-1].lower()
    reach = ", ".join(clusters[:3]) + (f" and {len(clusters) - 3} more" if len(clusters) > 3 else "")
    for b, m in grants(asset, params.roles):
        if params.skipped(m, b.role):
            continue
        what = f"{len(clusters)} cluster(s): {reach}" if clusters else "every cluster created in it"
        yield member_violation(
            b,
            m,
            f"{m} holds {b.role} on the {level}, which gives it that power inside {what}",
            clusters=clusters,
            cluster_count=len(clusters),
            level=level,
        )


SERVICE_ACCOUNT = "iam.googleapis.com/ServiceAccount"
WORKLOAD_IDENTITY_ROLES = ["roles/iam.workloadIdentityUser", "roles/iam.serviceAccountTokenCreator"]


def _grants_by_member(ctx: Context) -> dict[str, list[tuple[str, str, str | None]]]:
    """Member (normalized) -> (short resource name, role, condition title) of every hierarchy-level grant."""

    def build() -> dict[str, list[tuple[str, str, str | None]]]:
        out: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
        policies, _ = hierarchy_index(ctx)
        for short, a in policies.items():
            for b in asset_bindings(a):
                for m in b.members:
                    out[m.lower()].append((short, b.role, b.condition_title if b.condition else None))
        return dict(out)

    result: dict[str, list[tuple[str, str, str | None]]] = ctx.memo("cross_layer.grants_by_member", build)
    return result


def _service_account_email(asset: Asset) -> str | None:
    email = asset.resource.get("email")
    if isinstance(email, str) and "@" in email:
        return email
    tail = asset.name.rsplit("/", 1)[-1]
    return tail if "@" in tail else None


class WorkloadIdentityParams(MemberFilter):
    roles: list[str] = Field(
        default_factory=lambda: ["roles/owner", "roles/editor", "roles/*admin", "roles/*Admin"],
        description="Role globs of the Google service account that make the mapping dangerous.",
    )
    binding_roles: list[str] = Field(
        default_factory=lambda: list(WORKLOAD_IDENTITY_ROLES),
        description="Roles on the service account that let a Kubernetes service account act as it.",
    )


def _screen_workload_identity(asset: Asset, params: WorkloadIdentityParams, ctx: Context) -> bool:
    if _service_account_email(asset) is None:
        return False
    return _grants_to(asset, params, params.binding_roles, ".svc.id.goog[")


@check(
    "cross_layer.workload_identity_privileges",
    params=WorkloadIdentityParams,
    iam=True,
    asset_types=[SERVICE_ACCOUNT],
    context=[*HIERARCHY_TYPES, GKE_CLUSTER],
    screen=_screen_workload_identity,
    prefilter=roles_prefilter(lambda p: p.binding_roles),
)
def workload_identity_privileges(asset: Asset, params: WorkloadIdentityParams, ctx: Context) -> Iterator[Violation]:
    """Kubernetes service accounts that can act as a Google service account holding admin-level roles.

    GKE Workload Identity maps a Kubernetes service account (`serviceAccount:PROJECT.svc.id.goog[NS/KSA]`) to a
    Google service account through roles/iam.workloadIdentityUser on the latter: every pod running as that KSA
    in that namespace gets the Google account's roles. Reported on the Google service account, once per mapped
    member, when the account holds a role matching `roles` on a project, folder or organization of the snapshot
    (details `role` and `member` of the mapping, `condition`, and `grants`: the account's matching roles).
    The finding says whether a cluster of the snapshot has Workload Identity on for the member's pool
    (`PROJECT.svc.id.goog`; details `workload_identity_clusters`): if none has, the mapping is dormant, and takes
    effect the day one does.

    ```yaml
    - id: gke-workload-identity-to-admin-accounts
      check: cross_layer.workload_identity_privileges
      severity: high
      params: {roles: [roles/owner, roles/editor, "roles/*admin", "roles/*Admin"]}
    ```
    """
    email = _service_account_email(asset)
    if email is None:
        return
    powers = [
        (where, role, cond)
        for where, role, cond in _grants_by_member(ctx).get(f"serviceaccount:{email.lower()}", ())
        if any_match(params.roles, role) and not params.skipped(f"serviceAccount:{email}", role)
    ]
    if not powers:
        return
    held = sorted({f"{role} on {where}" + (f" (condition: {cond})" if cond else "") for where, role, cond in powers})
    for b, m in grants(asset, params.binding_roles):
        if ".svc.id.goog[" not in m or params.skipped(m, b.role):
            continue
        pool = m.split(":", 1)[-1].split("[", 1)[0]
        on = _workload_identity_clusters(ctx).get(pool, [])
        more = f" and {len(on) - 3} more" if len(on) > 3 else ""
        where = (
            f"Workload Identity is on for {pool} in {', '.join(on[:3])}{more}"
            if on
            else f"no cluster of the snapshot has Workload Identity on for {pool}: dormant until one has"
        )
        yield member_violation(
            b,
            m,
            f"Kubernetes service account {m.split(':', 1)[-1]} acts as {email}, which holds {', '.join(held[:3])}"
            + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            + f" ({where})",
            service_account=email,
            grants=held,
            workload_identity_clusters=on,
        )


def _workload_identity_clusters(ctx: Context) -> dict[str, list[str]]:
    """Workload pool (`PROJECT.svc.id.goog`) -> the snapshot's clusters that have Workload Identity on with it."""

    def build() -> dict[str, list[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for p in gke_clusters(ctx).values():
            if p.workload_pool:
                out[p.workload_pool].add(p.key)
        return {k: sorted(v) for k, v in out.items()}

    result: dict[str, list[str]] = ctx.memo("cross_layer.workload_identity_clusters", build)
    return result
