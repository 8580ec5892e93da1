"""`auditor permissions`: the least-privilege Google Cloud custom role, built from the code's own declarations.

Stage: deploy. Every collector (stage 1, collect) and every applier (stage 6, apply) declares the IAM permissions
it calls with `auditor.permissions.declare(...)` at import time; this command imports them all and prints one
custom role: YAML for `gcloud iam roles create --organization=ORG --file=FILE`, Terraform for
`google_organization_iam_custom_role`, or JSON for scripts. `--remediation` adds what the appliers write with.
`--config FILE` narrows the role to what that daemon configuration uses: the collectors of its sources (none for
files, nor for `k8s://in-cluster`, which Kubernetes RBAC authorizes), the CAI export route only when a source
asks for it, and the appliers only when `remediation.enabled` is set; and it adds what the outbound sinks it
enables write with (Pub/Sub notifications, Security Command Center), which the role without `--config` leaves out.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import yaml

from auditor import __version__, plugins
from auditor.errors import AuditorError
from auditor.permissions import Declaration, declarations

# Packages whose modules may declare permissions: every module in them is imported, so a new collector or
# writer is picked up without a change here. Plugins add theirs (the remediations) to `plugins.permission_packages`.
DECLARING_PACKAGES = ("auditor.collect", "auditor.sinks")
# Outbound sinks: in the role only for a configuration that enables them (component -> is it enabled?).
SINK_COMPONENTS: dict[str, Callable[[Any], bool]] = {
    "sinks.notify.pubsub": lambda s: bool(s.notifications.pubsub),
    "sinks.scc": lambda s: bool(s.scc.enabled),
}
# The live collectors, which serve the source schemes a configuration names.
DECLARING_MODULES = ("auditor.collect.asset_inventory", "auditor.collect.kubernetes_api")

DEFAULT_ROLE_ID = "driftAuditor"
DEFAULT_REMEDIATION_ROLE_ID = "driftAuditorRemediation"
_ROLE_ID = re.compile(r"^[A-Za-z0-9_.]{3,64}$")
# A Google Cloud IAM permission: service.resource.verb (the resource part may hold dots, e.g. cloudasset.assets.x).
_PERMISSION = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[a-zA-Z][a-zA-Z0-9]*){2,}$")


def load_declarations() -> list[Declaration]:
    """Import every module of the declaring packages (their `declare()` calls run), then return all declarations."""
    for pkg_name in (*DECLARING_PACKAGES, *plugins.permission_packages.items().values()):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            importlib.import_module(info.name)
    return declarations()


def _scheme_modules() -> dict[str, str]:
    """Source scheme (`cai`, `k8s`) -> the collector module that serves it (each defines `SCHEME`)."""
    out: dict[str, str] = {}
    for name in DECLARING_MODULES:
        mod = sys.modules.get(name)
        scheme = getattr(mod, "SCHEME", None)
        if isinstance(scheme, str):
            out[scheme] = name
    return out


def for_sources(decls: Iterable[Declaration], sources: Iterable[str]) -> list[Declaration]:
    """The declarations a daemon reading `sources` needs (remediation ones are kept; `role_permissions` filters)."""
    decls = list(decls)
    schemes = _scheme_modules()
    wanted: set[tuple[str, bool]] = set()  # (collector module, export route used)
    for source in sources:
        if "://" not in source:
            continue  # files: no API
        parts = urlsplit(source)
        if parts.scheme == "k8s" and parts.netloc == "in-cluster":
            continue  # the pod's own service account token, authorized by the Kubernetes RBAC in deploy/kubernetes
        module = schemes.get(parts.scheme)
        if module is None:
            raise AuditorError(f"source {source!r}: no installed collector declares permissions for {parts.scheme}://")
        wanted.add((module, "export" in parse_qs(parts.query)))
    keep: list[Declaration] = []
    for d in decls:
        if d.remediation:
            keep.append(d)
            continue
        # The export route's permissions (component named *export*) only for a source that asks for an export.
        is_export = "export" in d.component.rsplit(".", 1)[-1]
        if any(d.module == m and (export or not is_export) for m, export in wanted):
            keep.append(d)
    return keep


def for_sinks(decls: Iterable[Declaration], settings: Any | None) -> list[Declaration]:
    """The outbound sinks' declarations that a configuration enables (none without a configuration)."""
    return [d for d in decls if d.component in SINK_COMPONENTS and settings is not None
            and SINK_COMPONENTS[d.component](settings)]


def role_permissions(decls: Iterable[Declaration], *, remediation: bool) -> dict[str, list[Declaration]]:
    """Permission -> the declarations that need it (read ones always, write ones with `remediation`)."""
    out: dict[str, list[Declaration]] = {}
    for d in decls:
        if (d.remediation and not remediation) or d.operator:
            continue
        for p in d.permissions:
            if not _PERMISSION.match(p):
                raise AuditorError(
                    f"{d.component} ({d.module}): {p!r} is not an IAM permission (service.resource.verb)"
                )
            out.setdefault(p, []).append(d)
    return dict(sorted(out.items()))


def operator_permissions(decls: Iterable[Declaration]) -> dict[str, list[Declaration]]:
    """Permission -> the declarations of the planned-only steps that need it: a person running them holds these
    (those the role lacks are listed beside the remediation role, never added to it)."""
    out: dict[str, list[Declaration]] = {}
    for d in decls:
        if d.operator:
            for p in d.permissions:
                out.setdefault(p, []).append(d)
    return dict(sorted(out.items()))


def _operator_comment(operator: dict[str, list[Declaration]], prefix: str) -> list[str]:
    if not operator:
        return []
    lines = [f"{prefix} Not in this role: what a person running the plan's planned-only steps needs:"]
    lines += [f"{prefix}   {p}  ({', '.join(d.component for d in ds)})" for p, ds in operator.items()]
    return lines


def _title(remediation: bool) -> str:
    return "drift-auditor (audit and remediation)" if remediation else "drift-auditor (read-only audit)"


def _description(remediation: bool) -> str:
    what = "collectors read and its appliers write" if remediation else "collectors read"
    return f"Least privilege for drift-auditor {__version__}: what its {what}. Generated by `auditor permissions`."


def render_gcloud(perms: dict[str, list[Declaration]], *, remediation: bool, role_id: str,
                  operator: dict[str, list[Declaration]] | None = None) -> str:
    """The role file for `gcloud iam roles create ROLE_ID --organization=ORG --file=FILE` (YAML with comments)."""
    usage = [
        f"# gcloud iam roles create {role_id} --organization=ORG_ID --file=THIS_FILE",
        f"# (an existing role: gcloud iam roles update {role_id} --organization=ORG_ID --file=THIS_FILE)",
    ]
    head = yaml.safe_dump(
        {"title": _title(remediation), "description": _description(remediation), "stage": "GA"},
        sort_keys=False,
        width=1000,
    )
    lines = [*usage, head.rstrip("\n"), "includedPermissions:"]
    for perm, decls in perms.items():
        lines.append(f"- {perm}  # {', '.join(d.component for d in decls)}")
    lines += _operator_comment(operator or {}, "#")
    return "\n".join(lines) + "\n"


def render_terraform(perms: dict[str, list[Declaration]], *, remediation: bool, role_id: str,
                     operator: dict[str, list[Declaration]] | None = None) -> str:
    """A `google_organization_iam_custom_role` resource (the organization ID comes from `var.org_id`)."""
    name = re.sub(r"[^a-z0-9_]", "_", re.sub(r"(?<!^)(?=[A-Z])", "_", role_id).lower())
    body = [
        f'resource "google_organization_iam_custom_role" "{name}" {{',
        "  org_id      = var.org_id",
        f"  role_id     = {json.dumps(role_id)}",
        f"  title       = {json.dumps(_title(remediation))}",
        f"  description = {json.dumps(_description(remediation))}",
        '  stage       = "GA"',
        "  permissions = [",
    ]
    for perm, decls in perms.items():
        body.append(f"    {json.dumps(perm)}, # {', '.join(d.component for d in decls)}")
    body += ["  ]", "}", *_operator_comment(operator or {}, "#")]
    return "\n".join(body) + "\n"


def render_json(perms: dict[str, list[Declaration]], *, remediation: bool, role_id: str,
                operator: dict[str, list[Declaration]] | None = None) -> str:
    doc = {
        "role_id": role_id,
        "title": _title(remediation),
        "description": _description(remediation),
        "stage": "GA",
        "includedPermissions": list(perms),
        "components": [
            {
                "component": d.component,
                "module": d.module,
                "remediation": d.remediation,
                "why": d.why,
                "permissions": list(d.permissions),
            }
            for d in sorted({id(d): d for ds in perms.values() for d in ds}.values(), key=lambda d: d.component)
        ],
        # Not in the role: what a person running the plan's planned-only steps needs.
        "operatorPermissions": list(operator or {}),
    }
    return json.dumps(doc, indent=2) + "\n"


@click.command("permissions")
@click.option("--remediation", is_flag=True, help="Include the permissions the appliers write with (and list, apart "
              "from the role, what a person running the plan's planned-only steps needs).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["gcloud", "terraform", "json"]),
    default="gcloud",
    show_default=True,
    help="gcloud: YAML for `gcloud iam roles create --file`; terraform: google_organization_iam_custom_role.",
)
@click.option(
    "--role-id",
    default=None,
    help=f"Custom role ID (default {DEFAULT_ROLE_ID}, or {DEFAULT_REMEDIATION_ROLE_ID} with --remediation).",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Only what this daemon configuration uses (its sources; remediation when enabled there).",
)
def command(remediation: bool, fmt: str, role_id: str | None, config_path: str | None) -> None:
    """Print the least-privilege custom role for the auditor's Google service account.

    \b
    auditor permissions > role.yaml
    gcloud iam roles create driftAuditor --organization=ORG_ID --file=role.yaml
    auditor permissions --config deploy/kubernetes/app/config.yaml   # just what that deployment reads
    auditor permissions --remediation --format terraform > role.tf
    """
    decls = load_declarations()
    sinks = [d for d in decls if d.component.startswith("sinks.")]
    decls = [d for d in decls if d not in sinks]
    if config_path is not None:
        from auditor.settings import load_settings

        settings = load_settings(config_path)
        remediation = remediation or settings.remediation.enabled
        decls = for_sources(decls, settings.sources) + for_sinks(sinks, settings)
    role_id = role_id or (DEFAULT_REMEDIATION_ROLE_ID if remediation else DEFAULT_ROLE_ID)
    if not _ROLE_ID.match(role_id):
        raise AuditorError(
            f"--role-id {role_id!r}: a custom role ID is 3 to 64 letters, digits, underscores and periods"
        )
    perms = role_permissions(decls, remediation=remediation)
    if not perms:
        if config_path is not None:
            raise AuditorError(f"{config_path}: its sources call no Google Cloud API, so no role is needed")
        raise AuditorError(
            "no Google Cloud permissions are declared: the live collectors (auditor.collect.asset_inventory) "
            "and the remediation appliers are not installed"
        )
    operator = {p: ds for p, ds in operator_permissions(decls).items() if p not in perms} if remediation else {}
    if fmt == "gcloud":
        text = render_gcloud(perms, remediation=remediation, role_id=role_id, operator=operator)
    elif fmt == "terraform":
        text = render_terraform(perms, remediation=remediation, role_id=role_id, operator=operator)
    else:
        text = render_json(perms, remediation=remediation, role_id=role_id, operator=operator)
    sys.stdout.write(text)
