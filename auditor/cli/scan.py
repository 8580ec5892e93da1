"""`auditor scan`: one offline or live scan, printed as a table, JSON or Markdown."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from auditor.cli.options import jobs_option, rules_option, source_options, verdict_options
from auditor.collect import SourceOptions
from auditor.errors import AuditorError
from auditor.evaluate.rulebook import load_rules
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
) -> ScanResult:
    if not sources:
        raise AuditorError("no --source given (a CAI export file or folder, a Kubernetes list, cai://..., k8s://...)")
    rules = load_rules(list(rules_paths) or None)
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
@jobs_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to this file.")
@verdict_options
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
    allow_partial: bool,
) -> None:
    """Scan assets against the baseline rules and report the findings.

    \b
    Exit status:
      0  clean: every source read, every rule evaluated, no open finding at or above --fail-on
      1  open findings at or above --fail-on
      2  bad input, rules or usage (a file of no known shape, a source with no asset, a broken rule file)
      3  partial: records skipped, asset types not read, rules not evaluated or evaluation errors, and nothing
         worse (partial with findings is 3 too); --allow-partial turns 3 back into 0 or 1
    """
    result = do_scan(sources, rules_paths, cluster, strict, require_complete, jobs)
    if fmt == "json":
        text = render_json(result)
    elif fmt == "markdown":
        text = render_markdown(result)
    else:
        text = ""
    if output:
        if fmt == "table":
            with open(output, "w", encoding="utf-8") as fh:
                render_table(result, Console(file=fh, width=160, color_system=None, emoji=False))
        else:
            Path(output).write_text(text, encoding="utf-8")
        click.echo(summary_line(result), err=True)
    elif fmt == "table":
        render_table(result, Console(emoji=False, highlight=False))
    else:
        sys.stdout.write(text)
    if not result.complete:
        click.echo("warning: the result is partial:", err=True)
        for reason in result.partial_reasons()[:MAX_PROBLEMS_SHOWN]:
            click.echo(f"  {reason}", err=True)
    status = result.exit_status(fail_on, allow_partial)
    if status:
        sys.exit(status)
