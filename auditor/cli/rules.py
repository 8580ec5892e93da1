"""`auditor rules`: list, validate, and describe the rules and checks."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from auditor.cli.options import rules_option
from auditor.evaluate.engine import Engine
from auditor.evaluate.registry import all_checks
from auditor.evaluate.rulebook import load_rules, rule_schema


@click.group("rules")
def command() -> None:
    """Inspect and validate rule files."""


@command.command("list")
@rules_option
@click.option("--exemptions", is_flag=True, help="List the exemptions with their days left.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_rules(rules_paths: tuple[str, ...], exemptions: bool, fmt: str) -> None:
    """Id, check, severity, mode and description of every rule."""
    rules = load_rules(list(rules_paths) or None)
    today = Engine(rules).today
    if exemptions:
        rows = [
            {
                "rule": r.id,
                "resource": e.resource,
                "reason": e.reason,
                "owner": e.owner,
                "ticket": e.ticket,
                "expires": e.expires.isoformat() if e.expires else None,
                "days_left": (e.expires - today).days if e.expires else None,
            }
            for r in rules
            for e in r.rule.exemptions
        ]
    else:
        rows = [
            {
                "id": r.id,
                "check": r.rule.check,
                "severity": r.rule.severity.value,
                "mode": r.rule.mode.value,
                "description": r.rule.description,
                "origin": r.origin,
            }
            for r in rules
        ]
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(expand=True)
    cols = list(rows[0]) if rows else (["rule", "resource", "days_left"] if exemptions else ["id"])
    for c in cols:
        table.add_column(c, overflow="fold")
    for row in rows:
        days_left = row.get("days_left")
        style = "red" if isinstance(days_left, int) and days_left < 0 else None
        table.add_row(*("" if row[c] is None else str(row[c]) for c in cols), style=style)
    Console(emoji=False, highlight=False).print(table)


@command.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def validate(paths: tuple[str, ...]) -> None:
    """Exit 0 when every file loads; otherwise print every problem (file:line: rule ID: reason) and exit 2."""
    rules = load_rules(list(paths))
    click.echo(f"ok: {len(rules)} rules in {len(paths)} path(s)")


@command.command("checks")
@click.option("--verbose", "-v", is_flag=True, help="Show each check's documentation and example.")
def checks(verbose: bool) -> None:
    """The registered checks a rule can name."""
    for name, spec in all_checks().items():
        first = spec.doc.splitlines()[0] if spec.doc else ""
        click.echo(f"{name}\t{first}")
        if verbose and spec.doc:
            click.echo("\n".join("    " + line for line in spec.doc.splitlines()[1:]))


@command.command("schema")
def schema() -> None:
    """Print the JSON Schema of rule files (published as rules/schema.json)."""
    sys.stdout.write(json.dumps(rule_schema(), indent=2) + "\n")


@command.command("test")
@click.argument("path", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def test(path: str, fmt: str) -> None:
    """Run the rule tests (*.test.yaml) under PATH: exit 0 when every case passes, 1 when one fails, 2 when a test
    file cannot be used."""
    from auditor.report.terminal import Column, console, print_table
    from auditor.ruletest import run_tests

    report = run_tests(path)
    if fmt == "json":
        rows = [{"file": r.file, "case": r.case, "rule": r.rule or None, "ok": r.ok, "reason": r.reason or None}
                for r in report.results]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        out = console()
        print_table(
            out,
            None,
            [Column("result", key=True), Column("rule", key=True), Column("case", ratio=2), Column("file", ratio=2),
             Column("reason", ratio=4)],
            [["pass" if r.ok else "FAIL", r.rule or "(case)", r.case, r.file, r.reason] for r in report.results],
            [None if r.ok else "bold red" for r in report.results],
        )
        failed = len(report.failed)
        out.print(f"{len(report.results) - failed} passed, {failed} failed")
    if not report.ok:
        sys.exit(1)
