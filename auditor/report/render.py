"""Scan results as JSON, Markdown, or a terminal table grouped by severity."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.model import SEVERITIES, Finding

if TYPE_CHECKING:
    from auditor.scan import ScanResult

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def render_json(result: ScanResult) -> str:
    return json.dumps(result.to_dict(), indent=2, sort_keys=False, default=str) + "\n"


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
    if s.get("duplicate_assets"):
        parts.append(f"{s['duplicate_assets']} duplicate assets read once")
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
    rules = {r.id: r.rule for r in result.rules}
    out = [f"# Baseline audit, {result.scanned_at:%Y-%m-%d %H:%M} UTC", "", summary_line(result), ""]
    if not result.complete:
        out += ["> **The snapshot is partial.** Findings may be missing:", ""]
        out += [f"> - {r}" for r in result.partial_reasons()] + [""]
    duplicates = [d for src in result.sources for d in src.duplicates]
    if duplicates:
        out += ["Assets read more than once (each evaluated once):", ""]
        out += [f"- {d}" for d in duplicates[:20]] + [""]
    groups = _grouped(result.findings)
    for sev in reversed(SEVERITIES):
        items = groups.get(sev)
        if not items:
            continue
        out += [f"## {sev.capitalize()} ({len(items)})", ""]
        by_rule: dict[str, list[Finding]] = defaultdict(list)
        for f in items:
            by_rule[f.rule].append(f)
        for rule_id, fs in by_rule.items():
            rule = rules.get(rule_id)
            out.append(f"### `{rule_id}`: {rule.description if rule and rule.description else fs[0].check}")
            if rule and rule.rationale:
                out += ["", f"*Why:* {rule.rationale.strip()}"]
            out += ["", "| asset | finding | status |", "| --- | --- | --- |"]
            for f in fs:
                status = "open"
                if f.exempted is not None:
                    e = f.exempted
                    status = f"exempted ({e.reason}, {e.owner}, until {e.expires or '-'})"
                elif f.expired_exemption is not None:
                    status = f"open: exemption expired {f.expired_exemption.expires}"
                out.append(f"| `{_short(f.asset)}` | {_md(f.message)} | {_md(status)} |")
            out.append("")
    if result.stale_exemptions:
        out += ["## Stale exemptions (matched nothing)", ""]
        out += [f"- `{e['rule']}`: `{e['resource']}` ({e['owner']}, {e['ticket'] or 'no ticket'})" for e in
                result.stale_exemptions]
        out.append("")
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
