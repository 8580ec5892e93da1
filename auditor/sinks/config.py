"""Settings of the outbound sinks (`scc:` and `notifications:` in the daemon's configuration)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


class Scc(BaseModel):
    """Security Command Center: after each cycle the daemon writes what changed to one SCC source."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Sync findings to SCC after each cycle (`auditor scc sync` any time).")
    source: str | None = Field(
        None, pattern=r"^organizations/\d+/sources/\d+$",
        description="The SCC source findings go to: organizations/ORG_ID/sources/SOURCE_ID (create it once with "
        "`gcloud scc sources create`, or the API).",
    )
    external_uri: str | None = Field(
        None, description="Link shown in SCC for each finding; `{id}` is replaced by the finding id "
        "(e.g. https://auditor.example.com/report#finding-{id}).",
    )
    retry_attempts: int = Field(5, ge=1, le=20)

    @model_validator(mode="after")
    def _source(self) -> Scc:
        if self.enabled and not self.source:
            raise ValueError("scc.enabled needs scc.source (organizations/ORG_ID/sources/SOURCE_ID)")
        return self


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME, description="The sink's name: a metric label and the queue's folder.")
    url: str = Field(pattern=r"^https?://", description="Where each event is POSTed.")
    slack: bool = Field(False, description="Send a Slack-compatible body ({text, blocks}) instead of the CloudEvent "
                        "(the event's id and type still travel as ce-* headers).")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    token: SecretStr | None = Field(None, description="Sent as `Authorization: Bearer TOKEN`.")
    timeout_seconds: float = Field(10.0, gt=0, le=300)


class PubSubTopic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    topic: str = Field(pattern=r"^projects/[^/]+/topics/[^/]+$", description="projects/PROJECT/topics/TOPIC")


class Notifications(BaseModel):
    """Drift events (new, resolved, reopened findings) as CloudEvents, at least once, to each sink."""

    model_config = ConfigDict(extra="forbid")

    webhooks: list[Webhook] = Field(default_factory=list)
    pubsub: list[PubSubTopic] = Field(default_factory=list)
    queue_dir: Path = Field(Path("drift-auditor-queue"), description="Events waiting for delivery, one folder a "
                            "sink: kept across restarts (put it on the state volume).")
    queue_max_events: int = Field(10_000, ge=1, description="Events kept per sink while it is down; past this the "
                                  "oldest are dropped and counted (auditor_notifications_total{outcome=dropped}).")
    retry_attempts: int = Field(4, ge=1, le=20, description="Tries per delivery within one flush.")
    retry_initial_seconds: float = Field(0.5, ge=0)
    retry_maximum_seconds: float = Field(30.0, gt=0)
    report_url: str | None = Field(None, description="Base URL of the report: events link to REPORT_URL#finding-ID.")
    include_exempted: bool = Field(False, description="Announce exempted findings coming and going too.")

    @field_validator("webhooks", "pubsub")
    @classmethod
    def _unique(cls, v: list[Webhook] | list[PubSubTopic]) -> list[Webhook] | list[PubSubTopic]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"sink names must be unique: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _names(self) -> Notifications:
        names = [s.name for s in self.webhooks] + [s.name for s in self.pubsub]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"a webhook and a pubsub sink share a name: {', '.join(dup)}")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks or self.pubsub)
