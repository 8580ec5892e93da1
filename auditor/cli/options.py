"""Options shared by the commands that read sources and rules."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from auditor.evaluate.compliance import FRAMEWORKS
from auditor.model import SEVERITIES

if TYPE_CHECKING:
    from auditor.evaluate.rulebook import LoadedRule
    from auditor.scan import Jobs

F = TypeVar("F", bound=Callable[..., Any])


def rules_option(fn: F) -> F:
    return click.option(
        "--rules",
        "rules_paths",
        multiple=True,
        type=click.Path(),
        help="Rule file or folder (repeatable). Default: the shipped baseline.",
    )(fn)


def source_options(fn: F) -> F:
    fn = click.option(
        "--source",
        "sources",
        multiple=True,
        help="A CAI export file or folder, a Kubernetes list file, cai://organizations/ID or k8s://CONTEXT "
        "(repeatable).",
    )(fn)
    fn = click.option(
        "--cluster",
        default="local",
        show_default=True,
        help="Cluster for Kubernetes objects read from files: a name, or projects/P/locations/L/clusters/C.",
    )(fn)
    fn = click.option("--strict", is_flag=True, help="A malformed asset record is fatal instead of skipped.")(fn)
    fn = click.option(
        "--require-complete", is_flag=True, help="A partial snapshot (a type not read completely) is an error (exit 2)."
    )(fn)
    return fn


class JobsType(click.ParamType):
    """A number of processes (1 or more), or `auto`: as many as the cores this process may use."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Jobs:
        if isinstance(value, int) and value >= 1:
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"{value!r} is neither a number of processes (1 or more) nor 'auto'", param, ctx)
        return n


def jobs_option(fn: F) -> F:
    return click.option(
        "--jobs",
        "-j",
        type=JobsType(),
        default=1,
        show_default=True,
        help="Processes that read and evaluate large uncompressed NDJSON exports in parallel (same result as one); "
        "auto: one per usable core (CPU affinity and container limit).",
    )(fn)


@dataclass(frozen=True)
class RuleSelection:
    """Which loaded rules a command runs (auditor.evaluate.selection)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_severity: str | None = None
    framework: str | None = None

    def apply(self, rules: Sequence[LoadedRule]) -> list[LoadedRule]:
        from auditor.evaluate.selection import select_rules

        return select_rules(rules, self.include, self.exclude, self.min_severity, self.framework)


def selection_options(fn: F) -> F:
    """--rule / --skip-rule / --min-severity / --framework, passed to the command as one `selection` argument."""

    fn = click.option("--rule", "sel_rule", multiple=True, metavar="ID", help="Run only rules whose id matches this "
                      "glob (repeatable, e.g. --rule 'iam-*').")(fn)
    fn = click.option("--skip-rule", "sel_skip", multiple=True, metavar="ID",
                      help="Do not run rules whose id matches this glob (repeatable).")(fn)
    fn = click.option("--min-severity", "sel_min", type=click.Choice(SEVERITIES),
                      help="Run only rules of this severity or worse.")(fn)
    fn = click.option("--framework", "sel_framework", type=click.Choice(sorted(FRAMEWORKS)),
                      help="Run the rules mapped to this compliance framework and print a per-control table.")(fn)

    def wrapper(*args: Any, sel_rule: tuple[str, ...], sel_skip: tuple[str, ...], sel_min: str | None,
                sel_framework: str | None, **kwargs: Any) -> Any:
        kwargs["selection"] = RuleSelection(sel_rule, sel_skip, sel_min, sel_framework)
        return fn(*args, **kwargs)

    return functools.update_wrapper(wrapper, fn)  # type: ignore[return-value]


def verdict_options(fn: F) -> F:
    """--fail-on and --allow-partial: what the exit status says about a result (see auditor.scan)."""
    from auditor.model import SEVERITIES

    fn = click.option(
        "--allow-partial",
        is_flag=True,
        help="A partial result exits 0 or 1 as a complete one would, instead of 3.",
    )(fn)
    fn = click.option(
        "--fail-on",
        type=click.Choice([*SEVERITIES, "never"]),
        default="low",
        show_default=True,
        help="Exit 1 when an open finding is at or above this severity.",
    )(fn)
    return fn
