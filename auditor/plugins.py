"""One registry type for every plugin kind: checks, input readers, report formats, remediation families, cycle
steps, commands.

A `Registry` maps names to plugins; a plugin registers itself when its module is imported (a decorator or an
`add` call), and a registry that has a loader runs it once before its first lookup. `add_lazy` registers a name
with a function that makes the plugin on its first lookup: a command whose module imports what only it needs is
not imported by a run that never calls it. Packages outside `auditor`
(the remediations) join through the `drift_auditor.plugins` entry point group: `load_plugins()` imports each one,
and their imports register what they bring. So `auditor` never names them, and adding a plugin touches one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")
ENTRY_POINT_GROUP = "drift_auditor.plugins"


class _Lazy:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


class Registry(Generic[T]):
    """name -> plugin. `load` runs once, before the first lookup (it imports the modules that register)."""

    def __init__(self, kind: str, load: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._load = load
        self._loaded = load is None
        self._loading = False
        self._lock = threading.RLock()

    def add(self, name: str, item: T) -> T:
        with self._lock:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name} registered twice")
            self._items[name] = item
        return item

    def add_lazy(self, name: str, make: Callable[[], T]) -> None:
        """Register `name`, its plugin made by `make()` when first looked up."""
        self.add(name, _Lazy(make))  # type: ignore[arg-type]

    def _made(self, name: str) -> T:
        item = self._items[name]
        if isinstance(item, _Lazy):
            with self._lock:
                item = self._items[name]
                if isinstance(item, _Lazy):
                    item = self._items[name] = item.make()
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator: `@registry.register("name")` adds what it decorates."""

        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:  # other threads wait for the load; the loading thread's own lookups go through
            if self._loaded or self._loading or self._load is None:
                return
            self._loading = True
            try:
                self._load()
            finally:
                self._loaded, self._loading = True, False

    def get(self, name: str) -> T | None:
        self._ensure_loaded()
        return self._made(name) if name in self._items else None

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._ensure_loaded()
        return iter(sorted(self._items))

    def items(self) -> dict[str, T]:
        self._ensure_loaded()
        return {name: self._made(name) for name in sorted(self._items)}

    def names(self) -> list[str]:
        return list(self)

    def values(self) -> list[T]:
        """The plugins in registration order, for kinds that are tried in turn (readers of input shapes)."""
        self._ensure_loaded()
        return [self._made(name) for name in list(self._items)]


_plugins_loaded = False
_plugins_lock = threading.Lock()


def load_plugins() -> None:
    """Import every module of the `drift_auditor.plugins` entry point group once (they register on import)."""
    global _plugins_loaded
    with _plugins_lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


# Registries filled by plugin packages, looked up by `auditor` without naming the packages.
# Remediation families (each brings its kinds, targets, edits, writer and guards): `remediations.families`.
remediation_families: Registry[Any] = Registry("remediation family", load_plugins)
# Cycle steps after the findings are recorded, called as step(result, settings, state_path) -> report dict;
# `stop` hooks run when the daemon stops.
cycle_steps: Registry[Callable[..., Any]] = Registry("cycle step", load_plugins)
stop_hooks: Registry[Callable[[], None]] = Registry("stop hook", load_plugins)
# Command-line commands (click commands) and packages whose modules declare the permissions they need.
commands: Registry[Any] = Registry("command", load_plugins)
permission_packages: Registry[str] = Registry("permission package", load_plugins)


def remediation_kinds() -> dict[str, Any]:
    """Every remediation kind a rule may name (`iam.remove_member`...) -> its Kind, from the registered families."""
    out: dict[str, Any] = {}
    for fam in remediation_families.items().values():
        for kind in fam.kinds:
            out[kind.name] = kind
    return dict(sorted(out.items()))
