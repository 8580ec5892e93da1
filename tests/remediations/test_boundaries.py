"""The shape the remediations keep (issue 16's "done when"), checked on the source so that a regression fails:

- the family switch is gone: outside `remediations/families/` no module of `remediations` names a family or a
  remediation kind, nor imports one family's module, and nothing in `auditor` compares with a family's name;
- `duplicates` finds no pair of places in `remediations/` sharing more than 10 lines;
- the import graph has no arrow from `auditor` (core or checks) into `remediations`, nor from `remediations` into
  a check (the two share `auditor.vocabulary` and `auditor.remedies`).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor.plugins import remediation_families
from remediations.families import kinds

REPO = Path(__file__).resolve().parents[2]
FAMILIES = REPO / "remediations" / "families"


def _names() -> set[str]:
    return set(remediation_families.items()) | set(kinds())


def _shared_modules() -> Iterator[Path]:
    for p in sorted((REPO / "remediations").rglob("*.py")):
        if FAMILIES not in p.parents:
            yield p


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_the_families_and_kinds_are_the_ones_expected() -> None:
    """The scan below looks for these names: an empty list would make it pass vacuously."""
    assert set(remediation_families.items()) == {"iam", "cloud_armor", "rbac", "gke"}
    assert {"iam.remove_member", "cloud_armor.remove_rule", "rbac.remove_subject", "gke.update_cluster"} <= set(kinds())


def test_no_shared_remediation_module_names_a_family_or_a_kind() -> None:
    names = _names()
    found = []
    for path in _shared_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in names:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
            if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("remediations.families.")
                    and node.module != "remediations.families.base"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: imports {node.module}")
    assert found == []


def test_nothing_in_auditor_switches_on_a_family() -> None:
    names = _names()
    found = []
    for path in sorted((REPO / "auditor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                values = {o.value for o in operands if isinstance(o, ast.Constant)}
                values |= {e.value for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set))
                           for e in o.elts if isinstance(e, ast.Constant)}
                # A kind's name anywhere; a family's name where a family or remediation is compared ("gke" is also
                # the prefix of a kubeconfig context's name).
                text = ast.unparse(node)
                hit = sorted(str(x) for x in values if x in kinds() or (
                    x in names and ("famil" in text or "remedia" in text)))
                if hit:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: compares with {', '.join(hit)}")
    assert found == []


def test_the_scan_would_see_a_switch(tmp_path: Path) -> None:
    """The scan itself: a shared module with the old switch is caught."""
    bad = ast.parse('def f(change):\n    if change.family == "rbac":\n        return 1\n')
    assert [v for _, v in _strings(bad) if v in _names()] == ["rbac"]


@pytest.mark.skipif(shutil.which("duplicates") is None, reason="the duplicates command is not on this machine")
def test_no_pair_in_remediations_shares_more_than_ten_lines() -> None:
    out = subprocess.run(["duplicates", "--repo", str(REPO / "remediations"), "--min-lines", "11", "--most", "20",
                          "--seconds", "60"], capture_output=True, text=True, check=True).stdout
    assert "incomplete" not in out, out
    assert out.startswith("no duplicates"), out


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.add(str(node.args[0].value))  # importlib.import_module("remediations...") is an arrow too
    return out


def _into(package: str, root: Path) -> list[str]:
    return [str(p.relative_to(REPO)) for p in sorted(root.rglob("*.py"))
            if any(m == package or m.startswith(package + ".") for m in _imports(p))]


def test_no_arrow_from_auditor_into_remediations() -> None:
    assert _into("remediations", REPO / "auditor") == []


def test_no_arrow_from_remediations_into_the_checks() -> None:
    assert _into("auditor.evaluate.checks", REPO / "remediations") == []


def test_the_import_scan_sees_arrows() -> None:
    """Both scans find what they look for where it is: the tests import remediations, the checks' package
    imports its checks."""
    assert _into("remediations", REPO / "tests" / "remediations")
    assert _into("auditor.evaluate.checks", REPO / "auditor" / "evaluate")


def test_the_docs_say_which_asset_types_can_be_fixed() -> None:
    """The remediation page's table lists every asset type the IAM family writes, and its kinds table every kind
    of every family; the README's coverage table names the families' resources."""
    from remediations.families.iam.endpoints import ENDPOINTS

    page = (REPO / "docs" / "remediation.md").read_text(encoding="utf-8")
    assert [t for t in ENDPOINTS if f"| `{t}` |" not in page] == []
    assert [k for k in kinds() if f"| `{k}` |" not in page] == []
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## What it fixes", 1)[1].split("\n## ", 1)[0]
    for label in ("BigQuery datasets", "Cloud Armor", "Kubernetes Roles", "GKE clusters", "buckets", "Pub/Sub topics"):
        assert label in table, label
