"""The daemon on a live source: Cloud Asset Inventory (the real client, REST) against the local fake API loaded
with the example organization. Drift made through the API is found by the next scheduled cycle; a permission lost
mid-life keeps the last good numbers; SIGTERM during a slow listing lets the cycle finish."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from auditor.cycle import Auditor
from auditor.logs import configure
from auditor.report.metrics import AuditorCollector
from auditor.settings import load_settings
from auditor.state import Store
from tests.daemon.support import EXAMPLES, PUBLIC_RULE, Served, wait_until, write_config
from tests.fakes.gcp import FakeGcp, Fault

ORG = "cai://organizations/583920174615"


@pytest.fixture
def fake() -> Iterator[FakeGcp]:
    with FakeGcp(EXAMPLES / "org") as f:
        yield f


def live_config(tmp_path: Path, fake: FakeGcp, **kw: Any) -> Path:
    return write_config(tmp_path / "config.yaml", sources=[ORG], gcp_endpoint=fake.url,
                        source_options={"retry_attempts": 1}, **kw)


def bucket_records(fake: FakeGcp) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a public bucket, a private bucket) as the fake holds them now (API spelling: assetType, iamPolicy)."""
    buckets = [a for a in fake.state.snapshot(datetime.now(UTC))
               if a.get("assetType") == "storage.googleapis.com/Bucket" and a.get("iamPolicy")]

    def public(a: dict[str, Any]) -> bool:
        return any("allUsers" in b.get("members", []) for b in a["iamPolicy"].get("bindings", []))

    return next(a for a in buckets if public(a)), next(a for a in buckets if not public(a))


def flip_buckets(fake: FakeGcp) -> tuple[str, str]:
    """Close the public bucket and open the private one, through the fake API's state: (closed, opened)."""
    pub, priv = bucket_records(fake)
    closed = json.loads(json.dumps(pub))
    for b in closed["iamPolicy"]["bindings"]:
        b["members"] = [m for m in b["members"] if m != "allUsers"]
    closed["iamPolicy"]["bindings"] = [b for b in closed["iamPolicy"]["bindings"] if b["members"]]
    opened = json.loads(json.dumps(priv))
    opened["iamPolicy"]["bindings"].append({"role": "roles/storage.objectViewer", "members": ["allUsers"]})
    fake.state.put_asset(closed)
    fake.state.put_asset(opened)
    return closed["name"], opened["name"]


def test_scheduled_cycles_find_drift_made_through_the_api(tmp_path: Path, fake: FakeGcp) -> None:
    cfg = live_config(tmp_path, fake, schedule={"interval_seconds": 1, "jitter_seconds": 0})
    with Served(cfg) as served:
        first = served.wait_event(lambda e: e.get("event") == "cycle", 60, "the first cycle")
        assert first["outcome"] == "success" and first["new"] == first["findings"] > 0
        closed, opened = flip_buckets(fake)

        def drift() -> list[dict[str, Any]]:
            return [e for e in list(served.events) if e.get("event") == "drift" and e["cycle"] > first["cycle"]]

        wait_until(lambda: {(e["change"], e["asset"]) for e in drift()} >= {("new", opened), ("resolved", closed)},
                   60, "the cycles that see the drift")
        # One more cycle: nothing further may be reported.
        last = max(c["cycle"] for c in served.cycles())
        served.wait_event(lambda e: e.get("event") == "cycle" and e["cycle"] > last, 60, "one more cycle")
        events = drift()
        metrics = served.get("/metrics")[1].decode()
    # Exactly the drift made, each change once, over however many cycles it took to be listed.
    assert {e["asset"] for e in events if e["change"] == "new"} == {opened}
    assert {e["asset"] for e in events if e["change"] == "resolved"} == {closed}
    assert len({(e["change"], e["finding"]) for e in events}) == len(events)
    assert PUBLIC_RULE in {e["rule"] for e in events}
    resolved_public = [line for line in metrics.splitlines()
                       if line.startswith(f'auditor_drift_events_total{{change="resolved",rule="{PUBLIC_RULE}"')]
    assert resolved_public and float(resolved_public[0].split()[-1]) == sum(
        1 for e in events if e["change"] == "resolved" and e["rule"] == PUBLIC_RULE)


def test_a_lost_permission_keeps_the_last_good_numbers(tmp_path: Path, fake: FakeGcp) -> None:
    buf = io.StringIO()
    configure("json", "info", stream=buf)
    settings = load_settings(live_config(tmp_path, fake))
    with Store(settings.state_path) as store:
        auditor = Auditor(settings, store)
        assert auditor.run_cycle().outcome == "success"
        collector = AuditorCollector(lambda: auditor.published.view, auditor.histogram)

        def values(name: str) -> dict[Any, float]:
            return {tuple(sorted(s.labels.items())): s.value for fam in collector.collect() for s in fam.samples
                    if s.name == name}

        findings, assets = values("auditor_findings"), values("auditor_assets")
        last_success = values("auditor_last_success_timestamp_seconds")
        closed, _ = flip_buckets(fake)  # a fix that the partial cycle below cannot see
        fake.inject(Fault(status=403, times=None, content_type="IAM_POLICY"))
        out = auditor.run_cycle()
        assert out.outcome == "partial" and out.recorded is not None
        assert out.recorded.resolved == []
        assert values("auditor_assets") == assets
        assert values("auditor_last_success_timestamp_seconds") == last_success
        assert values("auditor_source_errors_total") == {(("code", "permission_denied"), ("source", ORG)): 1}
        # Findings from IAM policies were not re-read: kept, stale; the total never drops.
        assert sum(values("auditor_findings").values()) >= sum(findings.values())
        assert closed in {f.asset for f in store.open_findings() if f.stale}
        # The permission comes back: the fix made meanwhile is now seen and resolved.
        fake.clear_faults()
        out = auditor.run_cycle()
        assert out.outcome == "success" and out.recorded is not None
        assert closed in {e.asset for e in out.recorded.resolved}
        assert not [f for f in store.open_findings() if f.stale]
    configure("console", "warning")


def test_sigterm_during_a_slow_listing_lets_the_cycle_finish(tmp_path: Path, fake: FakeGcp) -> None:
    fake.inject(Fault(status=None, delay=3.0, times=1))
    cfg = live_config(tmp_path, fake, schedule={"shutdown_grace_seconds": 30})
    with Served(cfg) as served:
        wait_until(lambda: fake.requests, 60, "the cycle to start listing")
        assert served.stop(signal.SIGTERM) == 0
    names = [e.get("event") for e in served.events]
    assert names.index("shutdown_waiting") < names.index("cycle") < names.index("stopped")
    cycle = served.cycles()[0]
    assert cycle["outcome"] == "success" and cycle["findings"] > 0
    assert next(e for e in served.events if e.get("event") == "stopped")["cycle_abandoned"] is False
    with Store(tmp_path / "state.db") as store:
        assert [c.outcome for c in store.cycles()] == ["success"]
