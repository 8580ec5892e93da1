"""Changes from events remediated through the daemon's guarded remediation step (auditor/incremental.py): a Cloud
Armor rule opened again between cycles, reported by a feed message, is removed again from the fake Compute API when
its rule is in enforce mode and the operator enabled remediation."""

from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from auditor.collect.cai_feed import parse_push
from auditor.cycle import Auditor
from auditor.settings import Settings
from auditor.state import Store
from tests.fakes.gcp import FakeGcp
from tests.remediations.conftest import ORG, remediation_rules

PROJECT, POLICY = "ml-research-sandbox", "notebook-gateway"
NAME = f"//compute.googleapis.com/projects/{PROJECT}/global/securityPolicies/{POLICY}"


@pytest.fixture
def org(fake_gcp: FakeGcp, gcp_endpoint: str, repo: Path) -> FakeGcp:
    fake_gcp.load(repo / "examples" / "org")
    return fake_gcp


def _priorities(fake: FakeGcp) -> list[int]:
    return [int(r["priority"]) for r in fake.state.security_policy(PROJECT, POLICY)["rules"]]


def _push(asset: dict[str, Any], start: str) -> bytes:
    data = base64.b64encode(json.dumps({"window": {"startTime": start}, "asset": asset}).encode()).decode()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({"message": {"data": data, "messageId": "1", "publishTime": now}}).encode()


def test_an_opened_rule_reported_by_a_feed_is_removed_again(org: FakeGcp, write_rules: Any, tmp_path: Path,
                                                            repo: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = Settings(sources=[f"cai://{ORG}"], rules=[str(write_rules(remediation_rules()))],
                        state_path=tmp_path / "state.db", remediation={"enabled": True})
    opened = copy.deepcopy(org.state.security_policy(PROJECT, POLICY))
    assert 500 in _priorities(org)
    auditor = Auditor(settings, Store(settings.state_path))
    try:
        assert auditor.run_cycle().outcome == "success"  # the cycle removes the open rule (enforce)
        assert auditor.run_cycle().outcome == "success"  # and the next one sees it gone
        assert 500 not in _priorities(org)
        # someone opens it again; the feed reports the policy as it now is
        pol = org.state.security_policy(PROJECT, POLICY)
        pol["rules"] = copy.deepcopy(opened["rules"])
        org.state.write_security_policy(PROJECT, pol)
        record = next(json.loads(line) for line in (repo / "examples" / "org" / "cloud-armor.ndjson")
                      .read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["name"] == NAME)
        auditor.feed_change(parse_push(_push(record, "2026-12-07T04:00:00Z")))
        assert auditor.incremental.drain() == 1
        assert 500 not in _priorities(org)  # removed again, through the same guarded step
        counters = {(lb["rule"], lb["kind"], lb["outcome"]): v
                    for lb, v in auditor.store.counters("remediations_total")}
        assert counters[("armor-no-open-allow", "cloud_armor.remove_rule", "applied")] == 2
        new = [f for f in auditor.store.open_findings() if f.asset == NAME and f.rule == "armor-no-open-allow"]
        assert new, "the drift was recorded before it was fixed (the next cycle resolves it)"
    finally:
        auditor.close()
