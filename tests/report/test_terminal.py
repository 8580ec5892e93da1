"""Tables for people: on a narrow terminal ids stay whole; without a terminal (a pipe, `kubectl exec` without -t)
`auditor findings` and `auditor history` print one aligned line per row, nothing cut or wrapped."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from auditor.report.terminal import Column, print_table, short_id
from auditor.state import Store
from tests.state.test_store import cycle, finding

LONG_ASSET = "//container.googleapis.com/projects/ml-platform-prod/locations/us-central1/clusters/training/k8s/" \
             "namespaces/tenant-vision/rbac.authorization.k8s.io/rolebindings/a-very-long-binding-name-indeed"


def test_ids_stay_whole_on_a_narrow_terminal() -> None:
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=60, color_system=None)
    fid = "0123456789abcdef0123"
    print_table(con, "t", [Column("id", key=True), Column("rule", key=True), Column("asset", ratio=3)],
                [[fid, "rbac-tenant-role-dangerous-rules", LONG_ASSET]])
    text = buf.getvalue()
    assert fid in text and "rbac-tenant-role-dangerous-rules" in text and "…" not in text
    assert "tenant-vision" in text.replace("\n", "").replace("│", "").replace(" ", "")


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    now = time.time()
    with Store(path) as store:
        store.record_cycle(cycle(now - 100, [finding("rbac-no-public-subjects", LONG_ASSET)]))
        store.record_cycle(cycle(now - 50, [finding("rbac-no-public-subjects", LONG_ASSET),
                                            finding("iam-no-public-members", "//storage.googleapis.com/b")]))
    return path


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_findings_and_history_without_a_terminal(tmp_path: Path) -> None:
    state = str(_store(tmp_path))
    out = _run("findings", "--state", state)
    assert not any(ch in out for ch in "│┃━…")
    lines = out.splitlines()
    assert lines[0] == "2 open findings"
    assert lines[1].split() == ["id", "severity", "rule", "asset", "finding", "age", "first", "seen", "(UTC)"]
    row = next(ln for ln in lines if "rbac-no-public-subjects" in ln and "tenant-vision" in ln)
    f = finding("rbac-no-public-subjects", LONG_ASSET)
    assert row.startswith(short_id(f.id) + "  ") and LONG_ASSET.removeprefix("//") in row
    # columns line up: every row starts its asset where the header does
    col = lines[1].index("asset")
    assert all(ln[col - 2 : col] == "  " and ln[col] != " " for ln in lines[2:])

    hist = _run("history", "--state", state).splitlines()
    assert hist[0] == "cycles (newest first)"
    assert "cycle 1 is the baseline: 1 finding(s) already there, not drift" in hist
    drift = hist[hist.index("drift in cycle 2") + 2]
    new = finding("iam-no-public-members", "//storage.googleapis.com/b")
    assert drift.split()[:4] == ["new", short_id(new.id), "high", "iam-no-public-members"]
