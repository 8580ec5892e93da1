"""`auditor scan`: one offline or live scan, printed as a table or written as a report (JSON, NDJSON, CSV, SARIF,
JUnit, Markdown) as the findings come."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable

import click
from rich.console import Console
from rich.text import Text

from auditor.cli.options import (
    RuleSelection,
    jobs_option,
    rules_option,
    selection_options,
    source_options,
    verdict_options,
)
from auditor.collect import SourceOptions
from auditor.errors import AuditorError
from auditor.evaluate.rulebook import LoadedRule, load_rules
from auditor.report import terminal
from auditor.report.compliance import assess_scan, compliance_dict, render_compliance
from auditor.report.escape import plain
from auditor.report.formats import StreamedReport, format_names
from auditor.report.render import render_table, summary_line
from auditor.report.spool import FindingSink
from auditor.scan import Jobs, ScanResult, run_scan

MAX_PROBLEMS_SHOWN = 20


def _problem_printer(console: Console) -> Callable[[str], None]:
    """Print the first problems as they are found; the summary counts all of them."""
    shown = 0

    def show(msg: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= MAX_PROBLEMS_SHOWN:
            console.print(Text.assemble(("skipped ", "yellow"), plain(msg)), soft_wrap=True)
        elif shown == MAX_PROBLEMS_SHOWN + 1:
            console.print(Text("... more skipped records are counted in the summary", style="yellow"))

    return show


def do_scan(
    sources: tuple[str, ...],
    rules_paths: tuple[str, ...],
    cluster: str,
    strict: bool,
    require_complete: bool,
    jobs: Jobs = 1,
    sink_for: Callable[[list[LoadedRule]], FindingSink] | None = None,
    selection: RuleSelection | None = None,
) -> ScanResult:
    """`sink_for(rules)`, when given, returns where each finding goes as it is made (the scan then keeps none; a
    finding of an asset copy replaced by a later one is taken back from it before it is written)."""
    if not sources:
        raise AuditorError("no --source given (a CAI export file or folder, a Kubernetes list, cai://..., k8s://...)")
    rules = load_rules(list(rules_paths) or None)
    if selection is not None:
        rules = selection.apply(rules)
    on_finding = sink_for(rules) if sink_for is not None else None
    err = Console(stderr=True, emoji=False, highlight=False)
    options = SourceOptions(cluster=cluster, strict=strict, on_problem=_problem_printer(err))
    if err.is_terminal:
        with err.status("scanning...") as status:
            result = run_scan(
                list(sources),
                rules,
                options,
                on_progress=lambda n: status.update(f"{n:,} assets read"),
                jobs=jobs,
                on_finding=on_finding,
            )
    else:
        result = run_scan(list(sources), rules, options, jobs=jobs, on_finding=on_finding)
    if require_complete and not result.complete:
        failed = "; ".join(f"{t}: {r}" for t, r in sorted(result.incomplete_types().items()))
        raise AuditorError(f"partial snapshot: {failed}")
    return result


@click.command("scan")
@source_options
@rules_option
@selection_options
@jobs_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", *format_names()]),
    default="table",
    show_default=True,
    help="table (terminal), json, ndjson (a finding per line), csv, sarif (2.1.0), junit (XML) or markdown.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to this file.")
@verdict_options
def command(
    sources: tuple[str, ...],
    cluster: str,
    strict: bool,
    require_complete: bool,
    rules_paths: tuple[str, ...],
    jobs: Jobs,
    fmt: str,
    output: str | None,
    fail_on: str,
    allow_partial: bool,
    selection: RuleSelection,
) -> None:
    """Scan assets against the baseline rules and report the findings.

    With --framework, only the rules mapped to that framework run, and a per-control pass/fail table follows the
    findings (on stderr for machine formats; in JSON, also the report's `compliance` section).

    \b
    Exit status:
      0  clean: every source read, every rule evaluated, no open finding at or above --fail-on
      1  open findings at or above --fail-on
      2  bad input, rules or usage (a file of no known shape, a source with no asset, a broken rule file)
      3  partial: records skipped, asset types not read, rules not evaluated or evaluation errors, and nothing
         worse (partial with findings is 3 too); --allow-partial turns 3 back into 0 or 1
    """
    framework = selection.framework
    if fmt == "table":
        result = do_scan(sources, rules_paths, cluster, strict, require_complete, jobs, selection=selection)
        if output:
            with open(output, "w", encoding="utf-8") as text_file:
                out = Console(file=text_file, width=100_000, color_system=None, emoji=False, soft_wrap=True)
                render_table(result, out)
                if framework:
                    render_compliance(framework, assess_scan(framework, result), out)
            click.echo(summary_line(result), err=True)
        else:
            out = terminal.console()
            render_table(result, out)
            if framework:
                render_compliance(framework, assess_scan(framework, result), out)
    else:
        # The findings are encoded as they are found and the report written once the scan is over (its summary
        # comes first): nothing holds them all. A scan that fails leaves no report file behind.
        reports: list[StreamedReport] = []

        def sink_for(rules: list[LoadedRule]) -> FindingSink:
            reports.append(StreamedReport(fmt, rules))
            return reports[0]

        result = do_scan(sources, rules_paths, cluster, strict, require_complete, jobs, sink_for, selection)
        if framework and fmt == "json":
            # The framework's rules are a handful: their report is small enough to hold and add the verdict to.
            buf = io.BytesIO()
            reports[0].write(buf, result)
            doc = json.loads(buf.getvalue())
            doc["compliance"] = compliance_dict(framework, assess_scan(framework, result))
            data = (json.dumps(doc, indent=2, default=str) + "\n").encode()
            if output:
                with open(output, "wb") as fh:
                    fh.write(data)
            else:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
        elif output:
            with open(output, "wb") as fh:
                reports[0].write(fh, result)
            click.echo(summary_line(result), err=True)
        else:
            reports[0].write(sys.stdout.buffer, result)
            sys.stdout.buffer.flush()
        if framework and fmt != "json":
            render_compliance(framework, assess_scan(framework, result), terminal.console(stderr=True))
    if not result.complete:
        click.echo("warning: the result is partial:", err=True)
        for reason in result.partial_reasons()[:MAX_PROBLEMS_SHOWN]:
            click.echo(f"  {reason}", err=True)
    status = result.exit_status(fail_on, allow_partial)
    if status:
        sys.exit(status)
