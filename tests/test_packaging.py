"""The wheel carries the shipped baseline: a non-editable install finds the rules without the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_wheel_ships_rules_and_finds_them(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("drift_auditor-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        shipped = sorted(n for n in names if n.startswith("auditor/_rules/") and n.endswith(".yaml"))
        # the rule packs and, beside them, their tests and the assets the tests read
        assert shipped == sorted(f"auditor/_rules/{p.relative_to(REPO / 'rules')}"
                                 for p in (REPO / "rules").rglob("*.yaml"))
        assert "auditor/_rules/tests/assets/org.ndjson" in names
        assert "auditor/_rules/schema.json" in names
        assert any(n.startswith("remediations/") for n in names)
        assert any(n.endswith("entry_points.txt") for n in names)
        zf.extractall(tmp_path / "site")
    # Import from the unpacked wheel only (not the source tree) and load the baseline.
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = (
        "import auditor.evaluate.rulebook as rb; d = rb.shipped_rules_dir(); "
        "print(d); print(len(rb.load_rules())); "
        "from auditor.ruletest import run_tests; print(run_tests(d).ok)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120).stdout.split()
    assert out[0] == str(tmp_path / "site" / "auditor" / "_rules")
    assert int(out[1]) > 0
    assert out[2] == "True"  # the installed baseline passes its own tests
