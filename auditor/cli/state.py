"""`auditor history` and `auditor findings`: read the daemon's state store (cycles, drift, open findings)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.errors import AuditorError
from auditor.model import SEVERITIES
from auditor.report.escape import plain
from auditor.report.html import age
from auditor.state import Store, is_url, iso, state_target

F = TypeVar("F", bound=Callable[..., Any])


def _state_options(fn: F) -> F:
    fn = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)(fn)
    fn = click.option(
        "--config", "-c", type=click.Path(dir_okay=False), help="Take state_path from this configuration."
    )(fn)
    fn = click.option("--state", "state", help="The state: a SQLite file or a postgresql:// URL.")(fn)
    return fn


def _open(state: str | None, config: str | None) -> Store:
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
    with _open(state, config) as store:
        cycles = store.cycles(limit)
        events = {c.id: store.drift(c.id) for c in cycles} if drift else {}
    if fmt == "json":
        out = [{**c.to_dict(), **({"drift": [e.to_dict() for e in events[c.id]]} if drift else {})} for c in cycles]
        click.echo(json.dumps(out, indent=2))
        return
    console = Console(emoji=False, highlight=False)
    if not cycles:
        console.print("no cycles recorded yet")
        return
    table = Table(title="cycles (newest first)", title_justify="left")
    columns = ("cycle", "started (UTC)", "outcome", "assets", "open", "exempted", "new", "resolved", "stale", "seconds")
    for col in columns:
        table.add_column(col, justify="right" if col not in ("started (UTC)", "outcome") else "left")
    for c in cycles:
        seconds = f"{(c.ended_at or c.started_at) - c.started_at:.1f}"
        outcome = c.outcome if not c.error else f"{c.outcome}: {c.error}"
        table.add_row(str(c.id), iso(c.started_at)[:19], outcome, str(c.assets), str(c.findings), str(c.exempted),
                      str(c.new), str(c.resolved), str(c.stale), seconds)
    console.print(table)
    for c in cycles:
        if c.baseline:
            console.print(f"cycle {c.id} is the baseline: {c.new} finding(s) already there, not drift")
            continue
        if not events.get(c.id):
            continue
        t = Table(title=f"drift in cycle {c.id}", title_justify="left")
        for col in ("change", "severity", "rule", "asset", "finding"):
            t.add_column(col, overflow="fold")
        for e in events[c.id]:
            t.add_row(e.change, e.severity, e.rule, e.asset.removeprefix("//"), e.message)
        console.print(t)


@click.command("findings")
@_state_options
@click.option("--severity", type=click.Choice(SEVERITIES), help="Only findings at or above this severity.")
@click.option("--exempted/--no-exempted", default=False, show_default=True, help="Include exempted findings.")
def findings(state: str | None, config: str | None, fmt: str, severity: str | None, exempted: bool) -> None:
    """Open findings with their age (first seen), worst first."""
    with _open(state, config) as store:
        items = store.open_findings(include_exempted=exempted)
    if severity:
        items = [f for f in items if SEVERITIES.index(f.severity) >= SEVERITIES.index(severity)]
    now = time.time()
    if fmt == "json":
        click.echo(json.dumps([f.to_dict(now) for f in items], indent=2))
        return
    console = Console(emoji=False, highlight=False)
    if not items:
        console.print("no open findings")
        return
    table = Table(title=f"{len(items)} open findings", title_justify="left", expand=True)
    for col in ("severity", "rule", "asset", "finding", "age", "first seen (UTC)"):
        table.add_column(col, overflow="fold")
    for f in items:
        note = " (stale)" if f.stale else " (exempted)" if f.exempted else ""
        # Text cells, control characters stripped: names are data, never markup or terminal escapes.
        table.add_row(f.severity, Text(plain(f.rule)), Text(plain(f.asset.removeprefix("//"))),
                      Text(plain(f.message + note)), age(now - f.first_seen), iso(f.first_seen)[:19])
    console.print(table)


commands = [history, findings]
