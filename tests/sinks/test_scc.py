"""Security Command Center sync with the real `google-cloud-securitycenter` client (REST, anonymous credentials)
against the fake API server: one SCC finding per finding, state following the store, only changes written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.cloud import securitycenter_v1

from auditor.collect.gcp_clients import security_center_client
from auditor.collect.retry import RetryPolicy
from auditor.cycle import Auditor
from auditor.settings import load_settings
from auditor.sinks.ledger import Ledger
from auditor.sinks.scc import SINK, SccSync, scc_finding_id
from auditor.state import Store
from tests.daemon.support import PUBLIC_RULE, example_org, make_drift, write_config
from tests.fakes.gcp import FakeGcp, Fault
from tests.fakes.gcp_outbound import SccFake, scc
from tests.state.test_store import cycle, finding

ORG = "organizations/583920174615"
A = finding("iam-no-public-members", "//storage.googleapis.com/a", sev="critical")
B = finding("iam-no-external-members", "//storage.googleapis.com/b", sev="info", exempt=True)
C = finding("iam-buckets-uniform-access", "//storage.googleapis.com/c", sev="medium")


def _sync(fake: FakeGcp, store: Store, source: str, **kw: object) -> object:
    with Ledger(store) as ledger:
        return SccSync(security_center_client(fake.url), source, ledger,
                       retry=RetryPolicy(attempts=3, sleep=lambda s: None), **kw).sync()  # type: ignore[arg-type]


@pytest.fixture
def source(fake_gcp: FakeGcp) -> str:
    return scc(fake_gcp).create_source(ORG, "drift-auditor")


def test_each_finding_becomes_one_scc_finding_and_a_rerun_writes_nothing(
        tmp_path: Path, fake_gcp: FakeGcp, source: str) -> None:
    store = Store(tmp_path / "state.db")
    store.record_cycle(cycle(time.time(), [A, B, C]))
    uri = "https://auditor.example/report#finding-{id}"
    r = _sync(fake_gcp, store, source, external_uri=uri)
    assert (r.created, r.failed) == (3, 0)  # type: ignore[attr-defined]
    held = scc(fake_gcp).in_source(source)
    assert set(held) == {scc_finding_id(f.id) for f in (A, B, C)}
    a = held[A.id]
    assert a["category"] == "iam-no-public-members" and a["resourceName"] == "//storage.googleapis.com/a"
    assert a["severity"] == "CRITICAL" and a["state"] == "ACTIVE" and a["findingClass"] == "MISCONFIGURATION"
    assert a["externalUri"] == f"https://auditor.example/report#finding-{A.id}"
    props = a["sourceProperties"]
    assert props["drift_auditor_finding_id"] == A.id and props["check"] == "iam.forbidden_members"
    assert props["asset_type"] == "storage.googleapis.com/Bucket" and props["exempted"] is False
    assert held[B.id]["state"] == "INACTIVE" and held[B.id]["severity"] == "LOW"  # exempted; info maps to LOW
    assert held[B.id]["sourceProperties"]["exemption_owner"] == "team"

    writes = dict(scc(fake_gcp).writes)
    again = _sync(fake_gcp, store, source, external_uri=uri)
    assert (again.written, again.unchanged) == (0, 3)  # type: ignore[attr-defined]
    assert dict(scc(fake_gcp).writes) == writes

    # The real client reads back what the sync wrote, through the list API with a filter.
    client = security_center_client(fake_gcp.url)
    active = list(client.list_findings(request={"parent": f"{ORG}/sources/-", "filter": 'state="ACTIVE"'}))
    assert sorted(r.finding.category for r in active) == ["iam-buckets-uniform-access", "iam-no-public-members"]
    assert all(r.finding.state == securitycenter_v1.Finding.State.ACTIVE for r in active)


def test_state_follows_the_store_with_set_state_and_content_with_patch(
        tmp_path: Path, fake_gcp: FakeGcp, source: str) -> None:
    store = Store(tmp_path / "state.db")
    now = time.time()
    store.record_cycle(cycle(now, [A, C]))
    _sync(fake_gcp, store, source)
    fake_gcp.reset_requests()
    store.record_cycle(cycle(now + 10, [A]))  # C resolved
    r = _sync(fake_gcp, store, source)
    assert (r.state_changed, r.created, r.updated) == (1, 0, 0)  # type: ignore[attr-defined]
    assert [c.path for c in fake_gcp.calls()] == [f"/v1/{source}/findings/{C.id}:setState"]
    assert scc(fake_gcp).in_source(source)[C.id]["state"] == "INACTIVE"

    first = scc(fake_gcp).in_source(source)[C.id]["sourceProperties"]["first_seen"]
    store.record_cycle(cycle(now + 20, [A, C]))  # C is back: a new occurrence (new first_seen), patched with its state
    assert _sync(fake_gcp, store, source).updated == 1  # type: ignore[attr-defined]
    back = scc(fake_gcp).in_source(source)[C.id]
    assert back["state"] == "ACTIVE" and back["sourceProperties"]["first_seen"] > first

    # The rule's severity changed: the content is patched, with an update mask of mutable fields only.
    fake_gcp.reset_requests()
    store.record_cycle(cycle(now + 30, [A, finding("iam-buckets-uniform-access", "//storage.googleapis.com/c",
                                                   sev="high")]))
    assert _sync(fake_gcp, store, source).updated == 1  # type: ignore[attr-defined]
    (patch,) = fake_gcp.calls("PATCH")
    mask = patch.query["updateMask"][0].split(",")
    assert "severity" in mask and "category" not in mask and "resourceName" not in mask
    assert scc(fake_gcp).in_source(source)[C.id]["severity"] == "HIGH"


def test_a_lost_ledger_patches_what_exists_and_stays_idempotent(
        tmp_path: Path, fake_gcp: FakeGcp, source: str) -> None:
    store = Store(tmp_path / "state.db")
    store.record_cycle(cycle(time.time(), [A]))
    _sync(fake_gcp, store, source)
    with Ledger(store) as ledger:
        ledger.db.execute("DELETE FROM sink_marks")
    r = _sync(fake_gcp, store, source)
    assert (r.created, r.updated, r.failed) == (0, 1, 0)  # type: ignore[attr-defined]
    assert len(scc(fake_gcp).in_source(source)) == 1
    assert _sync(fake_gcp, store, source).written == 0  # type: ignore[attr-defined]


def test_failures_are_retried_or_left_for_the_next_sync(tmp_path: Path, fake_gcp: FakeGcp, source: str) -> None:
    store = Store(tmp_path / "state.db")
    store.record_cycle(cycle(time.time(), [A, C]))
    fake_gcp.inject(Fault(status=503, times=1, method="POST", path="/findings$"))  # transient: retried
    fake_gcp.inject(Fault(status=403, times=None, method="POST", path="/findings$", permission=None,
                          message="The caller does not have permission", error_info=False))
    r = _sync(fake_gcp, store, source)
    # the first create met the 503 then the 403 (permanent): both findings failed, nothing was marked
    assert r.failed == 2 and r.created == 0  # type: ignore[attr-defined]
    assert "PermissionDenied" in r.errors[0] or "Forbidden" in r.errors[0]  # type: ignore[attr-defined]
    with Ledger(store) as ledger:
        assert ledger.count(SINK) == 0
    fake_gcp.clear_faults()
    assert _sync(fake_gcp, store, source).created == 2  # type: ignore[attr-defined]


def test_the_command_and_the_daemon_step(tmp_path: Path, fake_gcp: FakeGcp, source: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml", gcp_endpoint=fake_gcp.url,
                       scc={"enabled": True, "source": source})
    settings = load_settings(cfg)
    store = Store(settings.state_path)
    auditor = Auditor(settings, store)
    out = auditor.run_cycle()
    assert out.outcome == "success" and out.outbound and out.outbound["scc"]["failed"] == 0
    held = scc(fake_gcp).in_source(source)
    open_ids = {f.id for f in store.open_findings() if not f.exempted}
    assert {k for k, v in held.items() if v["state"] == "ACTIVE"} == open_ids

    drift = make_drift(tmp_path / "org")
    auditor.run_cycle()
    held = scc(fake_gcp).in_source(source)
    gone = next(v for v in held.values() if v["resourceName"] == drift.made_private)
    new = next(v for v in held.values() if v["resourceName"] == drift.made_public and v["category"] == PUBLIC_RULE)
    assert (gone["state"], new["state"]) == ("INACTIVE", "ACTIVE")
    # where the asset sits travels with it (the daemon's store keeps the project and ancestry of each finding)
    props = new["sourceProperties"]
    assert props["project"].startswith("projects/") and props["ancestry"].startswith("organizations/")
    assert props["ancestry"].endswith(props["project"])
    assert ({lb["outcome"] for lb, _ in store.counters("scc_writes_total")}
            >= {"created", "state_changed"})

    # `auditor scc sync` on the same state: nothing left to write.
    proc = subprocess.run([sys.executable, "-m", "auditor", "scc", "sync", "--config", str(cfg), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["created"], doc["updated"], doc["state_changed"]) == (0, 0, 0) and doc["unchanged"] == len(held)
    bad = subprocess.run([sys.executable, "-m", "auditor", "scc", "sync", "--config", str(cfg), "--source", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "organizations/ORG_ID/sources/SOURCE_ID" in bad.stderr


def test_fake_enforces_scc_rules(fake_gcp: FakeGcp, source: str) -> None:
    from google.api_core import exceptions as gexc

    client = security_center_client(fake_gcp.url)
    with pytest.raises(gexc.BadRequest):
        client.create_finding(parent=source, finding_id="not-alphanumeric", finding={"category": "x"})
    client.create_finding(parent=source, finding_id="abc", finding={"category": "x", "resource_name": "//r"})
    with pytest.raises(gexc.Conflict):
        client.create_finding(parent=source, finding_id="abc", finding={"category": "x"})
    with pytest.raises(gexc.BadRequest):
        client.update_finding(request={"finding": {"name": f"{source}/findings/abc", "category": "y"},
                                       "update_mask": {"paths": ["category"]}})
    with pytest.raises(gexc.NotFound):
        client.create_finding(parent=f"{ORG}/sources/999999", finding_id="abc", finding={"category": "x"})
    assert isinstance(fake_gcp.ext["scc"], SccFake)
