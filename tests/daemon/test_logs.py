"""Logs: JSON lines in a daemon, secrets masked, library logs in the same format."""

from __future__ import annotations

import io
import json
import logging

from auditor.logs import configure, get_logger


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
    assert first["level"] == "info" and str(first["timestamp"]).endswith("Z")
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
