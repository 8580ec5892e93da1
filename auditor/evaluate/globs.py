"""Glob matching with the semantics of the Config Validator templates, in time linear in the text.

In paths (asset names, asset types, roles, ancestries) `*` stops at `/` and `**` crosses it. In IAM members the
separator is `.`, so `user:*@example.com` does not match `user:a@sub.example.com`; a lone `*` means everything.

Globs come from rule files, the texts from snapshots: neither may make a match slow. A glob with at most one
unbounded wildcard (`*`, `**`) becomes a regular expression, which Python's backtracking engine matches in time
proportional to the text times the glob (the usual case, and the fast one). A glob with more (`**a**a**b`, which
backtracking takes exponential time over) is matched by simulating its automaton over the text, one step per
character with every state at once: linear in the text whatever the glob. Globs longer than MAX_GLOB_LENGTH are
refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Protocol

MAX_GLOB_LENGTH = 1024


class GlobError(ValueError):
    """A glob that is refused (too long); its message names it."""


class Matcher(Protocol):
    """What a compiled glob offers: `match(text)` is not None when the whole text matches."""

    def match(self, text: str) -> object | None: ...


def unbounded_wildcards(pattern: str) -> int:
    """The runs of `*` in a glob (each `*` or `**` is one wildcard that may match text of any length)."""
    return len(re.findall(r"\*+", pattern))


def check_glob(pattern: str) -> str:
    """The glob, or GlobError saying why it is refused (for validators of rule files)."""
    if len(pattern) > MAX_GLOB_LENGTH:
        raise GlobError(f"glob of {len(pattern)} characters is longer than the limit of {MAX_GLOB_LENGTH}")
    return pattern


def _collapse(pattern: str) -> str:
    """`***` and longer runs are `**` (what follows `**` is matched by it already)."""
    return re.sub(r"\*{3,}", "**", pattern) if "***" in pattern else pattern


@lru_cache(maxsize=4096)
def compile_glob(pattern: str, sep: str = "/") -> Matcher:
    check_glob(pattern)
    pattern = _collapse(pattern)
    if unbounded_wildcards(pattern) <= 1:
        return re.compile("(?s:" + _translate(pattern, sep, line=False) + r")\Z")
    return LinearGlob(pattern, sep)


class _Union:
    """Several globs: the regular-expression ones in one expression, the others one by one."""

    __slots__ = ("linear", "rx")

    def __init__(self, rx: re.Pattern[str] | None, linear: tuple[Matcher, ...]) -> None:
        self.rx = rx
        self.linear = linear

    def match(self, text: str) -> object | None:
        if self.rx is not None and self.rx.match(text) is not None:
            return True
        for m in self.linear:
            if m.match(text) is not None:
                return True
        return None


@lru_cache(maxsize=2048)
def compile_globs(patterns: tuple[str, ...], sep: str = "/") -> Matcher | None:
    """One matcher for a list of globs (None for no glob): a policy with hundreds of members is matched in one pass
    each when every glob is a regular-expression one."""
    if not patterns:
        return None
    for p in patterns:
        check_glob(p)
    patterns = tuple(_collapse(p) for p in patterns)
    simple = [p for p in patterns if unbounded_wildcards(p) <= 1]
    rx = None
    if simple:
        rx = re.compile("(?s:" + "|".join(f"(?:{_translate(p, sep, line=False)})" for p in simple) + r")\Z")
    linear = tuple(LinearGlob(p, sep) for p in patterns if unbounded_wildcards(p) > 1)
    if not linear:
        assert rx is not None
        return rx
    return _Union(rx, linear)


@lru_cache(maxsize=1024)
def compile_line_globs(patterns: tuple[str, ...], sep: str = "/") -> re.Pattern[str] | None:
    """One expression that finds a line matching any of the globs in a text of lines (None for no globs): many
    strings (every member of a policy) tested in one search. No match spans two lines.

    It serves prefilters, which may let through more than the globs match but never less: a glob with several
    unbounded wildcards is searched as its literal beginning and end with anything between (linear, a superset)."""
    if not patterns:
        return None
    for p in patterns:
        check_glob(p)
    patterns = tuple(_collapse(p) for p in patterns)
    return re.compile("(?m:^(?:" + "|".join(_line_translate(p, sep) for p in patterns) + ")$)")


def _line_translate(pattern: str, sep: str) -> str:
    if unbounded_wildcards(pattern) <= 1:
        return _translate(pattern, sep, line=True)
    first = min(i for i in (pattern.find("*"), pattern.find("?")) if i >= 0)
    last = max(pattern.rfind("*"), pattern.rfind("?"))
    return re.escape(pattern[:first]) + "[^\\n]*" + re.escape(pattern[last + 1 :])


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


# Automaton steps: a literal character, `?` (one character but the separator), `*` (any run without the
# separator), `**` (any run), and the start of `**/` (skip it whole: `a/**/b` matches `a/b`).
_LIT, _ONE, _STAR, _ANY, _SKIP3 = range(5)


class LinearGlob:
    """A glob matched by simulating its automaton (one bit per step, all states at once): linear in the text."""

    __slots__ = (
        "_accept", "_any", "_eps1", "_lits", "_one", "_pieces", "_sep", "_skip3", "_star", "_start", "pattern"
    )

    def __init__(self, pattern: str, sep: str = "/") -> None:
        self.pattern = pattern
        self._sep = sep
        # Without `?` and the separator, over a text without the separator, every wildcard matches any run: the
        # glob matches when its literal pieces are found in order (the first at the start, the last at the end),
        # each at its leftmost place after the one before (str.find, not a step per character in Python).
        self._pieces = re.split(r"\*+", pattern) if "?" not in pattern and sep not in pattern else None
        steps = _steps(pattern, sep)
        lits: dict[str, int] = {}
        one = star = any_ = eps1 = skip3 = 0
        for i, (kind, ch) in enumerate(steps):
            bit = 1 << i
            if kind == _LIT:
                lits[ch] = lits.get(ch, 0) | bit
            elif kind == _ONE:
                one |= bit
            elif kind == _STAR:
                star |= bit
                eps1 |= bit
            elif kind == _ANY:
                any_ |= bit
                eps1 |= bit
            else:
                skip3 |= bit
                eps1 |= bit
        self._lits, self._one, self._star, self._any = lits, one, star, any_
        self._eps1, self._skip3 = eps1, skip3
        self._accept = 1 << len(steps)
        self._start = self._closure(1)

    def _closure(self, states: int) -> int:
        """Add the states reachable without reading a character (past `*`, `**` and a skipped `**/`)."""
        while True:
            more = states | ((states & self._eps1) << 1) | ((states & self._skip3) << 3)
            if more == states:
                return states
            states = more

    def match(self, text: str) -> object | None:
        pieces = self._pieces
        if pieces is not None and self._sep not in text:
            return True if _in_order(pieces, text) else None
        states = self._start
        lits, one, star, any_, sep = self._lits, self._one, self._star, self._any, self._sep
        for ch in text:
            if ch == sep:
                stepped = (states & lits.get(ch, 0)) << 1
                stay = states & any_
            else:
                stepped = (states & (lits.get(ch, 0) | one)) << 1
                stay = states & (star | any_)
            states = stepped | stay
            if not states:
                return None
            states = self._closure(states)
        return True if states & self._accept else None

    def __repr__(self) -> str:
        return f"LinearGlob({self.pattern!r})"


def _in_order(pieces: list[str], text: str) -> bool:
    """Whether `text` is pieces[0] + anything + pieces[1] + ... + anything + pieces[-1]."""
    if len(pieces) == 1:  # no wildcard
        return text == pieces[0]
    first, last = pieces[0], pieces[-1]
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    pos = len(first)
    for piece in pieces[1:-1]:
        at = text.find(piece, pos, end)
        if at < 0:
            return False
        pos = at + len(piece)
    return True


def _steps(pattern: str, sep: str) -> list[tuple[int, str]]:
    if pattern in ("*", "**"):
        return [(_ANY, "")]
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                if pattern.startswith(f"**{sep}", i) and (i == 0 or pattern[i - 1] == sep):
                    out += [(_SKIP3, ""), (_ANY, ""), (_LIT, sep)]  # (?:.*/)?
                    i += 3
                    continue
                out.append((_ANY, ""))
                i += 2
                continue
            out.append((_STAR, ""))
        elif c == "?":
            out.append((_ONE, ""))
        else:
            out.append((_LIT, c))
        i += 1
    return out


def glob_match(pattern: str, text: str, sep: str = "/") -> bool:
    return compile_glob(pattern, sep).match(text) is not None


def any_match(patterns: Iterable[str], text: str, sep: str = "/") -> bool:
    m = compile_globs(tuple(patterns), sep)
    return m is not None and m.match(text) is not None


def member_match(pattern: str, member: str) -> bool:
    """IAM member globs: `.` is the separator, a lone `*` matches everything."""
    return glob_match(pattern, member, sep=".")


def any_member_match(patterns: Iterable[str], member: str) -> bool:
    return any_match(patterns, member, sep=".")


__all__: Sequence[str] = (
    "MAX_GLOB_LENGTH",
    "GlobError",
    "LinearGlob",
    "Matcher",
    "any_match",
    "any_member_match",
    "check_glob",
    "compile_glob",
    "compile_globs",
    "compile_line_globs",
    "glob_match",
    "member_match",
    "unbounded_wildcards",
)
