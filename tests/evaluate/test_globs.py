"""Glob semantics shared with the Config Validator templates."""

from __future__ import annotations

import pytest

from auditor.evaluate.globs import compile_glob, compile_line_globs, glob_match, member_match


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


LINE_PATTERNS = [
    "allUsers",
    "user:*@gmail.com",
    "user:**@gmail.com",
    "serviceAccount:*@*.iam.gserviceaccount.com",
    "group:ml-?@example.com",
    "deleted:**",
    "*",
    "domain:example.*",
]
LINE_MEMBERS = [
    "allUsers",
    "allAuthenticatedUsers",
    "user:a@gmail.com",
    "user:a.b@gmail.com",
    "user:a@mail.gmail.com",
    "serviceAccount:x@p.iam.gserviceaccount.com",
    "serviceAccount:x@p.q.iam.gserviceaccount.com",
    "group:ml-a@example.com",
    "group:ml-ab@example.com",
    "deleted:user:a@b.com?uid=1",
    "domain:example.com",
    "domain:example.co.uk",
]


@pytest.mark.parametrize("pattern", LINE_PATTERNS)
def test_line_globs_find_exactly_the_members_the_globs_match(pattern: str) -> None:
    """A search over members joined by line breaks answers as matching each member would, member by member."""
    rx = compile_line_globs((pattern,), ".")
    assert rx is not None
    for member in LINE_MEMBERS:
        alone = compile_glob(pattern, ".").match(member) is not None
        # among other members, before and after it: a match never spills over a line
        others = [m for m in LINE_MEMBERS if m != member and compile_glob(pattern, ".").match(m) is None]
        text = "\n".join([*others[:2], member, *others[2:]])
        assert (rx.search(text) is not None) == alone, (pattern, member)
    assert compile_line_globs((), ".") is None


def test_line_globs_never_match_across_members() -> None:
    for pattern, text in [
        ("user:*@gmail.com", "user:x\ny@gmail.com"),
        ("user:**@gmail.com", "user:x\ny@gmail.com"),
        ("group:ml-?@example.com", "group:ml-\n@example.com"),
        ("*", ""),
    ]:
        rx = compile_line_globs((pattern,), ".")
        assert rx is not None
        found = rx.search(text)
        assert found is None or "\n" not in found.group(0), (pattern, text)
