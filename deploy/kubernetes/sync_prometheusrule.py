"""Write deploy/kubernetes/cluster/prometheusrule.yaml from deploy/prometheus/alerts.yaml (the promtool-tested rules).

Stage: deploy. The PrometheusRule carries exactly the groups of the alerts file, so the alerts Prometheus Operator
loads are the ones `promtool test rules` covers; tests/deploy/test_manifests.py fails when the two differ.

    .venv/bin/python deploy/kubernetes/sync_prometheusrule.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yaml"
TARGET = HERE / "cluster" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/alerts.yaml by deploy/kubernetes/sync_prometheusrule.py: edit the alerts file,
# then run the script. tests/deploy/test_manifests.py checks that the two carry the same rule groups.
"""


def alert_groups(path: Path = ALERTS) -> list[Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise SystemExit(f"{path}: expected a Prometheus rule file with a 'groups' list")
    return list(doc["groups"])


def render(groups: list[Any]) -> str:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "drift-auditor",
            "namespace": "drift-auditor",
            "labels": {"app.kubernetes.io/name": "drift-auditor"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=120, allow_unicode=True)


def main() -> int:
    TARGET.write_text(render(alert_groups()), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
