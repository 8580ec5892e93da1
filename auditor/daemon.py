"""The daemon: cycles on a schedule (APScheduler), and the HTTP endpoints that publish the last one.

- One job, `max_instances=1` and coalesced (a slow cycle never overlaps the next; missed runs collapse into one),
  with jitter, the first run at start.
- HTTP (uvicorn, see auditor/http_server.py: keep-alive, a real backlog, header and idle timeouts, bounded work):
  /metrics, /healthz (alive: the scheduler runs and no cycle is stuck past
  schedule.cycle_timeout_seconds), /readyz (ready after the first completed cycle), /findings.json (filters:
  severity, rule, asset_type, stale, exempted), /report, and POST /v1/cai-feed (Cloud Asset Inventory feed pushes,
  auditor/feed.py). Responses are prebuilt after each cycle, so a request never waits on a cycle or touches the
  sources. /readyz also fails while a Kubernetes watch has been down for watch.down_after_seconds.
- Kubernetes watches (auditor/watch.py) of the sources in watch.sources, on the leader only: each change goes to
  Auditor.feed_change like a feed push; they stop first on shutdown. So does the feed pull (feed.pull_subscription,
  auditor/collect/cai_pull.py): leader only, through the push's intake; /readyz fails while it has been down for
  feed.pull_down_after_seconds.
- SIGTERM/SIGINT: stop scheduling; a running cycle gets schedule.shutdown_grace_seconds to finish, then it is
  abandoned (it stops at the next asset batch and records nothing, so the store stays consistent); exit 0.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import itertools
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from auditor import plugins
from auditor.collect.cai_pull import PullReceiver
from auditor.collect.gcp_clients import subscriber_client
from auditor.collect.retry import RetryPolicy
from auditor.cycle import Auditor
from auditor.errors import AuditorError
from auditor.feed import PATH as FEED_PATH
from auditor.feed import FeedIntake
from auditor.http_server import CLIENT_HEADER, HttpServer, Limits, Response
from auditor.logs import get_logger
from auditor.report.formats import render_published, renderers
from auditor.report.metrics import AuditorCollector, make_registry
from auditor.settings import Settings
from auditor.watch import KubeWatches

JOB_ID = "audit-cycle"
HA_JOB_ID = "leader-check"
ABANDON_WAIT_SECONDS = 5.0
METRICS_CACHE_SECONDS = 1.0


def respond(d: Daemon, method: str, target: str, headers: Mapping[str, str]) -> Response:
    """One request (GET or HEAD) to the daemon: headers' names in lower case. Served by auditor.http_server."""
    path = target.split("?", 1)[0].rstrip("/") or "/"
    if path == "/metrics":
        ctype, body = d.metrics(headers.get("accept", ""))
        return _reply(HTTPStatus.OK, ctype, body)
    if path == "/healthz":
        ok, why = d.healthy()
        return _reply(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", why.encode())
    if path == "/readyz":
        ok = d.auditor.published.cycles_completed > 0
        body = b"ready\n" if ok else b"not ready: no cycle has completed yet\n"
        if ok:
            ok, why = d.watches.ready()
            if ok:
                ok, why = d.pull_ready()
            body = b"ready\n" if ok else why.encode() + b"\n"
        return _reply(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", body)
    if path in PROTECTED and not d.authorized(headers.get("authorization", ""), headers.get(CLIENT_HEADER, "")):
        if d.settings.report_token is None:
            return _reply(HTTPStatus.FORBIDDEN, "text/plain", b"this report names resources: with no report token "
                          b"it answers only this host (loopback); configure report_token_file to serve it to others\n")
        body = b"this report names resources: give the report token (Bearer, or Basic as the password)\n"
        return _reply(HTTPStatus.UNAUTHORIZED, "text/plain", body,
                      {"WWW-Authenticate": 'Basic realm="drift-auditor", charset="UTF-8"'})
    if path == "/findings.json":
        # A page at a time, read from the store: the daemon never holds every finding.
        query = urllib.parse.parse_qs(target.partition("?")[2])
        fmt = (query.pop("format", None) or ["json"])[-1]
        if fmt != "json" and fmt not in renderers:
            return _reply(HTTPStatus.BAD_REQUEST, "text/plain",
                          f"unknown format {fmt}; known: {', '.join(renderers)}\n".encode())
        try:
            body = d.auditor.findings_json(query)
        except ValueError as exc:
            return _reply(HTTPStatus.BAD_REQUEST, "text/plain", f"{exc}\n".encode())
        if fmt != "json":  # SARIF, JUnit, CSV, NDJSON... of the same page of findings, the last cycle as the scan
            doc = json.loads(body)
            body = render_published(fmt, doc, doc["findings"], d.auditor.rules)
            return _reply(HTTPStatus.OK, renderers.items()[fmt].media_type, body)
        return _reply(HTTPStatus.OK, "application/json", body)
    if path == "/report":
        return _reply(HTTPStatus.OK, "text/html; charset=utf-8", d.auditor.published.report_html)
    if path == "/":
        return _reply(HTTPStatus.OK, "text/plain", b"drift-auditor: /report /findings.json /metrics /healthz /readyz\n")
    return _reply(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")


def _reply(status: HTTPStatus, ctype: str, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
    out = {**(headers or {}), "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if ctype.startswith("text/html"):
        # The report is static HTML: no scripts, no framing, nothing fetched from elsewhere.
        out["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
        out["X-Frame-Options"] = "DENY"
    return Response(int(status), ctype, body, out)


# Answered on the server's event loop (they read a few fields); every other route runs on its worker threads.
PROBES = frozenset({"/healthz", "/readyz"})


PROTECTED = ("/report", "/findings.json")  # they name resources and members; /metrics and the probes never do


def is_loopback(client: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not."""
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class Daemon:
    def __init__(self, settings: Settings, auditor: Auditor, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.auditor = auditor
        self.clock = clock or auditor.clock
        self.started_at = self.clock()
        self.log = get_logger("auditor.daemon")
        self.stop = threading.Event()
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            # The leader check has its own thread: it runs while a cycle does.
            executors={"default": ThreadPoolExecutor(1), "ha": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scope = {"scope": settings.scope} if settings.scope else None
        self.registry = make_registry(
            AuditorCollector(lambda: auditor.published.view, auditor.histogram, self.alive, const_labels=scope)
        )
        self._add_process_metrics(self.registry)
        # Feed pushes: each accepted change is handed to the auditor (see Auditor.feed_change).
        self.feed = FeedIntake(settings.feed, self.registry, auditor.feed_change, clock=self.clock)
        # Kubernetes watches hand their changes to the same entry point; they run on the leader only.
        self.watches = KubeWatches(settings, self.registry, auditor.feed_change, clock=self.clock)
        # Or feed messages pulled from a subscription (the alternative to push), through the same intake.
        self.feed_pull: PullReceiver | None = None
        if settings.feed.pull_subscription:
            f = settings.feed
            pull = self.feed_pull = PullReceiver(
                settings.feed.pull_subscription, self.feed.receive, client=subscriber_client(settings.gcp_endpoint),
                max_messages=f.pull_max_messages, on_invalid=self.feed.invalid, clock=self.clock,
                backoff=RetryPolicy(initial=f.pull_backoff_initial_seconds, maximum=f.pull_backoff_max_seconds))
            Gauge("auditor_feed_pull_up", "1 while this replica pulls feed messages and its last pull answered.",
                  registry=self.registry).set_function(lambda: 1.0 if pull.up else 0.0)
        # Both are recorded between cycles by the incremental worker (auditor/incremental.py), which may ask for a
        # cycle now.
        auditor.incremental.register(self.registry)
        auditor.incremental.request_cycle = self._cycle_now
        self._metrics_lock = threading.Lock()
        self._metrics_cache: dict[str, tuple[tuple[str, int], float, bytes]] = {}
        self.server: HttpServer | None = None
        self.address: tuple[str, int] | None = None

    def metrics(self, accept: str) -> tuple[str, bytes]:
        """The /metrics page in the format `accept` asks for. Encoding it costs milliseconds of CPU: under many
        scrapers (or a flood) it is encoded at most once per METRICS_CACHE_SECONDS and format, and again as soon as
        a cycle publishes new values; only the time-derived gauges (ages, auditor_up) can lag by that much."""
        encoder, ctype = choose_encoder(accept)
        key = (ctype, self.auditor.published.cycles_completed)  # read before encoding: the data is as new or newer
        now = time.monotonic()
        with self._metrics_lock:
            hit = self._metrics_cache.get(ctype)
            if hit is not None and hit[0] == key and now - hit[1] < METRICS_CACHE_SECONDS:
                return ctype, hit[2]
        body = encoder(self.registry)
        with self._metrics_lock:
            self._metrics_cache[ctype] = (key, now, body)
        return ctype, body

    @staticmethod
    def _add_process_metrics(registry: CollectorRegistry) -> None:
        # Memory and CPU of the daemon itself (process_*): standard, label-free, useful when a big org grows.
        ProcessCollector(registry=registry)

    def authorized(self, header: str, client: str = "") -> bool:
        """No token configured: loopback callers only (secure by default, whatever the listen address). Else the
        token, as Bearer or as the Basic password, from anywhere."""
        token = self.settings.report_token
        if token is None:
            return is_loopback(client)
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

    def finish_deadline(self) -> float:
        """Seconds without a finished cycle after which /healthz fails (schedule.finish_deadline_seconds, or twice
        the longest time between two runs plus the cycle timeout)."""
        sch = self.settings.schedule
        if sch.finish_deadline_seconds is not None:
            return float(sch.finish_deadline_seconds)
        period = float(sch.interval_seconds + sch.jitter_seconds)
        if sch.cron:
            trigger = CronTrigger.from_crontab(sch.cron, timezone=sch.timezone)
            fires: list[datetime] = []
            now = datetime.now(UTC)
            for _ in range(9):  # the longest gap among the next runs (a weekday-only cron has a long weekend)
                after = fires[-1] + timedelta(seconds=1) if fires else now
                nxt = trigger.get_next_fire_time(fires[-1] if fires else None, after)
                if nxt is None:
                    break
                fires.append(nxt)
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]
            period = max(gaps, default=86400.0) + sch.jitter_seconds
        return 2 * period + sch.cycle_timeout_seconds

    def healthy(self) -> tuple[bool, str]:
        if not self.scheduler.running:
            return False, "unhealthy: the scheduler is not running\n"
        now = self.clock()
        since = self.auditor.running_since
        limit = self.settings.schedule.cycle_timeout_seconds
        if since is not None and now - since > limit:
            return False, f"unhealthy: a cycle has run for more than {limit}s\n"
        deadline = self.finish_deadline()
        last = self.auditor.last_finished_at
        quiet = now - (last if last is not None else self.started_at)
        if since is None and quiet > deadline:
            # The scheduler runs but no cycle ran (its job was lost, its thread died): restarting is the cure.
            what = "since the start" if last is None else "since the last one"
            return False, f"unhealthy: no cycle has finished for {quiet:.0f}s {what} (deadline {deadline:.0f}s)\n"
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
        if self.auditor.leader is not None:
            self.scheduler.add_job(self._poll_leadership, IntervalTrigger(seconds=self.settings.ha.lease_seconds),
                                   id=HA_JOB_ID, executor="ha")
        return self.scheduler.add_job(self._job, self.trigger(), id=JOB_ID, next_run_time=datetime.now(UTC))

    def _cycle_now(self, reason: str) -> None:
        if self.scheduler.running and not self.stop.is_set() and self.scheduler.get_job(JOB_ID) is not None:
            self.log.info("cycle_requested", reason=reason)
            self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    def _poll_leadership(self) -> None:
        if not self.stop.is_set() and self.auditor.poll_leadership():
            self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))  # took over: a cycle now
        self.sync_watches()

    def sync_watches(self) -> None:
        """Watches and the feed pull run while this replica leads (and the daemon is not stopping)."""
        leading = self.auditor.leading and not self.stop.is_set()
        self.watches.sync(leading)
        if self.feed_pull is not None:  # pulled on the leader only, like the watches
            if leading:
                self.feed_pull.start()
            else:
                self.feed_pull.stop()

    def pull_ready(self) -> tuple[bool, str]:
        """Not ready while the leader's feed pull has gone feed.pull_down_after_seconds without a successful pull."""
        down = self.feed_pull.down_for() if self.feed_pull is not None else None
        limit = self.settings.feed.pull_down_after_seconds
        if down is not None and down > limit:
            return False, f"not ready: the feed pull has been down for {down:.0f}s (limit {limit:.0f}s)"
        return True, "ok"

    def start_http(self) -> tuple[str, int]:
        host, port = self.settings.listen_address
        h = self.settings.http
        limits = Limits(backlog=h.backlog, max_connections=h.max_connections, workers=h.workers,
                        keep_alive_seconds=h.keep_alive_seconds, header_timeout_seconds=h.header_timeout_seconds)
        try:
            server = HttpServer(host, port, lambda m, t, hd: respond(self, m, t, hd), limits, PROBES,
                                post={FEED_PATH: self.feed.handle})
        except AuditorError as exc:
            raise AuditorError(f"listen {self.settings.listen}: {exc}") from None
        self.server = server.start()
        self.address = (host, server.server_address[1])
        return self.address

    def _job(self) -> None:
        if self.stop.is_set():
            return
        self.auditor.run_cycle()
        self.sync_watches()

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
        self.auditor.incremental.start()
        self.sync_watches()
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
        self.stop.set()  # a cycle still running must not start the watches or the pull again when it ends
        self.scheduler.shutdown(wait=False)
        self.watches.stop()  # no change is handed on once the daemon stops
        if self.feed_pull is not None:
            self.feed_pull.stop()
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
        self.auditor.close()
        return 0

