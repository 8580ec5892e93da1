"""storage.uniform_bucket_level_access: compliant, violating, and lines it cannot judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.evaluate.engine import Engine
from auditor.evaluate.rulebook import load_file
from auditor.model import Asset

RULE = "- {id: uba, check: storage.uniform_bucket_level_access, severity: high}\n"


def run(tmp_path: Path, data: dict | None) -> list[str]:  # type: ignore[type-arg]
    p = tmp_path / "r.yaml"
    p.write_text(RULE)
    asset = Asset("//storage.googleapis.com/b1", "storage.googleapis.com/Bucket", resource=data,
                  iam_policy=None if data else {"bindings": []})
    return [f.message for f in Engine(load_file(p)).evaluate([asset]).findings]


@pytest.mark.parametrize(
    "data",
    [
        {"name": "b1", "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}}},
        {"name": "b1", "iamConfiguration": {"bucketPolicyOnly": {"enabled": "true"}}},
        None,  # an IAM-only line: nothing to judge
    ],
)
def test_compliant(tmp_path: Path, data: dict | None) -> None:  # type: ignore[type-arg]
    assert run(tmp_path, data) == []


@pytest.mark.parametrize(
    "data",
    [
        {"name": "b1"},
        {"name": "b1", "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": False}}},
        {"name": "b1", "iamConfiguration": {"uniformBucketLevelAccess": {}}},
    ],
)
def test_violating(tmp_path: Path, data: dict) -> None:  # type: ignore[type-arg]
    assert run(tmp_path, data) == ["bucket b1 honours object ACLs (uniform bucket-level access is off)"]
