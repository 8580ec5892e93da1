"""The daemon: cycles on a schedule (APScheduler), and the HTTP endpoints that publish the last one.

- One job, `max_instances=1` and coalesced (a slow cycle never overlaps the next; missed runs collapse into one),
  with jitter, the first run at start.
- HTTP (stdlib ThreadingHTTPServer): /metrics, /healthz (alive: the scheduler runs and no cycle is stuck past
  schedule.cycle_timeout_seconds), /readyz (ready after the first completed cycle), /findings.json (filters:
  severity, rule, asset_type, stale, exempted), /report. Responses are prebuilt after each cycle, so a request
  never waits on a cycle or touches the sources.
- SIGTERM/SIGINT: stop scheduling; a running cycle gets schedule.shutdown_grace_seconds to finish, then it is
  abandoned (it stops at the next asset batch and records nothing, so the store stays consistent); exit 0.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from auditor import plugins
from auditor.cycle import Auditor
from auditor.errors import AuditorError
from auditor.logs import get_logger
from auditor.model import SEVERITIES
from auditor.report.metrics import AuditorCollector, make_registry
from auditor.settings import Settings

JOB_ID = "audit-cycle"
ABANDON_WAIT_SECONDS = 5.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    daemon: Daemon


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "drift-auditor"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        d = self.server.daemon
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, ctype, encoder(d.registry), head)
            elif path == "/healthz":
                ok, why = d.healthy()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", why.encode(), head)
            elif path == "/readyz":
                ok = d.auditor.published.cycles_completed > 0
                body = b"ready\n" if ok else b"not ready: no cycle has completed yet\n"
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", body, head)
            elif path in PROTECTED and not d.authorized(self.headers.get("Authorization", "")):
                body = b"this report names resources: give the report token (Bearer, or Basic as the password)\n"
                self._send(HTTPStatus.UNAUTHORIZED, "text/plain", body, head,
                           {"WWW-Authenticate": 'Basic realm="drift-auditor", charset="UTF-8"'})
            elif path == "/findings.json":
                published = d.auditor.published
                query = urllib.parse.parse_qs(self.path.partition("?")[2])
                if not query:
                    self._send(HTTPStatus.OK, "application/json", published.findings_json, head)
                    return
                try:
                    keep = finding_filter(query)
                except ValueError as exc:
                    self._send(HTTPStatus.BAD_REQUEST, "text/plain", f"{exc}\n".encode(), head)
                    return
                # Filtered views are occasional API calls: decode the published document rather than keep a second
                # copy of every finding in memory between cycles.
                doc = json.loads(published.findings_json)
                doc["findings"] = [f for f in doc["findings"] if keep(f)]
                self._send(HTTPStatus.OK, "application/json", json.dumps(doc).encode(), head)
            elif path == "/report":
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", d.auditor.published.report_html, head)
            elif path == "/":
                body = b"drift-auditor: /report /findings.json /metrics /healthz /readyz\n"
                self._send(HTTPStatus.OK, "text/plain", body, head)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n", head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception as exc:  # a bug answers 500 and is logged in the daemon's format, never kills the server
            get_logger("auditor.http").exception("request_error", path=path, error=f"{type(exc).__name__}: {exc}")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"internal error\n", head)

    def _send(self, status: HTTPStatus, ctype: str, body: bytes, head: bool,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if ctype.startswith("text/html"):
            # The report is static HTML: no scripts, no framing, nothing fetched from elsewhere.
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
            self.send_header("X-Frame-Options", "DENY")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        get_logger("auditor.http").debug("request", client=self.client_address[0], line=format % args)


_FILTERS = ("severity", "rule", "asset_type", "stale", "exempted")


def finding_filter(query: dict[str, list[str]]) -> Callable[[dict[str, Any]], bool]:
    """/findings.json?severity=high&rule=a&rule=b&asset_type=...&stale=true&exempted=false"""
    unknown = sorted(set(query) - set(_FILTERS))
    if unknown:
        raise ValueError(f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(_FILTERS)}")
    min_rank = -1
    if "severity" in query:
        sev = query["severity"][-1]
        if sev not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        min_rank = SEVERITIES.index(sev)
    rules = set(query.get("rule", []))
    types = set(query.get("asset_type", []))
    flags: dict[str, bool] = {}
    for name in ("stale", "exempted"):
        if name in query:
            value = query[name][-1].lower()
            if value not in ("true", "false"):
                raise ValueError(f"{name} must be true or false")
            flags[name] = value == "true"

    def keep(f: dict[str, Any]) -> bool:
        return (
            SEVERITIES.index(f["severity"]) >= min_rank
            and (not rules or f["rule"] in rules)
            and (not types or f["asset_type"] in types)
            and all(bool(f[k]) == v for k, v in flags.items())
        )

    return keep


PROTECTED = ("/report", "/findings.json")  # they name resources and members; /metrics and the probes never do


class Daemon:
    def __init__(self, settings: Settings, auditor: Auditor) -> None:
        self.settings = settings
        self.auditor = auditor
        self.log = get_logger("auditor.daemon")
        self.stop = threading.Event()
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scope = {"scope": settings.scope} if settings.scope else None
        self.registry = make_registry(
            AuditorCollector(lambda: auditor.published.view, auditor.histogram, self.alive, const_labels=scope)
        )
        self._add_process_metrics(self.registry)
        self.server: _Server | None = None
        self.address: tuple[str, int] | None = None

    @staticmethod
    def _add_process_metrics(registry: CollectorRegistry) -> None:
        # Memory and CPU of the daemon itself (process_*): standard, label-free, useful when a big org grows.
        ProcessCollector(registry=registry)

    def authorized(self, header: str) -> bool:
        """No token configured: open (bind to loopback or restrict by network). Else Bearer or Basic password."""
        token = self.settings.report_token
        if token is None:
            return True
        scheme, _, value = header.partition(" ")
        given = ""
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        return bool(given) and hmac.compare_digest(given.encode(), token.get_secret_value().encode())

    # -- health --------------------------------------------------------------------------------------------------
    def alive(self) -> bool:
        return bool(self.scheduler.running) and not self.stop.is_set()

    def healthy(self) -> tuple[bool, str]:
        if not self.scheduler.running:
            return False, "unhealthy: the scheduler is not running\n"
        since = self.auditor.running_since
        limit = self.settings.schedule.cycle_timeout_seconds
        if since is not None and time.time() - since > limit:
            return False, f"unhealthy: a cycle has run for more than {limit}s\n"
        return True, "ok\n"

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def trigger(self) -> IntervalTrigger | CronTrigger:
        sch = self.settings.schedule
        if sch.cron:
            cron = CronTrigger.from_crontab(sch.cron, timezone=sch.timezone)
            cron.jitter = sch.jitter_seconds or None
            return cron
        return IntervalTrigger(seconds=sch.interval_seconds, jitter=sch.jitter_seconds or None, timezone=UTC)

    def schedule(self) -> Job:
        """The audit job: one at a time, missed runs coalesced, the first one now."""
        return self.scheduler.add_job(self._job, self.trigger(), id=JOB_ID, next_run_time=datetime.now(UTC))

    def start_http(self) -> tuple[str, int]:
        host, port = self.settings.listen_address
        server_class = _Server6 if ":" in host else _Server
        try:
            server = server_class((host, port), _Handler)
        except OSError as exc:
            raise AuditorError(f"listen {self.settings.listen}: {exc.strerror or exc}") from None
        server.daemon = self
        self.server = server
        self.address = (host, server.server_address[1])
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        return self.address

    def _job(self) -> None:
        if self.stop.is_set():
            return
        self.auditor.run_cycle()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.log.info("signal", signal=signal.Signals(signum).name)
        self.stop.set()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status (0)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        host, port = self.start_http()
        sch = self.settings.schedule
        self.schedule()
        self.scheduler.start()
        self.log.info(
            "listening", host=host, port=port, sources=list(self.settings.sources),
            state_path=str(self.settings.state_path),
            schedule=sch.cron or f"every {sch.interval_seconds}s", jitter_seconds=sch.jitter_seconds,
            rules=len(self.auditor.rules), pid=os.getpid(),
        )
        while not self.stop.wait(1.0):
            pass
        return self.shutdown()

    def shutdown(self) -> int:
        grace = self.settings.schedule.shutdown_grace_seconds
        self.scheduler.shutdown(wait=False)
        running = self.auditor.running_since is not None
        if running:
            self.log.info("shutdown_waiting", grace_seconds=grace)
        deadline = time.monotonic() + grace
        while self.auditor.running_since is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.auditor.running_since is not None:
            self.auditor.cancel.set()  # the scan stops at its next batch of assets
            deadline = time.monotonic() + ABANDON_WAIT_SECONDS
            while self.auditor.running_since is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        stuck = self.auditor.running_since is not None
        self.log.info("stopped", cycle_abandoned=stuck or self.auditor.cancel.is_set())
        if stuck:
            # A source blocked in a call that cannot be interrupted: the store is consistent (nothing was written
            # for this cycle), so leave without waiting for the worker thread.
            sys.stderr.flush()
            os._exit(0)
        if self.settings.remediation.enabled:
            # No cycle runs any more: hand the Lease over now rather than on its expiry (a stuck cycle, above,
            # keeps it until it expires, since it might still be writing).
            for stop in plugins.stop_hooks.items().values():
                stop()
        self.auditor.store.close()
        return 0

