"""Stage 1, collect: Cloud Asset Inventory feed messages pulled from a Pub/Sub subscription (the alternative to push).

`PullReceiver` runs on a thread of its own. It pulls up to `max_messages` messages at a time with the generated
Pub/Sub subscriber client (`pubsub_v1.SubscriberClient.pull`, REST transport, built in auditor/collect/gcp_clients.py
like every client), turns each into a FeedChange exactly as a push envelope is read (`cai_feed.parse_push`), hands
it on (`receive`: the daemon's feed intake, which orders it and writes it to the store's inbox), and acknowledges
what was handed on or ignored. A message that could not be handed on is not acknowledged: Pub/Sub delivers it again
once its ack deadline passes (at least once, like a push answered 503). A message that is not a feed message can
never become one: it is logged with its id, counted `invalid`, and acknowledged (a push of it is answered 400, which
Pub/Sub retries until its dead-letter policy takes it; pulled, it would come back forever without one).

Errors of the pull itself (the API unreachable, a permission missing) are logged and retried with a growing pause
(1 s doubling to 60 s); pulling needs `pubsub.subscriptions.consume` on the subscription.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

from auditor.collect.cai_feed import FeedChange, FeedMessageError, parse_push
from auditor.logs import get_logger
from auditor.permissions import declare

declare(
    "collect.cai_pull",
    ["pubsub.subscriptions.consume"],
    why="feed messages pulled from a Pub/Sub subscription (feed.pull_subscription): pull and acknowledge",
)
MAX_PAUSE_SECONDS = 60.0
IDLE_SECONDS = 0.5


def envelope_of(received: Any) -> bytes:
    """A pulled message (`ReceivedMessage.message`) as the push envelope of the same message."""
    m = received.message
    data = m.data if isinstance(m.data, bytes) else str(m.data).encode()
    publish = m.publish_time
    when = publish.isoformat().replace("+00:00", "Z") if hasattr(publish, "isoformat") and publish else None
    return json.dumps({"message": {"data": base64.b64encode(data).decode(), "messageId": m.message_id,
                                   "publishTime": when, "attributes": dict(m.attributes)}}).encode()


class PullReceiver:
    """Pulls a subscription until stopped; `receive(change)` raises when the change could not be handed on."""

    def __init__(self, subscription: str, receive: Callable[[FeedChange], Any], *, client: Any,
                 max_messages: int = 100, on_invalid: Callable[[str], None] | None = None,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.subscription = subscription
        self.receive = receive
        self.client = client
        self.max_messages = max_messages
        self.on_invalid = on_invalid
        self.stopped = threading.Event()
        self._wait = wait or self.stopped.wait
        self.log = get_logger("auditor.feed")
        self._thread: threading.Thread | None = None

    def pull_once(self, timeout: float = 30.0) -> int:
        """One pull: the number of messages acknowledged."""
        resp = self.client.pull(request={"subscription": self.subscription, "max_messages": self.max_messages},
                                timeout=timeout)
        ack: list[str] = []
        for received in resp.received_messages:
            try:
                change = parse_push(envelope_of(received))
            except FeedMessageError as exc:
                self.log.warning("feed_pull_invalid", message_id=received.message.message_id, reason=str(exc))
                if self.on_invalid is not None:
                    self.on_invalid(str(exc))
                ack.append(received.ack_id)
                continue
            try:
                self.receive(change)
            except Exception as exc:  # not acknowledged: Pub/Sub delivers it again after its ack deadline
                self.log.warning("feed_pull_not_handed_on", message_id=received.message.message_id,
                                 error=f"{type(exc).__name__}: {exc}")
                continue
            ack.append(received.ack_id)
        if ack:
            self.client.acknowledge(request={"subscription": self.subscription, "ack_ids": ack}, timeout=timeout)
        return len(ack)

    def run(self) -> None:
        pause = 1.0
        while not self.stopped.is_set():
            try:
                if not self.pull_once() and self._wait(IDLE_SECONDS):
                    return  # nothing (an emulator answers at once where Pub/Sub holds the pull open)
                pause = 1.0
            except Exception as exc:
                if self.stopped.is_set():
                    return
                self.log.warning("feed_pull_failed", subscription=self.subscription,
                                 error=f"{type(exc).__name__}: {exc}", retry_in_seconds=pause)
                if self._wait(pause):
                    return
                pause = min(pause * 2, MAX_PAUSE_SECONDS)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="feed-pull", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=35)  # a pull in flight ends at its timeout
            self._thread = None
