"""`auditor feeds ensure`: the Cloud Asset Inventory feeds that publish the changes the rules read to Pub/Sub."""

from __future__ import annotations

import json

import click

from auditor.cli.options import rules_option
from auditor.collect.feeds import FEED_TYPES, desired_feeds, ensure_feeds
from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import LoadedRule, load_rules
from auditor.vocabulary import K8S_ASSET_TYPES


def feed_types(rules: list[LoadedRule]) -> tuple[list[str], list[str]]:
    """(resource types, IAM policy types) the rules read: by the rules' own matching over the known feed types and
    the exact types the rules name, so a glob reaches every known type it matches."""
    engine = Engine(rules)
    candidates = set(FEED_TYPES) | {g for g in engine.asset_type_globs() if not any(c in g for c in "*?")}
    context = {t for r in rules for t in (*r.spec.context_types, *r.spec.context_names)}
    resource: set[str] = set()
    iam: set[str] = set()
    for t in candidates:
        for r in rules:
            if r.matches_type(t):
                if not r.spec.needs_iam:
                    resource.add(t)
                elif t not in K8S_ASSET_TYPES:  # Kubernetes objects carry no IAM policy
                    iam.add(t)
        if t in context:
            resource.add(t)
    return sorted(resource), sorted(iam)


@click.group("feeds")
def command() -> None:
    """Cloud Asset Inventory feeds: changes published to Pub/Sub within seconds."""


@command.command("ensure")
@click.option("--scope", "scopes", multiple=True, required=True,
              help="organizations/ID, folders/ID or projects/ID the feeds watch (repeatable).")
@click.option("--topic", required=True, help="The Pub/Sub topic: projects/PROJECT/topics/TOPIC.")
@rules_option
@click.option("--prefix", default="drift-auditor", show_default=True, help="Feed id prefix.")
@click.option("--asset-type", "asset_types", multiple=True,
              help="Watch exactly these asset types instead of those the rules read (repeatable).")
@click.option("--condition", default=None, help="A CEL condition on temporal_asset every feed applies.")
@click.option("--dry-run", is_flag=True, help="Say what would be created or updated, change nothing.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def ensure(scopes: tuple[str, ...], topic: str, rules_paths: tuple[str, ...], prefix: str,
           asset_types: tuple[str, ...], condition: str | None, dry_run: bool, fmt: str) -> None:
    """Create or update the feeds (one per scope and content type); idempotent.

    Needs cloudasset.feeds.get, create and update on each scope (`auditor permissions` lists them), and the Cloud
    Asset service agent needs roles/pubsub.publisher on the topic. AUDITOR_GCP_ENDPOINT points the client elsewhere.
    """
    resource, iam = feed_types(load_rules(list(rules_paths) or None))
    specs = desired_feeds(scopes, topic, resource, iam, prefix=prefix, asset_types=asset_types or None,
                          condition=condition)
    outcomes = ensure_feeds(specs, dry_run=dry_run)
    if fmt == "json":
        click.echo(json.dumps([{"feed": o.name, "action": o.action, "changed": o.changed, "dry_run": dry_run}
                               for o in outcomes], indent=2))
        return
    for o in outcomes:
        click.echo(("would be " if dry_run and o.action != "unchanged" else "") + str(o))
