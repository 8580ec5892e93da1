"""Stage 6, plan: fetch the few assets a plan needs, by a second pass over the sources.

A scan keeps findings, not assets (a million-asset organization must not sit in memory); the planner needs the
state of the assets with planned changes only. Re-reading the sources and keeping just those names costs one more
streaming pass over files, and for live sources it reads the state as it is now, which is what apply compares with.
"""

from __future__ import annotations

from collections.abc import Iterable

from auditor.collect import SourceOptions, open_source
from auditor.model import Asset


def collect_assets(source_specs: Iterable[str], names: set[str], options: SourceOptions | None = None,
                   asset_types: Iterable[str] | None = None) -> dict[str, Asset]:
    """The assets of the sources whose names are in `names` (the last one wins when a name repeats)."""
    found: dict[str, Asset] = {}
    if not names:
        return found
    base = options or SourceOptions()
    opts = SourceOptions(cluster=base.cluster, strict=base.strict, extra=dict(base.extra),
                         asset_types=frozenset(asset_types) if asset_types is not None else base.asset_types)
    opts.extra["needs_iam"] = True
    for spec in source_specs:
        for asset in open_source(spec, opts).assets():
            if asset.name in names:
                prev = found.get(asset.name)
                found[asset.name] = _merge(prev, asset) if prev is not None else _decoded(asset)
    return found


def _decoded(a: Asset) -> Asset:
    return Asset(a.name, a.asset_type, resource=a.resource or None,
                 iam_policy=a.iam_policy if a.has_iam_policy else None, ancestors=a.ancestors,
                 update_time=a.update_time, origin=a.origin)


def _merge(old: Asset, new: Asset) -> Asset:
    """CAI exports carry a resource's data and its IAM policy on separate lines: one asset with both."""
    return Asset(
        new.name,
        new.asset_type,
        resource=new.resource or old.resource or None,
        iam_policy=new.iam_policy if new.has_iam_policy else (old.iam_policy if old.has_iam_policy else None),
        ancestors=new.ancestors or old.ancestors,
        update_time=max(filter(None, (old.update_time, new.update_time)), default=None),
        origin=new.origin,
    )
