"""`auditor serve` as an operator runs it: a subprocess on the example organization, its endpoints, JSON logs,
drift across a restart, signals, and `--once`."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from auditor.cycle import Auditor
from auditor.daemon import Daemon
from auditor.settings import load_settings
from auditor.state import Store
from tests.daemon.support import (
    REPO,
    Served,
    example_org,
    http_get,
    make_drift,
    require_binary,
    wait_until,
    write_config,
)


def test_serve_answers_every_endpoint_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml")
    with Served(cfg) as served:
        wait_until(lambda: served.get("/readyz")[0] == 200, 60, "/readyz to turn ready")
        # logged before /readyz turned ready; the thread reading the daemon's output may not have read it yet
        cycle = wait_until(served.cycles, 30, "the cycle's log event")[0]
        assert cycle["outcome"] == "success" and cycle["findings"] > 0 and cycle["severity"] == "INFO"
        assert set(cycle["durations"]) == {"collect_evaluate", "record", "report"}

        status, body, _ = served.get("/healthz")
        assert status == 200 and body == b"ok\n"

        status, body, headers = served.get("/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        text = body.decode()
        findings = sum(float(v) for v in re.findall(r"^auditor_findings\{[^}]*\} (\S+)$", text, re.M))
        assert findings == cycle["findings"]
        assert re.search(r'^auditor_cycles_total\{outcome="success"\} 1\.0$', text, re.M)
        assert "//" not in "".join(line for line in text.splitlines() if not line.startswith("#"))  # no names
        promtool = require_binary("promtool")
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr

        status, body, headers = served.get("/findings.json")
        doc = json.loads(body)
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert len([f for f in doc["findings"] if not f["exempted"]]) == cycle["findings"]
        assert {"id", "rule", "severity", "asset", "first_seen", "age_seconds", "stale"} <= set(doc["findings"][0])
        critical = json.loads(served.get("/findings.json?severity=critical&exempted=false")[1])["findings"]
        assert critical and {f["severity"] for f in critical} == {"critical"}
        assert len(critical) == cycle["by_severity"]["critical"]
        rule = doc["findings"][-1]["rule"]
        by_rule = json.loads(served.get(f"/findings.json?rule={rule}")[1])["findings"]
        assert [f["id"] for f in by_rule] == [f["id"] for f in doc["findings"] if f["rule"] == rule]
        status, body, _ = served.get("/findings.json?stale=maybe")
        assert status == 400 and body == b"stale must be true or false\n"
        status, body, _ = served.get("/findings.json?owner=me")
        assert status == 400 and body.startswith(b"unknown filter(s) owner")

        status, body, headers = served.get("/report")
        html = body.decode()
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "Open findings by severity" in html and "Why:" in html
        assert "default-src 'none'" in headers["Content-Security-Policy"]

        assert served.get("/nope")[0] == 404
        assert served.stop(signal.SIGTERM) == 0
    stopped = [e for e in served.events if e.get("event") == "stopped"]
    assert stopped and stopped[0]["cycle_abandoned"] is False


def test_restart_keeps_first_seen_and_the_next_cycle_reports_the_drift_made(tmp_path: Path) -> None:
    org, _ = example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml")
    with Served(cfg) as served:
        served.wait_event(lambda e: e.get("event") == "cycle", 60, "the first cycle")
        first = {f["id"]: f for f in json.loads(served.get("/findings.json")[1])["findings"]}
        assert served.stop(signal.SIGINT) == 0

    drift = make_drift(org)
    with Served(cfg) as served:
        cycle = served.wait_event(lambda e: e.get("event") == "cycle", 60, "the cycle after the restart")
        doc = json.loads(served.get("/findings.json")[1])

        def drift_events() -> list[dict[str, object]]:
            return [e for e in list(served.events) if e.get("event") == "drift"]

        # One event per change, logged after the cycle's summary: wait for them all (a loaded machine is slow).
        wait_until(lambda: len(drift_events()) >= cycle["new"] + cycle["resolved"], 30, "the cycle's drift events")
        events = drift_events()
    now = {f["id"]: f for f in doc["findings"]}
    new, resolved = set(now) - set(first), set(first) - set(now)
    assert new and resolved
    # Exactly the drift made, no more: the unchanged findings are not reported as new after the restart.
    assert (cycle["new"], cycle["resolved"]) == (len(new), len(resolved))
    assert {(e["change"], e["finding"]) for e in events} == {("new", i) for i in new} | {("resolved", i) for i in
                                                                                         resolved}
    assert {e["asset"] for e in events} == {drift.made_public, drift.made_private}
    assert {doc["drift"]["cycle"]} == {e["cycle"] for e in events}
    for fid in set(now) & set(first):
        assert now[fid]["first_seen"] == first[fid]["first_seen"]


def test_health_before_the_first_cycle(tmp_path: Path) -> None:
    example_org(tmp_path)
    settings = load_settings(write_config(tmp_path / "config.yaml"))
    store = Store(settings.state_path)
    daemon = Daemon(settings, Auditor(settings, store))
    host, port = daemon.start_http()
    try:
        base = f"http://{host}:{port}"
        status, body, _ = http_get(base + "/readyz")
        assert status == 503 and b"no cycle has completed" in body
        assert http_get(base + "/healthz")[0] == 503  # the scheduler has not started
        status, body, _ = http_get(base + "/report")
        assert status == 200 and b"No cycle has completed yet" in body
        assert b"auditor_up 0.0" in http_get(base + "/metrics")[1]
    finally:
        assert daemon.server is not None
        daemon.server.shutdown()
        daemon.server.server_close()
        store.close()


def test_once_runs_one_cycle_and_exits_with_its_outcome(tmp_path: Path) -> None:
    org, _ = example_org(tmp_path)
    cfg = write_config(tmp_path / "config.yaml")
    run = [sys.executable, "-m", "auditor", "serve", "--config", str(cfg), "--once"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # the example organization has findings at or above low
    summary = json.loads(proc.stdout)
    assert summary["outcome"] == "success" and summary["new"] > 0 and summary["cycle"] == 1
    assert summary["complete"] is True
    (org / "broken.ndjson").write_text("{not json\n")
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3  # partial, whatever the findings
    assert subprocess.run([*run, "--allow-partial", "--fail-on", "never"], capture_output=True).returncode == 0
    summary = json.loads(proc.stdout)
    assert (summary["outcome"], summary["new"], summary["resolved"]) == ("partial", 0, 0)

    # The history and findings commands read the same store.
    hist = subprocess.run([sys.executable, "-m", "auditor", "history", "--config", str(cfg), "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    cycles = json.loads(hist.stdout)
    assert [c["outcome"] for c in cycles] == ["partial", "partial", "success"]
    assert cycles[2]["baseline"] and cycles[2]["drift"] == [] and cycles[2]["new"] > 0 and cycles[0]["incomplete"]
    table = subprocess.run([sys.executable, "-m", "auditor", "findings", "--state", str(tmp_path / "state.db")],
                           capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin"})
    assert table.returncode == 0 and f"{cycles[0]['findings']} open findings" in table.stdout
    missing = subprocess.run([sys.executable, "-m", "auditor", "history", "--state", str(tmp_path / "nope.db")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no state file" in missing.stderr


def test_sigterm_during_a_stuck_cycle_abandons_it_and_exits_0(tmp_path: Path) -> None:
    # A Cloud Asset Inventory endpoint that accepts connections and never answers: the cycle hangs in collect.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        _, k8s = example_org(tmp_path)
        cfg = write_config(
            tmp_path / "config.yaml", sources=[str(k8s), "cai://organizations/583920174615"],
            gcp_endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}", source_options={"retry_attempts": 1},
            schedule={"shutdown_grace_seconds": 1},
        )
        with Served(cfg) as served:
            wait_until(lambda: accepted, 60, "the cycle to call the endpoint")
            assert served.get("/readyz")[0] == 503  # the first cycle has not completed
            assert served.stop(signal.SIGTERM) == 0
        stopped = [e for e in served.events if e.get("event") == "stopped"]
        assert stopped and stopped[0]["cycle_abandoned"] is True
        assert served.cycles() == []
        with Store(tmp_path / "state.db") as store:
            assert store.cycles() == []  # nothing half-recorded
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_cycle_cancelled_before_it_reads_records_nothing(tmp_path: Path) -> None:
    example_org(tmp_path)
    settings = load_settings(write_config(tmp_path / "config.yaml"))
    with Store(settings.state_path) as store:
        auditor = Auditor(settings, store)
        auditor.cancel.set()
        out = auditor.run_cycle()
        assert out.outcome == "abandoned" and out.recorded is None
        assert store.cycles() == [] and auditor.published.cycles_completed == 0


def test_the_example_configuration_serves_the_example_organization_out_of_the_box(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AUDITOR_STATE_PATH": str(tmp_path / "state.db"), "AUDITOR_LOG_FORMAT": "json"}
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "serve", "--config", str(REPO / "examples" / "config.yaml"), "--once",
         "--fail-on", "never"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["outcome"] == "success" and summary["open"] > 0
    assert (tmp_path / "state.db").is_file()  # AUDITOR_STATE_PATH won over the file


def test_listens_on_ipv6_loopback(tmp_path: Path) -> None:
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    finally:
        probe.close()
    example_org(tmp_path)
    settings = load_settings(write_config(tmp_path / "config.yaml", listen="[::1]:0"))
    with Store(settings.state_path) as store:
        daemon = Daemon(settings, Auditor(settings, store))
        host, port = daemon.start_http()
        try:
            status, body, _ = http_get(f"http://[{host}]:{port}/readyz")
            assert host == "::1" and status == 503 and body.startswith(b"not ready")
        finally:
            assert daemon.server is not None
            daemon.server.shutdown()
            daemon.server.server_close()


def test_a_port_in_use_is_refused_on_one_line(tmp_path: Path) -> None:
    example_org(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path / "config.yaml", listen=f"127.0.0.1:{port}")
        proc = subprocess.run([sys.executable, "-m", "auditor", "serve", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: listen 127.0.0.1:{port}:")


def test_the_job_runs_one_cycle_at_a_time_coalesced_with_jitter_first_now(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    example_org(tmp_path)
    settings = load_settings(write_config(tmp_path / "config.yaml",
                                          schedule={"interval_seconds": 600, "jitter_seconds": 45}))
    with Store(settings.state_path) as store:
        daemon = Daemon(settings, Auditor(settings, store))
        job = daemon.schedule()
        daemon.scheduler.start(paused=True)
        try:
            job = daemon.scheduler.get_job(job.id)
            assert job.max_instances == 1 and job.coalesce is True and job.misfire_grace_time is None
            assert job.trigger.interval == timedelta(seconds=600) and job.trigger.jitter == 45
            assert abs(job.next_run_time - datetime.now(UTC)) < timedelta(seconds=60)  # the first run: at start
        finally:
            daemon.scheduler.shutdown(wait=False)


def test_report_token_guards_the_pages_that_name_resources(tmp_path: Path) -> None:
    example_org(tmp_path)
    (tmp_path / "token").write_text("s3cret-token\n")
    settings = load_settings(write_config(tmp_path / "config.yaml", report_token_file=str(tmp_path / "token")))
    assert "s3cret" not in repr(settings)

    def get(path: str, auth: str | None = None) -> int:
        req = urllib.request.Request(f"http://{host}:{port}{path}", headers={"Authorization": auth} if auth else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    with Store(settings.state_path) as store:
        daemon = Daemon(settings, Auditor(settings, store))
        host, port = daemon.start_http()
        try:
            basic = "Basic " + base64.b64encode(b"anyone:s3cret-token").decode()
            for path in ("/report", "/findings.json"):
                assert get(path) == 401
                assert get(path, "Bearer wrong") == 401
                assert get(path, "Basic !!!") == 401
                assert get(path, "Bearer s3cret-token") == 200
                assert get(path, basic) == 200
            assert get("/metrics") == 200 and get("/readyz") == 503  # metrics and probes stay open
        finally:
            assert daemon.server is not None
            daemon.server.shutdown()
            daemon.server.server_close()
