"""Stage 6, plan: from a scan to a plan, shared by `auditor plan` and the daemon's cycle.

The scan gives the findings; the few assets with planned changes are read again (from their own APIs for live
sources, by a second pass over files, or whatever `assets` the caller already has), and the guards annotate each
change with what apply would refuse. Building the plan itself (`remediations.plan`) is pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from auditor.collect import SourceOptions
from auditor.logs import get_logger
from auditor.model import Asset
from auditor.scan import ScanResult
from remediations.apply import WriterFactory
from remediations.assets import collect_assets
from remediations.families import family, family_of
from remediations.guards import GuardConfig, partition_edits
from remediations.plan import ACTIVE_MODES, Change, Plan, build_plan, needed_assets, remediable
from remediations.targets import UnsupportedTarget

log = get_logger("remediation")


def plan_notes(cfg: GuardConfig) -> Callable[[Change], list[str]]:
    """What apply will refuse in a change, edit by edit (the other edits of the change still go ahead)."""

    def notes(change: Change) -> list[str]:
        state = family(change.family).state_from_section(change.before)
        _, refused = partition_edits(change.family, change.target, state, change.edits, cfg)
        return [f"{e.describe()}: {'; '.join(str(r) for r in why)}" for e, why in refused]

    return notes


def _live_assets(result: ScanResult, names: set[str], make: WriterFactory) -> dict[str, Asset]:
    """The planned assets as their own APIs return them now."""
    wanted: dict[str, tuple[str, str]] = {}
    for f, rule in remediable(result.findings, result.rules, ACTIVE_MODES):
        if f.asset in names:
            try:
                wanted[f.asset] = (f.asset_type, family_of(rule.remediation or "").name)
            except ValueError:
                continue  # an unknown kind: the planner reports it
    out: dict[str, Asset] = {}
    for name, (asset_type, family_name) in sorted(wanted.items()):
        fam = family(family_name)
        try:
            target = fam.target_for(name, asset_type)
            live = make(family_name).read(target)
        except UnsupportedTarget:
            continue  # the planner reports it
        except Exception as exc:  # reported by the planner as "not found in the sources", logged with the cause
            log.warning("remediation_read_failed", asset=name, error=f"{type(exc).__name__}: {exc}")
            continue
        if live.state is not None:
            out[name] = fam.asset_of(name, asset_type, live.state)
    return out


def planned_assets(
    result: ScanResult,
    source_specs: Iterable[str],
    options: SourceOptions | None = None,
    live: WriterFactory | None = None,
) -> Mapping[str, Asset]:
    """The assets with planned changes: read from their own APIs when a source is live and `live` writers are given
    (fresh tokens, a handful of calls instead of a second listing), else by a second pass over the sources."""
    specs = list(source_specs)
    names = needed_assets(result.findings, result.rules, ACTIVE_MODES)
    if not names:
        return {}
    if live is not None and any("://" in s for s in specs):
        return _live_assets(result, names, live)
    types = {f.asset_type for f in result.findings if f.asset in names}
    return collect_assets(specs, names, options, asset_types=types)


def plan_from_scan(
    result: ScanResult,
    source_specs: Iterable[str],
    options: SourceOptions | None = None,
    *,
    modes: Iterable[str] = ACTIVE_MODES,
    guard_config: GuardConfig | None = None,
    assets: Mapping[str, Asset] | None = None,
    live: WriterFactory | None = None,
    now: datetime | None = None,
) -> Plan:
    specs = list(source_specs)
    modes = list(modes)
    if assets is None:
        assets = planned_assets(result, specs, options, live)
    return build_plan(result.findings, result.rules, assets, modes=modes, now=now, sources=specs,
                      notes=plan_notes(guard_config) if guard_config is not None else None)
