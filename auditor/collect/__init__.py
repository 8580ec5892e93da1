"""Stage 1, collect: read assets from CAI export files, Kubernetes object lists, and (live) APIs.

This package and `remediations` are the only ones allowed to touch the network. Every source yields
`Asset` objects as a stream and fills a `SourceStatus` that says whether it read everything.

A source is named by a string:
- a path to a file or folder: CAI exports (NDJSON or JSON array, optionally gzip) and Kubernetes lists (YAML/JSON);
- `cai://organizations/ID` (also folders/ID, projects/ID): the Cloud Asset Inventory API;
- `k8s://CONTEXT` or `k8s://in-cluster`: the Kubernetes API.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from auditor.errors import SourceError
from auditor.model import Asset, SourceStatus

DEFAULT_MAX_LINE_BYTES = 64 << 20
DEFAULT_MAX_DOCUMENT_BYTES = 1 << 30
DEFAULT_MAX_DEPTH = 200
DEFAULT_MAX_VALUES = 2_000_000  # values of one YAML document once its aliases are followed


def _limit(variable: str, default: int) -> int:
    """A positive integer from the environment, or the default; a bad value is a usage error naming the variable."""
    text = os.environ.get(variable, "").strip().replace("_", "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SourceError(f"{variable}={text!r}: not a whole number") from None
    if value < 1:
        raise SourceError(f"{variable}={text!r}: must be at least 1")
    return value


@dataclass(slots=True)
class SourceOptions:
    """What every source may use: the cluster name for Kubernetes objects, strictness, the asset types wanted."""

    cluster: str = "local"
    strict: bool = False
    # The asset types the loaded rules can read (globs allowed); None means every type.
    asset_types: frozenset[str] | None = None
    # Extra settings for live sources (endpoint, budget, ...), keyed by name.
    extra: dict[str, object] = field(default_factory=dict)
    # Called with a one-line problem ("file:line: reason") as soon as it is found.
    on_problem: Callable[[str], None] | None = None
    # Limits on what one file may hold, each named in the error it gives (a line of an export, a document read whole,
    # the nesting of a document's values and their number: YAML aliases can make a small file a huge tree).
    # Each can be set in the environment (AUDITOR_MAX_LINE_BYTES, ...), for the command line and the daemon alike.
    max_line_bytes: int = field(default_factory=lambda: _limit("AUDITOR_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES))
    max_document_bytes: int = field(
        default_factory=lambda: _limit("AUDITOR_MAX_DOCUMENT_BYTES", DEFAULT_MAX_DOCUMENT_BYTES)
    )
    max_depth: int = field(default_factory=lambda: _limit("AUDITOR_MAX_DEPTH", DEFAULT_MAX_DEPTH))
    max_values: int = field(default_factory=lambda: _limit("AUDITOR_MAX_VALUES", DEFAULT_MAX_VALUES))


class Source(Protocol):
    uri: str
    status: SourceStatus

    def assets(self) -> Iterator[Asset]: ...


def skip_record(status: SourceStatus, options: SourceOptions, where: str, reason: str) -> str:
    """A malformed record: fatal with --strict; otherwise counted and kept in the status, and shown at once."""
    msg = f"{where}: {reason}"
    if options.strict:
        raise SourceError(msg)
    status.skipped += 1
    status.errors.append(msg)
    if options.on_problem is not None:
        options.on_problem(msg)
    return msg


SourceFactory = Callable[[str, SourceOptions], Source]
_schemes: dict[str, SourceFactory] = {}


def register_scheme(scheme: str, factory: SourceFactory) -> None:
    _schemes[scheme] = factory


def open_source(spec: str, options: SourceOptions | None = None) -> Source:
    """The source named by `spec` (a path, or `scheme://...`)."""
    options = options or SourceOptions()
    if "://" in spec:
        _load_live_sources()  # only for live sources: the Google client libraries take a while to import
        scheme = spec.split("://", 1)[0]
        factory = _schemes.get(scheme)
        if factory is None:
            known = ", ".join(sorted(f"{s}://" for s in _schemes)) or "none"
            raise SourceError(f"unknown source scheme {scheme!r} in {spec!r} (known: {known}, or a file path)")
        return factory(spec, options)
    from auditor.collect.files import FileSource

    return FileSource(spec, options)


def _load_live_sources() -> None:
    """Live sources register themselves on import; imported only when a live source is named, since the Google
    client libraries take a while to import and an offline scan never needs them."""
    import auditor.collect.asset_inventory
    import auditor.collect.kubernetes_api  # noqa: F401
