"""Fixtures of the remediation tests: the fake Google Cloud server, kmock with resourceVersion, rule files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.gcp import gcp_endpoint  # noqa: F401 - fixture
from tests.fakes.gcp_extra import fake_gcp  # noqa: F401 - fixture: the fake with bucket IAM
from tests.remediations.kube import kube  # noqa: F401 - fixture

ORG = "organizations/583920174615"


def remediation_rules(
    open_allow: str | None = "enforce",
    default_deny: str | None = "dryrun",
    basic_roles: list[str] | None = None,
    basic_roles_mode: str = "dryrun",
) -> str:
    """A rule file of the remediable rules the tests exercise, each in the given mode (None leaves it out):
    Cloud Armor open allows and default rules, and basic roles on projects."""
    rules = []
    if basic_roles is not None:
        rules.append(
            "  - id: no-basic-roles\n    check: iam.banned_roles\n    severity: high\n"
            "    match: {asset_types: [cloudresourcemanager.googleapis.com/Project]}\n"
            f"    params: {{roles: [{', '.join(basic_roles)}]}}\n"
            f"    mode: {basic_roles_mode}\n    remediation: iam.remove_member\n"
        )
    if open_allow is not None:
        rules.append(
            "  - id: armor-no-open-allow\n    check: cloud_armor.no_open_allow\n    severity: high\n"
            f"    mode: {open_allow}\n    remediation: cloud_armor.remove_rule\n"
        )
    if default_deny is not None:
        rules.append(
            "  - id: armor-default-deny\n    check: cloud_armor.default_rule_denies\n    severity: high\n"
            f"    mode: {default_deny}\n    remediation: cloud_armor.set_default_deny\n"
        )
    return "rules:\n" + "".join(rules)


@pytest.fixture
def write_rules(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a rule file from YAML text and return its path."""
    n = 0

    def write(text: str) -> Path:
        nonlocal n
        n += 1
        path = tmp_path / f"rules-{n}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write
