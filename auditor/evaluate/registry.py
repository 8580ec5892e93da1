"""The registry of checks: small functions that give a rule its meaning.

A check is registered with a typed params model (pydantic, extra keys refused), the asset types it can read,
and, when it needs to see other assets (a RoleBinding needs its Namespace's labels), the context types the
engine must keep for it. Checks with context are evaluated once the whole snapshot has been read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict

from auditor.model import Asset, Severity
from auditor.plugins import Registry
from auditor.remedies import Remedy


class Params(BaseModel):
    """Base class of every check's params: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    pass


class Violation(NamedTuple):
    message: str
    key: str = ""  # what distinguishes two violations of one rule on one asset (member, role, priority...)
    details: dict[str, Any] = {}
    remedies: tuple[Remedy, ...] = ()  # the fixes the check offers (auditor.remedies); the planner reads these
    # At most this severity (the rule's when None or higher): a check whose findings differ in reach (a role with
    # some powers is less than one with every permission) grades them below the rule's severity.
    severity: Severity | None = None


class Unevaluated(NamedTuple):
    """Yielded by a check, among its violations, for what it could not judge: the context it needs is missing from
    the snapshot (no Organization asset to read the domain from, no Namespace of a cluster). The rule is then
    reported as not evaluated, with this reason, and the snapshot as partial: never as checked and clean."""

    reason: str


Outcome = Violation | Unevaluated


@dataclass
class Context:
    """What a check can see besides its asset: the assets of its context types, and the evaluation time."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    by_type: dict[str, list[Asset]] = field(default_factory=lambda: defaultdict(list))
    _index: dict[str, Any] = field(default_factory=dict)
    _read_up_to: dict[tuple[str, str], int] = field(default_factory=dict)

    def assets(self, asset_type: str) -> Iterator[Asset]:
        """The kept assets of a context type. Each one's decoded form is dropped when the next is asked for (it
        decodes again if read again): the indexes built from them keep what they need, not every decoded object."""
        return _released(self.by_type.get(asset_type, ()))

    def arrived(self, asset_type: str, reader: str) -> Iterable[Asset]:
        """The assets of a context type kept since `reader` last asked, each once per reader: what a screen's index
        grows by as the stream goes. Decoded forms are dropped as with `assets`. Screens ask for every asset, and
        mostly nothing arrived: then no generator is made."""
        kept = self.by_type.get(asset_type, ())
        start = self._read_up_to.get((reader, asset_type), 0)
        if len(kept) <= start:
            return ()
        self._read_up_to[(reader, asset_type)] = len(kept)
        return _released(kept[start:])

    def memo(self, key: str, build: Callable[[], Any]) -> Any:
        """Per-snapshot cache for indexes that checks derive from the context (built once, on first use)."""
        if key not in self._index:
            self._index[key] = build()
        return self._index[key]


def _released(assets: Iterable[Asset]) -> Iterator[Asset]:
    for a in assets:
        yield a
        a.release()


P = TypeVar("P", bound=Params)
CheckFn = Callable[[Asset, Any, Context], Iterable[Outcome]]
ScreenFn = Callable[[Asset, Any, Context], bool]


@dataclass(frozen=True)
class Prefilter:
    """A test every rule of a check shares: a rule can report on an asset only if a line of `text(asset)` matches
    one of `globs(params)`. The engine searches the lines once with the globs of all the check's rules together and
    skips them all when nothing matches: forty rules of one check cost about what one does.

    `text` gives the lines (members, roles, subject names), or None when they cannot be searched (a value with a
    line break): the rules then run. `globs` gives the rule's globs, or None when the rule cannot be prefiltered.
    """

    key: str  # names the text, which is made once per asset and shared by every check that reads the same lines
    text: Callable[[Asset], str | None]
    globs: Callable[[Any], Sequence[str] | None]
    sep: str = "/"


@dataclass(frozen=True)
class CheckSpec:
    name: str
    fn: CheckFn
    params: type[Params]
    asset_types: tuple[str, ...]
    needs_iam: bool
    context_types: tuple[str, ...]
    doc: str
    # Context types of which the check reads only the names (the engine keeps a name, not the object).
    context_names: tuple[str, ...] = ()
    # For a check with context: whether an asset may still give a violation once the whole snapshot is read,
    # judged as it streams by (with the context seen so far). False must be final whatever context comes later:
    # the engine then forgets the asset instead of keeping it to the end.
    screen: ScreenFn | None = None
    # The screen reads the context seen so far (not only the asset and params): a process that has seen more of
    # the snapshot may let go of what it kept.
    screen_reads_context: bool = False
    prefilter: Prefilter | None = None

    @property
    def deferred(self) -> bool:
        return bool(self.context_types or self.context_names)


def _load_builtin_checks() -> None:
    import importlib
    import pkgutil

    import auditor.evaluate.checks as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


# The registry type every plugin kind shares (auditor.plugins): checks register here when their module is imported.
_checks: Registry[CheckSpec] = Registry("check", _load_builtin_checks)


def check(
    name: str,
    *,
    params: type[Params] = NoParams,
    asset_types: Iterable[str] = ("*",),
    iam: bool = False,
    context: Iterable[str] = (),
    context_names: Iterable[str] = (),
    screen: Callable[[Asset, P, Context], bool] | None = None,
    screen_reads_context: bool = False,
    prefilter: Prefilter | None = None,
) -> Callable[[Callable[[Asset, P, Context], Iterable[Outcome]]], Callable[[Asset, P, Context], Iterable[Outcome]]]:
    """Register a check. `iam=True`: it reads the IAM policy, and only assets that carry one are given to it.

    `context`: asset types the check reads besides its own asset (it then runs once the snapshot is read);
    `context_names`: types of which it reads only the names; `screen`, `screen_reads_context`: see CheckSpec;
    `prefilter`: see Prefilter.
    """

    def deco(
        fn: Callable[[Asset, P, Context], Iterable[Outcome]],
    ) -> Callable[[Asset, P, Context], Iterable[Outcome]]:
        _checks.add(name, CheckSpec(
            name=name,
            fn=fn,
            params=params,
            asset_types=tuple(asset_types),
            needs_iam=iam,
            context_types=tuple(context),
            doc=(fn.__doc__ or "").strip(),
            context_names=tuple(t for t in context_names if t not in context),
            screen=screen,
            screen_reads_context=screen_reads_context,
            prefilter=prefilter,
        ))
        return fn

    return deco


def get_check(name: str) -> CheckSpec | None:
    return _checks.get(name)


def all_checks() -> dict[str, CheckSpec]:
    return _checks.items()
