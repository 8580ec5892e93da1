"""Bucket IAM for the fake Google Cloud server: what the remediation tests need beyond `tests.fakes.gcp`.

Cloud Storage JSON API: `GET /storage/v1/b/{bucket}/iam` (optionsRequestedPolicyVersion) and
`PUT /storage/v1/b/{bucket}/iam`, refused with 412 conditionNotMet when the etag sent is not the current one, as
the real API does. The policy lives on the bucket's asset (`//storage.googleapis.com/{bucket}`), so a write shows
in later CAI listings. `FakeGcpPlus` is the base fake with these routes in front; the `fake_gcp` fixture here
replaces the base one where it is imported.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.gcp import ApiError, FakeGcp, RecordedRequest, _token

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/iam$"), "get_bucket_iam"),
    ("PUT", re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/iam$"), "set_bucket_iam"),
]


class FakeGcpPlus(FakeGcp):
    def routes(self) -> list[tuple[str, re.Pattern[str], str]]:
        return _ROUTES + super().routes()

    def _bucket_asset(self, bucket: str) -> str:
        name = f"//storage.googleapis.com/{bucket}"
        if self.state.asset(name) is None:
            raise ApiError(404, "The specified bucket does not exist.", reason="notFound")
        return name

    def _get_bucket_iam(self, req: RecordedRequest, bucket: str) -> dict[str, Any]:
        name = self._bucket_asset(bucket)
        with self.state.lock:
            policy = copy.deepcopy((self.state.asset(name) or {}).get("iamPolicy") or {})
        version = int((req.query.get("optionsRequestedPolicyVersion") or ["1"])[0] or 1)
        policy.setdefault("etag", _token(name, 0))
        policy.setdefault("version", 1)
        if version < 3 and any(b.get("condition") for b in policy.get("bindings", [])):
            raise ApiError(400, "Bucket has conditional bindings: request policy version 3")
        return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **policy}

    def _set_bucket_iam(self, req: RecordedRequest, bucket: str) -> dict[str, Any]:
        name = self._bucket_asset(bucket)
        body = req.body if isinstance(req.body, dict) else {}
        with self.state.lock:
            current = (self.state.asset(name) or {}).get("iamPolicy") or {}
            sent = body.get("etag")
            if sent and sent != (current.get("etag") or _token(name, 0)):
                raise ApiError(412, "Precondition Failed", status="FAILED_PRECONDITION", reason="conditionNotMet")
            bindings = body.get("bindings") or []
            conditional = any(b.get("condition") for b in bindings)
            if conditional and int(body.get("version") or 1) < 3:
                raise ApiError(400, "Policy version 3 is required for bindings with conditions")
            new = {"version": 3 if conditional else int(body.get("version") or 1),
                   "bindings": copy.deepcopy(bindings), "etag": _token(name, self.state.next_id())}
            self.state.update_asset(name, iamPolicy=new)
        return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **copy.deepcopy(new)}


@pytest.fixture
def fake_gcp() -> Iterator[FakeGcpPlus]:
    """The fake with bucket IAM, started and empty."""
    with FakeGcpPlus() as fake:
        yield fake
