"""Drift notifications: each new, resolved or reopened finding as a CloudEvent, delivered at least once to every
configured sink (HTTP webhooks, optionally with a Slack-compatible body, and Pub/Sub topics).

Delivery goes through a bounded on-disk queue, one folder per sink: an event is written to every sink's folder
(atomically, fsync'd) before any delivery is tried, and its file is removed only once the sink accepted it. A sink
that is down keeps its events across restarts; they go out, in order, once it is back. A sink's folder holds at
most `queue_max_events`; past that the oldest are dropped and counted (`dropped`), never silently.

At least once: a delivery that timed out may have arrived, so it is sent again; consumers deduplicate on the
CloudEvent `id` (the finding id, the cycle and the change), which is the same on every try.

Which change an event announces: `new` for a finding seen for the first time, `reopened` for one that had been
announced as resolved, `resolved` when it goes away. The ledger remembers the last change announced per finding.
The baseline cycle (the first one recorded) announces nothing: it is the state the organization was already in.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from auditor.collect.retry import RetryPolicy
from auditor.logs import get_logger
from auditor.permissions import declare
from auditor.sinks.config import Notifications, PubSubTopic, Webhook
from auditor.sinks.ledger import Ledger
from auditor.state import DriftEvent, iso

# `auditor permissions --config` adds this to the role when the configuration lists Pub/Sub sinks.
declare("sinks.notify.pubsub", ["pubsub.topics.publish"],
        why="publish drift notifications (CloudEvents) to the configured Pub/Sub topics")

LEDGER_SINK = "notify"
EVENT_TYPE = "com.github.drift-auditor.finding.{change}"
CHANGES = ("new", "resolved", "reopened")
OUTCOMES = ("delivered", "failed", "dropped")


# -- events -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """One drift change to announce: what the CloudEvent carries (its attributes and data)."""

    id: str
    change: str
    finding_id: str
    rule: str
    severity: str
    asset: str
    asset_type: str
    message: str
    exempted: bool
    at: float
    cycle: int
    scope: str = ""
    report_url: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # the rule's labels (team, domain, ...)
    project: str | None = None  # projects/NUMBER the asset is in
    ancestry: str = ""  # organizations/1/folders/2/projects/3

    @property
    def type(self) -> str:
        return EVENT_TYPE.format(change=self.change)

    @property
    def source(self) -> str:
        return f"//drift-auditor/{self.scope}" if self.scope else "//drift-auditor"

    def data(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "finding_id": self.finding_id,
            "rule": self.rule,
            "severity": self.severity,
            "asset": self.asset,
            "asset_type": self.asset_type,
            "message": self.message,
            "exempted": self.exempted,
            "cycle": self.cycle,
            "at": iso(self.at),
            "report_url": self.report_url,
            "labels": self.labels,
            "project": self.project,
            "ancestry": self.ancestry,
        }

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "change": self.change, "finding_id": self.finding_id, "rule": self.rule,
                "severity": self.severity, "asset": self.asset, "asset_type": self.asset_type,
                "message": self.message, "exempted": self.exempted, "at": self.at, "cycle": self.cycle,
                "scope": self.scope, "report_url": self.report_url, "labels": self.labels,
                "project": self.project, "ancestry": self.ancestry}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Notice:
        return cls(**d)

    def cloudevent(self) -> Any:
        from cloudevents.core.v1.event import CloudEvent

        return CloudEvent(
            attributes={
                "id": self.id,
                "source": self.source,
                "type": self.type,
                "subject": self.finding_id,
                "time": datetime.fromtimestamp(self.at, UTC),
                "datacontenttype": "application/json",
                "severity": self.severity,  # extension attributes: routing without parsing the data
                "rule": self.rule,
            },
            data=self.data(),
        )


def notices(events: Iterable[DriftEvent], ledger: Ledger, *, baseline: bool, include_exempted: bool = False,
            scope: str = "", report_url: str | None = None,
            labels: Mapping[str, dict[str, str]] | None = None) -> tuple[list[Notice], list[tuple[str, str]]]:
    """The notices of one cycle's drift events, and the ledger marks to write once they are queued (the change
    seen for each finding: a crash before they are written announces the same events again, never fewer)."""
    out: list[Notice] = []
    marks: list[tuple[str, str]] = []
    for e in events:
        prior = ledger.get(LEDGER_SINK, e.finding_id)
        change = "resolved" if e.change == "resolved" else "reopened" if prior == "resolved" else "new"
        marks.append((e.finding_id, e.change))
        if baseline or (e.exempted and not include_exempted):
            continue
        link = f"{report_url.rstrip('/')}#finding-{e.finding_id}" if report_url else None
        out.append(Notice(f"{e.finding_id}-{e.cycle_id}-{change}", change, e.finding_id, e.rule, e.severity,
                          e.asset, e.asset_type, e.message, e.exempted, e.at, e.cycle_id, scope, link,
                          dict((labels or {}).get(e.rule, {})), e.project, e.ancestry))
    return out, marks


# -- the on-disk queue ------------------------------------------------------------------------------------------------


_FILE = re.compile(r"^(\d{20})-[0-9a-f]{8}\.json$")


class DiskQueue:
    """Events waiting for one sink: a folder of small JSON files named by a sequence number, oldest first."""

    def __init__(self, folder: Path, max_events: int) -> None:
        self.folder = folder
        self.max_events = max_events
        folder.mkdir(parents=True, exist_ok=True)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if _FILE.match(p.name))

    def __len__(self) -> int:
        return len(self._files())

    def oldest_at(self) -> float | None:
        """When the oldest waiting event was queued (epoch seconds, from its file name), None when none waits."""
        first = min((p.name for p in self.folder.iterdir() if _FILE.match(p.name)), default=None)
        return int(first[:20]) / 1e9 if first is not None else None

    def put(self, items: Sequence[Notice]) -> int:
        """Append events (durably); returns how many old events were dropped to stay within the bound."""
        seq = time.time_ns()
        for i, n in enumerate(items):
            path = self.folder / f"{seq + i:020d}-{uuid.uuid4().hex[:8]}.json"
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(n.to_json(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        files = self._files()
        excess = files[: max(0, len(files) - self.max_events)]
        for p in excess:
            p.unlink(missing_ok=True)
        if items:
            _fsync_dir(self.folder)
        return len(excess)

    def peek(self) -> Iterable[tuple[Path, Notice | None]]:
        """Queued events, oldest first; None for a file that cannot be read back (reported, then removed). A file
        gone since the listing was delivered by another flush (`auditor notify flush` beside the daemon): skipped."""
        for p in self._files():
            try:
                yield p, Notice.from_json(json.loads(p.read_text(encoding="utf-8")))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError):
                yield p, None

    @staticmethod
    def done(path: Path) -> None:
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- sinks ------------------------------------------------------------------------------------------------------------


class Sink(Protocol):
    name: str
    kind: str

    def deliver(self, notice: Notice) -> None:
        """Deliver one event or raise (a transient error is retried, anything else fails this flush)."""


class DeliveryError(Exception):
    """A sink refused an event; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = status  # read by auditor.collect.retry.is_transient
        self.response = _Headers(retry_after)


@dataclass
class _Headers:
    retry_after: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after} if self.retry_after else {}


def slack_body(n: Notice) -> dict[str, Any]:
    """A Slack incoming-webhook message (also understood by Mattermost and Rocket.Chat)."""
    icon = {"new": ":rotating_light:", "reopened": ":repeat:", "resolved": ":white_check_mark:"}[n.change]
    title = f"{icon} {n.change.upper()} {n.severity} finding: {n.rule}"
    lines = [f"*{title}*", n.message, f"`{n.asset}`" + (f" in `{n.ancestry}`" if n.ancestry else "")]
    if n.report_url:
        lines.append(f"<{n.report_url}|finding {n.finding_id}>")
    else:
        lines.append(f"finding `{n.finding_id}`")
    text = "\n".join(lines)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


class WebhookSink:
    kind = "webhook"

    def __init__(self, cfg: Webhook, session: Any = None) -> None:
        import requests

        self.name = cfg.name
        self.cfg = cfg
        self.session = session or requests.Session()

    def deliver(self, notice: Notice) -> None:
        import requests
        from cloudevents.core.bindings.http import to_binary_event, to_structured_event

        event = notice.cloudevent()
        if self.cfg.slack:
            binary = to_binary_event(event)
            headers = {k: v for k, v in binary.headers.items() if k.lower().startswith("ce-")}
            headers["Content-Type"] = "application/json"
            body = json.dumps(slack_body(notice)).encode()
        else:
            structured = to_structured_event(event)
            headers, body = dict(structured.headers), structured.body
        headers = {**headers, **self.cfg.headers}
        if self.cfg.token is not None:
            headers["Authorization"] = f"Bearer {self.cfg.token.get_secret_value()}"
        try:
            resp = self.session.post(self.cfg.url, data=body, headers=headers, timeout=self.cfg.timeout_seconds)
        except requests.RequestException:
            raise  # connection refused, timeouts: transient, retried
        if resp.status_code >= 300:
            raise DeliveryError(f"{self.cfg.url} answered {resp.status_code}", resp.status_code,
                                resp.headers.get("Retry-After"))


class PubSubSink:
    """The CloudEvents Pub/Sub binding: binary mode, attributes `ce-*`, the event data as the message data."""

    kind = "pubsub"

    def __init__(self, cfg: PubSubTopic, client: Any) -> None:
        self.name = cfg.name
        self.topic = cfg.topic
        self.client = client

    def deliver(self, notice: Notice) -> None:
        from cloudevents.core.bindings.http import to_binary_event
        from google import pubsub_v1

        binary = to_binary_event(notice.cloudevent())
        headers, body = binary.headers, binary.body
        attrs = {k.lower(): str(v) for k, v in headers.items() if k.lower().startswith("ce-")}
        attrs["content-type"] = "application/json"
        msg = pubsub_v1.PubsubMessage(data=body, attributes=attrs)
        self.client.publish(topic=self.topic, messages=[msg], retry=None, timeout=30.0)


# -- the notifier -----------------------------------------------------------------------------------------------------


@dataclass
class FlushResult:
    delivered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Notifier:
    """Queues each cycle's notices for every sink, then flushes each queue in order until it is empty or its sink
    fails (the rest wait for the next flush, at the next cycle or `auditor notify flush`)."""

    def __init__(self, cfg: Notifications, sinks: Sequence[Sink], count: Callable[[str, str, int], None],
                 retry: RetryPolicy | None = None) -> None:
        self.cfg = cfg
        self.sinks = list(sinks)
        self.count = count  # (sink, outcome, n): persistent counters (Store.bump)
        self.retry = retry or RetryPolicy(attempts=cfg.retry_attempts, initial=cfg.retry_initial_seconds,
                                          maximum=cfg.retry_maximum_seconds)
        self.queues = {s.name: DiskQueue(cfg.queue_dir / s.name, cfg.queue_max_events) for s in self.sinks}
        self.log = get_logger("auditor.sinks.notify")

    def announce(self, events: Iterable[DriftEvent], ledger: Ledger, *, baseline: bool, scope: str = "",
                 labels: Mapping[str, dict[str, str]] | None = None) -> int:
        """Queue the notices of one cycle's drift for every sink (durably), then remember what was announced."""
        items, marks = notices(events, ledger, baseline=baseline, include_exempted=self.cfg.include_exempted,
                               scope=scope, report_url=self.cfg.report_url, labels=labels)
        self.enqueue(items)
        ledger.put(LEDGER_SINK, marks)
        return len(items)

    def enqueue(self, items: Sequence[Notice]) -> None:
        if not items:
            return
        for s in self.sinks:
            dropped = self.queues[s.name].put(items)
            if dropped:
                self.count(s.name, "dropped", dropped)
                self.log.error("notifications_dropped", sink=s.name, dropped=dropped,
                               reason=f"queue full ({self.cfg.queue_max_events} events)")

    def queued(self) -> dict[str, int]:
        return {name: len(q) for name, q in self.queues.items()}

    def oldest(self) -> dict[str, float | None]:
        """Per sink, when its oldest waiting event was queued (None: its queue is empty). A sink that has been
        failing shows here first: the age grows while the count may stay small."""
        return {name: q.oldest_at() for name, q in self.queues.items()}

    def flush(self) -> FlushResult:
        out = FlushResult()
        for s in self.sinks:
            q = self.queues[s.name]
            delivered = 0
            for path, notice in q.peek():
                if notice is None:
                    self.log.error("notification_unreadable", sink=s.name, file=str(path))
                    self.count(s.name, "failed", 1)
                    q.done(path)
                    continue
                try:
                    self.retry.call(lambda n=notice, sink=s: sink.deliver(n))  # type: ignore[misc]
                except Exception as exc:
                    out.failed[s.name] = 1
                    out.errors[s.name] = f"{type(exc).__name__}: {exc}"
                    self.count(s.name, "failed", 1)
                    self.log.warning("notification_failed", sink=s.name, kind=s.kind, notification=notice.id,
                                     error=out.errors[s.name], queued=len(q))
                    break  # keep the order: the rest waits for this one
                q.done(path)
                delivered += 1
            if delivered:
                self.count(s.name, "delivered", delivered)
            out.delivered[s.name] = delivered
            out.queued[s.name] = len(q)
        return out


def build_sinks(cfg: Notifications, endpoint: str | None = None) -> list[Sink]:
    sinks: list[Sink] = [WebhookSink(w) for w in cfg.webhooks]
    if cfg.pubsub:
        from auditor.collect.gcp_clients import publisher_client

        client = publisher_client(endpoint)
        sinks += [PubSubSink(p, client) for p in cfg.pubsub]
    return sinks
