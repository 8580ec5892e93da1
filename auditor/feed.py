"""The daemon's intake of Cloud Asset Inventory feed pushes (`POST /v1/cai-feed`): authenticate, parse, order, hand on.
Messages pulled from a subscription instead (`feed.pull_subscription`, auditor/collect/cai_pull.py) are ordered,
handed on and counted by the same `receive`.

Answers, which Pub/Sub reads as ack or retry: 204 for a change accepted, and for a redelivery or an older state
(acknowledged: retrying it would change nothing); 400 for a body that is not a feed message (Pub/Sub retries, then
dead-letters it); 401/403 for a caller that is not the push subscription; 503 when the change could not be handed on
(retried later). Metrics: `auditor_feed_messages_total{outcome}` and `auditor_feed_lag_seconds` (publish time to
receipt of the last accepted message).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping

from prometheus_client import Counter, Gauge
from prometheus_client.registry import CollectorRegistry

from auditor.collect.cai_feed import (
    FeedChange,
    FeedMessageError,
    FeedOrder,
    PushAuth,
    Unauthorized,
    epoch,
    parse_push,
)
from auditor.http_server import Response
from auditor.logs import get_logger
from auditor.settings import Feed

PATH = "/v1/cai-feed"
OUTCOMES = ("accepted", "redelivery", "out_of_order", "invalid", "unauthorized", "failed")


def _text(status: int, message: str) -> Response:
    return Response(status, "text/plain", (message + "\n").encode(), {"Cache-Control": "no-store"})


class FeedIntake:
    def __init__(self, settings: Feed, registry: CollectorRegistry, on_change: Callable[[FeedChange], None],
                 *, auth: PushAuth | None = None, clock: Callable[[], float] = time.time) -> None:
        self.auth = auth or PushAuth(settings.audience, certs_url=settings.certs_url,
                                     service_account=settings.service_account)
        self.order = FeedOrder()
        self.on_change = on_change
        self.clock = clock
        self.log = get_logger("auditor.feed")
        self.messages = Counter("auditor_feed_messages", "Feed messages received, by outcome.", ["outcome"],
                                registry=registry)
        for o in OUTCOMES:
            self.messages.labels(o)
        self.lag = Gauge("auditor_feed_lag_seconds",
                         "Seconds from the publish time of the last accepted feed message to its receipt.",
                         registry=registry)

    def handle(self, target: str, headers: Mapping[str, str], body: bytes, client: str) -> Response:
        try:
            self.auth.check(headers, client)
        except Unauthorized as exc:
            self.messages.labels("unauthorized").inc()
            self.log.warning("feed_push_refused", client=client, reason=str(exc))
            return _text(exc.status, str(exc))
        try:
            change = parse_push(body)
        except FeedMessageError as exc:
            self.messages.labels("invalid").inc()
            self.log.warning("feed_push_invalid", reason=str(exc))
            return _text(400, str(exc))
        try:
            self.receive(change)
        except Exception:  # not acknowledged: Pub/Sub delivers it again
            return _text(503, "the change could not be recorded; retry")
        return Response(204, "text/plain", b"")

    def receive(self, change: FeedChange) -> str:
        """Order a change and hand it on (a push, or a message pulled by auditor/collect/cai_pull.py): its outcome
        (accepted, redelivery, out_of_order), counted. Raises when it could not be handed on (counted failed): the
        message must not be acknowledged."""
        ignored = self.order.check(change)
        if ignored is not None:
            self.messages.labels(ignored).inc()
            return ignored
        try:
            self.on_change(change)
        except Exception as exc:
            self.messages.labels("failed").inc()
            self.log.exception("feed_change_failed", asset=change.asset.name, error=f"{type(exc).__name__}: {exc}")
            raise
        self.order.commit(change)
        self.messages.labels("accepted").inc()
        if change.publish_time:
            # an unreadable publish time: the lag is not measured, the change stands
            with contextlib.suppress(FeedMessageError):
                self.lag.set(max(0.0, self.clock() - epoch(change.publish_time)))
        return "accepted"

    def invalid(self, reason: str) -> None:
        """A pulled message that is not a feed message (logged by the puller)."""
        self.messages.labels("invalid").inc()
