"""Write the alert rule objects of deploy/kubernetes from deploy/prometheus/alerts.yaml (the promtool-tested rules).

Stage: deploy. cluster/prometheusrule.yaml (Prometheus Operator) and overlays/gmp/rules.yaml (Google Cloud Managed
Service for Prometheus) carry exactly the groups of the alerts file, so the alerts a cluster loads are the ones
`promtool test rules` covers; tests/deploy/test_manifests.py fails when they differ.

    .venv/bin/python deploy/kubernetes/sync_prometheusrule.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yaml"
TARGETS = {
    HERE / "cluster" / "prometheusrule.yaml": ("monitoring.coreos.com/v1", "PrometheusRule"),
    HERE / "overlays" / "gmp" / "rules.yaml": ("monitoring.googleapis.com/v1", "Rules"),
}

HEADER = """\
# Generated from deploy/prometheus/alerts.yaml by deploy/kubernetes/sync_prometheusrule.py: edit the alerts file,
# then run the script. tests/deploy/test_manifests.py checks that the two carry the same rule groups.
"""


def alert_groups(path: Path = ALERTS) -> list[Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise SystemExit(f"{path}: expected a Prometheus rule file with a 'groups' list")
    return list(doc["groups"])


def render(groups: list[Any], api_version: str = "monitoring.coreos.com/v1", kind: str = "PrometheusRule") -> str:
    rule = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": "drift-auditor",
            "namespace": "drift-auditor",
            "labels": {"app.kubernetes.io/name": "drift-auditor"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=120, allow_unicode=True)


def main() -> int:
    groups = alert_groups()
    for target, (api_version, kind) in TARGETS.items():
        target.write_text(render(groups, api_version, kind), encoding="utf-8")
        print(f"wrote {target.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
