"""Stage 5, report: `/findings.json` a page at a time, read from the state store per request.

Filters (`severity` = this severity or worse, `rule`, `asset_type` repeatable, `stale`, `exempted`) and paging
(`page` from 1, `per_page` up to MAX_PAGE_SIZE) are parsed here; unknown keys and bad values are refused with a
message naming them. Each page links to the next, so a client walks every finding without the daemon ever holding
them all.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from auditor.model import SEVERITIES

PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000
FILTERS = ("severity", "rule", "asset_type", "stale", "exempted")
PAGING = ("page", "per_page")


def _flag(query: Mapping[str, Sequence[str]], name: str) -> bool | None:
    if name not in query:
        return None
    value = query[name][-1].lower()
    if value not in ("true", "false"):
        raise ValueError(f"{name} must be true or false")
    return value == "true"


def _positive(query: Mapping[str, Sequence[str]], name: str, default: int, most: int | None = None) -> int:
    if name not in query:
        return default
    raw = query[name][-1]
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number from 1")
    n = int(raw)
    if most is not None and n > most:
        raise ValueError(f"{name} must be at most {most}")
    return n


@dataclass(frozen=True)
class FindingQuery:
    min_severity: str | None = None
    rules: tuple[str, ...] = ()
    asset_types: tuple[str, ...] = ()
    stale: bool | None = None
    exempted: bool | None = None
    page: int = 1
    per_page: int = PAGE_SIZE

    @classmethod
    def parse(cls, query: Mapping[str, Sequence[str]]) -> FindingQuery:
        """/findings.json?severity=high&rule=a&rule=b&asset_type=...&stale=true&exempted=false&page=2"""
        unknown = sorted(set(query) - set(FILTERS) - set(PAGING))
        if unknown:
            raise ValueError(f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(FILTERS + PAGING)}")
        sev = None
        if "severity" in query:
            sev = query["severity"][-1]
            if sev not in SEVERITIES:
                raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        return cls(
            min_severity=sev,
            rules=tuple(query.get("rule", ())),
            asset_types=tuple(query.get("asset_type", ())),
            stale=_flag(query, "stale"),
            exempted=_flag(query, "exempted"),
            page=_positive(query, "page", 1),
            per_page=_positive(query, "per_page", PAGE_SIZE, MAX_PAGE_SIZE),
        )

    @property
    def severities(self) -> tuple[str, ...]:
        """This severity and the worse ones."""
        if self.min_severity is None:
            return ()
        return SEVERITIES[SEVERITIES.index(self.min_severity):]

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def link(self, page: int) -> str:
        params: list[tuple[str, str]] = []
        if self.min_severity:
            params.append(("severity", self.min_severity))
        params += [("rule", r) for r in self.rules] + [("asset_type", t) for t in self.asset_types]
        for name, flag in (("stale", self.stale), ("exempted", self.exempted)):
            if flag is not None:
                params.append((name, "true" if flag else "false"))
        if self.per_page != PAGE_SIZE:
            params.append(("per_page", str(self.per_page)))
        params.append(("page", str(page)))
        return "/findings.json?" + urllib.parse.urlencode(params)
