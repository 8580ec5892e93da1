"""Glob semantics shared with the Config Validator templates."""

from __future__ import annotations

import pytest

from auditor.evaluate.globs import compile_glob, compile_line_globs, glob_match, member_match, unbounded_wildcards


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
        others = [m for m in LINE_MEMBERS if m != member and rx.search(m) is None]
        text = "\n".join([*others[:2], member, *others[2:]])
        if unbounded_wildcards(pattern) <= 1:
            assert (rx.search(text) is not None) == alone, (pattern, member)
        elif alone:  # several wildcards: searched as a superset (linear), which never misses a member
            assert rx.search(text) is not None, (pattern, member)
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


def _agrees_with_the_regular_expression(
    seed: int, atoms: list[str], letters: str, globs: int, pattern_atoms: tuple[int, int], text_length: int,
    pieces: bool = False,
) -> None:
    """LinearGlob against the regular expression of the same glob (the reference semantics, affordable on short
    texts), for both separators, on random globs of these atoms and texts of these letters; `pieces`: every glob
    is matched by its literal pieces in order."""
    import random
    import re

    from auditor.evaluate.globs import LinearGlob, _translate

    rnd = random.Random(seed)
    for _ in range(globs):
        sep = rnd.choice("/.")
        pattern = "".join(rnd.choice(atoms) for _ in range(rnd.randint(*pattern_atoms)))
        reference = re.compile("(?s:" + _translate(pattern, sep, line=False) + r")\Z")
        auto = LinearGlob(pattern, sep)
        assert not pieces or auto._pieces is not None
        for _ in range(8):
            text = "".join(rnd.choice(letters) for _ in range(rnd.randint(0, text_length)))
            assert (auto.match(text) is not None) == (reference.match(text) is not None), (pattern, sep, text)


def test_the_automaton_agrees_with_the_regular_expression_on_random_globs() -> None:
    """Several wildcards, `?` and separators: the automaton's steps."""
    _agrees_with_the_regular_expression(7, ["a", "b", "/", ".", "*", "**", "?", "**/"], "ab/.", 3000, (1, 7), 9)


def test_globs_with_many_wildcards_match_in_linear_time() -> None:
    """`**a**a...b` over a long run of `a`s: a backtracking regular expression would not finish (exponential);
    the automaton answers in one pass (a hang here is the failure)."""
    hostile = "**a" * 40 + "**b"
    text = "a" * 20_000
    assert unbounded_wildcards(hostile) == 41
    assert compile_glob(hostile).match(text) is None
    assert compile_glob(hostile).match(text + "b") is not None
    assert not member_match("*a" * 30 + "*b", "user:" + "a" * 5000)
    line = compile_line_globs((hostile,), "/")
    assert line is not None and line.search(text) is None  # the prefilter's superset is linear too


def test_the_automaton_without_separators_agrees_with_the_regular_expression() -> None:
    """Globs without `?` or the separator over texts without it: the automaton's literal pieces found in order."""
    _agrees_with_the_regular_expression(11, ["a", "b", "ab", "ba", "*", "**", "-", ":"], "ab-:", 4000, (0, 8), 10,
                                        pieces=True)
