"""The Google Cloud IAM permissions each component uses, declared next to the code that uses them.

Collectors and remediations call `declare(...)` at import time; `auditor permissions` builds the least-privilege
custom role from these declarations, so the role and the code cannot drift apart.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Declaration:
    component: str  # e.g. "collect.asset_inventory", "remediations.iam"
    permissions: tuple[str, ...]
    remediation: bool  # needed only when fixes are applied
    why: str
    module: str = ""  # the module that declared it, so a test can match the declaration to that module's API calls
    # Needed by a person running the plan's manual (planned-only) steps, never by the auditor: listed beside the
    # remediation role, never in it.
    operator: bool = False


_declarations: dict[str, Declaration] = {}


def declare(
    component: str, permissions: list[str] | tuple[str, ...], *, remediation: bool = False, why: str = "",
    operator: bool = False,
) -> None:
    module = sys._getframe(1).f_globals.get("__name__", "")
    _declarations[component] = Declaration(component, tuple(sorted(set(permissions))), remediation, why, module,
                                           operator)


def declarations() -> list[Declaration]:
    return sorted(_declarations.values(), key=lambda d: d.component)
