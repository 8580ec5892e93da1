"""Logs: JSON lines in a daemon that Cloud Logging reads as structured logs, secrets masked, library logs in the same
format, progress while a cycle runs, one event per drift."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from pathlib import Path

from auditor.logs import bind_labels, configure, get_logger, unbind_labels


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_with_secrets_masked() -> None:
    buf = io.StringIO()
    configure("json", "info", stream=buf)
    try:
        log = get_logger("test")
        log.info("connect", endpoint="https://svc:hunter2@example.test/v1", access_token="ya29.secret",
                 headers={"Authorization": "Bearer abc.def", "Accept": "json"}, note="sent Bearer abc.def")
        log.debug("hidden")  # below the level
        logging.getLogger("urllib3.connectionpool").warning("retrying https://u:p@example.test/x")
        out = lines(buf)
    finally:
        configure("console", "warning")
    assert [e["event"] for e in out] == ["connect", "retrying https://***@example.test/x"]
    first = out[0]
    assert first["endpoint"] == "https://***@example.test/v1"
    assert first["access_token"] == "***"
    assert first["headers"] == {"Authorization": "***", "Accept": "json"}
    assert first["note"] == "sent Bearer ***"
    assert first["severity"] == "INFO" and str(first["time"]).endswith("Z")
    assert "hunter2" not in json.dumps(out) and "ya29" not in json.dumps(out)


def test_our_handler_is_replaced_not_stacked_and_others_stay() -> None:
    other = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(other)
    try:
        configure("json", "info", stream=io.StringIO())
        buf = io.StringIO()
        configure("json", "info", stream=buf)
        logging.getLogger("lib").warning("once")
        assert [e["event"] for e in lines(buf)] == ["once"]
        assert other in root.handlers
    finally:
        root.removeHandler(other)
        configure("console", "warning")


# Cloud Logging's structured logging: the JSON keys the logging agent lifts out of jsonPayload into the LogEntry
# (cloud.google.com/logging/docs/structured-logging, "Special fields in structured payloads"), with the shape each
# must have, and the LogSeverity names (LogEntry reference).
LOG_SEVERITIES = {"DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
SPECIAL = {
    "severity": lambda v: v in LOG_SEVERITIES,
    "message": lambda v: isinstance(v, str),
    "time": lambda v: isinstance(v, str) and RFC3339.match(v) is not None,
    "logging.googleapis.com/labels": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
    "logging.googleapis.com/insertId": lambda v: isinstance(v, str),
    "logging.googleapis.com/operation": lambda v: isinstance(v, dict),
    "logging.googleapis.com/sourceLocation": lambda v: isinstance(v, dict),
    "logging.googleapis.com/spanId": lambda v: isinstance(v, str),
    "logging.googleapis.com/trace": lambda v: isinstance(v, str),
    "logging.googleapis.com/trace_sampled": lambda v: isinstance(v, bool),
    "httpRequest": lambda v: isinstance(v, dict),
    "timestamp": lambda v: isinstance(v, dict),  # {seconds, nanos} when present: we send `time` instead
}


def assert_cloud_logging_entry(line: str) -> dict[str, object]:
    entry = json.loads(line)
    assert isinstance(entry, dict)
    for key in ("severity", "message", "time"):
        assert key in entry, f"{key} missing: {line}"
    for key, valid in SPECIAL.items():
        if key in entry:
            assert valid(entry[key]), f"{key}={entry[key]!r} is not what Cloud Logging reads: {line}"
    return entry


def test_lines_carry_cloud_logging_fields_and_labels() -> None:
    buf = io.StringIO()
    configure("json", "debug", stream=buf)
    try:
        log = get_logger("test")
        bind_labels(cycle_id="20261207T010000Z-abc", scope="folders/123")
        log.debug("d")
        log.info("drift", change="new", rule="r1", finding_severity="critical", asset="//a", severity="oops",
                 message="m", time=3)
        log.warning("w")
        log.error("e")
        unbind_labels("cycle_id", "scope")
        logging.getLogger("apscheduler.x").error("library line")
        out = [assert_cloud_logging_entry(line) for line in buf.getvalue().splitlines()]
    finally:
        configure("console", "warning")
    assert [e["severity"] for e in out] == ["DEBUG", "INFO", "WARNING", "ERROR", "ERROR"]
    assert out[1]["logging.googleapis.com/labels"] == {"cycle_id": "20261207T010000Z-abc", "scope": "folders/123"}
    assert out[1]["message"] == "drift: change=new rule=r1 finding_severity=critical asset=//a"
    # An event's own facts named like a special field are kept, renamed, never read as the entry's.
    assert (out[1]["drift_severity"], out[1]["drift_message"], out[1]["drift_time"]) == ("oops", "m", 3)
    assert "logging.googleapis.com/labels" not in out[4] and out[4]["message"] == "library line"


def test_a_cycle_logs_progress_labels_and_one_event_per_drift(tmp_path: Path) -> None:
    from auditor.cycle import Auditor
    from auditor.settings import load_settings
    from auditor.state import Store
    from tests.daemon.support import example_org, make_drift, write_config

    org, _ = example_org(tmp_path)
    settings = load_settings(write_config(tmp_path / "config.yaml", scope="folders/42"))
    buf = io.StringIO()
    configure("json", "info", stream=buf)
    auditor = Auditor(settings, Store(settings.state_path))
    auditor.progress_every = 0.001  # the example organization is read in well under the 10 s of a daemon
    try:
        auditor.run_cycle()
        made = make_drift(org)
        auditor.run_cycle()
    finally:
        auditor.close()
        configure("console", "warning")
    out = [assert_cloud_logging_entry(line) for line in buf.getvalue().splitlines()]
    cycles = [e for e in out if e["event"] == "cycle"]
    ids = [e["logging.googleapis.com/labels"]["cycle_id"] for e in cycles]  # type: ignore[index]
    assert len(set(ids)) == 2
    for e in out:
        if e["event"] in ("cycle", "drift", "progress", "baseline"):
            assert e["logging.googleapis.com/labels"]["scope"] == "folders/42"  # type: ignore[index]
    progress = [e for e in out if e["event"] == "progress"]
    assert progress and all(set(e) >= {"source", "assets_read", "rate_per_second"} for e in progress)
    drift = [e for e in out if e["event"] == "drift"]
    assert {e["asset"] for e in drift} == {made.made_public, made.made_private}
    for e in drift:
        assert e["logging.googleapis.com/labels"]["cycle_id"] == ids[1]  # type: ignore[index]
        assert {"change", "rule", "finding_severity", "asset", "finding"} <= set(e)
        assert e["severity"] == "INFO" and e["finding_severity"] in ("info", "low", "medium", "high", "critical")


class _YieldingStream(io.StringIO):
    """A stream that lets other threads run inside each write, as a pipe under load does."""

    def write(self, s: str) -> int:
        n = super().write(s)
        time.sleep(0)
        return n


def test_lines_of_structlog_and_library_loggers_never_splice() -> None:
    buf = _YieldingStream()
    configure("json", "info", stream=buf)
    try:
        log = get_logger("test")
        library = logging.getLogger("apscheduler.scheduler")
        library.setLevel(logging.WARNING)

        def ours() -> None:
            for i in range(300):
                log.info("cycle", cycle=i)

        def theirs() -> None:
            for i in range(300):
                library.warning("job %d missed", i)

        threads = [threading.Thread(target=ours), threading.Thread(target=theirs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = lines(buf)  # every line is one whole JSON object
    finally:
        configure("console", "warning")
    assert sorted(int(e["cycle"]) for e in out if e["event"] == "cycle") == list(range(300))
    assert sum(1 for e in out if str(e["event"]).endswith("missed")) == 300
