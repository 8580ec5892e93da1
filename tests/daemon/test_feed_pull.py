"""Feed messages pulled from a Pub/Sub subscription (auditor/collect/cai_pull.py), the alternative to push: the real
`google-cloud-pubsub` clients (REST transport) against the fake Google Cloud server's Pub/Sub topics and
subscriptions; a pulled change is recorded as drift like a pushed one, acknowledged once in the inbox, delivered
again when it could not be handed on, and a redelivery changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor.collect.gcp_clients import publisher_client, subscriber_client
from auditor.cycle import Auditor
from auditor.daemon import Daemon
from auditor.settings import load_settings
from auditor.state import Store
from tests.daemon.support import example_org, write_config
from tests.daemon.test_incremental import BUCKET, event_drift, iam_record, open_ids, public
from tests.fakes.gcp import FakeGcp, fake_gcp  # noqa: F401 - the fixture
from tests.fakes.gcp_outbound import pubsub

TOPIC = "projects/sec-tools/topics/cai-feed"
SUBSCRIPTION = "projects/sec-tools/subscriptions/cai-pull"


def temporal(asset: dict[str, Any], start: str, deleted: bool = False) -> bytes:
    return json.dumps({"window": {"startTime": start}, "deleted": deleted, "asset": asset}).encode()


@pytest.fixture
def daemon(tmp_path: Path, fake_gcp: FakeGcp) -> Any:  # noqa: F811
    example_org(tmp_path)
    pubsub(fake_gcp).create_topic(TOPIC)
    subscriber_client(fake_gcp.url).create_subscription(request={"name": SUBSCRIPTION, "topic": TOPIC})
    settings = load_settings(write_config(tmp_path / "config.yaml", gcp_endpoint=fake_gcp.url,
                                          feed={"pull_subscription": SUBSCRIPTION}))
    store = Store(settings.state_path)
    d = Daemon(settings, Auditor(settings, store))
    assert d.feed_pull is not None
    assert d.auditor.run_cycle().outcome == "success"
    yield d
    d.auditor.close()


def publish(fake: FakeGcp, *payloads: bytes) -> None:
    publisher_client(fake.url).publish(topic=TOPIC, messages=[{"data": p} for p in payloads])


def test_a_pulled_change_is_recorded_and_acknowledged(daemon: Daemon, fake_gcp: FakeGcp,  # noqa: F811
                                                      tmp_path: Path) -> None:
    org = tmp_path / "org"
    change = temporal(public(iam_record(org, BUCKET)), "2026-12-07T03:00:00Z")
    publish(fake_gcp, change, change, b"not a feed message")  # the change twice: published again by a retry
    assert daemon.feed_pull is not None
    assert daemon.feed_pull.pull_once(timeout=10) == 3
    sub = pubsub(fake_gcp).subscriptions[SUBSCRIPTION]
    assert sub.outstanding == {} and sub.acked == 3
    assert daemon.auditor.incremental.drain() == 1
    assert open_ids(daemon.auditor.store, BUCKET)
    assert event_drift(daemon.auditor.store) == [("new", "iam-no-public-members", BUCKET)]
    samples = {o: daemon.registry.get_sample_value("auditor_feed_messages_total", {"outcome": o})
               for o in ("accepted", "redelivery", "invalid")}
    assert samples == {"accepted": 1, "redelivery": 1, "invalid": 1}


def test_a_change_not_handed_on_is_delivered_again(daemon: Daemon, fake_gcp: FakeGcp,  # noqa: F811
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    org = tmp_path / "org"
    publish(fake_gcp, temporal(public(iam_record(org, BUCKET)), "2026-12-07T03:00:00Z"))

    def refuse(change: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(daemon.auditor.incremental, "submit", refuse)
    assert daemon.feed_pull is not None
    assert daemon.feed_pull.pull_once(timeout=10) == 0
    sub = pubsub(fake_gcp).subscriptions[SUBSCRIPTION]
    [(_ack_id, entry)] = sub.outstanding.items()
    monkeypatch.undo()
    entry[1] = 0.0  # its ack deadline passed
    assert daemon.feed_pull.pull_once(timeout=10) == 1
    assert sub.outstanding == {} and entry[2] == 2  # delivered twice
    daemon.auditor.incremental.drain()
    assert open_ids(daemon.auditor.store, BUCKET)
