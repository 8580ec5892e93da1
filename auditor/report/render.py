"""Scan results as JSON, Markdown, or a terminal table grouped by severity."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from auditor.model import SEVERITIES, Finding
from auditor.report.escape import plain
from auditor.report.terminal import Column, print_table, short_id

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
    if s.get("duplicate_assets"):
        parts.append(f"{s['duplicate_assets']} duplicate assets read once")
    return ", ".join(parts)


def summary_line(result: ScanResult) -> str:
    parts = [summary_text(result.summary())]
    unknown: dict[str, int] = {}
    for src in result.sources:
        for kind, n in src.unknown.items():
            unknown[kind] = unknown.get(kind, 0) + n
    if unknown:
        top = sorted(unknown.items(), key=lambda kv: -kv[1])[:5]
        more = ", ..." if len(unknown) > 5 else ""
        parts.append("objects of kinds no reader knows: " + ", ".join(f"{k} ({n})" for k, n in top) + more)
    if not result.complete:
        parts.append(f"PARTIAL snapshot ({'; '.join(result.partial_reasons())})")
    return ", ".join(parts)


def render_table(result: ScanResult, console: Console) -> None:
    """Findings grouped by severity, worst first, each with its short id (what `auditor findings` and exemption
    tickets refer to); a plain aligned layout when the console is not a terminal."""
    groups = _grouped(result.findings)
    columns = [Column("id", key=True), Column("rule", key=True), Column("asset", ratio=3), Column("finding", ratio=4)]
    for sev in reversed(SEVERITIES):
        items = groups.get(sev)
        if not items:
            continue
        rows, styles = [], []
        for f in items:
            msg = f.message
            if f.exempted is not None:
                e = f.exempted
                msg += f" [exempted: {e.reason}; {e.owner}; until {e.expires or 'no expiry'}]"
            elif f.expired_exemption is not None:
                msg += f" [exemption expired {f.expired_exemption.expires}]"
            rows.append([short_id(f.id), f.rule, _short(f.asset), msg])
            styles.append("dim" if f.exempted is not None else None)
        print_table(console, Text(f"{sev.upper()} ({len(items)})", style=SEVERITY_STYLE[sev]), columns, rows, styles)
    for err in result.evaluation.errors:
        console.print(Text.assemble(("evaluation error", "red"), f" rule {plain(err.rule)} on {plain(err.asset)}: "
                                    f"{plain(err.error)}"))
    console.print(Text(plain(summary_line(result)), style="bold"))


def render_markdown(result: ScanResult) -> str:
    from auditor.report.formats import render_bytes

    return render_bytes("markdown", result).decode()
