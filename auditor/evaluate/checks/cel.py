"""Stage: evaluate. The `cel` check: a rule written as a Common Expression Language expression, no Python needed.

The expression is compiled once when the rule file is loaded (a syntax error, or a name that is neither a variable
nor a function, refuses the file with the rule id) and evaluated on each matching asset, or on each IAM binding
(or binding member) of its policy. It returns true when the asset is in violation (`report_when: false` turns it
into an assertion that must hold).

Budgets, since rule files may be crafted: an expression longer than MAX_EXPRESSION_LENGTH, nested deeper than
MAX_NESTING, or whose comprehensions (`all`, `exists`, `exists_one`, `map`, `filter`) nest so that their estimated
cost exceeds COST_BUDGET is refused at load, before it runs. At run time an evaluation slower than
TIME_BUDGET_SECONDS is an evaluation error for that asset, and after MAX_OVER_BUDGET of them the rule is not run
again in that scan (each further asset an error). The CEL library's panics (BaseException subclasses) become
errors of the rule, never a crash; message templates take plain `{field}`s only (no width or conversion).
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from auditor.evaluate.policy import Binding, asset_bindings
from auditor.evaluate.principals import google_grants, is_google_managed, parse_member
from auditor.evaluate.registry import Context, Params, Violation, check
from auditor.model import Asset
from auditor.remedies import RemoveBinding, RemoveMember

if TYPE_CHECKING:
    import cel

ASSET_VARIABLES = ("asset", "name", "type", "resource", "iam_policy", "ancestors", "project", "now")
BINDING_VARIABLES = ("binding", "role", "members", "condition")
MEMBER_VARIABLES = ("member",)
TEMPLATE_FIELDS = frozenset({"name", "type", "project", "role", "member", "members", "condition", "result"})


MAX_EXPRESSION_LENGTH = 10_000
MAX_NESTING = 64  # brackets of any kind, and comprehensions within comprehensions count too
MAX_COMPREHENSION_NESTING = 4
DATA_LIST_HINT = 100  # the length assumed for a list from the data (members, bindings, rules...) when estimating
COST_BUDGET = 1_000_000  # estimated comprehension steps of one evaluation
TIME_BUDGET_SECONDS = 2.0
MAX_OVER_BUDGET = 3
_MACRO = re.compile(r"\.\s*(all|exists_one|exists|map|filter)\s*\(")
_TOKEN = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[()\[\]{}]""")


class CelBudgetError(RuntimeError):
    """An evaluation over its time budget, or a rule no longer run after too many of them."""


def _passthrough(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


def estimate_cost(expression: str) -> tuple[int, int, int]:
    """(bracket nesting, comprehension nesting, estimated comprehension steps) of an expression, statically.

    A comprehension over a list literal iterates its elements; over anything else, DATA_LIST_HINT. Nested
    comprehensions multiply. Strings are skipped (their brackets do not count)."""
    depth = max_depth = 0
    # the stack of open brackets: for each, the iteration count of the comprehension it opens (None: not one)
    stack: list[int | None] = []
    chain = [1]  # product of the open comprehensions' iteration counts
    cost = 0
    max_comp = 0
    comp_depth = 0
    pos = 0
    for m in _TOKEN.finditer(expression):
        tok = m.group(0)
        if tok[0] in "'\"":
            continue
        if tok in "([{":
            depth += 1
            max_depth = max(max_depth, depth)
            macro = _MACRO.search(expression, max(pos, m.start() - 40), m.end()) if tok == "(" else None
            if macro is not None and macro.end() == m.end():
                n = _receiver_size(expression, macro.start())
                comp_depth += 1
                max_comp = max(max_comp, comp_depth)
                chain.append(chain[-1] * n)
                cost += chain[-1]
                stack.append(n)
            else:
                stack.append(None)
        else:
            depth = max(depth - 1, 0)
            if stack and stack.pop() is not None:
                comp_depth -= 1
                chain.pop()
        pos = m.end()
    return max_depth, max_comp, cost


def _receiver_size(expression: str, dot: int) -> int:
    """The element count of the list literal just before `.macro(`, or DATA_LIST_HINT for anything else."""
    i = dot - 1
    while i >= 0 and expression[i].isspace():
        i -= 1
    if i < 0 or expression[i] != "]":
        return DATA_LIST_HINT
    level = 0
    commas = 0
    j = i
    while j >= 0:
        c = expression[j]
        if c in ")]}":
            level += 1
        elif c in "([{":
            level -= 1
            if level == 0:
                break
        elif c == "," and level == 1:
            commas += 1
        j -= 1
    if j > 0 and (expression[j - 1].isalnum() or expression[j - 1] in "_)]"):
        return DATA_LIST_HINT  # an index (`x[0]`), not a literal
    inner = expression[j + 1 : i].strip()
    return 0 if not inner else commas + 1


def check_budget(expression: str) -> None:
    """ValueError when the expression is refused before it runs (see the module's docstring)."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"CEL expression of {len(expression)} characters, over the limit of {MAX_EXPRESSION_LENGTH}")
    depth, comp, cost = estimate_cost(expression)
    if depth > MAX_NESTING:
        raise ValueError(f"CEL expression nested {depth} deep, over the limit of {MAX_NESTING}")
    if comp > MAX_COMPREHENSION_NESTING:
        raise ValueError(
            f"CEL comprehensions nested {comp} deep, over the limit of {MAX_COMPREHENSION_NESTING}"
        )
    if cost > COST_BUDGET:
        raise ValueError(
            f"CEL expression's estimated cost {cost:,} comprehension steps is over the budget of {COST_BUDGET:,} "
            f"(a list from the data counts as {DATA_LIST_HINT} elements)"
        )


def guarded(call: Callable[[], Any], what: str) -> Any:
    """Run a call into the CEL library; its panics (pyo3's PanicException derives from BaseException) become a
    RuntimeError, so that they are an error of the rule and never take the scan or the daemon down."""
    try:
        return call()
    except Exception:
        raise
    except BaseException as exc:
        if _passthrough(exc):
            raise
        raise RuntimeError(f"the CEL library failed ({what}): {type(exc).__name__}: {exc}") from None


def dig(obj: Any, path: str, default: Any = None) -> Any:
    """`dig(resource, "iamConfiguration.uniformBucketLevelAccess.enabled", false)`: a nested field or a default
    (this CEL implementation has no optional `.?` syntax, and `has()` needs every parent to exist)."""
    cur = obj
    for part in str(path).split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return default
    return cur


def _member_domain(member: str) -> str:
    return parse_member(str(member)).domain or ""


# Our own functions, next to the CEL standard library: the knowledge of Google-managed identities is the same as
# the IAM checks' (auditor.evaluate.principals).
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "dig": dig,
    "google_managed": lambda member: is_google_managed(str(member)),
    "google_grants": lambda member, role: google_grants(str(member), str(role)),
    "member_domain": _member_domain,
}


def _cel() -> Any:
    """The CEL library, imported when a rule uses it: its package imports its command line (prompt_toolkit, rich),
    a third of a second a scan without CEL rules need not pay."""
    import cel

    return cel


def _context(variables: dict[str, Any]) -> cel.Context:
    from cel.stdlib import add_stdlib_to_context

    ctx = _cel().Context(variables=variables, functions=dict(FUNCTIONS))
    add_stdlib_to_context(ctx)
    return ctx


_ASSET_VARS: dict[str, Any] = {
    "name": lambda a: a.name,
    "type": lambda a: a.asset_type,
    "resource": lambda a: a.resource,
    "iam_policy": lambda a: a.iam_policy,
    "ancestors": lambda a: list(a.ancestors),
    "project": lambda a: a.project or "",
}


def _asset_vars(asset: Asset, names: frozenset[str]) -> dict[str, Any]:
    """The asset's variables the expression names (`asset` holds them all): decoding a resource or a policy
    the expression never reads is most of the cost of a CEL rule over a large export."""
    if "asset" in names:
        data = {k: get(asset) for k, get in _ASSET_VARS.items()}
        return {"asset": dict(data), **data}
    return {k: get(asset) for k, get in _ASSET_VARS.items() if k in names}


def _binding_vars(b: Binding) -> dict[str, Any]:
    cond = dict(b.condition) if b.condition else {}
    return {
        "binding": {"role": b.role, "members": list(b.members), "condition": cond},
        "role": b.role,
        "members": list(b.members),
        "condition": cond,
    }


class CelParams(Params):
    expression: str = Field(min_length=1, description="CEL; true means a violation (see report_when).")
    per: Literal["asset", "binding", "member"] = Field(
        default="asset",
        description="Evaluate once per asset, per IAM binding, or per member of each binding.",
    )
    message: str = Field(
        default="{name} matches the rule's expression",
        description="Message template: {name} {type} {project} {role} {member} {members} {condition} {result}.",
    )
    report_when: bool = Field(default=True, description="Report when the expression gives this value.")
    _program: Any = PrivateAttr(default=None)
    _per_member: bool = PrivateAttr(default=False)
    _ctx: Any = PrivateAttr(default=None)
    _names: frozenset[str] = PrivateAttr(default=frozenset())
    _over_budget: int = PrivateAttr(default=0)

    @field_validator("message")
    @classmethod
    def _template(cls, v: str) -> str:
        if len(v) > 4096:
            raise ValueError(f"message template of {len(v)} characters, over the limit of 4096")
        try:
            parts = list(string.Formatter().parse(v))
        except ValueError as exc:
            raise ValueError(f"message template: {exc}") from None
        fields = {f for _, f, _, _ in parts if f is not None}
        for _, f, spec, conv in parts:
            if f is not None and (spec or conv):
                # `{name:>999999999}` asks for a gigabyte of padding: only plain fields are filled in
                raise ValueError(f"message template: {{{f}}} takes no format spec or conversion")
        unknown = sorted(f for f in fields if f not in TEMPLATE_FIELDS)
        if unknown:
            known = ", ".join(sorted(TEMPLATE_FIELDS))
            raise ValueError(f"message template: unknown field(s) {unknown}; known: {known}")
        return v

    @model_validator(mode="after")
    def _compile(self) -> CelParams:
        check_budget(self.expression)
        try:
            program = guarded(lambda: _cel().compile(self.expression), "compile")
        except Exception as exc:  # the library raises ValueError with the parser's report
            raise ValueError(f"CEL compile error: {' '.join(str(exc).split())[:500]}") from None
        names = set(program.variables())
        per_member = self.per == "member" or (self.per == "binding" and "member" in names)
        allowed = set(ASSET_VARIABLES)
        if self.per != "asset":
            allowed |= set(BINDING_VARIABLES)
        if per_member:
            allowed |= set(MEMBER_VARIABLES)
        # A dry run on empty values finds names that are neither variables nor functions (comprehension variables
        # like the `m` of `members.exists(m, ...)` are listed by variables() too, so they cannot be told apart
        # statically). Errors about missing fields are expected on empty data and ignored.
        sample: dict[str, Any] = {"asset": {}, "name": "", "type": "", "resource": {}, "iam_policy": {},
                                  "ancestors": [], "project": "", "now": datetime.now(UTC)}
        if self.per != "asset":
            sample.update({"binding": {}, "role": "", "members": [], "condition": {}})
        if per_member:
            sample["member"] = ""
        started = time.perf_counter()
        try:
            guarded(lambda: program.execute(_context(sample)), "evaluate")
        except RuntimeError as exc:
            if "Undefined variable or function" in str(exc):
                hint = f"variables with per: {self.per}: {', '.join(sorted(allowed))}"
                raise ValueError(f"CEL: {str(exc).split('.')[0]} ({hint})") from None
        except Exception:  # a missing key or a type error on empty data says nothing about the rule
            pass
        took = time.perf_counter() - started
        if took > TIME_BUDGET_SECONDS:
            raise ValueError(
                f"CEL expression took {took:.1f} s on empty data, over its time budget of {TIME_BUDGET_SECONDS} s"
            )
        self._program = program
        self._per_member = per_member
        self._names = frozenset(names)
        return self

    def __getstate__(self) -> dict[Any, Any]:
        # The compiled program and the CEL context are native objects that cannot be pickled (rules are sent to
        # worker processes): they are dropped here and rebuilt on first use.
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private.update(_program=None, _ctx=None)
        return {**state, "__pydantic_private__": private}

    def run(self, variables: dict[str, Any]) -> Any:
        # One context per rule, its variables replaced on each call: registering the extension functions costs
        # more than evaluating a typical expression. Every variable is set on every call, so none leaks over.
        # Only the variables the expression names are converted into CEL values (a policy or resource can be big).
        names = self._names  # pydantic private attributes are slow to read: once per call
        variables = {k: v for k, v in variables.items() if k in names}
        ctx = self._ctx
        if ctx is None:
            ctx = self._ctx = _context(variables)
        else:
            ctx.update(variables)
        program = self._program
        if program is None:
            program = self._program = guarded(lambda: _cel().compile(self.expression), "compile")
        if self._over_budget >= MAX_OVER_BUDGET:
            raise CelBudgetError(
                f"not run: the expression went over its time budget of {TIME_BUDGET_SECONDS} s "
                f"{MAX_OVER_BUDGET} times in this scan"
            )
        started = time.perf_counter()
        result = guarded(lambda: program.execute(ctx), "evaluate")
        took = time.perf_counter() - started
        if took > TIME_BUDGET_SECONDS:
            self._over_budget += 1
            raise CelBudgetError(f"the evaluation took {took:.1f} s, over its time budget of {TIME_BUDGET_SECONDS} s")
        return result

    @property
    def variable_names(self) -> frozenset[str]:
        """The variables the expression names."""
        return self._names

    @property
    def per_member(self) -> bool:
        return self._per_member


def _fmt(template: str, values: dict[str, Any]) -> str:
    return template.format_map({k: values.get(k, "") for k in TEMPLATE_FIELDS})


def _verdict(params: CelParams, variables: dict[str, Any]) -> tuple[bool, Any]:
    result = params.run(variables)
    if not isinstance(result, bool):
        raise TypeError(f"the CEL expression returned {type(result).__name__} {result!r}, expected a bool")
    return result == params.report_when, result


@check("cel", params=CelParams)
def cel_check(asset: Asset, params: CelParams, ctx: Context) -> Iterator[Violation]:
    """A rule written in CEL (Common Expression Language): the expression is true when the asset violates the rule.

    Variables: `name`, `type`, `resource` (the resource data), `iam_policy`, `ancestors`, `project`, `asset`
    (all of them in one map) and `now` (the evaluation time, a timestamp). With `per: binding` the expression runs
    on each IAM binding with `binding`, `role`, `members`, `condition`; if it names `member` (or with
    `per: member`) it runs on each member of each binding. Functions: the CEL standard library, cel-go's
    string/list/math extensions, `dig(map, "a.b.c", default)` for nested fields that may be absent,
    `google_managed(member)`, `google_grants(member, role)` (the roles Google gives its own service agents) and
    `member_domain(member)`. Findings on a member carry `role`, `member`, `condition` like the IAM checks (so
    `iam.remove_member` can plan them).

    ```yaml
    - id: ml-buckets-uniform-access
      check: cel
      severity: high
      match: {asset_types: [storage.googleapis.com/Bucket]}
      params:
        expression: '!dig(resource, "iamConfiguration.uniformBucketLevelAccess.enabled", false)'
        message: "bucket {name} still honours object ACLs"
    - id: no-gmail-writers
      check: cel
      severity: high
      params:
        per: binding
        expression: 'role.endsWith("Admin") && member.endsWith("@gmail.com")'
        message: "{member} holds {role}"
    ```
    """
    base = _asset_vars(asset, params.variable_names)
    base["now"] = ctx.now
    values: dict[str, Any] = {"name": asset.name, "type": asset.asset_type, "project": asset.project or ""}
    if params.per == "asset":
        hit, result = _verdict(params, base)
        if hit:
            yield Violation(_fmt(params.message, {**values, "result": result}), "", {"result": result})
        return
    for b in asset_bindings(asset):
        bvars = {**base, **_binding_vars(b)}
        title = b.condition_title if b.condition else None
        bvalues = {**values, "role": b.role, "members": ", ".join(b.members), "condition": title or ""}
        if not params.per_member:
            hit, result = _verdict(params, bvars)
            if hit:
                details: dict[str, Any] = {"role": b.role, "members": list(b.members)}
                key = b.role
                if title is not None:
                    details["condition"] = title
                    key += f"|{title}"
                yield Violation(_fmt(params.message, {**bvalues, "result": result}), key, details,
                                (RemoveBinding(b.role, b.condition),))
            continue
        for m in b.members:
            hit, result = _verdict(params, {**bvars, "member": m})
            if hit:
                details = {"role": b.role, "member": m}
                key = f"{b.role}|{m}"
                if title is not None:
                    details["condition"] = title
                    key += f"|{title}"
                yield Violation(_fmt(params.message, {**bvalues, "member": m, "result": result}), key, details,
                                (RemoveMember(b.role, m, b.condition),))
