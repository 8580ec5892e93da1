"""Feed messages pulled from a Pub/Sub subscription (auditor/collect/cai_pull.py), the alternative to push: the real
`google-cloud-pubsub` clients (REST transport) against the fake Google Cloud server's Pub/Sub topics and
subscriptions. A pulled change is recorded as drift like a pushed one and acknowledged once in the inbox; one that
could not be handed on is nacked and delivered again at once; redeliveries, older states and messages that are not
feed messages are acknowledged and counted; errors back off with jitter and keep the daemon unready when they last;
the pull runs on the leader only and stops with the daemon."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor.collect.cai_pull import PullReceiver
from auditor.collect.gcp_clients import publisher_client, subscriber_client
from auditor.collect.retry import RetryPolicy
from auditor.cycle import Auditor
from auditor.daemon import Daemon, respond
from auditor.settings import load_settings
from auditor.state import Store
from tests.daemon.support import example_org, wait_until, write_config
from tests.daemon.test_incremental import BUCKET, event_drift, iam_record, open_ids, public
from tests.fakes.gcp import FakeGcp, Fault, fake_gcp  # noqa: F401 - the fixture
from tests.fakes.gcp_outbound import Subscription, pubsub

TOPIC = "projects/sec-tools/topics/cai-feed"
SUBSCRIPTION = "projects/sec-tools/subscriptions/cai-pull"


def temporal(asset: dict[str, Any], start: str, deleted: bool = False) -> bytes:
    return json.dumps({"window": {"startTime": start}, "deleted": deleted, "asset": asset}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Waits:
    """The receiver's injected wait: records what it was asked to wait, and waits at most a few milliseconds."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, stop: threading.Event, seconds: float) -> bool:
        self.asked.append(seconds)
        return stop.wait(min(seconds, 0.02))


def pull_config(tmp_path: Path, fake: FakeGcp, **overrides: Any) -> Path:
    example_org(tmp_path)
    pubsub(fake).create_topic(TOPIC)
    with contextlib.suppress(Exception):  # made once per fake server (two replicas share it)
        subscriber_client(fake.url).create_subscription(
            request={"name": SUBSCRIPTION, "topic": TOPIC,
                     "dead_letter_policy": {"dead_letter_topic": "projects/sec-tools/topics/dead",
                                            "max_delivery_attempts": 5}})
    feed = {"pull_subscription": SUBSCRIPTION, **overrides.pop("feed", {})}
    return write_config(tmp_path / "config.yaml", gcp_endpoint=fake.url, feed=feed, **overrides)


@contextlib.contextmanager
def running_daemon(config: Path, clock: Clock | None = None, state: str | None = None,
                   cycle: bool = True) -> Iterator[Daemon]:
    settings = load_settings(config)
    with Store(state or settings.state_target) as store:
        d = Daemon(settings, Auditor(settings, store), clock=clock)
        assert d.feed_pull is not None
        if cycle:
            assert d.auditor.run_cycle().outcome == "success"
        try:
            yield d
        finally:
            d.feed_pull.stop()


@pytest.fixture
def daemon(tmp_path: Path, fake_gcp: FakeGcp) -> Iterator[Daemon]:  # noqa: F811
    with running_daemon(pull_config(tmp_path, fake_gcp)) as d:
        yield d


def publish(fake: FakeGcp, *payloads: bytes) -> list[str]:
    return list(publisher_client(fake.url).publish(topic=TOPIC, messages=[{"data": p} for p in payloads]).message_ids)


def counted(d: Daemon, *outcomes: str) -> dict[str, float | None]:
    return {o: d.registry.get_sample_value("auditor_feed_messages_total", {"outcome": o}) for o in outcomes}


def subscription(fake: FakeGcp) -> Subscription:
    return pubsub(fake).subscriptions[SUBSCRIPTION]


def receiver(d: Daemon) -> PullReceiver:
    assert d.feed_pull is not None
    return d.feed_pull


def test_a_pulled_change_is_recorded_and_acknowledged_once(daemon: Daemon, fake_gcp: FakeGcp,  # noqa: F811
                                                           tmp_path: Path) -> None:
    change = temporal(public(iam_record(tmp_path / "org", BUCKET)), "2026-12-07T03:00:00Z")
    publish(fake_gcp, change)
    assert receiver(daemon).pull_once(timeout=10) == 1
    sub = subscription(fake_gcp)
    assert sub.outstanding == {} and sub.acked == 1 and sub.nacked == 0
    assert daemon.auditor.incremental.drain() == 1
    assert open_ids(daemon.auditor.store, BUCKET)
    assert event_drift(daemon.auditor.store) == [("new", "iam-no-public-members", BUCKET)]
    assert counted(daemon, "accepted", "failed") == {"accepted": 1, "failed": 0}
    assert receiver(daemon).pull_once(timeout=10) == 0  # acknowledged: not delivered again
    lag = daemon.registry.get_sample_value("auditor_feed_lag_seconds")
    assert lag is not None and lag >= 0  # the publish time the fake stamped was read from the pulled message


def test_redeliveries_older_states_and_non_feed_messages_are_acknowledged_and_counted(
        daemon: Daemon, fake_gcp: FakeGcp, tmp_path: Path) -> None:  # noqa: F811
    rec = iam_record(tmp_path / "org", BUCKET)
    newer = temporal(public(rec), "2026-12-07T03:00:05Z")
    older = temporal(rec, "2026-12-07T03:00:01Z")  # the private state from before, arriving late
    # the change again (the publisher retried, or Pub/Sub delivered it again after its acknowledgement), an older
    # state, data that is not JSON and JSON that is not a TemporalAsset
    publish(fake_gcp, newer, newer, older, b"\x00not json", b'{"window": {"startTime": "2026-12-07T03:00:00Z"}}')
    assert receiver(daemon).pull_once(timeout=10) == 5
    assert subscription(fake_gcp).outstanding == {} and subscription(fake_gcp).acked == 5
    assert counted(daemon, "accepted", "redelivery", "out_of_order", "invalid") == {
        "accepted": 1, "redelivery": 1, "out_of_order": 1, "invalid": 2}
    assert daemon.auditor.incremental.drain() == 1  # only the newer state reached the inbox
    assert event_drift(daemon.auditor.store) == [("new", "iam-no-public-members", BUCKET)]


def test_a_change_not_handed_on_is_nacked_delivered_again_and_handed_on_once(
        daemon: Daemon, fake_gcp: FakeGcp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    [mid] = publish(fake_gcp, temporal(public(iam_record(tmp_path / "org", BUCKET)), "2026-12-07T03:00:00Z"))

    def refuse(change: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(daemon.auditor.incremental, "submit", refuse)
    with pytest.raises(Exception, match="not handed on"):
        receiver(daemon).pull_once(timeout=10)
    sub = subscription(fake_gcp)
    assert sub.nacked == 1 and sub.acked == 0 and sub.delivered(mid) == 1
    monkeypatch.undo()
    # nacked (ack deadline 0): delivered again at once, not after the subscription's ack deadline
    assert receiver(daemon).pull_once(timeout=10) == 1
    assert sub.outstanding == {} and sub.acked == 1
    assert [r.body for r in fake_gcp.requests if r.path.endswith(":acknowledge")] == [
        {"ackIds": [f"ack-{mid}-2"]}]  # the second delivery's ackId
    assert counted(daemon, "accepted", "failed") == {"accepted": 1, "failed": 1}
    assert daemon.auditor.incremental.drain() == 1
    assert open_ids(daemon.auditor.store, BUCKET)


def test_the_fake_delivers_again_after_the_ack_deadline_with_a_new_ack_id(fake_gcp: FakeGcp) -> None:  # noqa: F811
    clock = Clock()
    pubsub(fake_gcp).clock = clock
    pubsub(fake_gcp).create_topic(TOPIC)
    client = subscriber_client(fake_gcp.url)
    client.create_subscription(request={"name": SUBSCRIPTION, "topic": TOPIC, "ack_deadline_seconds": 20})
    client.create_subscription(request={"name": SUBSCRIPTION + "-2", "topic": TOPIC})
    [mid] = publish(fake_gcp, b"one")
    first = client.pull(request={"subscription": SUBSCRIPTION, "max_messages": 10}).received_messages
    assert [m.message.data for m in first] == [b"one"] and first[0].delivery_attempt == 0  # no dead-letter policy
    assert not client.pull(request={"subscription": SUBSCRIPTION, "max_messages": 10}).received_messages  # leased
    clock.now += 21
    again = client.pull(request={"subscription": SUBSCRIPTION, "max_messages": 10}).received_messages
    assert [m.message.message_id for m in again] == [mid] and again[0].ack_id != first[0].ack_id
    client.acknowledge(request={"subscription": SUBSCRIPTION, "ack_ids": [first[0].ack_id]})  # stale: nothing
    assert subscription(fake_gcp).acked == 0 and subscription(fake_gcp).delivered(mid) == 2
    client.acknowledge(request={"subscription": SUBSCRIPTION, "ack_ids": [again[0].ack_id]})
    assert subscription(fake_gcp).acked == 1
    fanned = client.pull(request={"subscription": SUBSCRIPTION + "-2", "max_messages": 10}).received_messages
    assert [m.message.message_id for m in fanned] == [mid]  # every subscription of the topic gets it


def test_pulled_while_stopping_is_nacked_not_handed_on(daemon: Daemon, fake_gcp: FakeGcp,  # noqa: F811
                                                       tmp_path: Path) -> None:
    [mid] = publish(fake_gcp, temporal(public(iam_record(tmp_path / "org", BUCKET)), "2026-12-07T03:00:00Z"))
    stopping = threading.Event()
    stopping.set()
    assert receiver(daemon).pull_once(timeout=10, stop=stopping) == 0
    assert subscription(fake_gcp).nacked == 1 and counted(daemon, "accepted") == {"accepted": 0}
    assert receiver(daemon).pull_once(timeout=10) == 1  # the next leader (here: the next pull) gets it at once
    assert subscription(fake_gcp).delivered(mid) == 0 and subscription(fake_gcp).acked == 1


def test_the_leader_pulls_until_it_stops(daemon: Daemon, fake_gcp: FakeGcp, tmp_path: Path) -> None:  # noqa: F811
    d = daemon
    assert not receiver(d).running  # built, not started: the daemon starts it with the watches
    d.sync_watches()  # no HA: this replica leads
    assert receiver(d).running
    thread = receiver(d)._thread
    assert thread is not None and thread.is_alive()
    publish(fake_gcp, temporal(public(iam_record(tmp_path / "org", BUCKET)), "2026-12-07T03:00:00Z"))
    wait_until(lambda: subscription(fake_gcp).acked == 1, 30, "the pulled change to be acknowledged")
    assert counted(d, "accepted") == {"accepted": 1}
    assert d.registry.get_sample_value("auditor_feed_pull_up") == 1
    d.stop.set()  # SIGTERM
    d.sync_watches()
    assert not receiver(d).running and not thread.is_alive()
    assert d.registry.get_sample_value("auditor_feed_pull_up") == 0
    publish(fake_gcp, temporal(public(iam_record(tmp_path / "org", BUCKET)), "2026-12-07T03:00:09Z"))
    assert subscription(fake_gcp).acked == 1 and counted(d, "accepted") == {"accepted": 1}


def test_errors_back_off_with_jitter_and_a_long_outage_makes_the_daemon_unready(
        tmp_path: Path, fake_gcp: FakeGcp) -> None:  # noqa: F811
    clock = Clock()
    config = pull_config(tmp_path, fake_gcp, feed={"pull_backoff_initial_seconds": 2, "pull_backoff_max_seconds": 5,
                                                   "pull_down_after_seconds": 120})
    fault = fake_gcp.inject(Fault(403, times=None, path=":pull$", permission="pubsub.subscriptions.consume"))
    with running_daemon(config, clock, cycle=False) as d:
        waits = Waits()
        pull = receiver(d)
        pull._wait = waits
        pull.backoff = RetryPolicy(initial=2, maximum=5, jitter=random.Random(7))
        d.sync_watches()
        wait_until(lambda: pull.failures >= 4, 30, "four failed pulls")
        expected = random.Random(7)
        assert waits.asked[:4] == [expected.uniform(0, c) for c in (2, 4, 5, 5)]  # full jitter, doubling, capped
        assert not pull.up and d.registry.get_sample_value("auditor_feed_pull_up") == 0
        assert d.pull_ready()[0], "down for less than pull_down_after_seconds: still ready"
        clock.now += 121
        ok, why = d.pull_ready()
        assert not ok and "feed pull has been down for 121s" in why
        d.auditor.published = dataclasses.replace(d.auditor.published, cycles_completed=1)  # as after a cycle
        reply = respond(d, "GET", "/readyz", {})
        assert reply.status == 503 and b"feed pull" in reply.body
        fault.times = fault.hits  # the permission granted: the next pull answers
        wait_until(lambda: pull.up, 30, "the pull to answer again")
        assert d.pull_ready()[0] and respond(d, "GET", "/readyz", {}).status == 200


def test_only_the_leader_pulls(tmp_path: Path, fake_gcp: FakeGcp, postgres_url: str) -> None:  # noqa: F811
    config = pull_config(tmp_path, fake_gcp, state_url=postgres_url, ha={"enabled": True, "lease_seconds": 1})
    with running_daemon(config, cycle=False) as a, running_daemon(config, cycle=False) as b:
        a.schedule(), b.schedule()  # not started: the leader check runs by hand here
        a._poll_leadership()
        b._poll_leadership()
        assert a.auditor.leading and not b.auditor.leading
        assert receiver(a).running and not receiver(b).running
        receiver(a).stop()
        a.auditor.close()  # the leader goes away: its lock is released
        wait_until(lambda: (b._poll_leadership(), b.auditor.leading)[1], 30, "b to take over")
        assert receiver(b).running


def test_the_pull_permission_is_declared() -> None:
    from auditor.cli.permissions import load_declarations

    [decl] = [d for d in load_declarations() if d.component == "collect.cai_pull"]
    assert decl.permissions == ("pubsub.subscriptions.consume",) and not decl.remediation


def test_shutdown_stops_the_pull(tmp_path: Path, fake_gcp: FakeGcp) -> None:  # noqa: F811
    with running_daemon(pull_config(tmp_path, fake_gcp), cycle=False) as d:
        d.schedule()
        d.scheduler.start()
        d.sync_watches()  # as run() does once the scheduler runs
        thread = receiver(d)._thread
        assert thread is not None and thread.is_alive()
        wait_until(lambda: receiver(d).up, 30, "the first pull to answer")
        assert d.shutdown() == 0
        assert not receiver(d).running and not thread.is_alive()
        pulls = sum(r.path.endswith(":pull") for r in fake_gcp.requests)
        publish(fake_gcp, temporal(public(iam_record(tmp_path / "org", BUCKET)), "2026-12-07T03:00:00Z"))
        assert sum(r.path.endswith(":pull") for r in fake_gcp.requests) == pulls
        assert subscription(fake_gcp).outstanding == {} and subscription(fake_gcp).cursor == 0  # never pulled
