"""Stage 6 in the daemon: after each cycle, plan; apply the `enforce` changes within the guards, on the leader only.

`run_remediation(result, settings, state_path)` is called by the daemon's cycle when `remediation.enabled` is true
(that switch is the operator's explicit approval for the daemon). It returns:
- `counts`: {(rule, kind, outcome): n} for `auditor_remediations_total` (applied, skipped, conflict, refused, failed);
- `plan`: the pending dry-run plan (rules in `dryrun` mode) as a dict, for `auditor_plan_changes` and /report;
- `html` / `markdown`: that plan rendered for the report;
- `apply`: what was applied this cycle (the apply report), `leader`: whether this replica may write.

The state of the few assets with planned changes is read again (see `remediations.planning.planned_assets`).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from auditor.logs import get_logger
from auditor.model import Mode
from auditor.scan import ScanResult
from remediations.apply import ApplyReport, Outcome, WriterFactory, apply_plan
from remediations.guards import GuardConfig, GuardRefused
from remediations.journal import Journal
from remediations.leader import Elector, FileLockElector, LeaseElector
from remediations.plan import Plan, build_plan
from remediations.planning import plan_notes, planned_assets
from remediations.render import render_html, render_markdown
from remediations.writers import writers

log = get_logger("remediation")
_electors: dict[tuple[str, ...], Elector] = {}
_electors_lock = threading.Lock()


DEFAULT_LEASE = "drift-auditor"
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _pod_namespace() -> str:
    ns = os.environ.get("POD_NAMESPACE")
    if ns:
        return ns
    try:
        return _SA_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def elector_for(settings: Any) -> Elector:
    """One elector per configuration for the life of the process (a lock file stays held, a Lease is renewed).

    The configured Lease or lock file; with neither, a Lease named `drift-auditor` in the pod's namespace when
    running in a cluster, else a lock file beside the state file (replicas sharing a state volume share it).
    """
    le = settings.remediation.leader_election
    if le.lease_name:
        key: tuple[str, ...] = ("lease", le.lease_namespace or _pod_namespace(), le.lease_name)
    elif le.lock_file:
        key = ("file", str(le.lock_file))
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        key = ("lease", _pod_namespace(), DEFAULT_LEASE)
    else:
        key = ("file", f"{settings.state_path}.remediation.lock")
    with _electors_lock:
        if key not in _electors:
            if key[0] == "lease":
                from remediations.kube_clients import kube_clients

                api = kube_clients()("in-cluster")
                elector = LeaseElector(api, key[2], key[1]).start()
                # On a clean exit (SIGTERM handled by the daemon) the Lease is handed over at once, not on expiry.
                atexit.register(elector.stop)
                _electors[key] = elector
            else:
                _electors[key] = FileLockElector(key[1])
        return _electors[key]


_credential_identity: list[str] | None = None


def stop_electors() -> None:
    """Give up leadership (release the Lease, unlock the file): for the daemon's shutdown."""
    with _electors_lock:
        for elector in _electors.values():
            elector.stop()
        _electors.clear()


def auditor_identities(settings: Any) -> list[str]:
    """Members the auditor runs as: AUDITOR_IDENTITY (comma-separated), and the service account of its credentials
    (looked up once per process)."""
    global _credential_identity
    out = [m.strip() for m in os.environ.get("AUDITOR_IDENTITY", "").split(",") if m.strip()]
    if _credential_identity is not None:
        return out + _credential_identity
    _credential_identity = []
    if not (settings.gcp_endpoint or os.environ.get("AUDITOR_GCP_ENDPOINT")):
        try:
            import google.auth

            creds, _ = google.auth.default()
            email = getattr(creds, "service_account_email", None)
            if email == "default":  # GKE metadata credentials name the account once refreshed
                from google.auth.transport.requests import Request

                creds.refresh(Request())
                email = getattr(creds, "service_account_email", None)
            if isinstance(email, str) and "@" in email:
                _credential_identity.append(f"serviceAccount:{email}")
        except Exception as exc:  # no credentials here: the writes will fail anyway, with their own reason
            log.debug("no_identity", error=str(exc))
    return out + _credential_identity


def _count(report: ApplyReport, plan: Plan) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    by_id = {c.id: c for c in plan.changes}
    for r in report.results:
        change = by_id.get(r.change_id or "")
        if change is None:
            continue
        refused = {x["edit"] for x in r.refused_edits}
        for e in change.edits:
            outcome = Outcome.refused.value if e.describe() in refused else r.outcome.value
            for rule in e.rules:
                counts[(rule, e.kind, outcome)] += 1
    return counts


def run_remediation(
    result: ScanResult,
    settings: Any,
    state_path: str | Path,
    *,
    writer_factory: WriterFactory | None = None,
    elector: Elector | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    rem = settings.remediation
    make = writer_factory or writers(gcp_endpoint=settings.gcp_endpoint)
    cfg = GuardConfig(
        auditor_identities=auditor_identities(settings),
        protected_principals=list(rem.protected_principals),
        max_changes_per_apply=rem.max_changes_per_apply,
        max_changes_per_cycle=rem.max_changes_per_cycle,
        plan_max_age_seconds=rem.plan_max_age_seconds,
        enforce_only=True,
        protected_roles=list(rem.protected_roles),
        protected_role_allowances=list(rem.allow_protected_roles_on),
        max_member_share=rem.max_member_share_per_apply,
    )
    assets = planned_assets(result, settings.sources, settings.sources_options(), make)
    # The pending plan's notes say what an operator's apply would refuse (so not "enforce-only").
    pending = build_plan(result.findings, result.rules, assets, modes=[Mode.dryrun.value], now=now,
                         sources=settings.sources, notes=plan_notes(replace(cfg, enforce_only=False)))
    enforce = build_plan(result.findings, result.rules, assets, modes=[Mode.enforce.value], now=now,
                         sources=settings.sources, notes=plan_notes(cfg))
    counts: Counter[tuple[str, str, str]] = Counter()
    out: dict[str, Any] = {"plan": pending.to_dict(), "html": render_html(pending, "Pending dry-run plan", True),
                           "markdown": render_markdown(pending, "Pending dry-run plan"), "apply": None,
                           "enforce_plan": enforce.id, "leader": None}
    if enforce.changes:
        leader = (elector or elector_for(settings)).is_leader()
        out["leader"] = leader
        if leader:
            cap = min(rem.max_changes_per_cycle, rem.max_changes_per_apply)
            with Journal(state_path, getattr(settings, "state_password_file", None)) as journal:
                try:
                    report = apply_plan(enforce, make, journal, cfg, approved=bool(rem.enabled), actor="daemon",
                                        cap=cap, now=now)
                    counts.update(_count(report, enforce))
                    out["apply"] = report.to_dict()
                    log.info("remediation_applied", apply_id=report.apply_id, plan=enforce.id, **report.counts())
                except GuardRefused as exc:
                    log.warning("remediation_refused", plan=enforce.id, guard=exc.guard, reason=exc.reason)
                    for c in enforce.changes:
                        for e in c.edits:
                            for rule in e.rules:
                                counts[(rule, e.kind, Outcome.refused.value)] += 1
                    out["apply"] = {"refused": str(exc)}
    out["counts"] = dict(counts)
    return out
