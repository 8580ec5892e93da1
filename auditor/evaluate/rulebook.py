"""Load and validate rule files.

A rule file is YAML: a list of rules, a mapping with a `rules:` list, or Config Validator constraint documents
(`apiVersion: constraints.gatekeeper.sh/...`), which are converted into rules. Every rule is validated against
the schema (`Rule` below; `rules/schema.json` is generated from it) and its params against its check's params
model. A wrong file is refused as a whole, with one line per problem: file, line, rule id and reason.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from auditor.errors import RuleError
from auditor.evaluate.globs import Matcher, check_glob, compile_glob
from auditor.evaluate.registry import CheckSpec, Params, all_checks, get_check
from auditor.model import Mode, Severity
from auditor.plugins import remediation_kinds

RULE_FILE_SUFFIXES = (".yaml", ".yml")
# Rule tests live beside the rules (`auditor rules test`): a folder walk does not read them as rules.
RULE_TEST_SUFFIXES = (".test.yaml", ".test.yml")
RULE_TEST_FOLDER = "tests"
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid")

    asset_types: list[str] = Field(default_factory=lambda: ["*"], description="Asset type globs.")
    ancestries: list[str] = Field(
        default_factory=lambda: ["**"],
        description="Ancestry path globs, e.g. organizations/123/** (`*` stops at `/`, `**` crosses it).",
    )
    excluded_ancestries: list[str] = Field(default_factory=list, description="Ancestry path globs to skip.")

    @field_validator("asset_types", "ancestries", "excluded_ancestries")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        for g in v:
            check_glob(g)
        return v


class Exemption(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource: str = Field(description="Asset name glob (`*` stops at `/`, `**` crosses it).")
    reason: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    ticket: str | None = None
    expires: date | None = Field(default=None, description="Last day the exemption applies (YYYY-MM-DD).")
    details: dict[str, str] = Field(
        default_factory=dict,
        description="Optional globs on finding details (e.g. member: 'serviceAccount:ci@*') to narrow the exemption.",
    )

    @field_validator("resource")
    @classmethod
    def _glob(cls, v: str) -> str:
        return check_glob(v)

    @field_validator("details")
    @classmethod
    def _detail_globs(cls, v: dict[str, str]) -> dict[str, str]:
        for g in v.values():
            check_glob(g)
        return v


class Rule(BaseModel):
    """One baseline rule, as written in a rule file."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Unique id, stable across versions.")
    check: str = Field(description="A registered check (see `auditor rules checks`).")
    severity: Severity
    description: str = ""
    rationale: str = ""
    match: Match = Field(default_factory=Match)
    params: dict[str, Any] = Field(default_factory=dict)
    mode: Mode = Mode.audit
    remediation: str | None = None
    exemptions: list[Exemption] = Field(default_factory=list)
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Free key/value labels (team, domain, ...): carried into finding JSON, SARIF and notifications.",
    )
    compliance: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Controls this rule checks, by framework (cis-gcp: CIS Google Cloud Platform Foundation "
        "Benchmark 2.0.0; cis-gke: CIS Google Kubernetes Engine Benchmark 1.5.0), e.g. {cis-gcp: ['5.1']}.",
    )

    @field_validator("params", mode="before")
    @classmethod
    def _params_none(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r}: lowercase letters, digits, '_' and '-', starting with a letter")
        return v

    @field_validator("compliance")
    @classmethod
    def _compliance(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        from auditor.evaluate.compliance import check_controls

        for framework, controls in v.items():
            check_controls(framework, controls)
        return v


@dataclass(eq=False)
class LoadedRule:
    """A validated rule bound to its check and typed params."""

    rule: Rule
    spec: CheckSpec
    params: Params
    origin: str  # file:line
    _types: tuple[Matcher, ...] = field(init=False, repr=False)
    _anc: tuple[Matcher, ...] = field(init=False, repr=False)
    _excl: tuple[Matcher, ...] = field(init=False, repr=False)
    _all_ancestries: bool = field(init=False, repr=False)
    _anc_cache: dict[str, bool] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._types = tuple(compile_glob(t) for t in self.rule.match.asset_types)
        self._anc = tuple(compile_glob(a) for a in self.rule.match.ancestries)
        self._excl = tuple(compile_glob(a) for a in self.rule.match.excluded_ancestries)
        self._all_ancestries = "**" in self.rule.match.ancestries and not self._excl

    @property
    def id(self) -> str:
        return self.rule.id

    def matches_type(self, asset_type: str) -> bool:
        if not any(p.match(asset_type) for p in self._types):
            return False
        return any(compile_glob(t).match(asset_type) for t in self.spec.asset_types)

    def matches_ancestry(self, path: str) -> bool:
        if self._all_ancestries:
            return True
        hit = self._anc_cache.get(path)
        if hit is None:
            hit = any(p.match(path) for p in self._anc) and not any(p.match(path) for p in self._excl)
            if len(self._anc_cache) < 100_000:
                self._anc_cache[path] = hit
        return hit


# -- document converters (Config Validator constraints and the like) -------------------------------------------------
# A converter takes (document, file, line) and returns rule dicts; it raises ValueError with the reason.
DocumentConverter = Callable[[dict[str, Any], str, int], list[dict[str, Any]]]
_converters: dict[str, DocumentConverter] = {}


def register_converter(api_version_prefix: str, converter: DocumentConverter) -> None:
    _converters[api_version_prefix] = converter


def _converter_for(doc: dict[str, Any]) -> DocumentConverter | None:
    api = doc.get("apiVersion")
    if not isinstance(api, str):
        return None
    _load_converters()
    for prefix, conv in _converters.items():
        if api.startswith(prefix):
            return conv
    return None


def _load_converters() -> None:
    # Imported here, not at the top: the constraints module registers itself through this one.
    import auditor.evaluate.constraints  # noqa: F401


# -- YAML with line numbers -------------------------------------------------------------------------------------------
def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the YAML node at `loc` (a pydantic error location), as deep as it can be followed."""
    best = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == key:
                    nxt = v
                    best = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            best = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return best


def _fmt_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Problems:
    def __init__(self, path: str) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, line: int | None, rule_id: str | None, reason: str) -> None:
        where = f"{self.path}:{line}" if line else self.path
        who = f" rule {rule_id}:" if rule_id else ""
        self.items.append(f"{where}:{who} {reason}")


def _check_hint(name: str) -> str:
    known = sorted(all_checks())
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown check {name!r}{hint}; known checks: {', '.join(known)}"


def _bind(raw: dict[str, Any], node: yaml.Node | None, problems: _Problems, origin: str) -> LoadedRule | None:
    rule_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    try:
        rule = Rule.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.add(_line_of(node, loc), rule_id, f"{_fmt_loc(loc)}: {err['msg']}")
        return None
    spec = get_check(rule.check)
    if spec is None:
        problems.add(_line_of(node, ("check",)), rule.id, _check_hint(rule.check))
        return None
    if rule.remediation is not None:
        # The kinds the installed remediation families bring (none when the remediations are not installed).
        known = list(remediation_kinds())
        if rule.remediation not in known:
            problems.add(
                _line_of(node, ("remediation",)),
                rule.id,
                f"unknown remediation {rule.remediation!r}; known remediations: {', '.join(known) or 'none'}",
            )
            return None
    try:
        params = spec.params.model_validate(rule.params)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ("params", *err["loc"])
            problems.add(_line_of(node, loc), rule.id, f"{_fmt_loc(loc)}: {err['msg']}")
        return None
    except ValueError as exc:  # a params model that compiles something (CEL, CIDRs) and fails
        problems.add(_line_of(node, ("params",)), rule.id, f"params: {exc}")
        return None
    return LoadedRule(rule=rule, spec=spec, params=params, origin=origin)


MAX_RULE_FILE_BYTES = 16 * 1024 * 1024
MAX_YAML_NESTING = 64  # rules are a few levels deep; YAML nested thousands deep exhausts the parser's recursion


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, or RuleError naming the file and what is wrong (never an OSError or a decode error)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_RULE_FILE_BYTES + 1)
    except OSError as exc:
        raise RuleError(f"{path}: cannot read the rule file: {exc.strerror or exc}") from None
    if len(data) > MAX_RULE_FILE_BYTES:
        raise RuleError(f"{path}: rule file larger than {MAX_RULE_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RuleError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); rule files are "
            "UTF-8 YAML"
        ) from None


def _check_nesting(text: str, problems: _Problems, loader: type[Any] = yaml.SafeLoader) -> None:
    """Refuse YAML nested deeper than MAX_YAML_NESTING, found from the parser's events (which nest no calls) before
    the composer, which recurses once per level, sees it."""
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_NESTING:
                line = event.start_mark.line + 1 if event.start_mark is not None else None
                problems.add(line, None, f"YAML nested deeper than {MAX_YAML_NESTING} levels")
                raise RuleError("\n".join(problems.items))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _parse(text: str, problems: _Problems) -> tuple[list[yaml.Node], list[Any]]:
    """The documents of a rule file, as nodes (for line numbers) and as values.

    libyaml's parser, where present, is about ten times faster than the pure Python one (three quarters of the
    time of loading the shipped rules); the documents are composed once and their values built from those nodes.
    On any problem the file is parsed again by the pure Python parser, whose messages and line numbers name it.
    """
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            _check_nesting(text, problems, fast)
            nodes = list(yaml.compose_all(text, Loader=fast))
            builder = fast("")
            return nodes, [None if n is None else builder.construct_document(n) for n in nodes]
        except (yaml.YAMLError, RecursionError, RuleError):
            problems.items.clear()
    _check_nesting(text, problems)
    nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    return nodes, list(yaml.safe_load_all(text))


def load_file(path: Path) -> list[LoadedRule]:
    """The rules of one file; RuleError lists every problem in it. A file that holds no rule is an error too."""
    text = _read_text(path)
    problems = _Problems(str(path))
    try:
        nodes, docs = _parse(text, problems)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problems.add(line, None, f"YAML syntax error: {getattr(exc, 'problem', None) or exc}")
        raise RuleError("\n".join(problems.items)) from None
    except RecursionError:  # aliases expanded into a structure too deep (the events above did not nest)
        problems.add(None, None, "YAML nested too deep")
        raise RuleError("\n".join(problems.items)) from None

    out: list[LoadedRule] = []
    for doc, node in zip(docs, nodes, strict=True):
        if doc is None:
            continue
        items: list[tuple[Any, yaml.Node | None]]
        if isinstance(doc, dict) and isinstance(doc.get("rules"), list) and isinstance(node, yaml.MappingNode):
            seq = next(v for k, v in node.value if k.value == "rules")
            items = list(zip(doc["rules"], seq.value, strict=True))
        elif isinstance(doc, list) and isinstance(node, yaml.SequenceNode):
            items = list(zip(doc, node.value, strict=True))
        elif isinstance(doc, dict) and "apiVersion" in doc:
            line = node.start_mark.line + 1 if node is not None else 1
            conv = _converter_for(doc)
            name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
            if conv is None:
                problems.add(
                    line, name, f"unsupported document apiVersion {doc.get('apiVersion')!r} kind {doc.get('kind')!r}"
                )
                continue
            try:
                converted = conv(doc, str(path), line)
            except ValueError as exc:
                problems.add(line, name, str(exc))
                continue
            items = [(r, None) for r in converted]
            for raw, _ in items:
                loaded = _bind(raw, node, problems, f"{path}:{line}")
                if loaded is not None:
                    out.append(loaded)
            continue
        else:
            problems.add(
                node.start_mark.line + 1 if node is not None else None,
                None,
                "expected a list of rules, a mapping with a 'rules' list, or a Config Validator constraint",
            )
            continue
        for raw, item_node in items:
            line = item_node.start_mark.line + 1 if item_node is not None else None
            if not isinstance(raw, dict):
                problems.add(line, None, "a rule must be a mapping")
                continue
            loaded = _bind(raw, item_node, problems, f"{path}:{line}")
            if loaded is not None:
                out.append(loaded)
    if problems.items:
        raise RuleError("\n".join(problems.items))
    if not out:
        raise RuleError(
            f"{path}: no rule in the file (empty, or only comments): a rule file that checks nothing is a mistake"
        )
    return out


def shipped_rules_dir() -> Path:
    """The baseline shipped with the package (installed wheel) or beside the source tree."""
    here = Path(__file__).resolve().parent.parent
    installed = here / "_rules"
    if installed.is_dir():
        return installed
    return here.parent / "rules"


def _hidden(path: Path, root: Path) -> bool:
    """Dot files and folders: editor backups, and the `..data` copies a ConfigMap volume holds beside the files."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def is_rule_test(path: Path, root: Path | None = None) -> bool:
    """A rule test file (`*.test.yaml`), or a file in a `tests/` folder below a rules folder: not a rule file."""
    if path.name.endswith(RULE_TEST_SUFFIXES):
        return True
    return root is not None and RULE_TEST_FOLDER in path.relative_to(root).parts[:-1]


def rule_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        try:
            if p.is_dir():
                found = sorted(
                    f
                    for f in p.rglob("*")
                    if f.suffix in RULE_FILE_SUFFIXES and f.is_file() and not _hidden(f, p) and not is_rule_test(f, p)
                )
                if not found:
                    raise RuleError(f"{p}: no rule files (.yaml or .yml) in the folder")
                out.extend(found)
            elif p.is_file():
                out.append(p)
            else:
                raise RuleError(f"{p}: no such rule file or folder")
        except OSError as exc:  # a folder that cannot be listed
            where = exc.filename or p
            raise RuleError(f"{where}: cannot read the rules folder: {exc.strerror or exc}") from None
    return out


def load_rules(paths: Iterable[str | Path] | None = None) -> list[LoadedRule]:
    """Every rule of the given files and folders (the shipped baseline when none is given).

    All files are read and every problem is reported together; two rules with one id are an error.
    """
    files = rule_files(list(paths) if paths else [shipped_rules_dir()])
    if not files:
        raise RuleError("no rule files found (.yaml or .yml)")
    rules: list[LoadedRule] = []
    errors: list[str] = []
    for f in files:
        try:
            rules.extend(load_file(f))
        except RuleError as exc:
            errors.append(str(exc))
    seen: dict[str, LoadedRule] = {}
    for r in rules:
        if r.id in seen:
            errors.append(f"{r.origin}: rule {r.id}: duplicate rule id (first defined at {seen[r.id].origin})")
        else:
            seen[r.id] = r
    if errors:
        raise RuleError("\n".join(errors))
    return rules


def rule_schema() -> dict[str, Any]:
    """JSON Schema of a rule file (a list of rules, or `rules:`), published as rules/schema.json for editors."""
    rule = Rule.model_json_schema()
    defs = rule.pop("$defs", {})
    checks = sorted(all_checks())
    rule["properties"]["check"]["enum"] = checks
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "drift-auditor rule file",
        "$defs": {**defs, "Rule": rule},
        "oneOf": [
            {"type": "array", "items": {"$ref": "#/$defs/Rule"}},
            {
                "type": "object",
                "properties": {"rules": {"type": "array", "items": {"$ref": "#/$defs/Rule"}}},
                "required": ["rules"],
            },
        ],
    }
