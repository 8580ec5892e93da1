"""What a run imports: a scan of files, and loading the rules, never load the Google client libraries, the CEL
library, the daemon's server or the remediation commands (they cost start-up time and memory to every scan)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLES, REPO

# Top-level packages, and modules, that a scan of files must not import.
NOT_FOR_A_FILE_SCAN = ("google", "grpc", "cel", "prompt_toolkit", "kubernetes", "uvicorn", "jinja2", "requests",
                       "urllib3", "psycopg", "structlog", "remediations.cli", "remediations.apply",
                       "auditor.daemon", "auditor.collect.gcp_clients_builders")


def imported_after(code: str) -> list[str]:
    """The modules loaded once `code` ran in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    modules: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return modules


def offending(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in NOT_FOR_A_FILE_SCAN)]


def test_a_file_scan_through_the_cli_imports_no_client_library(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    modules = imported_after(
        "from auditor.cli import cli\n"
        f"cli(['scan', '--source', {str(EXAMPLES / 'org')!r}, '--format', 'json', '-o', {str(report)!r},"
        " '--fail-on', 'never'], prog_name='auditor', standalone_mode=False)"
    )
    assert json.loads(report.read_text())["summary"]["findings"] > 0  # it did scan, with the shipped rules
    assert "auditor.evaluate.checks.cloud_armor" in modules  # every check module is loaded...
    assert "remediations.families" in modules  # ...and the remediation kinds the rules name are known
    assert offending(modules) == []


def test_loading_the_rules_imports_no_client_library() -> None:
    modules = imported_after("from auditor.evaluate.rulebook import load_rules\nassert len(load_rules(None)) > 20")
    assert offending(modules) == []


def test_the_commands_that_need_them_still_load_them() -> None:
    modules = imported_after(
        "import click\nfrom auditor.cli import cli\n"
        "names = cli.list_commands(click.Context(cli))\n"
        "assert {'scan', 'serve', 'plan', 'apply', 'rollback', 'feeds'} <= set(names), names\n"
        "from auditor.collect import gcp_clients\ngcp_clients.credentials(gcp_clients.Endpoint('http://127.0.0.1:1'))"
    )
    assert "remediations.cli" in modules and "google.auth.credentials" in modules
