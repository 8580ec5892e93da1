"""Glob semantics shared with the Config Validator templates."""

from __future__ import annotations

import pytest

from auditor.evaluate.globs import glob_match, member_match


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("roles/*", "roles/owner", True),
        ("roles/*", "organizations/1/roles/custom", False),
        ("**/roles/*", "organizations/1/roles/custom", True),
        ("organizations/1/**", "organizations/1/folders/2/projects/3", True),
        ("organizations/1/**", "organizations/12/projects/3", False),
        ("organizations/*/projects/*", "organizations/1/projects/3", True),
        ("organizations/*/projects/*", "organizations/1/folders/2/projects/3", False),
        ("organizations/1/**/projects/3", "organizations/1/projects/3", True),
        ("**", "", True),
        ("roles/owne?", "roles/owner", True),
        ("roles/[owner]", "roles/[owner]", True),
    ],
)
def test_path_globs(pattern: str, text: str, expected: bool) -> None:
    assert glob_match(pattern, text) is expected


@pytest.mark.parametrize(
    ("pattern", "member", "expected"),
    [
        ("user:*@example.com", "user:a@example.com", True),
        ("user:*@example.com", "user:a.b@example.com", False),  # `*` stops at a dot
        ("user:**@example.com", "user:a.b@example.com", True),
        ("user:*@example.com", "user:a@sub.example.com", False),
        ("*", "serviceAccount:x@p.iam.gserviceaccount.com", True),
        ("allUsers", "allUsers", True),
        ("allUsers", "allAuthenticatedUsers", False),
    ],
)
def test_member_globs(pattern: str, member: str, expected: bool) -> None:
    assert member_match(pattern, member) is expected
