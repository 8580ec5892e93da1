"""Stage 1, collect: Cloud Asset Inventory feeds, which publish every change of the watched assets to Pub/Sub.

`auditor feeds ensure` keeps one feed per (scope, content type) pointing at the configured topic: a RESOURCE feed for
the asset types the rules read the resource of (and the context types of checks that read other assets), an
IAM_POLICY feed for the types whose IAM policy a rule reads. Feeds are named `<prefix>-resource` and
`<prefix>-iam-policy` under each scope (`organizations/ID`, `folders/ID`, `projects/ID`).

Ensuring is idempotent: a feed that is missing is created, one that differs (asset types, content type, topic,
condition) is updated with an update mask naming only what differs, one that matches is left alone, so running it on
every deploy costs a read per feed.

Asset types: a feed lists exact types. A rule's exact type is used as it is; a glob (`*` for the IAM rules, which
read the policy of every type) is expanded to the types of `FEED_TYPES` it matches, the asset types of this
organization's kind that carry IAM policies or that the checks read; `--asset-type` replaces the list.

Calls go through google-cloud-asset's AssetServiceClient (REST transport): GetFeed, CreateFeed, UpdateFeed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from auditor import vocabulary as v
from auditor.collect.gcp_clients import Endpoint, asset_client
from auditor.errors import AuditorError
from auditor.evaluate.globs import glob_match
from auditor.permissions import declare

declare(
    "collect.feeds",
    ["cloudasset.feeds.get", "cloudasset.feeds.create", "cloudasset.feeds.update"],
    # writes, run at setup: in the write role (`auditor permissions --remediation`), never in the audit role
    remediation=True,
    why="`auditor feeds ensure` (setup): create or update the Cloud Asset Inventory feeds; the Cloud Asset service "
    "agent needs roles/pubsub.publisher on the topic",
)

# Asset types a glob in a rule expands to in a feed: those carrying IAM policies, and those the checks read.
FEED_TYPES: tuple[str, ...] = (
    v.ORGANIZATION,
    v.FOLDER,
    v.PROJECT,
    v.SERVICE_ACCOUNT,
    v.BUCKET,
    v.DATASET,
    "bigquery.googleapis.com/Table",
    v.TOPIC,
    v.SUBSCRIPTION,
    v.KEY_RING,
    v.CRYPTO_KEY,
    v.SECRET,
    v.REPOSITORY,
    v.RUN_SERVICE,
    v.ML_MODEL,
    "aiplatform.googleapis.com/Endpoint",
    "notebooks.googleapis.com/Instance",
    v.SECURITY_POLICY,
    v.GKE_CLUSTER,
    v.ROLE,
    v.ROLE_BINDING,
    v.CLUSTER_ROLE,
    v.CLUSTER_ROLE_BINDING,
    v.NAMESPACE,
)
_SCOPE = re.compile(r"^(organizations/\d+|folders/\d+|projects/[a-z0-9][a-z0-9.:-]*[a-z0-9])$")
_TOPIC = re.compile(r"^projects/[a-z0-9][a-z0-9.:-]*[a-z0-9]/topics/[A-Za-z][\w.~+%-]{2,254}$")
_FEED_ID = re.compile(r"^[a-z][a-z0-9-]{0,60}[a-z0-9]$")


class ContentType(StrEnum):
    RESOURCE = "RESOURCE"
    IAM_POLICY = "IAM_POLICY"


_CONTENT_NUMBERS = {ContentType.RESOURCE: 1, ContentType.IAM_POLICY: 2}


@dataclass(frozen=True)
class FeedSpec:
    """One feed as it should be."""

    scope: str
    feed_id: str
    content_type: ContentType
    asset_types: tuple[str, ...]
    topic: str
    condition: str | None = None  # a CEL expression on temporal_asset, when set

    @property
    def name(self) -> str:
        return f"{self.scope}/feeds/{self.feed_id}"

    def body(self) -> dict[str, Any]:
        feed: dict[str, Any] = {
            "name": self.name,
            "asset_types": list(self.asset_types),
            "content_type": _CONTENT_NUMBERS[self.content_type],
            "feed_output_config": {"pubsub_destination": {"topic": self.topic}},
        }
        if self.condition:
            feed["condition"] = {"expression": self.condition, "title": "drift-auditor"}
        return feed


@dataclass
class FeedOutcome:
    name: str
    action: str  # created | updated | unchanged
    changed: list[str] = field(default_factory=list)  # the fields an update set

    def __str__(self) -> str:
        return f"{self.name}: {self.action}" + (f" ({', '.join(self.changed)})" if self.changed else "")


def expand(globs: Iterable[str], known: Iterable[str] = FEED_TYPES) -> tuple[str, ...]:
    """Exact asset types for a feed: exact types as they are, globs expanded against `known`."""
    out: set[str] = set()
    known = tuple(known)
    for g in globs:
        if any(c in g for c in "*?"):
            out.update(t for t in known if glob_match(g, t))
        else:
            out.add(g)
    return tuple(sorted(out))


def desired_feeds(
    scopes: Iterable[str],
    topic: str,
    resource_globs: Iterable[str],
    iam_globs: Iterable[str],
    *,
    prefix: str = "drift-auditor",
    asset_types: Iterable[str] | None = None,
    condition: str | None = None,
) -> list[FeedSpec]:
    """The feeds for these scopes: one per content type that has asset types."""
    if not _TOPIC.match(topic):
        raise AuditorError(f"topic {topic!r} is not projects/PROJECT/topics/TOPIC")
    scopes = list(scopes)
    bad = [s for s in scopes if not _SCOPE.match(s)]
    if bad or not scopes:
        raise AuditorError(f"feed scopes must be organizations/ID, folders/ID or projects/ID, got {bad or 'none'}")
    override = tuple(sorted(set(asset_types))) if asset_types else None
    parts = {
        ContentType.RESOURCE: override or expand(resource_globs),
        ContentType.IAM_POLICY: override or expand(iam_globs),
    }
    out = []
    for scope in scopes:
        for content, types in parts.items():
            if not types:
                continue
            feed_id = f"{prefix}-{content.value.lower().replace('_', '-')}"
            if not _FEED_ID.match(feed_id):
                raise AuditorError(f"feed id {feed_id!r}: lower-case letters, digits and dashes, at most 63")
            out.append(FeedSpec(scope, feed_id, content, types, topic, condition))
    return out


def _differences(spec: FeedSpec, live: Any) -> list[str]:
    """The update-mask paths where the live feed differs from the spec."""
    changed = []
    if sorted(live.asset_types) != sorted(spec.asset_types):
        changed.append("asset_types")
    if int(live.content_type) != _CONTENT_NUMBERS[spec.content_type]:
        changed.append("content_type")
    if live.feed_output_config.pubsub_destination.topic != spec.topic:
        changed.append("feed_output_config")
    if (live.condition.expression or None) != spec.condition:
        changed.append("condition")
    return changed


def ensure_feeds(specs: Iterable[FeedSpec], endpoint: Endpoint | str | None = None, *, dry_run: bool = False
                 ) -> list[FeedOutcome]:
    """Create the missing feeds and update those that differ; with `dry_run`, only say what would be done."""
    from google.api_core import exceptions
    from google.cloud import asset_v1

    client = asset_client(endpoint)
    out = []
    for spec in specs:
        try:
            live = client.get_feed(name=spec.name)
        except exceptions.NotFound:
            live = None
        except exceptions.GoogleAPICallError as exc:
            raise AuditorError(f"feed {spec.name}: cannot read it: {exc.message}") from None
        try:
            if live is None:
                if not dry_run:
                    client.create_feed(request=asset_v1.CreateFeedRequest(
                        parent=spec.scope, feed_id=spec.feed_id, feed=asset_v1.Feed(spec.body())))
                out.append(FeedOutcome(spec.name, "created"))
                continue
            changed = _differences(spec, live)
            if not changed:
                out.append(FeedOutcome(spec.name, "unchanged"))
                continue
            if not dry_run:
                client.update_feed(request=asset_v1.UpdateFeedRequest(
                    feed=asset_v1.Feed(spec.body()), update_mask={"paths": changed}))
            out.append(FeedOutcome(spec.name, "updated", changed))
        except exceptions.GoogleAPICallError as exc:
            raise AuditorError(f"feed {spec.name}: {exc.message}") from None
    return out
