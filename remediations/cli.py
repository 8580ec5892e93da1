"""`auditor plan`, `auditor apply`, `auditor rollback`: reviewable fixes, applied only on explicit approval.

Exit status of apply and rollback: 0 every change applied (or already in place); 1 some change conflicted, was
refused by a guard or failed (the summary says which); 2 invalid input, or the whole apply refused by a guard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.cli.options import rules_option, source_options
from auditor.cli.scan import do_scan
from auditor.collect import SourceOptions
from auditor.errors import AuditorError
from auditor.report.escape import plain
from auditor.state import is_url
from remediations.apply import ApplyReport, apply_plan, rollback
from remediations.guards import GuardConfig
from remediations.journal import Journal
from remediations.plan import load_plan
from remediations.planning import plan_from_scan
from remediations.render import render_html, render_markdown
from remediations.writers import writers

DEFAULT_STATE = "drift-auditor.db"


def _guard_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option(
        "--protect", "protected", multiple=True, envvar="AUDITOR_PROTECTED_PRINCIPALS", metavar="GLOB",
        help="Member or subject glob never removed (break-glass accounts); repeatable.",
    )(fn)
    fn = click.option(
        "--auditor-identity", "identities", multiple=True, envvar="AUDITOR_IDENTITY", metavar="MEMBER",
        help="The auditor's own identity (e.g. serviceAccount:auditor@p.iam.gserviceaccount.com); never removed.",
    )(fn)
    return fn


def _config_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--config", "-c", "config", type=click.Path(dir_okay=False), default=None,
        help="The daemon's configuration: its state file, remediation guards and Google endpoint are the defaults.",
    )(fn)


class _Defaults:
    """What --config gives (the daemon's settings); the command's own options win."""

    def __init__(self, config: str | None) -> None:
        self.state_path = DEFAULT_STATE
        self.protected: list[str] = []
        self.max_changes = 50
        self.max_age = 3600
        self.gcp_endpoint: str | None = None
        self.blast: dict[str, Any] = {}  # protected roles, their allowances, the member-share cap: guard defaults
        if config is not None:
            from auditor.settings import load_settings

            s = load_settings(config)
            self.state_path = s.state_target
            self.protected = list(s.remediation.protected_principals)
            self.max_changes = s.remediation.max_changes_per_apply
            self.max_age = s.remediation.plan_max_age_seconds
            self.gcp_endpoint = s.gcp_endpoint
            self.blast = {"protected_roles": list(s.remediation.protected_roles),
                          "protected_role_allowances": list(s.remediation.allow_protected_roles_on),
                          "max_member_share": s.remediation.max_member_share_per_apply}


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for x in values for v in x.split(",") if v.strip()]


def _kube_contexts(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        cluster, sep, context = v.partition("=")
        if not sep or not cluster or not context:
            raise AuditorError(f"--kube-context expects CLUSTER=CONTEXT, got {v!r}")
        out[cluster] = context
    return out


def _kube_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--kube-context", "kube_contexts", multiple=True, metavar="CLUSTER=CONTEXT",
        help="kubeconfig context for a cluster (its full name or last segment). Default: in-cluster, else the "
        "current context.",
    )(fn)


@click.command("plan")
@source_options
@rules_option
@_guard_options
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The plan file (JSON).")
@click.option("--report", type=click.Path(dir_okay=False), help="Also write the review report: .md or .html.")
@_kube_option
def plan_command(
    sources: tuple[str, ...],
    cluster: str,
    strict: bool,
    require_complete: bool,
    rules_paths: tuple[str, ...],
    protected: tuple[str, ...],
    identities: tuple[str, ...],
    output: str,
    report: str | None,
    kube_contexts: tuple[str, ...],
) -> None:
    """Plan the fixes for the findings of rules in dryrun or enforce mode that name a remediation.

    The resources with planned changes are read again: from their own APIs when a source is live (cai://, k8s://),
    so the plan carries their current tokens; by a second pass over the files otherwise (offline).
    """
    if report and not report.endswith((".md", ".markdown", ".html", ".htm")):
        raise AuditorError(f"--report {report}: the report is Markdown (.md) or HTML (.html)")
    result = do_scan(sources, rules_paths, cluster, strict, require_complete)
    cfg = GuardConfig(auditor_identities=_split(identities), protected_principals=_split(protected))
    plan = plan_from_scan(result, sources, SourceOptions(cluster=cluster, strict=strict), guard_config=cfg,
                          live=writers(kube_contexts=_kube_contexts(kube_contexts)))
    plan.write(output)
    if report:
        text = render_html(plan) if report.endswith((".html", ".htm")) else render_markdown(plan)
        Path(report).write_text(text, encoding="utf-8")
    s = plan.summary()
    click.echo(
        f"plan {plan.id}: {s['edits']} change(s) on {s['resources']} resource(s), {s['members']} member(s), "
        f"{s['rules']} rule(s); {s['manual_steps']} step(s) for an operator (planned only, never applied); "
        f"{s['skipped_findings']} finding(s) not planned -> {output}",
        err=True,
    )
    if not result.complete:
        click.echo("warning: the snapshot is partial; the plan covers what was read", err=True)


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise AuditorError("refusing to write without confirmation: no terminal to ask on; pass --yes to approve")
    return click.confirm(question, default=False)


def _finish(report: ApplyReport, as_json: bool) -> None:
    """Print what an apply or a rollback did; exit 1 unless every change went through."""
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    if not report.ok:
        sys.exit(1)


def _print_report(report: ApplyReport) -> None:
    console = Console(stderr=False, emoji=False, highlight=False)
    if console.is_terminal and report.results:
        table = Table(show_edge=False)
        for col in ("outcome", "resource", "changes", "reason"):
            table.add_column(col, overflow="fold")
        for r in report.results:
            table.add_row(r.outcome.value, Text(plain(r.resource)), Text(plain("; ".join(r.edits))),
                          Text(plain(r.reason)))
        console.print(table)
    else:  # one line per resource: readable in logs and by grep
        for r in report.results:
            reason = f" ({r.reason})" if r.reason else ""
            click.echo(f"{r.outcome.value:9} {r.resource}: {'; '.join(r.edits)}{reason}")
    click.echo(report.summary_line())


@click.command("apply")
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Approve without asking (required without a terminal).")
@click.option("--max-changes", type=click.IntRange(min=0), default=None,
              help="Refuse a plan with more changes than this (default 50, or remediation.max_changes_per_apply).")
@click.option("--max-age", type=click.IntRange(min=1), default=None,
              help="Refuse a plan older than this many seconds (default 3600, or remediation.plan_max_age_seconds).")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None, envvar="AUDITOR_STATE_PATH",
              help=f"The SQLite state file that holds the journal (default {DEFAULT_STATE}, or the config's).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome of each change as JSON.")
@_config_option
@_guard_options
@_kube_option
def apply_command(
    plan_file: str,
    yes: bool,
    max_changes: int | None,
    max_age: int | None,
    state_path: str | None,
    as_json: bool,
    config: str | None,
    protected: tuple[str, ...],
    identities: tuple[str, ...],
    kube_contexts: tuple[str, ...],
) -> None:
    """Apply a plan: each resource re-read, token-checked, guarded, written, verified and journaled."""
    plan = load_plan(plan_file)
    s = plan.summary()
    if not yes:
        click.echo(render_markdown(plan))
    approved = bool(plan.changes) and _confirm(
        f"apply plan {plan.id}: {s['edits']} change(s) on {s['resources']} resource(s)?", yes
    )
    if not plan.changes:
        click.echo(f"plan {plan.id} has no changes; nothing to do")
        return
    if not approved:
        click.echo("not applied")
        sys.exit(1)
    d = _Defaults(config)
    cfg = GuardConfig(auditor_identities=_split(identities), protected_principals=d.protected + _split(protected),
                      plan_max_age_seconds=max_age if max_age is not None else d.max_age, **d.blast)
    with Journal(state_path or d.state_path) as journal:
        report = apply_plan(plan, writers(d.gcp_endpoint, _kube_contexts(kube_contexts)), journal, cfg,
                            approved=approved, actor="operator",
                            cap=max_changes if max_changes is not None else d.max_changes)
    _finish(report, as_json)


@click.command("rollback")
@click.argument("apply_id", required=False)
@click.option("--yes", "-y", is_flag=True, help="Approve without asking (required without a terminal).")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None, envvar="AUDITOR_STATE_PATH",
              help=f"The SQLite state file that holds the journal (default {DEFAULT_STATE}, or the config's).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome of each change as JSON.")
@_config_option
@_guard_options
@_kube_option
def rollback_command(
    apply_id: str | None,
    yes: bool,
    state_path: str | None,
    as_json: bool,
    config: str | None,
    protected: tuple[str, ...],
    identities: tuple[str, ...],
    kube_contexts: tuple[str, ...],
) -> None:
    """Restore what an apply changed (without APPLY_ID: list the recent applies)."""
    d = _Defaults(config)
    state_path = state_path or d.state_path
    if not is_url(state_path) and not Path(state_path).exists():
        raise AuditorError(f"{state_path}: no state file (pass --state)")
    with Journal(state_path) as journal:
        if apply_id is None:
            for a in journal.applies():
                counts = (a.get("summary") or {}).get("counts") or {}
                done = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                extra = f" of {a['rollback_of']}" if a["rollback_of"] else ""
                click.echo(f"{a['apply_id']}  {a['action']}{extra}  plan {a['plan_id']}  {a['actor']}  "
                           f"{a['started_at']}  {done or 'unfinished'}")
            return
        info = journal.apply_info(apply_id)
        if info is None:
            raise AuditorError(f"no apply with id {apply_id} in {state_path} (`auditor rollback` lists them)")
        entries = [e for e in journal.entries(apply_id) if e.outcome == "applied" or e.after is not None]
        if not yes:
            for e in entries:
                click.echo(f"restore {e.resource} to its state before {apply_id}")
        approved = _confirm(f"roll back {len(entries)} resource(s) changed by {apply_id}?", yes)
        if not approved:
            click.echo("not rolled back")
            sys.exit(1)
        cfg = GuardConfig(auditor_identities=_split(identities), protected_principals=d.protected + _split(protected),
                          **d.blast)
        report = rollback(apply_id, writers(d.gcp_endpoint, _kube_contexts(kube_contexts)), journal, cfg,
                          approved=approved)
    _finish(report, as_json)


commands = [plan_command, apply_command, rollback_command]
