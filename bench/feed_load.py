"""Benchmark of drift in seconds: feed pushes at a sustained rate into a daemon watching a large organization.

Generates (or reuses, under bench/data/) a synthetic organization of `--assets` assets (bench/generate.py), starts
`auditor serve` on it (a real daemon process, SQLite state, log events at info to a file), waits for its first
cycle, then pushes Cloud Asset Inventory feed messages to `POST /v1/cai-feed` over real HTTP on loopback at `--rate`
changes per second for `--seconds`, from `--senders` keep-alive connections. Each message changes the IAM policy of
an asset that carries one (bucket, dataset, service account...), alternately adding and removing `allUsers`, so each
is exactly one `iam-no-public-members` drift event (new, then resolved); `--redeliver` of the messages are sent a
second time (Pub/Sub delivers at least once). The publish time of each message is the time it is sent.

Then reads the state store the daemon wrote and reports:
- publish -> drift recorded: from each message's publish time to the `at` of its drift event (p50, p95, max);
- lost: messages answered 204 without their drift event; counted twice: drift events beyond one per message;
- HTTP answer latency of the pushes, errors (status other than 204), the rate achieved;
- the daemon's resident memory after its first cycle and after the load, and `auditor_event_to_drift_seconds`.

`--cycle-every 10` runs full cycles during the load (each records while changes arrive and contends for the state
file's write lock). The export does not change, so a cycle would take the changed assets back to their exported state;
it does not within 30 s of a change (a change recorded shortly before a cycle wins over its snapshot), so keep the
load under 30 s with cycles on.

    .venv/bin/python bench/feed_load.py --assets 100000 --rate 200 --seconds 30 [--json]

Loopback only; the sender runs on the same machine and takes CPU from the daemon. Exits 1 when a message was lost or
counted twice.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import random
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.generate import GENERATOR_VERSION, generate  # noqa: E402

DATA = REPO / "bench" / "data"
RULE = "iam-no-public-members"
IAM_TYPES = ("storage.googleapis.com/Bucket", "bigquery.googleapis.com/Dataset", "iam.googleapis.com/ServiceAccount",
             "pubsub.googleapis.com/Topic", "secretmanager.googleapis.com/Secret")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


def export_for(n: int) -> Path:
    path = DATA / f"org-{n}-s7-v{GENERATOR_VERSION}.ndjson"  # the name bench/run.py gives it
    if not path.exists():
        generate(n, path, seed=7)
    return path


def candidates(export: Path, want: int) -> list[dict[str, Any]]:
    """Assets with an IAM policy and no allUsers member, in export spelling."""
    out = []
    with open(export, "rb") as fh:
        for line in fh:
            if b'"iam_policy"' not in line or b"allUsers" in line or b"allAuthenticatedUsers" in line:
                continue
            rec = json.loads(line)
            if rec.get("asset_type") in IAM_TYPES and rec.get("iam_policy", {}).get("bindings"):
                out.append(rec)
                if len(out) >= want:
                    break
    return out


def serve(workdir: Path, export: Path, cycle_every: int = 86400) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = _free_port()
    cfg = workdir / "config.yaml"
    state = workdir / "state.db"
    cfg.write_text(json.dumps({
        "sources": [str(export)], "state_path": str(state), "listen": f"127.0.0.1:{port}", "log_format": "json",
        "schedule": {"interval_seconds": cycle_every, "jitter_seconds": 0, "cycle_timeout_seconds": 7200},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITOR_")}
    env["PYTHONPATH"] = str(REPO)
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "auditor", "serve", "--config", str(cfg)], cwd=REPO, env=env,
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                if r.status == 200:
                    return proc, port, state
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"auditor serve exited with {proc.returncode}; see {workdir / 'daemon.log'}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("auditor serve did not become ready in 30 minutes")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+\deE.naNInf]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def message(rec: dict[str, Any], public: bool, start: float, seq: int, published: float) -> bytes:
    asset = json.loads(json.dumps(rec))
    bindings = asset["iam_policy"]["bindings"]
    if public:
        bindings.append({"role": "roles/viewer", "members": ["allUsers"]})
    asset["update_time"] = _rfc3339(start)
    temporal = {"window": {"startTime": _rfc3339(start)}, "deleted": False, "asset": asset}
    data = base64.b64encode(json.dumps(temporal).encode()).decode()
    return json.dumps({"message": {"data": data, "messageId": str(seq), "publishTime": _rfc3339(published)},
                       "subscription": "projects/bench/subscriptions/cai-push"}).encode()


def load(port: int, assets: list[dict[str, Any]], rate: float, seconds: float, senders: int,
         redeliver: float) -> dict[str, Any]:
    """Send `rate * seconds` changes, paced; returns what was sent and answered."""
    total = int(rate * seconds)
    rng = random.Random(3)
    sent: list[tuple[str, float, int] | None] = [None] * total  # (asset, publish time, status)
    answers: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    t0 = time.time() + 1.0
    base = time.time() - 3600  # window start times: after the snapshot, increasing per asset
    state: dict[str, bool] = {}

    def body(i: int, now: float) -> tuple[str, bytes]:
        rec = assets[i % len(assets)]
        with lock:
            public = not state.get(rec["name"], False)
            state[rec["name"]] = public
        return rec["name"], message(rec, public, base + i * 0.001, i, now)

    def sender(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(k, total, senders):
            at = t0 + i / rate
            delay = at - time.time()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            name, payload = body(i, now)
            for attempt in range(2 if rng.random() < redeliver else 1):
                t = time.perf_counter()
                try:
                    conn.request("POST", "/v1/cai-feed", payload, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                except OSError as exc:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    status = 0
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                with lock:
                    answers.append(time.perf_counter() - t)
                    if attempt == 0:
                        sent[i] = (name, now, status)
                    if status != 204:
                        errors.append(f"HTTP {status}")
        conn.close()

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.time() - t0
    return {"sent": [s for s in sent if s is not None], "answers": answers, "errors": errors, "elapsed": elapsed}


def wait_recorded(port: int, expected: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = metrics(port)
        if m.get("auditor_incremental_pending", 1) == 0 and \
                m.get('auditor_incremental_changes_total{outcome="recorded"}', 0) >= expected:
            return
        time.sleep(0.5)


def analyse(state: Path, sent: list[tuple[str, float, int]]) -> dict[str, Any]:
    """Match each message to its drift event, in order per asset."""
    conn = sqlite3.connect(state)
    events: dict[str, list[float]] = {}
    for asset, at in conn.execute("SELECT asset, at FROM drift_events WHERE origin = 'event' AND rule = ? "
                                  "ORDER BY id", (RULE,)):
        events.setdefault(asset, []).append(float(at))
    conn.close()
    by_asset: dict[str, list[float]] = {}
    for name, when, status in sent:
        if status == 204:
            by_asset.setdefault(name, []).append(when)
    latencies: list[float] = []
    lost = twice = 0
    for name, times in by_asset.items():
        recorded = events.get(name, [])
        lost += max(0, len(times) - len(recorded))
        twice += max(0, len(recorded) - len(times))
        latencies += [at - p for p, at in zip(times, recorded, strict=False)]
    return {"latencies": latencies, "lost": lost, "twice": twice}


def retained_assets(log: Path) -> int | None:
    """The size of the daemon's retained index after its first cycle (its `retained_index` log event)."""
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"retained_index"' in line:
            return int(json.loads(line).get("assets", 0))
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--senders", type=int, default=16)
    p.add_argument("--redeliver", type=float, default=0.05, help="share of messages sent twice")
    p.add_argument("--cycle-every", type=int, default=86400,
                   help="seconds between full cycles (default: none during the load); with a few seconds, cycles "
                        "record while the changes arrive")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    export = export_for(args.assets)
    total = int(args.rate * args.seconds)
    assets = candidates(export, total)
    with tempfile.TemporaryDirectory(prefix="feed-load-") as tmp:
        t = time.monotonic()
        proc, port, state = serve(Path(tmp), export, args.cycle_every)
        first_cycle = time.monotonic() - t
        try:
            before = metrics(port)
            run = load(port, assets, args.rate, args.seconds, args.senders, args.redeliver)
            ok = sum(1 for s in run["sent"] if s[2] == 204)
            t = time.monotonic()
            wait_recorded(port, ok)
            drain = time.monotonic() - t
            after = metrics(port)
            found = analyse(state, run["sent"])
            retained = retained_assets(Path(tmp) / "daemon.log")
            cycles = int(after.get('auditor_cycles_total{outcome="success"}', 0)
                         - before.get('auditor_cycles_total{outcome="success"}', 0))
        finally:
            proc.terminate()
            proc.wait(60)
    lat = found["latencies"]
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}",
        "assets": args.assets, "distinct_assets_changed": min(len(assets), total),
        "first_cycle_seconds": round(first_cycle, 1),
        "cycle_every_seconds": args.cycle_every if args.cycle_every < 86400 else None,
        "cycles_during_load": cycles,
        "rate_asked": args.rate, "seconds": args.seconds, "messages": len(run["sent"]),
        "rate_achieved": round(len(run["sent"]) / run["elapsed"], 1),
        "redeliveries": len(run["answers"]) - len(run["sent"]),
        "http_errors": len(run["errors"]), "first_errors": run["errors"][:5],
        "answer_p50_ms": round(_pct(run["answers"], 0.5) * 1000, 1),
        "answer_p95_ms": round(_pct(run["answers"], 0.95) * 1000, 1),
        "drift_p50_s": round(_pct(lat, 0.5), 3), "drift_p95_s": round(_pct(lat, 0.95), 3),
        "drift_max_s": round(max(lat, default=float("nan")), 3),
        "lost": found["lost"], "counted_twice": found["twice"], "drain_after_load_s": round(drain, 1),
        "rss_after_first_cycle_mib": round(before.get("process_resident_memory_bytes", 0) / 2**20),
        "rss_after_load_mib": round(after.get("process_resident_memory_bytes", 0) / 2**20),
        "histogram_count": after.get("auditor_event_to_drift_seconds_count"),
        "histogram_le_0.1s": after.get('auditor_event_to_drift_seconds_bucket{le="0.1"}'),
        "histogram_le_2s": after.get('auditor_event_to_drift_seconds_bucket{le="2.0"}'),
        "retained_assets": retained,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:28} {v}")
    sys.exit(1 if out["lost"] or out["counted_twice"] else 0)


if __name__ == "__main__":
    main()
