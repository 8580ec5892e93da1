"""Cloud Armor in the example: security policies in front of the ML endpoints (Compute API spelling)."""

from __future__ import annotations

from typing import Any

from .common import ancestors, etag, resource_line

POLICY_TYPE = "compute.googleapis.com/SecurityPolicy"
DEFAULT = 2147483647
TRUSTED_OFFICE = "203.0.113.0/24"  # offices (documentation range)
TRUSTED_VPN = "198.51.100.0/24"  # corporate VPN egress
PARTNER = "192.0.2.0/24"  # a partner lab


def rule(priority: int, action: str, ranges: list[str], description: str, preview: bool = False) -> dict[str, Any]:
    return {
        "priority": priority,
        "action": action,
        "preview": preview,
        "description": description,
        "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ranges}},
    }


def policy(project: str, name: str, rules: list[dict[str, Any]], description: str) -> dict[str, Any]:
    asset = f"//compute.googleapis.com/projects/{project}/global/securityPolicies/{name}"
    return resource_line(asset, POLICY_TYPE, {
        "name": name,
        "description": description,
        "type": "CLOUD_ARMOR",
        "fingerprint": etag(asset, "fp"),
        "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/global/securityPolicies/{name}",
        "rules": rules,
    }, ancestors(project))


def assets() -> list[dict[str, Any]]:
    return [
        # Compliant: trusted ranges allowed above a default deny.
        policy("ml-platform-prod", "inference-api", [
            rule(1000, "allow", [TRUSTED_OFFICE, TRUSTED_VPN], "offices and VPN"),
            {"priority": 2000, "action": "deny(403)", "preview": False, "description": "OWASP SQLi",
             "match": {"expr": {"expression": "evaluatePreconfiguredExpr('sqli-v33-stable')"}}},
            rule(DEFAULT, "deny(403)", ["*"], "default deny"),
        ], "Online inference endpoints"),
        # Violation: the default rule allows everything (a deny list in disguise).
        policy("ml-platform-prod", "training-dashboard", [
            rule(1000, "allow", [TRUSTED_VPN], "VPN"),
            rule(1100, "deny(403)", ["192.0.2.128/25"], "known scanners"),
            rule(DEFAULT, "allow", ["*"], "default rule, higher priority overrides it"),
        ], "TensorBoard and job dashboards"),
        # Violations: an allow-all rule above the default; a deny rule left in preview.
        policy("ml-research-sandbox", "notebook-gateway", [
            rule(500, "allow", ["0.0.0.0/0"], "temporary: open for the hackathon"),
            rule(900, "deny(403)", [PARTNER], "block partner lab", preview=True),
            rule(DEFAULT, "deny(404)", ["*"], "default deny"),
        ], "JupyterHub for researchers"),
    ]
