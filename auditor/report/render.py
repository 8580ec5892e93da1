"""Scan results as JSON, Markdown, or a terminal table grouped by severity."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.model import SEVERITIES, Finding
from auditor.report.escape import plain

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


def summary_line(result: ScanResult) -> str:
    s = result.summary()
    sev = ", ".join(f"{n} {k}" for k, n in s["by_severity"].items() if n)
    parts = [f"{s['assets']} assets", f"{s['rules']} rules", f"{s['findings']} findings" + (f" ({sev})" if sev else "")]
    if s["exempted"]:
        parts.append(f"{s['exempted']} exempted")
    if s["skipped_records"]:
        parts.append(f"{s['skipped_records']} malformed records skipped")
    if s["evaluation_errors"]:
        parts.append(f"{s['evaluation_errors']} evaluation errors")
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
            # Cells are Text, not markup: a name's "[...]" is no style, and its control characters (ANSI escapes
            # that would recolour or retitle the operator's terminal) are stripped.
            table.add_row(Text(plain(f.rule)), Text(plain(_short(f.asset))), Text(plain(msg)),
                          style="dim" if f.exempted is not None else None)
        console.print(table)
    for err in result.evaluation.errors:
        console.print(Text.assemble(("evaluation error", "red"), f" rule {plain(err.rule)} on {plain(err.asset)}: "
                                    f"{plain(err.error)}"))
    console.print(Text(plain(summary_line(result)), style="bold"))


def render_markdown(result: ScanResult) -> str:
    from auditor.report.formats import render_bytes

    return render_bytes("markdown", result).decode()
