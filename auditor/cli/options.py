"""Options shared by the commands that read sources and rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

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


def jobs_option(fn: F) -> F:
    return click.option(
        "--jobs",
        "-j",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Processes that read and evaluate large NDJSON exports in parallel (same result as one).",
    )(fn)



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
