"""The shipped baseline against the bundled example: every rule fires at least once, in all three domains."""

from __future__ import annotations

from collections import Counter

from auditor.collect import SourceOptions
from auditor.evaluate.rulebook import load_rules
from auditor.scan import run_scan
from tests.conftest import EXAMPLES

INFERENCE = "projects/ml-platform-prod/locations/us-central1/clusters/inference"


def test_example_triggers_every_shipped_rule() -> None:
    rules = load_rules()
    result = run_scan([str(EXAMPLES / "org"), str(EXAMPLES / "k8s")], rules, SourceOptions(cluster=INFERENCE))
    assert result.complete
    assert not result.evaluation.errors, result.evaluation.errors
    fired = Counter(f.rule for f in result.findings)
    silent = sorted(r.id for r in rules if fired[r.id] == 0)
    assert not silent, f"shipped rules the example never triggers: {silent}"
    domains = {f.asset_type.split("/")[0] for f in result.findings}
    assert {"compute.googleapis.com", "rbac.authorization.k8s.io", "cloudresourcemanager.googleapis.com"} <= domains


def test_example_is_not_all_violations() -> None:
    """Compliant assets sit next to the violations: most assets of each checked type give no finding."""
    rules = load_rules()
    result = run_scan([str(EXAMPLES / "org")], rules)
    flagged = {f.asset for f in result.findings}
    policies = result.evaluation.assets_by_type["compute.googleapis.com/SecurityPolicy"]
    flagged_policies = {f.asset for f in result.findings if f.asset_type == "compute.googleapis.com/SecurityPolicy"}
    assert 0 < len(flagged_policies) < policies
    assert len(flagged) < result.evaluation.assets / 2
