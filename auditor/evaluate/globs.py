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
    if pattern in ("*", "**"):
        return re.compile(r"(?s:.*)\Z")
    out: list[str] = []
    i = 0
    not_sep = f"[^{re.escape(sep)}]"
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                # `a/**/b` also matches `a/b`
                if pattern.startswith(f"**{sep}", i) and (i == 0 or pattern[i - 1] == sep):
                    out.append(f"(?:.*{re.escape(sep)})?")
                    i += 3
                    continue
                out.append(".*")
                i += 2
                continue
            out.append(f"{not_sep}*")
        elif c == "?":
            out.append(not_sep)
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("(?s:" + "".join(out) + r")\Z")


def glob_match(pattern: str, text: str, sep: str = "/") -> bool:
    return compile_glob(pattern, sep).match(text) is not None


def any_match(patterns: Iterable[str], text: str, sep: str = "/") -> bool:
    return any(compile_glob(p, sep).match(text) is not None for p in patterns)


def member_match(pattern: str, member: str) -> bool:
    """IAM member globs: `.` is the separator, a lone `*` matches everything."""
    return glob_match(pattern, member, sep=".")


def any_member_match(patterns: Iterable[str], member: str) -> bool:
    return any(member_match(p, member) for p in patterns)
