"""Drift notifications against a local HTTP receiver and the fake Pub/Sub: CloudEvents (parsed back with the
`cloudevents` SDK), a Slack-compatible body, new / resolved / reopened, and a sink that is down across a restart
of the daemon losing nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from auditor.cycle import Auditor
from auditor.settings import load_settings
from auditor.sinks.config import Notifications
from auditor.sinks.ledger import Ledger
from auditor.sinks.notify import DiskQueue, Notice, Notifier, notices
from auditor.state import Store
from tests.daemon.support import PUBLIC_RULE, example_org, free_port, make_drift, write_config
from tests.fakes.gcp import FakeGcp
from tests.fakes.gcp_outbound import pubsub
from tests.state.test_store import cycle, finding


class Receiver:
    """A webhook endpoint on 127.0.0.1: records what it is sent; answers `status` (200 unless told otherwise)."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.status < 300:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[Any]:
        return [Event(from_http_event(HTTPMessage(h, b))) for h, b in self.received]


class Event:
    """A received CloudEvent, read like a mapping of its attributes (and `.data`)."""

    def __init__(self, event: Any) -> None:
        self.attrs = event.get_attributes()
        self.data = event.get_data()

    def __getitem__(self, key: str) -> Any:
        return self.attrs[key]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _config(tmp_path: Path, fake: FakeGcp, **notifications: Any) -> Path:
    example_org(tmp_path)
    topic = pubsub(fake).create_topic("projects/sec-tools/topics/drift")
    cfg = {"queue_dir": str(tmp_path / "queue"), "retry_attempts": 2, "retry_initial_seconds": 0,
           "report_url": "https://auditor.example/report", "pubsub": [{"name": "bus", "topic": topic}]}
    cfg.update(notifications)
    return write_config(tmp_path / "config.yaml", gcp_endpoint=fake.url, notifications=cfg)


def test_drift_goes_out_as_cloudevents_to_every_sink(tmp_path: Path, fake_gcp: FakeGcp, receiver: Receiver) -> None:
    slack = Receiver()
    try:
        cfg = _config(tmp_path, fake_gcp, webhooks=[{"name": "soc", "url": receiver.url},
                                                    {"name": "chat", "url": slack.url, "slack": True}])
        settings = load_settings(cfg)
        store = Store(settings.state_path)
        auditor = Auditor(settings, store)
        assert auditor.run_cycle().outcome == "success"
        assert receiver.received == [] and slack.received == []  # the baseline is not drift
        drift = make_drift(tmp_path / "org")
        out = auditor.run_cycle()
        assert out.outbound is not None and out.outbound["announced"] >= 2

        events = receiver.events()
        by_change = {e["type"].rsplit(".", 1)[1]: e for e in events}
        assert set(by_change) == {"new", "resolved"}
        new = by_change["new"]
        assert new["specversion"] == "1.0" and new["source"] == "//drift-auditor"
        assert new.data["asset"] == drift.made_public and new.data["rule"] == PUBLIC_RULE
        assert new["subject"] == new.data["finding_id"] and new["severity"] == new.data["severity"]
        assert new.data["labels"] == {"domain": "iam"}  # the rule's labels travel with its findings
        # where the asset sits, as the scan's reports say it (its CAI ancestors, from the top down)
        assert new.data["project"] and new.data["project"].startswith("projects/")
        assert new.data["ancestry"].startswith("organizations/") and new.data["ancestry"].endswith(new.data["project"])
        assert new.data["report_url"] == f"https://auditor.example/report#finding-{new.data['finding_id']}"
        assert by_change["resolved"].data["asset"] == drift.made_private
        assert len({e["id"] for e in events}) == len(events)

        bodies = [json.loads(b) for _, b in slack.received]
        assert len(bodies) == len(events)
        assert any("NEW" in b["text"] and drift.made_public in b["text"] for b in bodies)
        assert all(h["ce-id"] and h["ce-type"].startswith("com.github.drift-auditor.finding.")
                   for h, _ in slack.received)

        msgs = pubsub(fake_gcp).messages["projects/sec-tools/topics/drift"]
        assert sorted(m["attributes"]["ce-id"] for m in msgs) == sorted(e["id"] for e in events)
        assert all(json.loads(m["data"])["finding_id"] for m in msgs)
        counters = {(lb["sink"], lb["outcome"]): v for lb, v in store.counters("notifications_total")}
        assert counters[("soc", "delivered")] == counters[("bus", "delivered")] == len(events)
        assert dict(auditor.published.view.notifications_queued) == {"soc": 0, "chat": 0, "bus": 0}
    finally:
        slack.stop()


def test_a_finding_that_comes_back_is_reopened(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    a, b = finding("r", "//storage.googleapis.com/a"), finding("r", "//storage.googleapis.com/b")
    changes = []
    now = time.time()
    with Ledger(store) as ledger:
        for i, found in enumerate(([a], [a, b], [b], [a, b])):
            rec = store.record_cycle(cycle(now + i, found))
            items, marks = notices(rec.drift, ledger, baseline=rec.baseline)
            ledger.put("notify", marks)
            changes.append(sorted((n.change, n.finding_id) for n in items))
    assert changes == [[], [("new", b.id)], [("resolved", a.id)], [("reopened", a.id)]]


def test_a_sink_down_across_a_restart_loses_nothing(tmp_path: Path, fake_gcp: FakeGcp) -> None:
    port = free_port()
    cfg = _config(tmp_path, fake_gcp, webhooks=[{"name": "soc", "url": f"http://127.0.0.1:{port}/hook"}])
    settings = load_settings(cfg)
    store = Store(settings.state_path)
    auditor = Auditor(settings, store)
    auditor.run_cycle()
    make_drift(tmp_path / "org")
    out = auditor.run_cycle()  # nothing listens on the port: connection refused, retried, then kept
    assert out.outbound is not None
    assert out.outbound["notifications"]["queued"]["soc"] == out.outbound["announced"] >= 2
    assert "soc" in out.outbound["notifications"]["errors"]
    assert dict(auditor.published.view.notifications_queued)["soc"] == out.outbound["announced"]
    failed = {(lb["sink"], lb["outcome"]): v for lb, v in store.counters("notifications_total")}
    assert failed[("soc", "failed")] >= 1 and ("soc", "delivered") not in failed
    queued_ids = [n.id for _, n in DiskQueue(tmp_path / "queue" / "soc", 100).peek() if n is not None]
    store.close()

    # The daemon restarts; the receiver comes back on the same address, at first answering 503, then 200.
    receiver = Receiver(port)
    try:
        receiver.status = 503
        settings = load_settings(cfg)
        store = Store(settings.state_path)
        auditor = Auditor(settings, store)
        assert dict(auditor.published.view.notifications_queued)["soc"] == len(queued_ids)
        auditor.run_cycle()  # nothing new; the queue is retried and still refused
        assert receiver.received == []
        receiver.status = 200
        out = auditor.run_cycle()
        assert out.outbound is not None and out.outbound["notifications"]["queued"]["soc"] == 0
        assert [e["id"] for e in receiver.events()] == queued_ids  # every event, in order
        counters = {(lb["sink"], lb["outcome"]): v for lb, v in store.counters("notifications_total")}
        assert counters[("soc", "delivered")] == len(queued_ids)
    finally:
        receiver.stop()


def test_the_queue_is_bounded_and_says_what_it_dropped(tmp_path: Path) -> None:
    counted: list[tuple[str, str, int]] = []
    cfg = Notifications(webhooks=[{"name": "soc", "url": "http://127.0.0.1:9/hook"}],  # type: ignore[list-item]
                        queue_dir=tmp_path / "q", queue_max_events=3)
    from auditor.sinks.notify import build_sinks

    n = Notifier(cfg, build_sinks(cfg), lambda s, o, k: counted.append((s, o, k)))
    items = [Notice(f"id{i}", "new", f"f{i}", "r", "high", "a", "t", "m", False, float(i), 1) for i in range(5)]
    n.enqueue(items)
    assert n.queued() == {"soc": 3}
    assert counted == [("soc", "dropped", 2)]
    assert [x.id for _, x in n.queues["soc"].peek() if x] == ["id2", "id3", "id4"]  # the newest are kept


def _scraped(view: Any, now: float) -> dict[tuple[str, str], float]:
    """The queue series a scrape at `now` exports, parsed back from the text format."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from auditor.report.metrics import AuditorCollector, StageHistogram, make_registry

    text = generate_latest(make_registry(AuditorCollector(lambda: view, StageHistogram(), clock=lambda: now)))
    return {(s.name, s.labels["sink"]): s.value for fam in text_string_to_metric_families(text.decode())
            for s in fam.samples if s.name.startswith("auditor_notifications_") and "outcome" not in s.labels}


def test_a_sink_that_stays_down_shows_as_a_growing_queue_age(tmp_path: Path, fake_gcp: FakeGcp) -> None:
    """An outage of a receiver hides drift: the oldest waiting event's age says so (the alert
    AuditorNotificationsDelayed reads it), and drops to 0 once the queue is delivered."""
    port = free_port()
    cfg = _config(tmp_path, fake_gcp, webhooks=[{"name": "soc", "url": f"http://127.0.0.1:{port}/hook"}])
    settings = load_settings(cfg)
    store = Store(settings.state_path)
    auditor = Auditor(settings, store)
    try:
        auditor.run_cycle()
        view = auditor.published.view
        assert _scraped(view, 1e10)[("auditor_notifications_oldest_age_seconds", "soc")] == 0.0  # nothing waits
        make_drift(tmp_path / "org")
        auditor.run_cycle()  # nothing listens: the events stay queued
        view = auditor.published.view
        files = sorted(p.name for p in (tmp_path / "queue" / "soc").iterdir())
        queued_at = int(files[0][:20]) / 1e9  # the oldest file's name: when it was queued
        assert dict(view.notifications_oldest) == {"soc": queued_at}  # Pub/Sub delivered: its queue is empty
        for later in (60.0, 7200.0):
            series = _scraped(view, queued_at + later)
            assert series[("auditor_notifications_oldest_age_seconds", "soc")] == pytest.approx(later)  # grows
            assert series[("auditor_notifications_oldest_age_seconds", "bus")] == 0.0
            assert series[("auditor_notifications_queued", "soc")] == len(files) >= 2
        # The receiver comes back: the next cycle delivers the queue and the age is 0 again.
        receiver = Receiver(port)
        try:
            auditor.run_cycle()
        finally:
            receiver.stop()
        assert len(receiver.received) == len(files)
        series = _scraped(auditor.published.view, queued_at + 7200.0)
        assert series[("auditor_notifications_oldest_age_seconds", "soc")] == 0.0
        assert series[("auditor_notifications_queued", "soc")] == 0
    finally:
        store.close()


def test_an_event_another_flush_delivered_meanwhile_is_skipped_not_reported(tmp_path: Path, receiver: Receiver) -> None:
    """`auditor notify flush` beside the daemon: both list the queue; what one delivers, the other finds gone. That
    is no unreadable event (no error, no `failed` count), and nothing is sent twice for it."""
    counted: list[tuple[str, str, int]] = []
    cfg = Notifications(webhooks=[{"name": "soc", "url": receiver.url}],  # type: ignore[list-item]
                        queue_dir=tmp_path / "q", retry_attempts=1)
    from auditor.sinks.notify import build_sinks

    n = Notifier(cfg, build_sinks(cfg), lambda s, o, k: counted.append((s, o, k)))
    n.enqueue([Notice(f"id{i}", "new", f"f{i}", "r", "high", "a", "t", "m", False, float(i), 1) for i in range(3)])
    q = n.queues["soc"]
    real_files = q._files

    def listing() -> list[Path]:
        # The other flusher delivers id1 between this one's listing and its reading of id1.
        q._files = real_files  # type: ignore[method-assign]
        listed = real_files()
        listed[1].unlink()
        return listed

    q._files = listing  # type: ignore[method-assign]
    result = n.flush()
    assert [e["id"] for e in receiver.events()] == ["id0", "id2"]
    assert result.delivered == {"soc": 2} and result.errors == {} and len(q) == 0
    assert counted == [("soc", "delivered", 2)]
