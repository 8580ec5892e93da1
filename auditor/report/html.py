"""Stage 5, report: the HTML page a reviewer reads at /report, rendered from the state store after each cycle.

Findings by severity with each rule's description and rationale, the drift of the last cycle that recorded
findings, how fresh the data is, the sources' state, recent cycles, and the pending remediation plan when the
remediation step ran. Jinja2 templates under templates/, autoescaped: asset names and messages come from the
organization being audited and are never trusted as HTML.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
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
    counts: Mapping[str, int] | None = None,
    rule_counts: Mapping[tuple[str, str], int] | None = None,
    exempted_total: int | None = None,
    drift_counts: tuple[int, int] | None = None,
    newest: Sequence[StoredFinding] = (),
) -> str:
    """The report page. Long lists are cut at `max_rows` per rule (and for drift); /findings.json has them all.

    From the store, `findings` and `drift` are a bounded selection (the worst findings, the first drift events) and
    the counts say how many there are in all: `counts` (open, not exempted, by severity), `rule_counts`
    ((severity, rule) -> n), `exempted_total`, `drift_counts` (new, resolved); `newest` lists the latest findings.
    """
    now = time.time() if now is None else now
    by_rule = {r.id: r.rule for r in rules}
    groups: dict[str, dict[str, list[StoredFinding]]] = defaultdict(lambda: defaultdict(list))
    exempted: list[StoredFinding] = []
    for f in findings:
        if f.exempted:
            exempted.append(f)
        else:
            groups[f.severity][f.rule].append(f)
    if counts is None:
        counts = {s: sum(len(v) for v in g.values()) for s, g in groups.items()}
    severities = [(s, groups.get(s, {})) for s in reversed(SEVERITIES) if counts.get(s)]
    new = [e for e in drift if e.change == "new"]
    resolved = [e for e in drift if e.change == "resolved"]
    return _env.get_template("report.html.j2").render(
        version=__version__,
        now=now,
        latest=latest,
        drift_cycle=drift_cycle,
        new=new,
        resolved=resolved,
        n_new=drift_counts[0] if drift_counts else len(new),
        n_resolved=drift_counts[1] if drift_counts else len(resolved),
        max_rows=max_rows,
        severities=severities,
        counts=counts,
        rule_counts=rule_counts or {},
        # Findings of a severity whose rules are not in the selection at all (the per-rule notes cover the rest).
        unlisted={
            s: counts[s] - sum((rule_counts or {}).get((s, r), len(items)) for r, items in g.items())
            for s, g in severities
        },
        total=sum(counts.values()),
        exempted=exempted,
        exempted_total=len(exempted) if exempted_total is None else exempted_total,
        newest=newest,
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
