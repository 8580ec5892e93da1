"""`auditor scc sync` and `auditor notify`: the outbound sinks by hand (the daemon runs them after each cycle)."""

from __future__ import annotations

import json
import sys

import click

from auditor.cli.state import open_store
from auditor.errors import AuditorError
from auditor.sinks.ledger import Ledger


@click.group("scc")
def scc() -> None:
    """Security Command Center."""


@scc.command("sync")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="The daemon's configuration (state_path, scc).")
@click.option("--state", type=click.Path(dir_okay=False), help="The state file (SQLite).")
@click.option("--source", "source", help="organizations/ORG_ID/sources/SOURCE_ID (default: scc.source).")
@click.option("--external-uri", help="Link for each finding, {id} replaced by its id (default: scc.external_uri).")
@click.option("--dry-run", is_flag=True, help="Count what would be written; write nothing.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def sync(config: str | None, state: str | None, source: str | None, external_uri: str | None, dry_run: bool,
         fmt: str) -> None:
    """Write the state store's findings to SCC: open ones ACTIVE, resolved or exempted ones INACTIVE, only what
    changed since the last sync. Exit 0 when everything was written, 1 when a write failed (retried next time)."""
    from auditor.collect.gcp_clients import security_center_client
    from auditor.collect.retry import RetryPolicy
    from auditor.sinks.scc import SccSync

    endpoint = None
    attempts = 5
    if config is not None:
        from auditor.settings import load_settings

        s = load_settings(config)
        source = source or s.scc.source
        external_uri = external_uri or s.scc.external_uri
        endpoint = s.gcp_endpoint
        attempts = s.scc.retry_attempts
    if not source:
        raise AuditorError("no SCC source: give --source organizations/ORG_ID/sources/SOURCE_ID or set scc.source")
    with open_store(state, config) as store, Ledger(store) as ledger:
        try:
            syncer = SccSync(security_center_client(endpoint), source, ledger, external_uri,
                             RetryPolicy(attempts=attempts))
        except ValueError as exc:
            raise AuditorError(str(exc)) from None
        result = syncer.sync(dry_run=dry_run)
        if not dry_run:
            for outcome in ("created", "updated", "state_changed", "failed"):
                if getattr(result, outcome):
                    store.bump("scc_writes_total", {"outcome": outcome}, getattr(result, outcome))
    if fmt == "json":
        click.echo(json.dumps({"source": source, "dry_run": dry_run, **result.to_dict()}, indent=2))
    else:
        verb = "would write" if dry_run else "wrote"
        click.echo(f"{source}: {verb} {result.created} new, {result.updated} updated, {result.state_changed} state "
                   f"change(s); {result.unchanged} unchanged; {result.failed} failed")
        for err in result.errors[:20]:
            click.echo(f"error: {err}", err=True)
    if result.failed:
        sys.exit(1)


@click.group("notify")
def notify() -> None:
    """Drift notifications (CloudEvents to webhooks and Pub/Sub)."""


@notify.command("flush")
@click.option("--config", "-c", type=click.Path(dir_okay=False), required=True, help="The daemon's configuration.")
def flush(config: str) -> None:
    """Deliver what waits in the notification queues now. Exit 1 when a sink is still failing."""
    from auditor.settings import load_settings
    from auditor.sinks.notify import Notifier, build_sinks

    s = load_settings(config)
    if not s.notifications.enabled:
        raise AuditorError(f"{config}: no notification sinks configured (notifications.webhooks / .pubsub)")
    with open_store(None, config) as store:
        notifier = Notifier(s.notifications, build_sinks(s.notifications, s.gcp_endpoint),
                            lambda sink, outcome, n: store.bump("notifications_total",
                                                                {"sink": sink, "outcome": outcome}, n))
        result = notifier.flush()
    for name in result.queued:
        err = result.errors.get(name)
        click.echo(f"{name}: {result.delivered.get(name, 0)} delivered, {result.queued[name]} queued"
                   + (f"; failing: {err}" if err else ""))
    if result.errors:
        sys.exit(1)


commands = [scc, notify]
