"""Glob matching with the semantics of the Config Validator templates.

In paths (asset names, asset types, roles, ancestries) `*` stops at `/` and `**` crosses it. In IAM members the
separator is `.`, so `user:*@example.com` does not match `user:a@sub.example.com`; a lone `*` means everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

Matcher = re.Pattern[str]


@lru_cache(maxsize=4096)
def compile_glob(pattern: str, sep: str = "/") -> Matcher:
    return re.compile("(?s:" + _translate(pattern, sep, line=False) + r")\Z")


@lru_cache(maxsize=1024)
def compile_line_globs(patterns: tuple[str, ...], sep: str = "/") -> Matcher | None:
    """One expression that finds a line matching any of the globs in a text of lines (None for no globs): many
    strings (every member of a policy) tested in one search. No match spans two lines."""
    if not patterns:
        return None
    return re.compile("(?m:^(?:" + "|".join(_translate(p, sep, line=True) for p in patterns) + ")$)")


def _translate(pattern: str, sep: str, line: bool) -> str:
    """A glob as a regular expression; with `line`, none of its wildcards matches a line break."""
    anything = "[^\\n]" if line else "."
    if pattern in ("*", "**"):
        return f"{anything}*"
    out: list[str] = []
    i = 0
    not_sep = f"[^{re.escape(sep)}\\n]" if line else f"[^{re.escape(sep)}]"
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                # `a/**/b` also matches `a/b`
                if pattern.startswith(f"**{sep}", i) and (i == 0 or pattern[i - 1] == sep):
                    out.append(f"(?:{anything}*{re.escape(sep)})?")
                    i += 3
                    continue
                out.append(f"{anything}*")
                i += 2
                continue
            out.append(f"{not_sep}*")
        elif c == "?":
            out.append(not_sep)
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_match(pattern: str, text: str, sep: str = "/") -> bool:
    return compile_glob(pattern, sep).match(text) is not None


def any_match(patterns: Iterable[str], text: str, sep: str = "/") -> bool:
    return any(compile_glob(p, sep).match(text) is not None for p in patterns)


def member_match(pattern: str, member: str) -> bool:
    """IAM member globs: `.` is the separator, a lone `*` matches everything."""
    return glob_match(pattern, member, sep=".")


def any_member_match(patterns: Iterable[str], member: str) -> bool:
    return any(member_match(p, member) for p in patterns)
