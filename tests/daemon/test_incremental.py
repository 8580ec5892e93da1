"""Changes from events recorded between cycles (auditor/incremental.py): each feed message re-evaluates its asset and
the retained assets that depend on it, records new / resolved drift as a cycle would, ignores redeliveries and older
states (across restarts), and the next cycle reconciles and counts what the events missed."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor.collect.cai_feed import parse_push
from auditor.cycle import Auditor
from auditor.daemon import Daemon
from auditor.incremental import Retained
from auditor.model import Asset
from auditor.settings import Settings, load_settings
from auditor.state import Store
from tests.daemon.support import example_org, wait_until, write_config

BUCKET = "//storage.googleapis.com/helix-checkpoints"  # private in the example organization
PUBLIC_BUCKET = "//storage.googleapis.com/helix-model-cards-site"
TRAINING = "//container.googleapis.com/projects/ml-platform-prod/locations/us-central1/clusters/training/k8s"
JOB_VIEWER = TRAINING + "/rbac.authorization.k8s.io/clusterroles/ml-job-viewer"
ORG = "//cloudresourcemanager.googleapis.com/organizations/583920174615"


def records(org: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for f in sorted(org.glob("*.ndjson")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line)["name"] == name:
                out.append(json.loads(line))
    return out


def iam_record(org: Path, name: str) -> dict[str, Any]:
    return next(r for r in records(org, name) if "iam_policy" in r)


def resource_record(org: Path, name: str) -> dict[str, Any]:
    return next(r for r in records(org, name) if "resource" in r)


def envelope(asset: dict[str, Any], start: str, *, deleted: bool = False, message_id: str = "1",
             publish: str | None = None) -> bytes:
    asset = dict(asset)
    if deleted:
        asset.pop("iam_policy", None)
        asset.pop("resource", None)
    temporal = {"window": {"startTime": start}, "deleted": deleted, "asset": asset}
    data = base64.b64encode(json.dumps(temporal).encode()).decode()
    when = publish or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
    return json.dumps({"message": {"data": data, "messageId": message_id, "publishTime": when},
                       "subscription": "projects/sec-tools/subscriptions/cai-push"}).encode()


def public(rec: dict[str, Any]) -> dict[str, Any]:
    rec = json.loads(json.dumps(rec))
    rec["iam_policy"]["bindings"].append({"role": "roles/storage.objectViewer", "members": ["allUsers"]})
    return rec


def open_ids(store: Store, asset: str, rule: str | None = None) -> set[str]:
    return {f.id for f in store.open_findings() if f.asset == asset and (rule is None or f.rule == rule)}


def event_drift(store: Store) -> list[tuple[str, str, str]]:
    rows = store.db.rows("SELECT change, rule, asset FROM drift_events WHERE origin = 'event' ORDER BY id")
    return [(r[0], r[1], r[2]) for r in rows]


def missed(store: Store) -> dict[str, float]:
    return {lb["asset_type"]: v for lb, v in store.counters("reconcile_missed_total")}


@pytest.fixture
def org(tmp_path: Path) -> Path:
    return example_org(tmp_path)[0]


@pytest.fixture
def settings(tmp_path: Path, org: Path) -> Settings:
    return load_settings(write_config(tmp_path / "config.yaml"))


@pytest.fixture
def auditor(settings: Settings) -> Iterator[Auditor]:
    a = Auditor(settings, Store(settings.state_path))
    assert a.run_cycle().outcome == "success"  # the baseline, and the retained index
    try:
        yield a
    finally:
        a.close()


def push(a: Auditor, body: bytes) -> int:
    a.feed_change(parse_push(body))
    return a.incremental.drain()


def test_a_change_is_recorded_as_drift_with_its_latency(auditor: Auditor, org: Path) -> None:
    store = auditor.store
    assert not open_ids(store, BUCKET)
    assert push(auditor, envelope(public(iam_record(org, BUCKET)), "2026-12-07T03:00:00Z")) == 1
    assert event_drift(store) == [("new", "iam-no-public-members", BUCKET)]
    [f] = [f for f in store.open_findings() if f.asset == BUCKET]
    assert f.rule == "iam-no-public-members" and f.resolved_at is None
    # the same drift records and counters as a cycle's
    counters = {tuple(sorted(lb.items())): v for lb, v in store.counters("drift_events_total")}
    assert counters[(("change", "new"), ("rule", "iam-no-public-members"), ("severity", "critical"))] == 1
    latency = auditor.incremental.latency.collect()[0]
    assert next(s.value for s in latency.samples if s.name.endswith("_count")) == 1
    # a second change of the same asset, making it private again, resolves it
    assert push(auditor, envelope(iam_record(org, BUCKET), "2026-12-07T03:00:02Z", message_id="2")) == 1
    assert event_drift(store)[-1] == ("resolved", "iam-no-public-members", BUCKET)
    assert not open_ids(store, BUCKET)
    # and making it public again reopens the same finding
    push(auditor, envelope(public(iam_record(org, BUCKET)), "2026-12-07T03:00:04Z", message_id="3"))
    assert open_ids(store, BUCKET) == {f.id}
    assert store.pending_change_count() == 0


def test_a_deletion_resolves_the_asset_findings(auditor: Auditor, org: Path) -> None:
    store = auditor.store
    before = open_ids(store, PUBLIC_BUCKET)
    assert before
    push(auditor, envelope(iam_record(org, PUBLIC_BUCKET), "2026-12-07T03:00:00Z", deleted=True))
    assert not open_ids(store, PUBLIC_BUCKET)
    assert sorted(c for c, _, a in event_drift(store) if a == PUBLIC_BUCKET) == ["resolved"] * len(before)


def test_a_changed_cluster_role_re_evaluates_the_bindings_that_reference_it(auditor: Auditor, org: Path) -> None:
    store = auditor.store
    bindings = [TRAINING + "/rbac.authorization.k8s.io/clusterrolebindings/" + b
                for b in ("nlp-job-viewer", "platform-job-viewer")]
    assert not any(open_ids(store, b, "rbac-no-powerful-cluster-roles") for b in bindings)
    role = resource_record(org, JOB_VIEWER)
    powerful = json.loads(json.dumps(role))
    powerful["resource"]["data"]["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    push(auditor, envelope(powerful, "2026-12-07T03:00:00Z"))
    # the role itself did not change verdict; both bindings of it did
    assert sorted(a for c, r, a in event_drift(store) if r == "rbac-no-powerful-cluster-roles" and c == "new") \
        == sorted(bindings)
    push(auditor, envelope(role, "2026-12-07T03:00:01Z", message_id="2"))
    assert not any(open_ids(store, b, "rbac-no-powerful-cluster-roles") for b in bindings)
    # deleting the role: its bindings grant nothing any more
    push(auditor, envelope(powerful, "2026-12-07T03:00:02Z", message_id="3"))
    push(auditor, envelope(role, "2026-12-07T03:00:03Z", message_id="4", deleted=True))
    assert not any(open_ids(store, b, "rbac-no-powerful-cluster-roles") for b in bindings)


def test_redelivery_and_older_states_change_nothing_also_after_a_restart(settings: Settings, org: Path) -> None:
    newer = envelope(public(iam_record(org, BUCKET)), "2026-12-07T03:00:05Z", message_id="b")
    older = envelope(iam_record(org, BUCKET), "2026-12-07T03:00:01Z", message_id="a")
    a = Auditor(settings, Store(settings.state_path))
    try:
        a.run_cycle()
        push(a, newer)
        push(a, newer)  # redelivered
        push(a, older)  # an older state, delivered late
        assert event_drift(a.store) == [("new", "iam-no-public-members", BUCKET)]
        outcomes = {s.labels["outcome"]: s.value for s in a.incremental.changes.collect()[0].samples
                    if s.name.endswith("_total")}
        assert (outcomes["recorded"], outcomes["redelivery"], outcomes["out_of_order"]) == (1, 1, 1)
    finally:
        a.close()
    # a new process on the same state: the marks are in the store
    a = Auditor(settings, Store(settings.state_path))
    try:
        assert a.run_cycle().outcome == "success"
        push(a, newer)
        push(a, older)
        assert event_drift(a.store) == [("new", "iam-no-public-members", BUCKET)]
        assert open_ids(a.store, BUCKET)  # the cycle kept what the recent event recorded
    finally:
        a.close()


def test_changes_wait_in_the_inbox_until_a_cycle_has_filled_the_index(settings: Settings, org: Path) -> None:
    a = Auditor(settings, Store(settings.state_path))
    try:
        a.feed_change(parse_push(envelope(public(iam_record(org, BUCKET)), "2026-12-07T03:00:05Z")))
        assert a.incremental.drain() == 0 and a.store.pending_change_count() == 1
        a.run_cycle()
        assert a.incremental.drain() == 1 and a.store.pending_change_count() == 0
        assert open_ids(a.store, BUCKET)
    finally:
        a.close()


def set_iam(org: Path, rec: dict[str, Any]) -> None:
    """The export says the asset's IAM policy is now `rec`'s (what the next cycle reads)."""
    for path in sorted(org.glob("*.ndjson")):
        lines = path.read_text(encoding="utf-8").splitlines()
        out = [json.dumps(rec) if ln.strip() and json.loads(ln)["name"] == rec["name"]
               and "iam_policy" in json.loads(ln) else ln for ln in lines]
        if out != lines:
            path.write_text("\n".join(out) + "\n", encoding="utf-8")


def test_the_cycle_reconciles_a_dropped_message_and_counts_it(auditor: Auditor, org: Path) -> None:
    store = auditor.store
    private = iam_record(org, BUCKET)
    # delivered: the event records the drift, and the cycle, reading the same state, finds nothing missed
    push(auditor, envelope(public(private), "2026-12-07T03:00:00Z"))
    set_iam(org, public(private))
    rec = auditor.run_cycle().recorded
    assert rec is not None and rec.drift == [] and missed(store) == {}
    # dropped: the bucket is made private again and its message never arrives; the next cycle (long after the
    # event, past the grace given to a lagging listing) finds it, records it, and counts it as missed
    store.db.execute("UPDATE change_marks SET recorded_at = recorded_at - 3600")
    set_iam(org, private)
    rec = auditor.run_cycle().recorded
    assert rec is not None and [(e.change, e.asset) for e in rec.drift] == [("resolved", BUCKET)]
    assert missed(store) == {"storage.googleapis.com/Bucket": 1}
    exported = Daemon(auditor.settings, auditor).registry.get_sample_value(
        "auditor_reconcile_missed_total", {"asset_type": "storage.googleapis.com/Bucket"})
    assert exported == 1


def test_an_organization_change_asks_for_an_early_full_cycle(auditor: Auditor, org: Path) -> None:
    asked: list[str] = []
    auditor.incremental.request_cycle = asked.append
    rec = resource_record(org, ORG)
    rec["resource"]["data"]["displayName"] = "helix-ml.example.org"
    push(auditor, envelope(rec, "2026-12-07T03:00:00Z"))
    assert asked == ["organization_changed"]
    sample = auditor.incremental.early.collect()[0].samples[0]
    assert sample.labels == {"reason": "organization_changed"} and sample.value == 1


def test_the_daemon_records_a_push_within_its_worker(tmp_path: Path, org: Path) -> None:
    settings = load_settings(write_config(tmp_path / "config.yaml"))
    with Store(settings.state_path) as store:
        d = Daemon(settings, Auditor(settings, store))
        host, port = d.start_http()
        d.auditor.run_cycle()
        d.auditor.incremental.start()
        try:
            import urllib.request

            req = urllib.request.Request(f"http://{host}:{port}/v1/cai-feed", method="POST",
                                         data=envelope(public(iam_record(org, BUCKET)), "2026-12-07T03:00:00Z"))
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 204
            wait_until(lambda: open_ids(store, BUCKET), 20, "the drift recorded by the worker")
            wait_until(lambda: d.registry.get_sample_value("auditor_event_to_drift_seconds_count") == 1, 20,
                       "the latency observed")
            assert d.registry.get_sample_value("auditor_incremental_pending") == 0
        finally:
            d.auditor.incremental.stop()
            assert d.server is not None
            d.server.shutdown()


def test_on_a_shared_database_a_follower_stores_pushes_and_only_the_leader_records_them(
        tmp_path: Path, org: Path, postgres_url: str) -> None:
    settings = load_settings(write_config(tmp_path / "config.yaml", state_url=postgres_url))
    leader = Auditor(settings, Store(postgres_url))
    follower = Auditor(settings, Store(postgres_url))
    try:
        assert leader.run_cycle().outcome == "success"
        assert follower.run_cycle().outcome == "follower"
        # The push reaches the follower (Pub/Sub spreads pushes over the Service): it is answered from the shared
        # inbox, not refused, and the follower records nothing even with an index to evaluate against.
        follower.feed_change(parse_push(envelope(public(iam_record(org, BUCKET)), "2026-12-07T03:00:00Z")))
        follower.incremental.filled = True
        assert follower.incremental.drain() == 0 and follower.store.pending_change_count() == 1
        assert leader.incremental.drain() == 1
        assert event_drift(leader.store) == [("new", "iam-no-public-members", BUCKET)]
        assert follower.store.pending_change_count() == 0
    finally:
        follower.close()
        leader.close()


def test_a_changed_namespace_re_evaluates_its_cluster_tenancy(auditor: Auditor, org: Path) -> None:
    store = auditor.store
    share = TRAINING + "/namespaces/tenant-nlp/rbac.authorization.k8s.io/rolebindings/share-with-vision"
    assert open_ids(store, share, "rbac-tenant-isolation")  # tenant-vision's service account bound in tenant-nlp
    vision = resource_record(org, TRAINING + "/namespaces/tenant-vision")
    merged = json.loads(json.dumps(vision))
    merged["resource"]["data"]["metadata"]["labels"]["platform.helix-ml.example/tenant"] = "nlp"
    push(auditor, envelope(merged, "2026-12-07T03:00:00Z"))  # tenant-vision now belongs to tenant nlp
    assert not open_ids(store, share, "rbac-tenant-isolation")
    assert ("resolved", "rbac-tenant-isolation", share) in event_drift(store)
    push(auditor, envelope(vision, "2026-12-07T03:00:01Z", message_id="2"))
    assert open_ids(store, share, "rbac-tenant-isolation")


def test_drift_from_an_event_is_notified_like_a_cycle_s(tmp_path: Path, org: Path) -> None:
    from tests.sinks.test_notify import Receiver

    receiver = Receiver()
    try:
        settings = load_settings(write_config(tmp_path / "config.yaml", notifications={
            "queue_dir": str(tmp_path / "queue"), "retry_attempts": 2, "retry_initial_seconds": 0,
            "webhooks": [{"name": "soc", "url": receiver.url}]}))
        a = Auditor(settings, Store(settings.state_path))
        try:
            a.run_cycle()
            assert receiver.received == []  # the baseline is not drift
            push(a, envelope(public(iam_record(org, BUCKET)), "2026-12-07T03:00:00Z"))
            [event] = receiver.events()
            assert event["type"].endswith(".new") and event.data["asset"] == BUCKET
            assert event.data["rule"] == "iam-no-public-members"
        finally:
            a.close()
    finally:
        receiver.stop()


def test_watch_changes_are_ordered_by_resource_version(auditor: Auditor, org: Path) -> None:
    from auditor.collect.cai_feed import FeedChange, time_key
    from auditor.collect.kube_watch import SOURCE, rv_sequence

    role = resource_record(org, JOB_VIEWER)
    powerful = json.loads(json.dumps(role))
    powerful["resource"]["data"]["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})

    def watched(rec: dict[str, Any], rv: str, received: str) -> FeedChange:
        asset = parse_push(envelope(rec, received)).asset
        return FeedChange(asset, False, time_key(received), "resource", f"watch:{rv}", received, source=SOURCE,
                          sequence=rv_sequence(rv))

    binding = TRAINING + "/rbac.authorization.k8s.io/clusterrolebindings/nlp-job-viewer"
    auditor.feed_change(watched(powerful, "90000", "2026-12-07T03:00:00Z"))
    auditor.feed_change(watched(role, "89999", "2026-12-07T03:00:05Z"))  # received later, an older version
    auditor.feed_change(watched(powerful, "90000", "2026-12-07T03:00:06Z"))  # the same version again (a relist)
    assert auditor.incremental.drain() == 3
    assert open_ids(auditor.store, binding, "rbac-no-powerful-cluster-roles")
    assert [c for c, r, a in event_drift(auditor.store) if a == binding] == ["new"]


def _asset(name: str, kind: str = "rbac.authorization.k8s.io/ClusterRole", rules: int = 0) -> Asset:
    return Asset(TRAINING + "/" + name, kind, resource={"rules": [{"verbs": ["get"]}] * rules})


def test_the_retained_index_is_updated_in_place_by_a_cycle() -> None:
    """One index: a cycle replaces what it reads, drops what it did not see of the types it read completely, keeps
    the types it could not read, and never replaces an asset a change was recorded for while it ran."""
    kinds = frozenset({"rbac.authorization.k8s.io/ClusterRole", "rbac.authorization.k8s.io/Role"})
    index = Retained(kinds)
    index.begin(kinds)
    for a in (_asset("a"), _asset("b"), _asset("c"), _asset("r", "rbac.authorization.k8s.io/Role")):
        index.observe(a)
    index.observe(Asset("//storage.googleapis.com/x", "storage.googleapis.com/Bucket"))  # not retained
    index.end(True)
    assert {k[0].rsplit("/", 1)[-1] for v in index.by_type.values() for k in v} == {"a", "b", "c", "r"}
    kept = index.by_type["rbac.authorization.k8s.io/ClusterRole"]
    # The next cycle: "a" changed, "b" is gone, "c" was changed by an event meanwhile (newer than the cycle's copy),
    # and the Role type could not be read.
    index.begin(kinds)
    index.observe(_asset("a", rules=2))
    index.put(_asset("c", rules=5))
    index.hold(TRAINING + "/c")
    index.observe(_asset("c", rules=1))
    index.end(False, ["rbac.authorization.k8s.io/Role"])
    assert index.by_type["rbac.authorization.k8s.io/ClusterRole"] is kept  # the same table, not a copy
    names = {k[0].rsplit("/", 1)[-1]: len(a.resource["rules"]) for k, a in kept.items()}
    assert names == {"a": 2, "c": 5}
    assert [a.name for a in index.assets("rbac.authorization.k8s.io/Role")] == [TRAINING + "/r"]
    # A cycle that was not recorded drops nothing.
    index.begin(kinds)
    index.end(False)
    assert len(kept) == 2


def test_a_cycle_keeps_one_index_and_serve_once_none(settings: Settings, org: Path) -> None:
    a = Auditor(settings, Store(settings.state_path))
    try:
        assert a.run_cycle().outcome == "success"
        index = a.incremental.retained
        n = index.count()
        assert n > 0 and a.incremental.cycle_started() is index
        a.incremental.retained.end(False)
        # A cluster role deleted from the export: the next cycle drops it from the same index.
        for path in sorted(org.glob("*.ndjson")):
            lines = path.read_text(encoding="utf-8").splitlines()
            out = [ln for ln in lines if not (ln.strip() and json.loads(ln)["name"] == JOB_VIEWER)]
            if out != lines:
                path.write_text("\n".join(out) + "\n", encoding="utf-8")
        assert a.run_cycle().outcome == "success"
        assert a.incremental.retained is index and index.count() == n - 1
        assert not any(k[0] == JOB_VIEWER for v in index.by_type.values() for k in v)
    finally:
        a.close()
    once = Auditor(settings, Store(settings.state_path), publish_at_start=False, retain=False)
    try:
        assert once.run_cycle().outcome == "success" and once.incremental.retained.count() == 0
    finally:
        once.close()
