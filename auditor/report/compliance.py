"""The per-control verdict of a scan for one compliance framework (`auditor scan --framework cis-gcp`)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from auditor.evaluate.compliance import FRAMEWORKS, ControlResult, assess
from auditor.evaluate.globs import compile_glob
from auditor.report.terminal import Column, print_table

if TYPE_CHECKING:
    from auditor.scan import ScanResult

STATUS_STYLE = {"pass": "green", "fail": "bold red", "unknown": "yellow", "no rule": "dim"}


def assess_scan(framework: str, result: ScanResult) -> list[ControlResult]:
    """Controls of `framework` judged from a scan: failed by an open finding, unknown when a mapped rule raised an
    error or an asset type it reads was not read completely."""
    tally = result.counts()  # kept as the findings streamed by: the scan may not hold them
    open_, exempted = tally.open_by_rule, tally.exempted_by_rule
    not_evaluated = {e.rule for e in result.evaluation.errors}
    unread = list(result.incomplete_types())
    for r in result.rules:
        for t in unread:
            glob = compile_glob(t)
            if t == "*" or r.matches_type(t) or any(glob.match(x) for x in (*r.rule.match.asset_types,
                                                                            *r.spec.asset_types)):
                not_evaluated.add(r.id)
    return assess(framework, [r.rule for r in result.rules], dict(open_), dict(exempted), not_evaluated)


def compliance_dict(framework: str, controls: list[ControlResult]) -> dict[str, Any]:
    counts = Counter(c.status for c in controls)
    return {
        "framework": framework,
        "title": FRAMEWORKS[framework].title,
        "summary": {s: counts.get(s, 0) for s in ("pass", "fail", "unknown", "no rule")},
        "controls": [c.to_dict() for c in controls],
    }


def render_compliance(framework: str, controls: list[ControlResult], console: Console) -> None:
    columns = [Column("control", key=True), Column("status", key=True), Column("title", ratio=3),
               Column("rules", ratio=2), Column("findings", key=True, right=True)]
    rows = []
    for c in controls:
        findings = str(c.findings) + (f" (+{c.exempted} exempted)" if c.exempted else "")
        rules = ", ".join(c.rules) or "-"
        if c.not_evaluated:
            rules += f" (not evaluated: {', '.join(c.not_evaluated)})"
        rows.append([c.control, c.status, c.title, rules, findings])
    print_table(console, FRAMEWORKS[framework].title, columns, rows,
                [STATUS_STYLE[c.status] if c.status != "pass" else None for c in controls])
    s = compliance_dict(framework, controls)["summary"]
    console.print(Text(f"{framework}: {s['pass']} pass, {s['fail']} fail, {s['unknown']} unknown, "
                       f"{s['no rule']} without a rule here", style="bold"))
