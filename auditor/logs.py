"""Logging for every stage of the daemon: structlog, JSON lines in a daemon, a readable format on a terminal.

Events are named for what happened (`cycle`, `drift`, `listening`, ...) and carry their facts as keys, so a log
pipeline can count them. Values that look like credentials never reach the output: keys naming a secret are
masked and user:password in URLs is removed.

The JSON lines are Cloud Logging structured logs (the agent on GKE reads them from the container's output): its
special fields `severity` (a LogSeverity name, so a warning is not shown as an error), `message` (the summary line),
`time` (RFC 3339) and `logging.googleapis.com/labels` (string values: the cycle and scope bound with `bind_labels`)
become the LogEntry's own fields; every other key stays in jsonPayload, `event` included.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|authorization|credential|api[_-]?key|private[_-]?key)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@", re.I)
_HANDLER_NAME = "drift-auditor"
# One lock for every line written to the log stream: structlog's own logger and the standard library's handler
# (APScheduler, uvicorn, google-auth) would otherwise hold different locks, and structlog's `print` writes the
# message and its newline in two calls, so two threads could splice their lines into one that is not JSON.
_WRITE_LOCK = threading.RLock()
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _BEARER.sub(r"\1***", _URL_USERINFO.sub(r"\g<scheme>***@", value))
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-looking keys and credentials inside strings."""
    for key in list(event):
        if _SECRET_KEY.search(key):
            event[key] = "***"
        else:
            event[key] = _scrub(event[key])
    return event


LABELS_KEY = "logging.googleapis.com/labels"
_SEVERITY = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "warn": "WARNING", "error": "ERROR",
             "exception": "ERROR", "critical": "CRITICAL", "notset": "DEFAULT"}
_LABEL_PREFIX = "label_"


def bind_labels(**labels: object) -> None:
    """Labels for every event logged from this context on (the cycle id and scope): a LogEntry label each."""
    structlog.contextvars.bind_contextvars(**{_LABEL_PREFIX + k: v for k, v in labels.items() if v not in (None, "")})


def unbind_labels(*names: str) -> None:
    structlog.contextvars.unbind_contextvars(*(_LABEL_PREFIX + n for n in names))


def cloud_logging(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: Cloud Logging's special fields from structlog's own."""
    level = str(event.pop("level", method)).lower()
    for key in ("severity", "message", "time"):
        # An event's own fact by one of these names would be read as the entry's: keep it, renamed.
        if key in event:
            event[f"{event.get('event', 'event')}_{key}"] = event.pop(key)
    out: dict[str, Any] = {"severity": _SEVERITY.get(level, "DEFAULT")}
    name = event.get("event")
    summary = " ".join(f"{k}={event[k]}" for k in ("change", "rule", "finding_severity", "asset") if k in event)
    out["message"] = f"{name}: {summary}" if summary else str(name)
    if "timestamp" in event:
        out["time"] = event.pop("timestamp")
    labels = {k[len(_LABEL_PREFIX):]: str(event.pop(k)) for k in list(event) if k.startswith(_LABEL_PREFIX)}
    if labels:
        out[LABELS_KEY] = labels
    out.update(event)
    return out


class _LineLogger:
    """A structlog logger that writes each event as one line, in one call, under the lock the library handler uses."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        with _WRITE_LOCK:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog (and the standard logging of libraries) to write to `stream` (stderr by default).

    fmt: "json" (one JSON object per line), "console" (for people), or "auto" (console on a terminal, else JSON).
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    # Cloud Logging's field names in JSON; the console keeps structlog's own for people.
    cloud: list[Any] = [cloud_logging] if fmt == "json" else []
    lvl = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            *cloud,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=lambda *_: _LineLogger(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (APScheduler, urllib3, google-auth) log through the standard library: same format, same stream.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *cloud, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    handler.lock = _WRITE_LOCK  # lines of both kinds never interleave (see _WRITE_LOCK)
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler: others (a test runner's capture, an embedding program's) stay.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    root.setLevel(lvl)
    # APScheduler reports every run at INFO; our own `cycle` event says more.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def get_logger(name: str = "auditor") -> Any:
    return structlog.get_logger(name)
