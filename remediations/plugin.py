"""What the remediations bring to `auditor`, registered when the `drift_auditor.plugins` entry point loads this.

The remediation families (`remediations.families`), the daemon's remediation step and its stop hook, the `plan`,
`apply` and `rollback` commands, and this package as one whose modules declare the permissions they need.
`auditor` finds each of them in its registries (`auditor.plugins`) and never imports this package by name.
"""

from __future__ import annotations

from typing import Any

from auditor import plugins
from remediations import families  # noqa: F401 - the families register on import


def _step(result: Any, settings: Any, state_path: Any, **kw: Any) -> Any:
    from remediations.cycle import run_remediation

    return run_remediation(result, settings, state_path, **kw)


def _stop() -> None:
    from remediations.cycle import stop_electors

    stop_electors()


def _command(name: str) -> Any:
    from remediations.cli import commands

    return next(c for c in commands if c.name == name)


def _register() -> None:
    plugins.cycle_steps.add("remediate", _step)
    plugins.stop_hooks.add("remediation-leader", _stop)
    # The commands' module (and what it imports) is loaded when one of them runs: loading rules loads this plugin.
    for name in ("plan", "apply", "rollback"):
        plugins.commands.add_lazy(name, lambda name=name: _command(name))  # type: ignore[misc]
    plugins.permission_packages.add("remediations", "remediations")


_register()
