"""Write the bundled example organization (CAI export form) and a kubectl-style RBAC list.

Deterministic: the same code writes the same bytes. Run from the repository root:

    python examples/generate.py

The organization models a company running distributed ML training on GKE: training service accounts with IAM
roles (some over-privileged), Cloud Armor policies in front of the ML endpoints, and GKE RBAC for tenant
namespaces, next to clean, compliant assets and bulky assets no rule reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generator import armor, common, gke, iam  # noqa: E402


def write_ndjson(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n")


def main() -> None:
    org = HERE / "org"
    write_ndjson(org / "resources.ndjson", common.hierarchy() + common.bulk_assets())
    write_ndjson(org / "iam-policies.ndjson", iam.assets())
    write_ndjson(org / "cloud-armor.ndjson", armor.assets())
    write_ndjson(org / "gke.ndjson", gke.assets())
    k8s = HERE / "k8s"
    k8s.mkdir(exist_ok=True)
    (k8s / "inference-rbac.yaml").write_text(gke.kubectl_list_yaml(), encoding="utf-8")
    total = sum(1 for f in org.glob("*.ndjson") for _ in f.open())
    print(f"wrote {total} CAI assets under {org} and {k8s / 'inference-rbac.yaml'}")


if __name__ == "__main__":
    main()
