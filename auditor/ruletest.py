"""`auditor rules test`: rule tests kept beside the rules, run like `kyverno test` or `gator verify`.

A test file (`*.test.yaml`, anywhere under the folder given; the shipped ones are in `rules/tests/`) names rule
files and cases; each case scans asset files with those rules and states what must come out, per rule:

```yaml
rules: [../iam.yaml]                # rule files or folders, relative to this file
cases:
  - name: the example organization
    sources: [assets/org.ndjson]    # CAI exports, Kubernetes lists: anything `auditor scan --source` reads
    cluster: projects/p/locations/l/clusters/c   # for Kubernetes objects read from files (optional)
    expect:
      iam-no-public-members:
        count: 3                    # open findings of the rule (exempted ones are not counted)
        fail: [//storage.googleapis.com/helix-public-datasets]   # assets the rule reports
        pass: [//storage.googleapis.com/helix-model-registry]    # assets it must not report
        ids: [1a2b3c4d5e6f]         # finding ids, or prefixes of at least 8 digits
```

A case fails when a rule's findings differ from what is expected, when the snapshot is partial (a malformed
record, an unreadable file) or a rule raised an error: a test never passes on input it could not read. A test
file that cannot be used (YAML, unknown key, missing file, an expectation for a rule the files do not define) is
an error naming the file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from auditor.collect import SourceOptions
from auditor.errors import AuditorError, RuleError
from auditor.evaluate.rulebook import RULE_TEST_SUFFIXES, load_rules
from auditor.model import Finding
from auditor.scan import run_scan

MIN_ID_PREFIX = 8


class RuleTestError(AuditorError):
    """A test file that cannot be run: the message names the file and what is wrong."""


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int | None = Field(None, ge=0, description="Open findings of the rule.")
    fail: list[str] = Field(default_factory=list, description="Assets the rule must report.")
    pass_: list[str] = Field(default_factory=list, alias="pass", description="Assets the rule must not report.")
    ids: list[str] = Field(default_factory=list, description="Finding ids (or prefixes) that must be reported.")


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    sources: list[str] = Field(min_length=1)
    cluster: str = "local"
    expect: dict[str, Expectation] = Field(min_length=1)


class TestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[str] = Field(min_length=1)
    cases: list[Case] = Field(min_length=1)


@dataclass
class CaseResult:
    file: str
    case: str
    rule: str  # "" for a problem of the whole case (partial snapshot, evaluation error)
    ok: bool
    reason: str = ""


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.failed


def test_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(RULE_TEST_SUFFIXES))
    raise RuleTestError(f"{p}: no such test file or folder")


def load_test(path: Path) -> TestFile:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleTestError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise RuleTestError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    try:
        return TestFile.model_validate(doc)
    except ValidationError as exc:
        problems = [f"{path}: {'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise RuleTestError("\n".join(problems)) from None


def run_test_file(path: Path) -> Iterator[CaseResult]:
    spec = load_test(path)
    base = path.parent
    try:
        rules = load_rules([base / r for r in spec.rules])
    except RuleError as exc:
        raise RuleTestError(f"{path}: its rules do not load:\n{exc}") from None
    known = {r.id for r in rules}
    for case in spec.cases:
        unknown = sorted(set(case.expect) - known)
        if unknown:
            raise RuleTestError(f"{path}: case {case.name!r} expects findings of rules its rule files do not define: "
                                f"{', '.join(unknown)}")
        for e in case.expect.values():
            short = [i for i in e.ids if len(i) < MIN_ID_PREFIX]
            if short:
                raise RuleTestError(f"{path}: case {case.name!r}: finding id prefixes need {MIN_ID_PREFIX} digits "
                                    f"or more: {', '.join(short)}")
        sources = [str(base / s) for s in case.sources]
        for s in sources:
            if not Path(s).exists():
                raise RuleTestError(f"{path}: case {case.name!r}: no such source {s}")
        selected = [r for r in rules if r.id in case.expect]
        try:
            result = run_scan(sources, selected, SourceOptions(cluster=case.cluster))
        except AuditorError as exc:
            raise RuleTestError(f"{path}: case {case.name!r}: {exc}") from None
        where = str(path)
        if not result.complete:
            failed = "; ".join(f"{t}: {r}" for t, r in sorted(result.incomplete_types().items()))
            yield CaseResult(where, case.name, "", False, f"partial snapshot: {failed}")
        skipped = sum(s.skipped for s in result.sources)
        if skipped:
            yield CaseResult(where, case.name, "", False, f"{skipped} malformed record(s) skipped")
        errors = defaultdict(list)
        for err in result.evaluation.errors:
            errors[err.rule].append(f"{err.asset}: {err.error}")
        by_rule: dict[str, list[Finding]] = defaultdict(list)
        for f in result.findings:
            if f.exempted is None:
                by_rule[f.rule].append(f)
        for rule_id, exp in case.expect.items():
            problems = _compare(exp, by_rule.get(rule_id, []))
            if errors.get(rule_id):
                problems.insert(0, f"evaluation errors: {'; '.join(errors[rule_id][:3])}")
            yield CaseResult(where, case.name, rule_id, not problems, "; ".join(problems))


def _compare(exp: Expectation, found: list[Finding]) -> list[str]:
    problems = []
    if exp.count is not None and len(found) != exp.count:
        problems.append(f"expected {exp.count} finding(s), got {len(found)}")
    assets = {f.asset for f in found}
    missing = [a for a in exp.fail if a not in assets]
    if missing:
        problems.append(f"not reported: {', '.join(missing)}")
    unwanted = [a for a in exp.pass_ if a in assets]
    if unwanted:
        problems.append(f"reported but expected to pass: {', '.join(unwanted)}")
    absent = [i for i in exp.ids if not any(f.id.startswith(i) for f in found)]
    if absent:
        problems.append(f"finding id(s) not reported: {', '.join(absent)}")
    return problems


def run_tests(path: str | Path) -> Report:
    """Every test file under `path`; RuleTestError when a file cannot be used, or when there is none."""
    files = test_files(path)
    if not files:
        raise RuleTestError(f"{path}: no rule test files (*.test.yaml)")
    report = Report()
    for f in files:
        report.results.extend(run_test_file(f))
    return report
