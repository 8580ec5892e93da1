"""`auditor history` and `auditor findings`: read the daemon's state store (cycles, drift, open findings)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from auditor.errors import AuditorError
from auditor.model import SEVERITIES
from auditor.report import terminal
from auditor.report.html import age
from auditor.report.terminal import Column, print_table, short_id
from auditor.state import Store, is_url, iso, state_target

F = TypeVar("F", bound=Callable[..., Any])


def _state_options(fn: F) -> F:
    fn = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)(fn)
    fn = click.option(
        "--config", "-c", type=click.Path(dir_okay=False), help="Take state_path from this configuration."
    )(fn)
    fn = click.option("--state", "state", help="The state: a SQLite file or a postgresql:// URL.")(fn)
    return fn


def open_store(state: str | None, config: str | None) -> Store:
    """The state store named by --state, or by the configuration's state_path / state_url."""
    password_file = None
    if state is None:
        from auditor.settings import load_settings

        try:
            state, password_file = state_target(load_settings(config))
        except AuditorError as exc:
            if config is None:
                raise AuditorError(f"give --state FILE or --config FILE (or set AUDITOR_STATE_PATH): {exc}") from None
            raise
    if not is_url(state) and not Path(state).is_file():
        raise AuditorError(f"{state}: no state file (has `auditor serve` run with this state_path?)")
    return Store(state, password_file)


@click.command("history")
@_state_options
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(1), help="Cycles to show.")
@click.option("--drift/--no-drift", default=True, show_default=True, help="Show each cycle's drift events.")
def history(state: str | None, config: str | None, fmt: str, limit: int, drift: bool) -> None:
    """Recent cycles (outcome, counts, durations) and the drift each one found."""
    with open_store(state, config) as store:
        cycles = store.cycles(limit)
        events = {c.id: store.drift(c.id) for c in cycles} if drift else {}
    if fmt == "json":
        out = [{**c.to_dict(), **({"drift": [e.to_dict() for e in events[c.id]]} if drift else {})} for c in cycles]
        click.echo(json.dumps(out, indent=2))
        return
    con = terminal.console()
    if not cycles:
        con.print("no cycles recorded yet")
        return
    columns = [Column("cycle", key=True, right=True), Column("started (UTC)", key=True), Column("outcome", ratio=3)]
    columns += [Column(c, key=True, right=True) for c in ("assets", "open", "exempted", "new", "resolved", "stale",
                                                          "seconds")]
    rows = []
    for c in cycles:
        seconds = f"{(c.ended_at or c.started_at) - c.started_at:.1f}"
        outcome = c.outcome if not c.error else f"{c.outcome}: {c.error}"
        rows.append([str(c.id), iso(c.started_at)[:19], outcome, str(c.assets), str(c.findings), str(c.exempted),
                     str(c.new), str(c.resolved), str(c.stale), seconds])
    print_table(con, "cycles (newest first)", columns, rows)
    for c in cycles:
        if c.baseline:
            con.print(f"cycle {c.id} is the baseline: {c.new} finding(s) already there, not drift")
            continue
        if not events.get(c.id):
            continue
        print_table(
            con,
            f"drift in cycle {c.id}",
            [Column("change", key=True), Column("id", key=True), Column("severity", key=True),
             Column("rule", key=True), Column("asset", ratio=3), Column("finding", ratio=4)],
            [[e.change, short_id(e.finding_id), e.severity, e.rule, e.asset.removeprefix("//"), e.message]
             for e in events[c.id]],
        )


@click.command("findings")
@_state_options
@click.option("--severity", type=click.Choice(SEVERITIES), help="Only findings at or above this severity.")
@click.option("--exempted/--no-exempted", default=False, show_default=True, help="Include exempted findings.")
def findings(state: str | None, config: str | None, fmt: str, severity: str | None, exempted: bool) -> None:
    """Open findings with their age (first seen), worst first."""
    with open_store(state, config) as store:
        items = store.open_findings(include_exempted=exempted)
    if severity:
        items = [f for f in items if SEVERITIES.index(f.severity) >= SEVERITIES.index(severity)]
    now = time.time()
    if fmt == "json":
        click.echo(json.dumps([f.to_dict(now) for f in items], indent=2))
        return
    out = terminal.console()
    if not items:
        out.print("no open findings")
        return
    rows = []
    for f in items:
        note = " (stale)" if f.stale else " (exempted)" if f.exempted else ""
        rows.append([short_id(f.id), f.severity, f.rule, f.asset.removeprefix("//"), f.message + note,
                     age(now - f.first_seen), iso(f.first_seen)[:19]])
    print_table(
        out,
        f"{len(items)} open findings",
        [Column("id", key=True), Column("severity", key=True), Column("rule", key=True), Column("asset", ratio=3),
         Column("finding", ratio=4), Column("age", key=True), Column("first seen (UTC)", key=True)],
        rows,
    )


commands = [history, findings]
