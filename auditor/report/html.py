"""Stage 5, report: the HTML page a reviewer reads at /report, rendered from the state store after each cycle.

Findings by severity with each rule's description and rationale, the drift of the last cycle that recorded
findings, how fresh the data is, the sources' state, recent cycles, and the pending remediation plan when the
remediation step ran. Jinja2 templates under templates/, autoescaped: asset names and messages come from the
organization being audited and are never trusted as HTML.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from auditor import __version__
from auditor.evaluate.rulebook import LoadedRule
from auditor.model import SEVERITIES
from auditor.state import CycleRecord, DriftEvent, SourceState, StoredFinding, iso

MAX_ROWS = 200  # per rule, and drift events: a page a person can read; /findings.json holds everything

_env = Environment(
    loader=PackageLoader("auditor.report", "templates"),
    autoescape=select_autoescape(["html", "j2"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def age(seconds: float | None) -> str:
    """3d 4h, 2h 5m, 12m, 40s: an age a person reads at a glance."""
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    if m:
        return f"{m}m"
    return f"{s}s"


_env.filters["iso"] = lambda ts: iso(ts) if ts else "-"
_env.filters["age"] = age
_env.filters["short"] = lambda name: str(name).removeprefix("//")


def render_report(
    *,
    now: float | None = None,
    latest: CycleRecord | None,
    drift_cycle: CycleRecord | None,
    drift: Sequence[DriftEvent],
    findings: Sequence[StoredFinding],
    rules: Sequence[LoadedRule],
    sources: Sequence[SourceState],
    data_at: float | None,
    stale: bool,
    history: Sequence[CycleRecord] = (),
    last_success_at: float | None = None,
    success_overdue: bool = False,
    remediation_html: str | None = None,
    remediation_markdown: str | None = None,
    plan: dict[str, Any] | None = None,
    max_rows: int = MAX_ROWS,
) -> str:
    """The report page. Long lists are cut at `max_rows` per rule (and for drift); /findings.json has them all."""
    now = time.time() if now is None else now
    by_rule = {r.id: r.rule for r in rules}
    groups: dict[str, dict[str, list[StoredFinding]]] = defaultdict(lambda: defaultdict(list))
    exempted: list[StoredFinding] = []
    for f in findings:
        if f.exempted:
            exempted.append(f)
        else:
            groups[f.severity][f.rule].append(f)
    severities = [(s, groups[s]) for s in reversed(SEVERITIES) if s in groups]
    return _env.get_template("report.html.j2").render(
        version=__version__,
        now=now,
        latest=latest,
        drift_cycle=drift_cycle,
        new=[e for e in drift if e.change == "new"],
        resolved=[e for e in drift if e.change == "resolved"],
        max_rows=max_rows,
        severities=severities,
        counts={s: sum(len(v) for v in g.values()) for s, g in severities},
        total=sum(1 for f in findings if not f.exempted),
        exempted=exempted,
        rules=by_rule,
        sources=sources,
        data_at=data_at,
        stale=stale,
        history=history,
        last_success_at=last_success_at,
        success_overdue=success_overdue,
        # The fragment is rendered by the remediation step's own autoescaped templates.
        remediation_html=Markup(remediation_html) if remediation_html else None,
        remediation_markdown=remediation_markdown,
        plan=plan,
    )
