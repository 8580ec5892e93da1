"""Benchmark of the daemon's HTTP server under many clients: errors, and latency per endpoint.

Starts `auditor serve` (a real daemon process) on a copy of the example organization, waits for its first cycle,
then runs `--clients` keep-alive clients for `--seconds` from `--processes` client processes (threads in each, so
that the clients do not all share one interpreter lock). Each client loops: a request chosen by weight (/healthz 50%,
/metrics 20%, /readyz 10%, /findings.json 10%, /report 10%), then `--think` seconds of pause (0: back to back). An
error is any exception (refused, reset, timed out after `--timeout` seconds) or a status other than 200.

    .venv/bin/python bench/http_load.py                      # 200 clients, 30 s, 4 client processes
    .venv/bin/python bench/http_load.py --clients 50 --seconds 10 --think 0 --json
    .venv/bin/python bench/http_load.py --repo /path/to/another/checkout   # the same load on another version

Loopback only; the client processes run on the same machine as the server and take CPU from it, so figures are
an upper bound of what the server costs. Prints a table (or JSON) and exits 1 when any request failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENDPOINTS = (("/healthz", 50), ("/metrics", 20), ("/readyz", 10), ("/findings.json", 10), ("/report", 10))


def _client(port: int, until: float, think: float, timeout: float, seed: int,
            out: list[tuple[str, float, str]]) -> None:
    rng = random.Random(seed)
    paths = [p for p, _ in ENDPOINTS]
    weights = [w for _, w in ENDPOINTS]
    conn: http.client.HTTPConnection | None = None
    while time.monotonic() < until:
        path = rng.choices(paths, weights)[0]
        t0 = time.perf_counter()
        error = ""
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                error = f"HTTP {resp.status}"
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            error = type(exc).__name__
            if conn is not None:
                conn.close()
            conn = None
        out.append((path, time.perf_counter() - t0, error))
        if think:
            time.sleep(think * (0.5 + rng.random()))  # spread, so that the clients do not move in lockstep
    if conn is not None:
        conn.close()


def _process(port: int, clients: int, start: float, seconds: float, think: float, timeout: float, seed: int,
             queue: Any) -> None:
    while time.time() < start:  # every process starts its clients at the same moment
        time.sleep(0.005)
    until = time.monotonic() + seconds
    results: list[tuple[str, float, str]] = []
    threads = [threading.Thread(target=_client, args=(port, until, think, timeout, seed * 1000 + i, results))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(results)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _serve(workdir: Path, repo: Path = REPO) -> tuple[subprocess.Popen[bytes], int]:
    org, k8s = workdir / "org", workdir / "k8s"
    shutil.copytree(REPO / "examples" / "org", org)
    shutil.copytree(REPO / "examples" / "k8s", k8s)
    port = _free_port()
    cfg = workdir / "config.yaml"
    cfg.write_text(json.dumps({
        "sources": [str(org), str(k8s)], "cluster": "projects/ml-platform-prod/locations/us-central1/clusters/training",
        "state_path": str(workdir / "state.db"), "listen": f"127.0.0.1:{port}", "log_format": "json",
        "log_level": "warning", "schedule": {"interval_seconds": 3600, "jitter_seconds": 0},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITOR_")}
    env["PYTHONPATH"] = str(repo)
    proc = subprocess.Popen([sys.executable, "-m", "auditor", "serve", "--config", str(cfg)], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"auditor serve exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("auditor serve did not become ready in 120 s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(clients: int, seconds: float, processes: int, think: float, timeout: float,
        port: int | None = None, repo: Path = REPO) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="http-load-") as tmp:
        proc = None
        if port is None:
            proc, port = _serve(Path(tmp), repo)
        try:
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            start = time.time() + 1.0
            per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
            procs = [ctx.Process(target=_process, args=(port, n, start, seconds, think, timeout, i, queue))
                     for i, n in enumerate(per) if n]
            for p in procs:
                p.start()
            results: list[tuple[str, float, str]] = []
            for _ in procs:
                results += queue.get(timeout=seconds + timeout + 120)
            for p in procs:
                p.join()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    by_path: dict[str, dict[str, Any]] = {}
    for path in [p for p, _ in ENDPOINTS] + ["all"]:
        rows = [r for r in results if path in ("all", r[0])]
        ok = [r[1] for r in rows if not r[2]]
        by_path[path] = {
            "requests": len(rows),
            "errors": len(rows) - len(ok),
            "p50_ms": round(_pct(ok, 0.50) * 1000, 1),
            "p99_ms": round(_pct(ok, 0.99) * 1000, 1),
            "max_ms": round(max(ok, default=float("nan")) * 1000, 1),
        }
    kinds: dict[str, int] = {}
    for r in results:
        if r[2]:
            kinds[r[2]] = kinds.get(r[2], 0) + 1
    return {
        "clients": clients, "seconds": seconds, "processes": processes, "think_seconds": think,
        "requests_per_second": round(len(results) / seconds, 1), "endpoints": by_path, "errors": kinds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--processes", type=int, default=4, help="client processes the clients are spread over")
    ap.add_argument("--think", type=float, default=0.05, help="mean pause between a client's requests (0: none)")
    ap.add_argument("--timeout", type=float, default=5.0, help="a request slower than this is an error (the "
                    "liveness probe's timeout)")
    ap.add_argument("--port", type=int, default=None, help="load a daemon already listening on this port")
    ap.add_argument("--repo", type=Path, default=REPO, help="run the daemon of another checkout (before/after)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = run(args.clients, args.seconds, args.processes, args.think, args.timeout, args.port, args.repo)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['clients']} clients, {out['seconds']:g} s, think {out['think_seconds']:g} s, "
              f"{out['requests_per_second']} requests/s; {out['machine']}, load average {out['load_average']:.1f}")
        print(f"{'endpoint':16} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for path, r in out["endpoints"].items():
            print(f"{path:16} {r['requests']:>9} {r['errors']:>7} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}")
        if out["errors"]:
            print("errors: " + ", ".join(f"{k} {n}" for k, n in sorted(out["errors"].items())))
    sys.exit(1 if out["endpoints"]["all"]["errors"] else 0)


if __name__ == "__main__":
    main()
