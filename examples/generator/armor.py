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


def rate_limit(priority: int, ranges: list[str], description: str) -> dict[str, Any]:
    r = rule(priority, "throttle", ranges, description)
    r["rateLimitOptions"] = {
        "conformAction": "allow",
        "exceedAction": "deny(429)",
        "enforceOnKey": "IP",
        "rateLimitThreshold": {"count": 600, "intervalSec": 60},
    }
    return r


def waf(priority: int, expression: str, description: str) -> dict[str, Any]:
    return {"priority": priority, "action": "deny(403)", "preview": False, "description": description,
            "match": {"expr": {"expression": expression}}}


def assets() -> list[dict[str, Any]]:
    return [
        # Compliant: WAF first, then trusted ranges only (rate-limited per client), above a default deny.
        policy("ml-platform-prod", "inference-api", [
            waf(500, "evaluatePreconfiguredExpr('sqli-v33-stable')", "OWASP SQLi"),
            waf(510, "evaluatePreconfiguredExpr('xss-v33-stable')", "OWASP XSS"),
            rate_limit(1000, [TRUSTED_OFFICE, TRUSTED_VPN], "offices and VPN, 600 requests a minute per client"),
            rule(DEFAULT, "deny(403)", ["*"], "default deny"),
        ], "Online inference endpoints"),
        # Violations: the default rule allows everything (a deny list in disguise), no rate limit, and a deny rule
        # below the VPN allow that can never fire (shadowed).
        policy("ml-platform-prod", "training-dashboard", [
            rule(1000, "allow", [TRUSTED_VPN], "VPN"),
            rule(1100, "deny(403)", ["192.0.2.128/25"], "known scanners"),
            rule(1200, "deny(403)", ["198.51.100.64/26"], "block the VPN guest pool"),
            rule(DEFAULT, "allow", ["*"], "default rule, higher priority overrides it"),
        ], "TensorBoard and job dashboards"),
        # Violations: an allow-all rule above the default; a deny rule left in preview; a partner lab allowed that
        # is not in the trusted ranges.
        policy("ml-research-sandbox", "notebook-gateway", [
            rule(500, "allow", ["0.0.0.0/0"], "temporary: open for the hackathon"),
            rule(800, "allow", [PARTNER], "partner lab"),
            rule(900, "deny(403)", ["192.0.2.0/25"], "block partner lab guests", preview=True),
            rule(DEFAULT, "deny(404)", ["*"], "default deny"),
        ], "JupyterHub for researchers"),
        # Violation: two rules at one priority after a bad merge of two Terraform modules.
        policy("ml-training-prod", "batch-submit-api", [
            rule(100, "deny(403)", ["192.0.2.0/24"], "threat-intel deny list"),
            rate_limit(1000, [TRUSTED_VPN], "VPN, rate-limited"),
            rule(1000, "allow", [TRUSTED_OFFICE], "offices"),
            rule(DEFAULT, "deny(403)", ["*"], "default deny"),
        ], "Batch training job submission"),
    ]
