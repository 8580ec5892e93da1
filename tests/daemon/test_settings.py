"""The daemon's configuration: file plus AUDITOR_* overrides, relative paths, and refusals that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from auditor.settings import ConfigError, Settings, load_settings, parse_listen

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.upper().startswith("AUDITOR_"):
            monkeypatch.delenv(k)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_the_example_configuration_loads_with_paths_relative_to_it(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # anywhere: paths in the file are relative to the file
    s = load_settings(REPO / "examples" / "config.yaml")
    assert [Path(p) for p in s.sources] == [REPO / "examples" / "org", REPO / "examples" / "k8s"]
    assert all(Path(p).is_dir() for p in s.sources)
    assert s.state_path.parent == REPO / ".auditor"
    assert s.remediation.enabled is False


def test_environment_overrides_every_level(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = write(tmp_path, "sources: [org]\nschedule: {interval_seconds: 600, jitter_seconds: 5}\nlisten: 127.0.0.1:1\n")
    monkeypatch.setenv("AUDITOR_LISTEN", "0.0.0.0:9477")
    monkeypatch.setenv("AUDITOR_STATE_PATH", "rel/state.db")
    monkeypatch.setenv("AUDITOR_SCHEDULE__INTERVAL_SECONDS", "120")
    monkeypatch.setenv("AUDITOR_REMEDIATION__LEADER_ELECTION__LOCK_FILE", "/run/lock")
    monkeypatch.setenv("AUDITOR_SOURCES", '["cai://organizations/123", "k8s://prod"]')
    monkeypatch.setenv("AUDITOR_GCP_ENDPOINT", "http://127.0.0.1:8089")
    s = load_settings(cfg)
    assert s.listen_address == ("0.0.0.0", 9477)
    assert s.state_path == Path("rel/state.db")  # from the environment: relative to the working directory
    assert s.schedule.interval_seconds == 120 and s.schedule.jitter_seconds == 5  # merged with the file
    assert s.remediation.leader_election.lock_file == "/run/lock"
    assert s.sources == ["cai://organizations/123", "k8s://prod"]
    assert s.sources_options().extra["gcp_endpoint"] == "http://127.0.0.1:8089"


def test_everything_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITOR_SOURCES", '["/data/export"]')
    s = load_settings(None)
    assert s.sources == ["/data/export"] and isinstance(s, Settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources: [a]\nschedule:\n  interval_seconds: 0\n", "config.yaml:3: schedule.interval_seconds: Input should"),
        ("sources: [a]\nschedule:\n  jiter: 3\n", "config.yaml:3: schedule.jiter: unknown key"),
        ("sources: [a]\nlisten: nowhere\n", "config.yaml:2: listen: expected host:port"),
        ("sources: [a]\nschedule: {cron: '61 * * * *'}\n", "schedule.cron: not a valid crontab expression"),
        ("sources: [a]\nschedule: {cron: '0 * * * *', timezone: Mars/Base}\n", "unknown time zone 'Mars/Base'"),
        ("sources: [a]\nlog_format: xml\n", "config.yaml:2: log_format: Input should be 'json', 'console' or 'auto'"),
        ("rules: []\n", "config.yaml: sources: required key is missing"),
        ("sources: [a]\nremediation: {leader_election: {lease_name: x}}\n", "lease_name and lease_namespace go"),
        ("- a\n- b\n", "config.yaml:1: expected a mapping"),
        ("sources: [a\n", "not valid YAML"),
    ],
)
def test_invalid_configuration_names_the_place_the_key_and_the_reason(tmp_path: Path, text: str,
                                                                      expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text))
    assert expected in str(exc.value)


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = write(tmp_path, "sources: [a]\n")
    monkeypatch.setenv("AUDITOR_SCHEDULE__INTERVAL_SECONDS", "soon")
    with pytest.raises(ConfigError, match=r"environment AUDITOR_SCHEDULE__INTERVAL_SECONDS: schedule.interval_seconds"):
        load_settings(cfg)
    monkeypatch.delenv("AUDITOR_SCHEDULE__INTERVAL_SECONDS")
    monkeypatch.setenv("AUDITOR_SOURCES", "not-json")
    with pytest.raises(ConfigError, match=r"environment AUDITOR_SOURCES: not valid JSON"):
        load_settings(cfg)


@pytest.mark.parametrize(
    ("value", "expected"), [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:9477", ("::1", 9477)), (":9", ("0.0.0.0", 9))]
)
def test_listen_forms(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


def test_serve_refuses_an_invalid_file_with_exit_2_and_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, "sources: [a]\nschedule:\n  interval_seconds: nope\n")
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "serve", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {cfg}:3: schedule.interval_seconds: Input should be a valid integer")
    assert "Traceback" not in proc.stderr


def test_report_token_from_a_file_next_to_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  abc  \n")
    s = load_settings(write(tmp_path, "sources: [a]\nreport_token_file: token\n"))
    assert s.report_token is not None and s.report_token.get_secret_value() == "abc"
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match=r"report_token_file .* is empty"):
        load_settings(write(tmp_path, "sources: [a]\nreport_token_file: token\n"))
    with pytest.raises(ConfigError, match="set one, not both"):
        load_settings(write(tmp_path, "sources: [a]\nreport_token: x\nreport_token_file: token\n"))
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(write(tmp_path, "sources: [a]\nreport_token_file: missing\n"))


def test_serve_check_validates_without_starting(tmp_path: Path) -> None:
    cfg = write(tmp_path, "sources: [a, b]\nschedule: {cron: '*/5 * * * *'}\nstate_path: s.db\n")
    proc = subprocess.run([sys.executable, "-m", "auditor", "serve", "--config", str(cfg), "--check"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("configuration OK: 2 source(s), ")
    assert "schedule */5 * * * *" in proc.stdout and not (tmp_path / "s.db").exists()
    (tmp_path / "rules.yaml").write_text("- {id: x, check: no.such, severity: high}\n")
    cfg = write(tmp_path, "sources: [a]\nrules: [rules.yaml]\n")
    proc = subprocess.run([sys.executable, "-m", "auditor", "serve", "--config", str(cfg), "--check"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "unknown check 'no.such'" in proc.stderr
