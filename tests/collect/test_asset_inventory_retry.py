"""The retry policy and request budget shared by the live sources, on real client exceptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
from google.api_core import exceptions as gexc
from kubernetes.client.exceptions import ApiException

from auditor.collect.retry import RateBudget, RetryPolicy, is_transient, retry_after


def google_error(status: int, headers: dict[str, str] | None = None) -> gexc.GoogleAPICallError:
    resp = requests.Response()
    resp.status_code = status
    resp.headers.update(headers or {})
    return gexc.from_http_status(status, "boom", response=resp)


@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True), (504, True),
                                                   (400, False), (403, False), (404, False), (409, False)])
def test_which_statuses_are_retried(status: int, transient: bool) -> None:
    assert is_transient(google_error(status)) is transient
    assert is_transient(ApiException(status=status)) is transient


def test_connection_errors_are_transient() -> None:
    assert is_transient(requests.ConnectionError("reset by peer"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError("bug"))


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after(google_error(429, {"Retry-After": "7"})) == 7
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after(google_error(503, {"Retry-After": later})) or 0) <= 30
    k8s = ApiException(status=429)
    k8s.headers = {"Retry-After": "3"}
    assert retry_after(k8s) == 3
    assert retry_after(google_error(500)) is None


def test_policy_retries_transient_then_gives_up_and_never_retries_permanent() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=3, initial=0.5, maximum=4, sleep=sleeps.append)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise google_error(429, {"Retry-After": "2"})
        return "ok"

    assert policy.call(flaky) == "ok" and sleeps == [2, 2]  # the server's 2 s beat the 0.5 s and 1 s backoff
    calls.clear()
    with pytest.raises(gexc.InternalServerError):
        policy.call(lambda: (_ for _ in ()).throw(google_error(500)))
    before = len(sleeps)
    with pytest.raises(gexc.Forbidden):
        policy.call(lambda: (_ for _ in ()).throw(google_error(403)))
    assert len(sleeps) == before  # no wait, no second attempt


def test_backoff_grows_but_stays_under_the_ceiling() -> None:
    policy = RetryPolicy(initial=1, maximum=8)
    waits = [policy.wait_seconds(n, None) for n in range(1, 12) for _ in range(20)]
    assert max(waits) <= 8 and min(waits) >= 0
    assert max(policy.wait_seconds(1, None) for _ in range(50)) <= 1


class FakeClock:
    """A clock that moves only when the budget sleeps: the figures do not depend on how busy the machine is."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_budget_paces_requests_after_the_burst() -> None:
    clock = FakeClock()
    slept = clock.slept
    budget = RateBudget(per_minute=6000, burst=3, sleep=clock.sleep, clock=clock)  # 100 a second, 3 at once
    for _ in range(3):
        budget.acquire()
    assert slept == []
    for _ in range(3):
        budget.acquire()
    assert slept == [pytest.approx(0.01)] * 3  # one token each, at 100 a second
    assert budget.waited == pytest.approx(sum(slept))


def test_a_hold_stops_every_caller_for_its_time() -> None:
    clock = FakeClock()
    slept = clock.slept
    budget = RateBudget(per_minute=60000, burst=100, sleep=clock.sleep, clock=clock)
    budget.acquire()
    assert slept == []
    budget.hold(0.05)  # a 429 said: nobody sends for 50 ms
    budget.acquire()
    assert sum(slept) == pytest.approx(0.05)  # waited out the hold, no longer
    assert budget.tokens <= 1.0  # no burst piled up while on hold
