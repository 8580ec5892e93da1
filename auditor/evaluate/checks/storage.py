"""Stage: evaluate. Cloud Storage settings that decide whether a bucket's IAM policy is the whole truth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from auditor.evaluate.registry import Context, NoParams, Violation, check
from auditor.model import Asset

BUCKET = "storage.googleapis.com/Bucket"


def _enabled(data: dict[str, Any], *path: str) -> bool:
    node: object = data
    for key in path:
        if not isinstance(node, dict):
            return False
        node = node.get(key)
    return node is True or (isinstance(node, str) and node.lower() == "true")


@check("storage.uniform_bucket_level_access", params=NoParams, asset_types=[BUCKET])
def uniform_bucket_level_access(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    """Buckets use uniform bucket-level access (IAM only, no object ACLs).

    With fine-grained access, object ACLs grant access the bucket's IAM policy does not show. The older spelling
    `bucketPolicyOnly` counts too. A bucket line without resource data (an IAM-only export line) is not judged.

    ```yaml
    - id: storage-uniform-access
      check: storage.uniform_bucket_level_access
      severity: high
    ```
    """
    data = asset.resource
    if not data:
        return
    if _enabled(data, "iamConfiguration", "uniformBucketLevelAccess", "enabled") or _enabled(
        data, "iamConfiguration", "bucketPolicyOnly", "enabled"
    ):
        return
    name = data.get("name") or asset.name.rsplit("/", 1)[-1]
    yield Violation(f"bucket {name} honours object ACLs (uniform bucket-level access is off)", "", {})
