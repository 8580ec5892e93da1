"""The daemon under faults: a partial first cycle, a source that shrinks or breaks, a check that panics, a
scheduler that stops scheduling. Real parts: the example organization, the real CAI client against the fake Google
API server, the real HTTP server, the store on disk."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from auditor.cycle import Auditor
from auditor.daemon import Daemon
from auditor.evaluate import registry
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
        after = {f.id for f in auditor.store.open_findings()}
        assert second.recorded.baseline and second.recorded.drift == [] and before < after
        assert second.recorded.new_count == len(after - before)
        assert drift_total(auditor) == 0
        assert not events(logs, "drift")
        assert [e["findings"] for e in events(logs, "baseline")][-1] == len(after - before)

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
    cfg = write_config(tmp_path / "config.yaml", sources=[str(policies), str(org / "resources.ndjson"), str(k8s)])
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
    cfg = write_config(tmp_path / "config.yaml", sources=[str(policies), str(org / "resources.ndjson"), str(k8s)],
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
    cfg = write_config(tmp_path / "config.yaml", sources=[str(policies), str(org / "resources.ndjson"), str(k8s)],
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


def _panics(asset: Asset, params: NoParams, ctx: Context) -> Iterator[Violation]:
    raise NativePanic(f"called `Option::unwrap()` on a `None` value ({asset.name})")
    yield  # a generator, as checks are


@pytest.fixture
def panicking_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hostile.panics` registered for this test only (the registry is global; the docs list what it holds)."""
    registry.all_checks()  # the built-in checks first, so that the copy below holds them
    monkeypatch.setattr(registry._checks, "_items", dict(registry._checks._items))
    check("hostile.panics", params=NoParams, asset_types=["storage.googleapis.com/Bucket"])(_panics)


@pytest.mark.usefixtures("panicking_check")
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




# -- names that try to be markup ---------------------------------------------------------------------------------------
HOSTILE_NAMES = (
    '//storage.googleapis.com/<img src=x onerror="alert(1)">',
    "//storage.googleapis.com/[click me](https://evil.example/)|break`out```",
    "//storage.googleapis.com/\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202eeulb",
)


def hostile_export(tmp_path: Path) -> Path:
    """The example organization's public buckets, renamed as an attacker who can name a bucket would."""
    records = [json.loads(line) for line in (EXAMPLES / "org" / "iam-policies.ndjson").read_text().splitlines()]
    public = [r for r in records if r["asset_type"] == "storage.googleapis.com/Bucket"
              and any("allUsers" in b["members"] for b in (r.get("iam_policy") or {}).get("bindings", []))]
    path = tmp_path / "hostile.ndjson"
    path.write_text("".join(json.dumps({**public[0], "name": name}) + "\n" for name in HOSTILE_NAMES), encoding="utf-8")
    return path


def markdown_html(text: str) -> str:
    """Markdown as a CommonMark renderer with GitHub's tables turns it into HTML, raw HTML allowed through."""
    from markdown_it import MarkdownIt

    return str(MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(text))


class Page(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.code: list[str] = []
        self._in_code = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_code = tag == "code"
        if tag == "code":
            self.code.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_code = False if tag == "code" else self._in_code

    def handle_data(self, data: str) -> None:
        if self._in_code:
            self.code[-1] += data


def assert_inert(page: Page) -> None:
    assert "img" not in page.tags and "a" not in page.tags and "script" not in page.tags
    shown = "".join(page.code)
    for name in HOSTILE_NAMES[:2]:
        assert name.removeprefix("//") in shown  # shown as it is, in code
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown


def test_scan_markdown_shows_hostile_names_as_text(tmp_path: Path) -> None:
    export = hostile_export(tmp_path)
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, "-m", "auditor", "scan", "--source", str(export), "--format", "markdown",
                           "-o", str(out), "--fail-on", "never"], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 3), proc.stderr
    text = out.read_text(encoding="utf-8")
    assert "\x1b" not in text and "\x07" not in text
    page = Page(markdown_html(text))
    assert_inert(page)
    assert page.tags.count("tr") >= len(HOSTILE_NAMES) + 1  # every finding its own row: no cell broke the table


def test_plan_markdown_shows_hostile_names_as_text(tmp_path: Path) -> None:
    export = hostile_export(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "auditor", "plan", "--source", str(export), "-o",
                           str(tmp_path / "plan.json"), "--report", str(tmp_path / "plan.md")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1, 3), proc.stderr
    text = (tmp_path / "plan.md").read_text(encoding="utf-8")
    assert "\x1b" not in text and "\x07" not in text
    assert_inert(Page(markdown_html(text)))


def test_terminal_table_carries_no_escape_sequences(tmp_path: Path) -> None:
    export = hostile_export(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "auditor", "scan", "--source", str(export), "--fail-on", "never"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode in (0, 3), proc.stderr
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202e]", proc.stdout + proc.stderr)
    assert "red eulb" in proc.stdout and "[click me](https://evil.example/)" in proc.stdout  # shown, not obeyed
    assert "owned" not in proc.stdout  # a window title sequence is dropped whole


def test_html_report_escapes_hostile_names(tmp_path: Path) -> None:
    export = hostile_export(tmp_path)
    out = tmp_path / "report.html"
    subprocess.run([sys.executable, "-m", "auditor", "plan", "--source", str(export), "-o",
                    str(tmp_path / "plan.json"), "--report", str(out)], capture_output=True, timeout=120)
    page = Page(out.read_text(encoding="utf-8"))
    assert "img" not in page.tags and "script" not in page.tags
