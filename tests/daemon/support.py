"""Helpers for the daemon tests: the example organization in a temp folder, drift made to it, a running
`auditor serve` subprocess, and the Prometheus binaries (a failure in CI when missing, a skip elsewhere)."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CLUSTER = "projects/ml-platform-prod/locations/us-central1/clusters/training"
PUBLIC_RULE = "iam-no-public-members"


def require_binary(name: str) -> str:
    """The path of a binary the test needs: CI must have it (.ci/run installs it), a laptop may skip."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"`{name}` is not installed (Debian package `prometheus`: apt-get install -y prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI must install it (.ci/run)")
    pytest.skip(msg)


def example_org(dest: Path) -> tuple[Path, Path]:
    """A copy of the example organization (CAI export) and its Kubernetes RBAC list, safe to modify."""
    org, k8s = dest / "org", dest / "k8s"
    shutil.copytree(EXAMPLES / "org", org)
    shutil.copytree(EXAMPLES / "k8s", k8s)
    return org, k8s


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _public(rec: dict[str, Any]) -> bool:
    return any("allUsers" in (b.get("members") or []) for b in (rec.get("iam_policy") or {}).get("bindings", []))


@dataclass
class Drift:
    made_private: str  # asset whose allUsers binding was removed
    made_public: str  # asset that was granted to allUsers


def make_drift(org: Path) -> Drift:
    """Close one public bucket and open another one: exactly one asset resolves, one asset is new."""
    path = org / "iam-policies.ndjson"
    records = _records(path)
    buckets = [r for r in records if r["asset_type"] == "storage.googleapis.com/Bucket" and "iam_policy" in r]
    public = next(r for r in buckets if _public(r))
    private = next(r for r in buckets if not _public(r))
    for b in public["iam_policy"]["bindings"]:
        b["members"] = [m for m in b["members"] if m != "allUsers"]
    public["iam_policy"]["bindings"] = [b for b in public["iam_policy"]["bindings"] if b["members"]]
    private["iam_policy"].setdefault("bindings", []).append(
        {"role": "roles/storage.objectViewer", "members": ["allUsers"]}
    )
    _write(path, records)
    return Drift(made_private=public["name"], made_public=private["name"])


def write_config(path: Path, **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "sources": [str(path.parent / "org"), str(path.parent / "k8s")],
        "cluster": CLUSTER,
        "state_path": str(path.parent / "state.db"),
        "listen": "127.0.0.1:0",
        "log_format": "json",
        "schedule": {"interval_seconds": 3600, "jitter_seconds": 0, "shutdown_grace_seconds": 5},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes, Message]:
    """Status, body and headers (looked up by name in any case, as HTTP defines them)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


class Served:
    """`auditor serve --config FILE` in a subprocess; its JSON log lines are collected as they come."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITOR_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auditor", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._q: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0
        try:
            listening = self.wait_event(lambda e: e.get("event") == "listening", 60, "the listening event")
        except AssertionError:
            self.stop()
            raise AssertionError("auditor serve did not start:\n" + "".join(self.raw[-30:])) from None
        self.port = int(listening["port"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the daemon logs on stdout, as Cloud Logging reads it
            self.raw.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            self._q.put(event)

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        return wait_until(lambda: next((e for e in list(self.events) if pred(e)), None), timeout, what)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, bytes, Message]:
        return http_get(self.url(path))

    def cycles(self) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("event") == "cycle"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return int(self.proc.returncode)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# PromQL words that are not metric names.
PROMQL_WORDS = frozenset(
    """sum min max avg group stddev stdvar count count_values bottomk topk quantile by without on ignoring group_left
    group_right offset bool and or unless abs absent absent_over_time ceil changes clamp clamp_max clamp_min
    day_of_month day_of_week day_of_year days_in_month delta deriv exp floor histogram_count histogram_sum
    histogram_fraction histogram_quantile holt_winters hour idelta increase irate label_join label_replace ln log2
    log10 minute month predict_linear rate resets round scalar sgn sort sort_desc sqrt time timestamp vector year
    avg_over_time min_over_time max_over_time sum_over_time count_over_time quantile_over_time stddev_over_time
    stdvar_over_time last_over_time present_over_time inf nan""".split()  # noqa: SIM905 - a word list reads better
)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, label matchers, durations and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set(re.findall(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])", text))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", n)}


def scrape_metric_names(tmp_path: Path) -> set[str]:
    """Every series name a real /metrics scrape of the daemon exposes after a cycle on the example organization
    (families without samples, like the remediation ones, count by their TYPE line)."""
    from prometheus_client.parser import text_string_to_metric_families

    from auditor.cycle import Auditor
    from auditor.daemon import Daemon
    from auditor.settings import load_settings
    from auditor.state import Store

    example_org(tmp_path)
    # A pull subscription configured (never pulled: the daemon is not run) so its metrics are exported too; the
    # local endpoint needs no credentials.
    config = write_config(tmp_path / "config.yaml", gcp_endpoint="http://127.0.0.1:9",
                          feed={"pull_subscription": "projects/p/subscriptions/cai-feed"})
    settings = load_settings(config)
    store = Store(settings.state_path)
    auditor = Auditor(settings, store)
    auditor.run_cycle()
    daemon = Daemon(settings, auditor)
    host, port = daemon.start_http()
    try:
        status, body, _ = http_get(f"http://{host}:{port}/metrics")
    finally:
        assert daemon.server is not None
        daemon.server.shutdown()
        daemon.server.server_close()
        store.close()
    assert status == 200
    names: set[str] = set()
    for fam in text_string_to_metric_families(body.decode()):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(fam.type, [""])
        names.update(fam.name + s for s in suffixes)
        names.update(s.name for s in fam.samples)
    return names
