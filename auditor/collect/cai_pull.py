"""Stage 1, collect: Cloud Asset Inventory feed messages pulled from a Pub/Sub subscription (the alternative to push).

`PullReceiver` runs on a thread of its own while started (the daemon starts it on the leader only). It pulls up to
`max_messages` messages at a time with the generated Pub/Sub subscriber client (`pubsub_v1.SubscriberClient`, unary
`pull`, `acknowledge` and `modify_ack_deadline`, REST transport, built in auditor/collect/gcp_clients.py like every
client), reads each message's data exactly as a push's (`cai_feed.parse_message`), and hands it on (`receive`: the
daemon's feed intake, which orders it, writes it to the store's inbox and counts it). Then:

- handed on, or a redelivery or older state (the intake says so): acknowledged;
- not handed on (`receive` raised), or pulled while stopping: nacked (ack deadline 0), so Pub/Sub delivers it again
  at once (to this replica, or to the next leader) rather than after its ack deadline; a batch with such a failure is
  followed by a backoff, so a store that is down is not hammered by the same messages;
- not a feed message (no TemporalAsset in its data): it can never become one, so it is logged with its message id
  (`feed_pull_invalid`), counted `invalid` and acknowledged. Left unacknowledged it would come back every ack
  deadline, forever on a subscription without a dead-letter policy (and a push of it, answered 400, goes the same
  way until its dead-letter policy takes it). The periodic cycle still reads the asset it may have been about.

Errors of the calls themselves (the API unreachable, throttled, a permission missing) are logged and retried after a
backoff with full jitter (auditor/collect/retry.py's policy: `initial` doubling to `maximum`, a `Retry-After` as the
least wait); the wait is injectable and ends at once on stop. `down_for()` says how long the receiver has gone
without a successful pull (since it started, or since the last error): the daemon's readiness reads it. Pulling
needs `pubsub.subscriptions.consume` on the subscription.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from auditor.collect.cai_feed import FeedChange, FeedMessageError, parse_message
from auditor.collect.retry import RetryPolicy
from auditor.logs import get_logger
from auditor.permissions import declare

declare(
    "collect.cai_pull",
    ["pubsub.subscriptions.consume"],
    why="the daemon pulls Cloud Asset Inventory feed messages from feed.pull_subscription (pull, acknowledge, "
    "modifyAckDeadline; roles/pubsub.subscriber on the subscription grants it)",
)

IDLE_SECONDS = 0.5
PULL_TIMEOUT_SECONDS = 30.0


def publish_time_of(message: Any) -> str | None:
    """A PubsubMessage's publish time as RFC 3339 UTC (nanoseconds kept), None when it carries none."""
    if "publish_time" not in message:
        return None
    when = message.publish_time
    rfc3339 = getattr(when, "rfc3339", None)  # proto-plus gives DatetimeWithNanoseconds
    return str(rfc3339()) if callable(rfc3339) else when.isoformat().replace("+00:00", "Z")


class PullReceiver:
    """Pulls a subscription while started; `receive(change)` raises when the change could not be handed on."""

    def __init__(self, subscription: str, receive: Callable[[FeedChange], Any], *, client: Any,
                 max_messages: int = 100, on_invalid: Callable[[str], None] | None = None,
                 backoff: RetryPolicy | None = None, wait: Callable[[threading.Event, float], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.subscription = subscription
        self.receive = receive
        self.client = client
        self.max_messages = max_messages
        self.on_invalid = on_invalid
        self.backoff = backoff or RetryPolicy()
        # wait(stop, seconds) -> True when stopped meanwhile; tests pass one that does not sleep
        self._wait = wait or (lambda stop, seconds: stop.wait(seconds))
        self.clock = clock
        self.log = get_logger("auditor.feed")
        self.stopped = threading.Event()
        self.stopped.set()  # not started yet
        self.failures = 0  # failed rounds in a row (the backoff's attempt number)
        self._down_since: float | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- one round -----------------------------------------------------------------------------------------------
    def pull_once(self, timeout: float = PULL_TIMEOUT_SECONDS, stop: threading.Event | None = None) -> int:
        """One pull, its messages handed on, acknowledged or nacked: the number acknowledged. Raises when a call
        failed; a message that could not be handed on is nacked and raises afterwards (`HandOnFailed`)."""
        resp = self.client.pull(request={"subscription": self.subscription, "max_messages": self.max_messages},
                                timeout=timeout)
        self._connected(True)
        ack: list[str] = []
        nack: list[str] = []
        for received in resp.received_messages:
            m = received.message
            if stop is not None and stop.is_set():
                nack.append(received.ack_id)  # stopping: nothing more is handed on from this replica
                continue
            try:
                change = parse_message(bytes(m.data), m.message_id, publish_time_of(m))
            except FeedMessageError as exc:
                self.log.warning("feed_pull_invalid", message_id=m.message_id, reason=str(exc))
                if self.on_invalid is not None:
                    self.on_invalid(str(exc))
                ack.append(received.ack_id)
                continue
            try:
                self.receive(change)
            except Exception as exc:  # nacked: delivered again (the intake logged and counted it)
                self.log.warning("feed_pull_not_handed_on", message_id=m.message_id,
                                 error=f"{type(exc).__name__}: {exc}")
                nack.append(received.ack_id)
                continue
            ack.append(received.ack_id)
        if ack:
            self.client.acknowledge(request={"subscription": self.subscription, "ack_ids": ack}, timeout=timeout)
        if nack:
            self.client.modify_ack_deadline(request={"subscription": self.subscription, "ack_ids": nack,
                                                     "ack_deadline_seconds": 0}, timeout=timeout)
            if stop is None or not stop.is_set():
                raise HandOnFailed(f"{len(nack)} message(s) not handed on: nacked for redelivery")
        return len(ack)

    # -- the thread ----------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                got = self.pull_once(stop=stop)
            except Exception as exc:
                if stop.is_set():
                    return
                self.failures += 1
                if not isinstance(exc, HandOnFailed):
                    self._connected(False)
                wait = self.backoff.wait_seconds(self.failures, exc)
                self.log.warning("feed_pull_failed", subscription=self.subscription,
                                 error=f"{type(exc).__name__}: {exc}", retry_in_seconds=round(wait, 3))
                if self._wait(stop, wait):
                    return
                continue
            self.failures = 0
            # nothing came: an emulator (or the fake) answers at once where Pub/Sub holds the pull open
            if not got and self._wait(stop, IDLE_SECONDS):
                return

    def start(self) -> None:
        """Start pulling (a no-op while running)."""
        with self._lock:
            if self._thread is not None and not self.stopped.is_set():
                return
            self.stopped = stop = threading.Event()  # a thread of an earlier start ends on its own event
            self._down_since = self.clock()  # down until the first pull answers
            self._thread = threading.Thread(target=self.run, args=(stop,), name="feed-pull", daemon=True)
            self._thread.start()
        self.log.info("feed_pull_started", subscription=self.subscription)

    def stop(self, join_seconds: float = 5.0) -> None:
        """Stop pulling: a pull in flight ends at its timeout, and what it brings is nacked, not handed on."""
        with self._lock:
            if self.stopped.is_set():
                return
            self.stopped.set()
            thread, self._thread = self._thread, None
            self._down_since = None
        if thread is not None:
            thread.join(timeout=join_seconds)
        self.log.info("feed_pull_stopped", subscription=self.subscription)

    @property
    def running(self) -> bool:
        return not self.stopped.is_set()

    # -- health --------------------------------------------------------------------------------------------------
    def _connected(self, up: bool) -> None:
        with self._lock:
            if up:
                self._down_since = None
            elif self._down_since is None:
                self._down_since = self.clock()

    @property
    def up(self) -> bool:
        with self._lock:
            return self.running and self._down_since is None

    def down_for(self) -> float | None:
        """Seconds since the receiver last pulled successfully while it runs (None: up, or not running)."""
        with self._lock:
            return None if self._down_since is None else self.clock() - self._down_since


class HandOnFailed(Exception):
    """Messages of a pull could not be handed on (nacked): the round counts as failed, and the next one waits."""
