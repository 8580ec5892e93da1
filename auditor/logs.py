"""Logging for every stage of the daemon: structlog, JSON lines in a daemon, a readable format on a terminal.

Events are named for what happened (`cycle`, `drift`, `listening`, ...) and carry their facts as keys, so a log
pipeline can count them. Values that look like credentials never reach the output: keys naming a secret are
masked and user:password in URLs is removed.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|authorization|credential|api[_-]?key|private[_-]?key)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@", re.I)
_HANDLER_NAME = "drift-auditor"
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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (APScheduler, urllib3, google-auth) log through the standard library: same format, same stream.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler: others (a test runner's capture, an embedding program's) stay.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    root.setLevel(lvl)
    # APScheduler reports every run at INFO; our own `cycle` event says more.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def get_logger(name: str = "auditor") -> Any:
    return structlog.get_logger(name)
