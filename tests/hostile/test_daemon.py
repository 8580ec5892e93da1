"""The daemon under faults: a partial first cycle, a source that shrinks or breaks, a check that panics, a
scheduler that stops scheduling. Real parts: the example organization, the real CAI client against the fake Google
API server, the real HTTP server, the store on disk."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor.cycle import Auditor
from auditor.daemon import Daemon
from auditor.evaluate.registry import Context, NoParams, Violation, check
from auditor.logs import configure
from auditor.model import Asset
from auditor.settings import load_settings
from auditor.state import Store
from tests.daemon.support import EXAMPLES, example_org, http_get, wait_until, write_config
from tests.fakes.gcp import FakeGcp, Fault

ORG = "cai://organizations/583920174615"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure("json", "info", stream=buf)
    yield buf
    configure("console", "warning")


def events(buf: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, buf.getvalue().splitlines()) if e["event"] == name]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_auditor(cfg: Path, clock: Clock | None = None) -> Auditor:
    settings = load_settings(cfg)
    return Auditor(settings, Store(settings.state_path), **({"clock": clock} if clock else {}))


def counters(auditor: Auditor, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): v for labels, v in auditor.store.counters(metric)}


def drift_total(auditor: Auditor) -> float:
    return sum(counters(auditor, "drift_events_total").values())


# -- the baseline ------------------------------------------------------------------------------------------------------
def test_an_api_error_at_install_does_not_turn_existing_findings_into_new_drift(tmp_path: Path,
                                                                                logs: io.StringIO) -> None:
    _, k8s = example_org(tmp_path)
    with FakeGcp(EXAMPLES / "org") as fake:
        cfg = write_config(tmp_path / "config.yaml", sources=[ORG, str(k8s)], gcp_endpoint=fake.url,
                           source_options={"retry_attempts": 1})
        auditor = make_auditor(cfg)
        # At install the service account cannot read IAM policies yet: every IAM listing is refused.
        fake.inject(Fault(status=403, times=None, content_type="IAM_POLICY"))
        first = auditor.run_cycle()
        assert first.outcome == "partial" and first.recorded is not None and first.recorded.baseline
        before = {f.id for f in auditor.store.open_findings()}

        fake.clear_faults()
        second = auditor.run_cycle()
        assert second.outcome == "success" and second.recorded is not None
        # Every IAM finding shows up now, but it is the state the organization was already in: still the baseline.
        assert second.recorded.baseline and second.recorded.new
        assert not {e.finding_id for e in second.recorded.new} & before
        assert drift_total(auditor) == 0
        assert not events(logs, "drift")
        assert [e["findings"] for e in events(logs, "baseline")][-1] == len(second.recorded.new)

        # From now on a change is drift, and only the change.
        project = "//cloudresourcemanager.googleapis.com/projects/401000000001"
        policy = fake.state.asset(project)["iamPolicy"]  # type: ignore[index]
        policy["bindings"].append({"role": "roles/viewer", "members": ["allUsers"]})
        fake.state.update_asset(project, iamPolicy=policy)
        third = auditor.run_cycle()
        assert third.outcome == "success" and third.recorded is not None and not third.recorded.baseline
        assert {(e.change, e.asset) for e in third.recorded.drift} == {("new", project)}
        assert drift_total(auditor) == len(third.recorded.drift)
        auditor.store.close()


# -- a source that shrinks -----------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]


@pytest.mark.parametrize("keep", ["empty", "a third"])
def test_an_export_replaced_by_a_shorter_one_resolves_nothing_and_nothing_comes_back_new(
    tmp_path: Path, logs: io.StringIO, keep: str
) -> None:
    org, k8s = example_org(tmp_path)
    policies = org / "iam-policies.ndjson"
    cfg = write_config(tmp_path / "config.yaml", sources=[str(policies), str(k8s)])
    auditor = make_auditor(cfg)
    assert auditor.run_cycle().outcome == "success"
    open_before = {f.id for f in auditor.store.open_findings()}
    whole = policies.read_bytes()
    lines = _lines(policies)
    # A writer caught half way (or an export job that wrote an empty file): whole lines, valid NDJSON.
    policies.write_text("" if keep == "empty" else "".join(lines[: len(lines) // 3]), encoding="utf-8")

    out = auditor.run_cycle()
    assert out.outcome in ("partial", "failed")
    assert out.recorded is not None and out.recorded.resolved == []
    assert {f.id for f in auditor.store.open_findings()} == open_before
    codes = {dict(k)["source"]: dict(k)["code"] for k in counters(auditor, "source_errors_total")}
    assert set(codes) == {str(policies)}
    if out.outcome == "partial":  # the reader took it: the shrink is what made it partial, and it says so
        assert codes[str(policies)] == "shrunk"
        (shrunk,) = events(logs, "source_shrunk")
        assert shrunk["source"] == str(policies) and shrunk["before"] == len(lines)
        assert shrunk["assets"] == len(lines) // 3 if keep != "empty" else shrunk["assets"] == 0
        assert any(f.stale for f in auditor.store.open_findings())

    policies.write_bytes(whole)
    back = auditor.run_cycle()
    assert back.outcome == "success" and back.recorded is not None
    assert back.recorded.drift == []  # nothing was resolved, so nothing returns as new
    assert drift_total(auditor) == 0
    assert not any(f.stale for f in auditor.store.open_findings())
    auditor.store.close()


def test_a_shrink_that_holds_is_taken_as_real_after_the_configured_cycles(tmp_path: Path,
                                                                          logs: io.StringIO) -> None:
    org, k8s = example_org(tmp_path)
    policies = org / "iam-policies.ndjson"
    cfg = write_config(tmp_path / "config.yaml", sources=[str(policies), str(k8s)],
                       source_shrink={"max_drop_fraction": 0.5, "accept_after_cycles": 2})
    auditor = make_auditor(cfg)
    auditor.run_cycle()
    lines = _lines(policies)
    policies.write_text("".join(lines[:5]), encoding="utf-8")  # most projects deleted for good
    outcomes = [auditor.run_cycle() for _ in range(3)]
    assert [o.outcome for o in outcomes] == ["partial", "partial", "success"]
    assert [o.recorded.resolved == [] for o in outcomes if o.recorded] == [True, True, False]
    assert events(logs, "source_shrink_accepted")[0]["cycles"] == 2
    # The smaller count is the new reference: a further small change is an ordinary cycle.
    policies.write_text("".join(lines[:4]), encoding="utf-8")
    assert auditor.run_cycle().outcome == "success"
    auditor.store.close()


def test_the_shrink_limit_is_configurable(tmp_path: Path, logs: io.StringIO) -> None:
    org, k8s = example_org(tmp_path)
    policies = org / "iam-policies.ndjson"
    lines = _lines(policies)
    cfg = write_config(tmp_path / "config.yaml", sources=[str(policies), str(k8s)],
                       source_shrink={"max_drop_fraction": 0.8})
    auditor = make_auditor(cfg)
    auditor.run_cycle()
    policies.write_text("".join(lines[: len(lines) // 3]), encoding="utf-8")  # -67%: within 80%
    out = auditor.run_cycle()
    assert out.outcome == "success" and out.recorded is not None and out.recorded.resolved
    assert not events(logs, "source_shrunk")
    auditor.store.close()


# -- failures are attributed to their source -------------------------------------------------------------------------
def _corrupt(kind: str, dest: Path) -> None:
    data = gzip.compress((EXAMPLES / "org" / "iam-policies.ndjson").read_bytes())
    if kind == "truncated gzip":
        dest.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt gzip":
        b = bytearray(data)
        for i in range(len(b) // 3, len(b) // 3 + 40):
            b[i] ^= 0x55
        dest.write_bytes(bytes(b))
    else:  # JSON nested far beyond the recursion limit
        dest.write_text('{"name": "//storage.googleapis.com/deep", "asset_type": "storage.googleapis.com/Bucket", '
                        '"resource": {"data": ' + "[" * 200_000 + "]" * 200_000 + "}}\n", encoding="utf-8")


@pytest.mark.parametrize("kind", ["truncated gzip", "corrupt gzip", "deep nesting"])
def test_a_reader_failure_is_counted_under_its_source(tmp_path: Path, logs: io.StringIO, kind: str) -> None:
    _, k8s = example_org(tmp_path)
    bad = tmp_path / "exports"
    bad.mkdir()
    _corrupt(kind, bad / ("assets.ndjson.gz" if "gzip" in kind else "assets.json"))
    cfg = write_config(tmp_path / "config.yaml", sources=[str(tmp_path / "org"), str(bad), str(k8s)])
    auditor = make_auditor(cfg)
    out = auditor.run_cycle()
    assert out.outcome in ("partial", "failed")
    assert out.error is None or str(bad) in out.error
    sources = {dict(k)["source"] for k in counters(auditor, "source_errors_total")}
    assert sources == {str(bad)}  # never "unknown", never the sources that read fine
    state = {s.source: s for s in auditor.store.sources()}
    assert state[str(bad)].last_error and state[str(bad)].last_complete_at is None
    (cycle,) = events(logs, "cycle")
    assert "Traceback" not in json.dumps(cycle)
    auditor.store.close()


# -- a check that crashes ------------------------------------------------------------------------------------------
class NativePanic(BaseException):
    """What a native extension's panic looks like from Python: a BaseException, not an Exception."""


@check("hostile.panics", params=NoParams, asset_types=["storage.googleapis.com/Bucket"])
def _panics(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    raise NativePanic(f"called `Option::unwrap()` on a `None` value ({asset.name})")
    yield  # a generator, as checks are


def test_a_check_that_panics_is_an_evaluation_error_and_cycles_go_on(tmp_path: Path, logs: io.StringIO) -> None:
    example_org(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- {id: panics, check: hostile.panics, severity: high}\n"
        "- {id: public, check: iam.forbidden_members, severity: critical, params: {members: [allUsers]}}\n",
        encoding="utf-8",
    )
    settings = load_settings(write_config(tmp_path / "config.yaml", rules=[str(rules)],
                                          schedule={"interval_seconds": 1, "jitter_seconds": 0}))
    auditor = Auditor(settings, Store(settings.state_path))
    daemon = Daemon(settings, auditor)
    host, port = daemon.start_http()
    daemon.schedule()
    daemon.scheduler.start()
    try:
        wait_until(lambda: auditor.cycles_completed >= 3, 60, "three cycles")
        assert daemon.scheduler.running and daemon.scheduler.get_job("audit-cycle") is not None
        status, body, _ = http_get(f"http://{host}:{port}/healthz")
        assert status == 200, body
    finally:
        daemon.scheduler.shutdown(wait=True)
        assert daemon.server is not None
        daemon.server.shutdown()
        daemon.server.server_close()
    cycles = events(logs, "cycle")
    assert len(cycles) >= 3
    assert all(c["evaluation_errors"] > 0 and c["findings"] > 0 for c in cycles)  # the other rule still reports
    assert not events(logs, "cycle_error")
    auditor.store.close()


# -- /healthz ---------------------------------------------------------------------------------------------------------
def test_healthz_fails_when_no_cycle_finishes_within_its_deadline(tmp_path: Path, logs: io.StringIO) -> None:
    example_org(tmp_path)
    clock = Clock(2_000_000_000.0)
    settings = load_settings(write_config(tmp_path / "config.yaml", schedule={"finish_deadline_seconds": 600}))
    auditor = Auditor(settings, Store(settings.state_path), clock=clock)
    daemon = Daemon(settings, auditor)
    host, port = daemon.start_http()
    daemon.scheduler.start()  # running, but its job is gone: what a lost job or a dead worker looks like
    url = f"http://{host}:{port}/healthz"
    try:
        assert http_get(url)[0] == 200
        clock.t += 601
        status, body, _ = http_get(url)
        assert status == 503 and b"no cycle has finished for 601s since the start (deadline 600s)" in body
        auditor.run_cycle()
        assert http_get(url)[0] == 200
        clock.t += 599
        assert http_get(url)[0] == 200
        clock.t += 2
        status, body, _ = http_get(url)
        assert status == 503 and b"since the last one" in body
    finally:
        daemon.scheduler.shutdown(wait=False)
        assert daemon.server is not None
        daemon.server.shutdown()
        daemon.server.server_close()
        auditor.store.close()


def test_the_default_healthz_deadline_follows_the_schedule(tmp_path: Path) -> None:
    example_org(tmp_path)
    interval = load_settings(write_config(tmp_path / "a.yaml", schedule={"interval_seconds": 900,
                                                                         "jitter_seconds": 30}))
    cron = load_settings(write_config(tmp_path / "b.yaml", schedule={"cron": "0 */6 * * *", "jitter_seconds": 60}))
    for settings, expected in ((interval, 2 * 930 + 3600), (cron, 2 * (6 * 3600 + 60) + 3600)):
        store = Store(settings.state_path)
        assert Daemon(settings, Auditor(settings, store)).finish_deadline() == expected
        store.close()


