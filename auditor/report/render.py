"""Scan results as JSON, Markdown, or a terminal table grouped by severity."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.model import SEVERITIES, Finding

if TYPE_CHECKING:
    from auditor.scan import ScanResult

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def render_json(result: ScanResult) -> str:
    """The JSON report of a result that kept its findings (see auditor/report/formats.py for streamed reports)."""
    from auditor.report.formats import render_bytes

    return render_bytes("json", result).decode()


def _short(name: str) -> str:
    return name.removeprefix("//")


def _grouped(findings: list[Finding]) -> dict[str, list[Finding]]:
    groups: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        groups[f.severity.value].append(f)
    return groups


def summary_text(s: dict[str, Any]) -> str:
    """`300 assets, 24 rules, 40 findings (7 critical, ...)` from a report's summary."""
    sev = ", ".join(f"{n} {k}" for k, n in s["by_severity"].items() if n)
    parts = [f"{s['assets']} assets", f"{s['rules']} rules", f"{s['findings']} findings" + (f" ({sev})" if sev else "")]
    if s.get("exempted"):
        parts.append(f"{s['exempted']} exempted")
    if s.get("skipped_records"):
        parts.append(f"{s['skipped_records']} malformed records skipped")
    if s.get("evaluation_errors"):
        parts.append(f"{s['evaluation_errors']} evaluation errors")
    return ", ".join(parts)


def summary_line(result: ScanResult) -> str:
    parts = [summary_text(result.summary())]
    if not result.complete:
        failed = "; ".join(f"{t}: {r}" for t, r in sorted(result.incomplete_types().items()))
        parts.append(f"PARTIAL snapshot ({failed})")
    return ", ".join(parts)


def render_table(result: ScanResult, console: Console) -> None:
    groups = _grouped(result.findings)
    for sev in reversed(SEVERITIES):
        items = groups.get(sev)
        if not items:
            continue
        table = Table(title=Text(f"{sev.upper()} ({len(items)})", style=SEVERITY_STYLE[sev]), title_justify="left",
                      show_lines=False, expand=True)
        table.add_column("rule", style="bold", overflow="fold", ratio=2)
        table.add_column("asset", overflow="fold", ratio=3)
        table.add_column("finding", overflow="fold", ratio=4)
        for f in items:
            msg = f.message
            if f.exempted is not None:
                e = f.exempted
                msg += f" [exempted: {e.reason}; {e.owner}; until {e.expires or 'no expiry'}]"
            elif f.expired_exemption is not None:
                msg += f" [exemption expired {f.expired_exemption.expires}]"
            table.add_row(f.rule, _short(f.asset), msg, style="dim" if f.exempted is not None else None)
        console.print(table)
    for err in result.evaluation.errors:
        console.print(f"[red]evaluation error[/red] rule {err.rule} on {err.asset}: {err.error}")
    console.print(Text(summary_line(result), style="bold"))


def render_markdown(result: ScanResult) -> str:
    from auditor.report.formats import render_bytes

    return render_bytes("markdown", result).decode()
