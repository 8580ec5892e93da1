"""Which loaded rules a scan runs: `--rule` / `--skip-rule` id globs, `--min-severity`, `--framework`.

A pattern that selects nothing is an error (a typo must not turn into a clean scan of zero rules).
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.errors import RuleError
from auditor.evaluate.compliance import FRAMEWORKS
from auditor.evaluate.globs import compile_glob
from auditor.evaluate.rulebook import LoadedRule
from auditor.model import SEVERITIES


def select_rules(
    rules: Sequence[LoadedRule],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    min_severity: str | None = None,
    framework: str | None = None,
) -> list[LoadedRule]:
    """The rules kept by every given criterion, in their loaded order. Id patterns are globs (`iam-*`)."""
    for option, patterns in (("--rule", include), ("--skip-rule", exclude)):
        for p in patterns:
            glob = compile_glob(p)
            if not any(glob.match(r.id) for r in rules):
                raise RuleError(f"{option} {p}: matches no loaded rule (see `auditor rules list`)")
    if framework is not None and framework not in FRAMEWORKS:
        raise RuleError(f"--framework {framework}: unknown; known: {', '.join(sorted(FRAMEWORKS))}")
    inc = [compile_glob(p) for p in include]
    exc = [compile_glob(p) for p in exclude]
    floor = SEVERITIES.index(min_severity) if min_severity else 0
    out = [
        r
        for r in rules
        if (not inc or any(g.match(r.id) for g in inc))
        and not any(g.match(r.id) for g in exc)
        and r.rule.severity.rank >= floor
        and (framework is None or framework in r.rule.compliance)
    ]
    if not out:
        raise RuleError("the rule selection (--rule, --skip-rule, --min-severity, --framework) leaves no rule to run")
    return out
