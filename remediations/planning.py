"""Stage 6, plan: from a scan to a plan, shared by `auditor plan` and the daemon's cycle.

The scan gives the findings; the few assets with planned changes are read again (a second pass over the sources,
or whatever `assets` the caller already has), and the guards annotate each change with what apply would refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from auditor.collect import SourceOptions
from auditor.model import Asset
from auditor.scan import ScanResult
from remediations.assets import collect_assets
from remediations.guards import GuardConfig, check_change
from remediations.kinds import CLOUD_ARMOR, IAM
from remediations.plan import ACTIVE_MODES, Change, Plan, build_plan, needed_assets


def _state(family: str, sec: Any) -> dict[str, Any] | None:
    if family == IAM:
        return {"bindings": sec or []}
    if family == CLOUD_ARMOR:
        return {"rules": sec or []}
    return sec if isinstance(sec, dict) else None


def plan_notes(cfg: GuardConfig) -> Any:
    def notes(change: Change) -> list[str]:
        refusals = check_change(change.family, change.target, _state(change.family, change.before),
                                _state(change.family, change.after), change.edits, cfg)
        return [str(r) for r in refusals]

    return notes


def plan_from_scan(
    result: ScanResult,
    source_specs: Iterable[str],
    options: SourceOptions | None = None,
    *,
    modes: Iterable[str] = ACTIVE_MODES,
    guard_config: GuardConfig | None = None,
    assets: Mapping[str, Asset] | None = None,
    now: datetime | None = None,
) -> Plan:
    specs = list(source_specs)
    modes = list(modes)
    if assets is None:
        names = needed_assets(result.findings, result.rules, modes)
        types = {f.asset_type for f in result.findings if f.asset in names}
        assets = collect_assets(specs, names, options, asset_types=types)
    return build_plan(result.findings, result.rules, assets, modes=modes, now=now, sources=specs,
                      notes=plan_notes(guard_config) if guard_config is not None else None)
