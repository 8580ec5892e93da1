"""Stage 1, collect: one retry policy and one request budget for every live source (and the remediation writers).

Transient failures (HTTP 429, 500, 502, 503, 504, deadline exceeded, a connection reset or timeout) are retried
with exponential backoff and full jitter; a `Retry-After` header (seconds or an HTTP date) is honoured as the
minimum wait. Permanent failures (400, 401, 403, 404, 409, 412) are never retried: retrying cannot fix them.
Built on tenacity; works for `google.api_core` exceptions, `requests`/`urllib3` errors and the Kubernetes client's
`ApiException`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import tenacity

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an API error carries, if any."""
    code = getattr(exc, "code", None)  # google.api_core.exceptions.GoogleAPICallError
    if isinstance(code, int):
        return code
    status = getattr(exc, "status", None)  # kubernetes.client.exceptions.ApiException
    if isinstance(status, int):
        return status
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return code if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: throttling, server errors, timeouts, dropped connections."""
    status = status_of(exc)
    if status is not None and status != 0:
        return status in TRANSIENT_STATUS
    try:
        from google.api_core import exceptions as gexc

        if isinstance(exc, gexc.DeadlineExceeded | gexc.ServiceUnavailable | gexc.RetryError):
            return True
    except ImportError:  # pragma: no cover - google-api-core is a dependency
        pass
    try:
        import requests

        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import urllib3.exceptions

        if isinstance(exc, urllib3.exceptions.HTTPError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, ConnectionError | TimeoutError)


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (`Retry-After`), if it said."""
    headers: Any = getattr(exc, "headers", None)  # kubernetes ApiException
    if headers is None:
        resp = getattr(exc, "response", None)  # google.api_core / requests
        headers = getattr(resp, "headers", None)
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass
class RetryPolicy:
    """How hard to try: attempts per request, backoff bounds (seconds), and the sleep used (tests record it)."""

    attempts: int = 6
    initial: float = 1.0
    maximum: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    jitter: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, extra: dict[str, object]) -> RetryPolicy:
        """From SourceOptions.extra: retry_attempts, retry_initial, retry_maximum, retry_sleep."""
        policy = cls()
        if extra.get("retry_attempts") is not None:
            policy.attempts = max(1, int(extra["retry_attempts"]))  # type: ignore[call-overload]
        if extra.get("retry_initial") is not None:
            policy.initial = float(extra["retry_initial"])  # type: ignore[arg-type]
        if extra.get("retry_maximum") is not None:
            policy.maximum = float(extra["retry_maximum"])  # type: ignore[arg-type]
        sleep = extra.get("retry_sleep")
        if callable(sleep):
            policy.sleep = sleep
        return policy

    def wait_seconds(self, attempt: int, exc: BaseException | None) -> float:
        """Full-jitter exponential backoff, but never less than the server's Retry-After."""
        ceiling = min(self.maximum, self.initial * (2 ** max(0, attempt - 1)))
        wait = self.jitter.uniform(0, ceiling)
        asked = retry_after(exc) if exc is not None else None
        if asked is not None:
            wait = max(wait, asked)
        return wait

    def call(self, fn: Callable[[], T], on_retry: Callable[[int, BaseException, float], None] | None = None) -> T:
        """Call `fn`, retrying transient failures; the last error is raised when the attempts run out."""

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            return self.wait_seconds(state.attempt_number, exc)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None:
                exc = state.outcome.exception()
                if exc is not None:
                    on_retry(state.attempt_number, exc, state.upcoming_sleep)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=wait,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)


class RateBudget:
    """A requests-per-minute budget shared by threads: a token bucket refilled continuously.

    The bucket holds at most `burst` tokens (by default ten seconds' worth), so a fresh budget cannot spend a whole
    minute's quota in the first second and then stall; over any minute the rate stays near `per_minute`.
    """

    def __init__(self, per_minute: float, burst: float | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if per_minute <= 0:
            raise ValueError("a requests-per-minute budget must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, burst if burst is not None else per_minute / 6.0)
        self.tokens = self.capacity
        self.clock = clock  # tests pass a clock that only their sleep advances: no test depends on the machine's pace
        self.updated = clock()
        self.lock = threading.Lock()
        self.sleep = sleep
        self.waited = 0.0  # total seconds spent waiting for the budget, for the logs
        self.paused_until = 0.0

    def hold(self, seconds: float) -> None:
        """Nobody sends for `seconds`: the server said the quota is spent (a 429), for every thread, not one."""
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = self.clock()
                if now < self.paused_until:
                    wait = self.paused_until - now
                    self.waited += wait
                    self.updated = self.paused_until  # no tokens pile up while on hold
                    self.tokens = min(self.tokens, 1.0)
                else:
                    wait = 0.0
            if wait:
                self.sleep(wait)
                continue
            with self.lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1 - 1e-9:  # a refill of exactly one token may land a rounding error short of 1
                    self.tokens = max(0.0, self.tokens - 1)
                    return
                wait = (1 - self.tokens) / self.rate
                self.waited += wait
            self.sleep(wait)
