"""The `auditor` command line: scan, rules, and the commands other stages add (serve, plan, apply, ...).

Exit status (`scan`, `serve --once`; see auditor.scan): 0 clean; 1 findings at or above --fail-on; 2 invalid
input, rules, configuration or usage (one line on stderr, never a traceback); 3 partial result and nothing worse.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from auditor import __version__, plugins
from auditor.errors import AuditorError

# Subcommand modules, each defining `command` (a click command or group) registered under its own name.
# Imported when a command is looked up, not with this module: `auditor scan` does not load the daemon's libraries.
_COMMAND_MODULES = (
    "auditor.cli.scan",
    "auditor.cli.rules",
    "auditor.cli.daemon",
    "auditor.cli.state",
    "auditor.cli.permissions",
    "auditor.cli.sinks",
    "auditor.cli.feeds",
    "auditor.cli.token",
)


# The module of the commands run most, imported alone when one of them is called.
_MODULE_OF = {"scan": "auditor.cli.scan", "rules": "auditor.cli.rules", "serve": "auditor.cli.daemon"}


def _module_commands(name: str) -> list[click.Command]:
    mod = importlib.import_module(name)
    return list(getattr(mod, "commands", None) or [mod.command])


class _Main(click.Group):
    _all_loaded = False

    def _load_all(self) -> None:
        if self._all_loaded:
            return
        for name in _COMMAND_MODULES:
            for cmd in _module_commands(name):
                if cmd.name not in self.commands:
                    self.add_command(cmd)
        # Commands that plugins bring (the remediations' plan, apply and rollback).
        for name, cmd in plugins.commands.items().items():
            if name not in self.commands:
                self.add_command(cmd, name)
        self._all_loaded = True

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_all()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _MODULE_OF:
            for cmd in _module_commands(_MODULE_OF[cmd_name]):
                self.commands.setdefault(cmd.name or "", cmd)
        if cmd_name not in self.commands:
            self._load_all()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AuditorError as exc:
            lines = str(exc).splitlines() or [type(exc).__name__]
            for line in lines:
                click.echo(f"error: {line}", err=True)
            sys.exit(2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            # Readers and loaders turn bad input into AuditorError with the file and line; what still escapes is a
            # defect, but it must not end as a traceback nor as click's "Aborted!" with exit 1 ("findings").
            if os.environ.get("AUDITOR_TRACEBACK"):
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {exc} (AUDITOR_TRACEBACK=1 shows where)", err=True)
            sys.exit(2)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="auditor")
def cli() -> None:
    """Keep a Google Cloud organization and its GKE clusters on their security baseline."""


def main() -> None:
    cli(prog_name="auditor")
