"""`auditor scan`: one offline or live scan, printed as a table, JSON or Markdown."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from auditor.cli.options import RuleSelection, jobs_option, rules_option, selection_options, source_options
from auditor.collect import SourceOptions
from auditor.errors import AuditorError
from auditor.evaluate.rulebook import load_rules
from auditor.model import SEVERITIES
from auditor.report import terminal
from auditor.report.compliance import assess_scan, compliance_dict, render_compliance
from auditor.report.render import render_json, render_markdown, render_table, summary_line
from auditor.scan import ScanResult, run_scan

MAX_PROBLEMS_SHOWN = 20


def _problem_printer(console: Console) -> Callable[[str], None]:
    """Print the first problems as they are found; the summary counts all of them."""
    shown = 0

    def show(msg: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= MAX_PROBLEMS_SHOWN:
            console.print(Text.assemble(("skipped ", "yellow"), msg), soft_wrap=True)
        elif shown == MAX_PROBLEMS_SHOWN + 1:
            console.print(Text("... more skipped records are counted in the summary", style="yellow"))

    return show


def do_scan(
    sources: tuple[str, ...],
    rules_paths: tuple[str, ...],
    cluster: str,
    strict: bool,
    require_complete: bool,
    jobs: int = 1,
    selection: RuleSelection | None = None,
) -> ScanResult:
    if not sources:
        raise AuditorError("no --source given (a CAI export file or folder, a Kubernetes list, cai://..., k8s://...)")
    rules = load_rules(list(rules_paths) or None)
    if selection is not None:
        rules = selection.apply(rules)
    err = Console(stderr=True, emoji=False, highlight=False)
    options = SourceOptions(cluster=cluster, strict=strict, on_problem=_problem_printer(err))
    if err.is_terminal:
        with err.status("scanning...") as status:
            result = run_scan(
                list(sources), rules, options, on_progress=lambda n: status.update(f"{n:,} assets read"), jobs=jobs
            )
    else:
        result = run_scan(list(sources), rules, options, jobs=jobs)
    if require_complete and not result.complete:
        failed = "; ".join(f"{t}: {r}" for t, r in sorted(result.incomplete_types().items()))
        raise AuditorError(f"partial snapshot: {failed}")
    return result


@click.command("scan")
@source_options
@rules_option
@selection_options
@jobs_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to this file.")
@click.option(
    "--fail-on",
    type=click.Choice([*SEVERITIES, "never"]),
    default="low",
    show_default=True,
    help="Exit 1 when an open finding is at or above this severity.",
)
def command(
    sources: tuple[str, ...],
    cluster: str,
    strict: bool,
    require_complete: bool,
    rules_paths: tuple[str, ...],
    jobs: int,
    fmt: str,
    output: str | None,
    fail_on: str,
    selection: RuleSelection,
) -> None:
    """Scan assets against the baseline rules and report the findings.

    With --framework, only the rules mapped to that framework run, and a per-control pass/fail table follows the
    findings (in JSON: a `compliance` section)."""
    result = do_scan(sources, rules_paths, cluster, strict, require_complete, jobs, selection)
    framework = selection.framework
    controls = assess_scan(framework, result) if framework else None
    if fmt == "json":
        text = render_json(result)
        if framework and controls is not None:
            doc = json.loads(text)
            doc["compliance"] = compliance_dict(framework, controls)
            text = json.dumps(doc, indent=2, default=str) + "\n"
    elif fmt == "markdown":
        text = render_markdown(result)
    else:
        text = ""
    if output:
        if fmt == "table":
            with open(output, "w", encoding="utf-8") as fh:
                out = Console(file=fh, width=100_000, color_system=None, emoji=False, soft_wrap=True)
                render_table(result, out)
                if framework and controls is not None:
                    render_compliance(framework, controls, out)
        else:
            Path(output).write_text(text, encoding="utf-8")
        click.echo(summary_line(result), err=True)
    elif fmt == "table":
        out = terminal.console()
        render_table(result, out)
        if framework and controls is not None:
            render_compliance(framework, controls, out)
    else:
        sys.stdout.write(text)
    if not result.complete:
        click.echo("warning: the snapshot is partial; see the failed parts above", err=True)
    if fail_on != "never" and result.worst_open_rank() >= SEVERITIES.index(fail_on):
        sys.exit(1)
