"""Benchmark of the evaluate stage at organization scale: a scan of a CAI export against the floor of decoding it.

Generates (or reuses, under bench/data/) a synthetic organization of N assets, in each profile asked for (`tidy`:
few findings, small Cloud Armor policies; `messy`: large policies and about one finding per asset, see
bench/generate.py), and measures, each in a fresh subprocess so that peaks of resident memory do not mix:
- floor: read the file and decode every line completely with msgspec, generic (into dicts and lists), doing
  nothing else: the reference of the ratios; `floor-typed` decodes into typed structs instead, `floor-envelope`
  leaves `resource.data` and `iam_policy` as raw bytes (what a lazy reader must at least pay);
- scan: `auditor.scan.run_scan` with the shipped baseline, in one process, and with `--jobs` processes, the
  findings streamed (counted, not kept);
- cli: `auditor scan --format json -o FILE` end to end (interpreter start, rule loading, report writing);
- serve: `auditor serve --once` (collect, evaluate, record in a new SQLite state file, report), then a second
  cycle over the same file (nothing changed), with the state file's size after each;
- rules-10 / rules-50 (tidy): the scan with 10 and 50 rules (shipped rules cloned under new ids);
- bound (`--bound`): the least Python any scan of the file runs beyond decoding it (bench/bound.py).
- rounds (`--rounds N`): N times the CLI scan, the daemon's first and second cycles and the CLI scan again, each
  cycle's wall time over the mean of its round's two scans (this is how the README's daemon figures are taken);
- rule files (`--rule-files`): the CLI scan with each shipped rule file left out in turn, and with one rule that
  no asset matches (the engine and the lazy reader with nothing to judge).

    .venv/bin/python bench/run.py --assets 1000000 [--profile tidy|messy|both] [--jobs 2] [--json] [--repeat 1]
        [--no-cli] [--no-serve] [--no-rule-scaling] [--bound] [--rule-files] [--rounds N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.generate import GENERATOR_VERSION, generate  # noqa: E402

DATA = REPO / "bench" / "data"
BLOCK = 8 << 20  # the floor decoders' read buffer
BASE_RULES = 10  # the rule-count figure: these shipped rules, then cloned up to 50


# -- the floor: typed decoding and nothing else --------------------------------------------------------------------
class FloorBinding(msgspec.Struct):
    role: str = ""
    members: list[str] = []
    condition: dict[str, Any] | None = None


class FloorAuditLogConfig(msgspec.Struct):
    log_type: int | str | None = None
    exempted_members: list[str] = []


class FloorAuditConfig(msgspec.Struct):
    service: str = ""
    audit_log_configs: list[FloorAuditLogConfig] = []


class FloorPolicy(msgspec.Struct):
    version: int = 0
    bindings: list[FloorBinding] = []
    audit_configs: list[FloorAuditConfig] = []
    etag: str = ""


class FloorResource(msgspec.Struct):
    version: str = ""
    discovery_document_uri: str = ""
    discovery_name: str = ""
    parent: str | None = None
    location: str | None = None
    data: dict[str, Any] = {}


class FloorAsset(msgspec.Struct):
    name: str
    asset_type: str
    resource: FloorResource | None = None
    iam_policy: FloorPolicy | None = None
    ancestors: list[str] = []
    update_time: str | None = None


class EnvelopeResource(msgspec.Struct):
    parent: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")


class EnvelopeAsset(msgspec.Struct):
    name: str
    asset_type: str
    resource: EnvelopeResource | None = None
    iam_policy: msgspec.Raw = msgspec.Raw(b"")
    ancestors: list[str] = []
    update_time: str | None = None


def floor(path: Path, kind: str) -> int:
    """Decode every line of the file, one line at a time: generically (`floor`), into typed objects
    (`floor-typed`) or their envelopes (`floor-envelope`); the count.

    One line at a time is the fastest complete decode msgspec offers here: decoding a block of lines at once
    (`decode_lines`) keeps the block's objects alive together, and the collections the garbage collector then runs
    over them made that floor about twice as slow (9.4 s against 4.3 s on the messy million), which flattered every
    ratio measured against it.
    """
    decoder: msgspec.json.Decoder[Any] = (
        msgspec.json.Decoder()
        if kind == "floor"
        else msgspec.json.Decoder(EnvelopeAsset if kind == "floor-envelope" else FloorAsset)
    )
    decode = decoder.decode
    n = 0
    with open(path, "rb", buffering=BLOCK) as fh:
        for line in fh:
            if line.strip():
                decode(line)
                n += 1
    return n


# -- one measurement, in this (fresh) process ----------------------------------------------------------------------
def measure(kind: str, path: Path, rules_dir: str | None, jobs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    c0 = time.process_time()
    out: dict[str, Any] = {}
    if kind in ("floor", "floor-typed", "floor-envelope"):
        out["assets"] = floor(path, kind)
    elif kind == "scan":
        from auditor.evaluate.rulebook import load_rules
        from auditor.scan import run_scan

        rules = load_rules([rules_dir] if rules_dir else None)
        t0 = time.perf_counter()  # rule loading is not part of the scan
        c0 = time.process_time()
        # The findings stream by as a scan writing a report sees them, counted and let go.
        result = run_scan([str(path)], rules, jobs=jobs, on_finding=lambda f: None)
        out.update(assets=result.evaluation.assets, findings=result.counts().open + result.counts().exempted,
                   rules=len(rules))  # fmt: skip
    elif kind == "rule-costs":
        out["rule_seconds"] = rule_costs(path, rules_dir)
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    out["seconds"] = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of this process and of its workers: unlike wall time, not inflated by other load on the machine
    out["cpu_seconds"] = time.process_time() - c0 + children.ru_utime + children.ru_stime
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Worker processes (jobs > 1) are waited for before run_scan returns: this is the largest one's peak.
    out["child_rss_mb"] = children.ru_maxrss / 1024
    return out


def rule_costs(path: Path, rules_dir: str | None) -> dict[str, float]:
    """CPU seconds spent in each rule's check and screen over the whole file (timed one call at a time)."""
    import dataclasses

    from auditor.evaluate.rulebook import load_rules
    from auditor.scan import run_scan

    spent: dict[str, float] = {}
    rules = load_rules([rules_dir] if rules_dir else None)
    for r in rules:
        fn, screen = r.spec.fn, r.spec.screen

        def timed(asset: Any, params: Any, ctx: Any, _fn: Any = fn, _id: str = r.id) -> list[Any]:
            t = time.process_time()
            try:
                return list(_fn(asset, params, ctx))
            finally:
                spent[_id] = spent.get(_id, 0.0) + time.process_time() - t

        def timed_screen(asset: Any, params: Any, ctx: Any, _fn: Any = screen, _id: str = r.id) -> bool:
            t = time.process_time()
            try:
                return bool(_fn(asset, params, ctx))
            finally:
                spent[_id] = spent.get(_id, 0.0) + time.process_time() - t

        r.spec = dataclasses.replace(r.spec, fn=timed, screen=timed_screen if screen is not None else None)
    t0 = time.process_time()
    run_scan([str(path)], rules)
    spent["(everything else: reading, decoding, engine)"] = time.process_time() - t0 - sum(spent.values())
    return {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


def _subprocess(kind: str, path: Path, rules_dir: str | None = None, jobs: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", kind, "--file", str(path), "--jobs", str(jobs)]
    if rules_dir:
        cmd += ["--rules", rules_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {kind} failed:\n{proc.stderr}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def _scan_command(path: Path, fmt: str, report: Path, rules: Path | None = None) -> list[str]:
    auditor = Path(sys.executable).with_name("auditor")
    return [str(auditor), "scan", "--source", str(path), "--format", fmt, "-o", str(report), "--fail-on", "never",
            *(["--rules", str(rules)] if rules is not None else [])]


def _cli(path: Path, jobs: int, rules: Path | None = None) -> dict[str, Any]:
    """`auditor scan` end to end, timed from outside; the peak is the CLI process's own (and its workers')."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "findings.json"
        cmd = _scan_command(path, "json", report, rules)
        if jobs > 1:
            cmd += ["--jobs", str(jobs)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"auditor scan failed:\n{stderr}")
        summary = _report_summary(report)
    # ru_maxrss of wait4 is the CLI process alone; its workers are its children and are not included here.
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "child_rss_mb": 0.0,
        "assets": summary["assets"],
        "findings": summary["findings"] + summary["exempted"],
    }


def _bound(path: Path) -> dict[str, Any]:
    """bench/bound.py's lower bound for the file (in a process of its own), over an NDJSON report of it written
    first (that scan is not one of the measurements)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "findings.ndjson"
        for cmd in (
            _scan_command(path, "ndjson", report),
            [sys.executable, str(Path(__file__).with_name("bound.py")), str(path), str(report), "--json"],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd[:2])} failed:\n{proc.stderr}")
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _report_summary(report: Path) -> dict[str, Any]:
    """The summary of a JSON report, read from its head (the report holds a million findings after it)."""
    with open(report, "rb") as fh:
        head = fh.read(1 << 20)
    cut = head.index(b',"findings":[')
    summary: dict[str, Any] = json.loads(head[:cut] + b"}")["summary"]
    return summary


def _serve(path: Path, cycles: int = 2) -> list[dict[str, Any]]:
    """`auditor serve --once` `cycles` times over the same file and one new state file: each cycle's time, peak
    memory and the state file's size after it."""
    auditor = Path(sys.executable).with_name("auditor")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        config = Path(tmp) / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "sources": [str(path)],
                    "state_path": str(state),
                    "log_format": "json",
                    "log_level": "warning",
                    "remediation": {"enabled": False},
                }
            )
        )
        for _ in range(cycles):
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [str(auditor), "serve", "--once", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
            stdout = proc.stdout.read().decode() if proc.stdout else ""
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            if os.waitstatus_to_exitcode(status) not in (0, 1):
                raise SystemExit(f"auditor serve --once failed:\n{stderr[-4000:]}")
            summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
            out.append(
                {
                    "seconds": seconds,
                    "cpu_seconds": usage.ru_utime + usage.ru_stime,
                    "rss_mb": usage.ru_maxrss / 1024,
                    "state_bytes": sum(f.stat().st_size for f in Path(tmp).glob("state.db*")),
                    "outcome": summary.get("outcome"),
                    "findings": summary.get("open"),
                }
            )
    return out


def daemon_rounds(path: Path, rounds: int) -> dict[str, Any]:
    """`rounds` times: the CLI scan, the daemon's first and second cycles (`_serve`), the CLI scan again. On a
    machine whose speed drifts, a cycle is compared with the scans of its own round (their mean, wall time)."""
    out = []
    for _ in range(rounds):
        before = _cli(path, 1)
        first, second = _serve(path)
        after = _cli(path, 1)
        scan = (before["seconds"] + after["seconds"]) / 2
        out.append({
            "scan_seconds": [round(before["seconds"], 2), round(after["seconds"], 2)],
            "first_seconds": round(first["seconds"], 2),
            "second_seconds": round(second["seconds"], 2),
            "first_ratio": round(first["seconds"] / scan, 2),
            "second_ratio": round(second["seconds"] / scan, 2),
            "peak_mb": [round(before["rss_mb"]), round(first["rss_mb"]), round(second["rss_mb"]),
                        round(after["rss_mb"])],
            "state_bytes": second["state_bytes"],
            "state_growth_bytes": second["state_bytes"] - first["state_bytes"],
        })  # fmt: skip
    return {
        "rounds": out,
        "median_first_ratio": round(statistics.median(r["first_ratio"] for r in out), 2) if out else None,
        "median_second_ratio": round(statistics.median(r["second_ratio"] for r in out), 2) if out else None,
    }


# -- rules for the scaling figure ----------------------------------------------------------------------------------
def shipped_rule_dicts(count: int = BASE_RULES) -> list[dict[str, Any]]:
    """`count` shipped rules, taken in turn from each rule file so that every domain is represented."""
    from auditor.evaluate.rulebook import rule_files, shipped_rules_dir

    per_file: list[list[dict[str, Any]]] = []
    for f in rule_files([shipped_rules_dir()]):
        rules: list[dict[str, Any]] = []
        for doc in yaml.safe_load_all(f.read_text(encoding="utf-8")):
            items = doc.get("rules") if isinstance(doc, dict) else doc
            if isinstance(items, list):
                rules.extend(r for r in items if isinstance(r, dict) and "id" in r)
        per_file.append(rules)
    out: list[dict[str, Any]] = []
    for group in itertools.zip_longest(*per_file):
        out.extend(r for r in group if r is not None)
    if not out:
        raise SystemExit("no shipped rules found to clone")
    return out[:count]


def _distinct(check: str, params: dict[str, Any], i: int) -> dict[str, Any] | None:
    """The params with a value that matches nothing added to a list of strings (a member, role or range that does
    not occur in the generated organization): about the same work, other params. None when the check refuses every
    such change (its params are then kept: an identical clone)."""
    from auditor.evaluate.registry import get_check

    spec = get_check(check)
    if spec is None:
        return None
    for k, v in params.items():
        if not (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
            continue
        for extra in (f"bench-clone-{i}", f"192.0.2.{i % 250}/32"):
            candidate = {**params, k: [*v, extra]}
            try:
                spec.params.model_validate(candidate)
            except ValueError:
                continue
            return candidate
    return None


def write_cloned_rules(folder: Path, count: int, distinct: bool = False) -> int:
    """`count` rules: BASE_RULES shipped ones, then copies of them in turn under new ids (with `distinct`, other
    params where the check allows it); the number of copies with other params."""
    base = shipped_rule_dicts()
    rules = []
    distinct_count = 0
    for i in range(count):
        r = dict(base[i % len(base)])
        r["id"] = f"{r['id']}-bench-{i:03d}"
        if distinct and i >= len(base) and isinstance(r.get("params"), dict):
            changed = _distinct(str(r["check"]), r["params"], i)
            if changed is not None:
                r["params"] = changed
                distinct_count += 1
        rules.append(r)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.yaml").write_text(yaml.safe_dump({"rules": rules}, sort_keys=False), encoding="utf-8")
    return distinct_count


# One rule that no asset matches: the CLI scan with it is the engine and the lazy reader with nothing to judge.
NOTHING_RULE = {
    "id": "bench-matches-nothing",
    "check": "iam.forbidden_members",
    "severity": "low",
    "match": {"asset_types": ["bench.example.com/Nothing"]},
    "params": {"members": ["allUsers"]},
    "mode": "audit",
}


def rule_file_sets(folder: Path) -> dict[str, Path]:
    """Folders of rules under `folder`, by what they hold: the shipped rule files but one (for each of them), and
    the one rule no asset matches."""
    from auditor.evaluate.rulebook import rule_files, shipped_rules_dir

    files = rule_files([shipped_rules_dir()])
    sets = {}
    for left_out in files:
        kept = folder / f"without-{left_out.stem}"
        kept.mkdir(parents=True)
        for f in files:
            if f != left_out:
                shutil.copyfile(f, kept / f.name)
        sets[f"all but {left_out.name}"] = kept
    nothing = folder / "nothing"
    nothing.mkdir()
    (nothing / "nothing.yaml").write_text(yaml.safe_dump({"rules": [NOTHING_RULE]}, sort_keys=False), encoding="utf-8")
    sets["one rule matching nothing"] = nothing
    return sets


# -- the run -------------------------------------------------------------------------------------------------------
def dataset(n: int, seed: int, compress: bool, profile: str = "tidy") -> Path:
    stem = "org" if profile == "tidy" else profile
    path = DATA / f"{stem}-{n}-s{seed}-v{GENERATOR_VERSION}.ndjson{'.gz' if compress else ''}"
    meta = path.with_name(path.name + ".stats.json")
    if not (path.exists() and meta.exists()):
        sys.stderr.write(f"generating {n:,} assets ({profile}) into {path} ...\n")
        stats = generate(n, path, seed=seed, compress=compress, profile=profile)
        meta.write_text(json.dumps(stats.to_dict(), indent=2))
    return path


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "system": platform.system()}


def _row(name: str, m: dict[str, Any], size: int, jobs: int = 1) -> dict[str, Any]:
    secs = m["seconds"]
    peak = m["rss_mb"] + (jobs * m.get("child_rss_mb", 0.0) if jobs > 1 else 0.0)
    return {
        "name": name,
        "seconds": round(secs, 3),
        "cpu_seconds": round(m.get("cpu_seconds", 0.0), 3),
        "assets": m.get("assets"),
        "assets_per_s": round(m["assets"] / secs) if secs else None,
        "mb_per_s": round(size / 1e6 / secs, 1) if secs else None,
        "peak_rss_mb": round(peak, 1),
        "findings": m.get("findings"),
    }


def best(kind: str, path: Path, repeat: int, rules_dir: str | None = None, jobs: int = 1) -> dict[str, Any]:
    runs = [_subprocess(kind, path, rules_dir, jobs) for _ in range(repeat)]
    return min(runs, key=lambda r: float(r["seconds"]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    profiles = ["tidy", "messy"] if args.profile == "both" else [args.profile]
    return {
        "machine": machine(),
        "assets": args.assets,
        "profiles": {p: run_profile(args, p) for p in profiles},
    }


def run_profile(args: argparse.Namespace, profile: str) -> dict[str, Any]:
    path = dataset(args.assets, args.seed, args.gzip, profile)
    size = path.stat().st_size
    rows: list[dict[str, Any]] = []
    log = sys.stderr.write
    log(f"[{profile}] floor ...\n")
    fl = best("floor", path, args.repeat)
    rows.append(_row("floor: msgspec generic decode", fl, size))
    typed = best("floor-typed", path, args.repeat)
    rows.append(_row("floor: msgspec typed decode", typed, size))
    env = best("floor-envelope", path, args.repeat)
    rows.append(_row("floor: envelope only (raw payloads)", env, size))
    log(f"[{profile}] scan ...\n")
    scan1 = best("scan", path, args.repeat)
    rows.append(_row("scan, 1 process (run_scan)", scan1, size))
    scan_j = None
    if args.jobs > 1:
        scan_j = best("scan", path, args.repeat, jobs=args.jobs)
        rows.append(_row(f"scan, --jobs {args.jobs} (run_scan)", scan_j, size, args.jobs))
    cli = None
    if not args.no_cli:
        log(f"[{profile}] cli ...\n")
        cli = _cli(path, 1)
        rows.append(_row("auditor scan --format json -o (CLI)", cli, size))
        if args.jobs > 1:
            rows.append(_row(f"auditor scan --jobs {args.jobs} (CLI)", _cli(path, args.jobs), size))
    if args.rule_files:
        log(f"[{profile}] rule files ...\n")
        with tempfile.TemporaryDirectory() as tmp:
            for label, folder in rule_file_sets(Path(tmp)).items():
                rows.append(_row(f"CLI, {label}", _cli(path, 1, folder), size))
    bound = None
    if args.bound:
        log(f"[{profile}] bound ...\n")
        bound = _bound(path)
    serve: list[dict[str, Any]] = []
    if not args.no_serve:
        log(f"[{profile}] serve --once ...\n")
        serve = _serve(path)
        for i, m in enumerate(serve):
            rows.append({**_row(f"auditor serve --once, cycle {i + 1}", {**m, "assets": args.assets}, size),
                         "state_mb": round(m["state_bytes"] / 1e6, 1), "outcome": m["outcome"]})  # fmt: skip
    rounds = None
    if args.rounds:
        log(f"[{profile}] {args.rounds} rounds of scan, first and second cycle, scan ...\n")
        rounds = daemon_rounds(path, args.rounds)
    scaling: dict[str, Any] | None = None
    if not args.no_rule_scaling and profile == "tidy":
        log("rule scaling ...\n")
        with tempfile.TemporaryDirectory() as tmp:
            r10, r50, r50d = Path(tmp) / "r10", Path(tmp) / "r50", Path(tmp) / "r50d"
            write_cloned_rules(r10, 10)
            write_cloned_rules(r50, 50)
            distinct = write_cloned_rules(r50d, 50, distinct=True)
            m10 = best("scan", path, args.repeat, str(r10))
            m50 = best("scan", path, args.repeat, str(r50))
            m50d = best("scan", path, args.repeat, str(r50d))
        rows.append(_row("scan, 10 rules", m10, size))
        rows.append(_row("scan, 50 rules (identical clones)", m50, size))
        rows.append(_row("scan, 50 rules (distinct params)", m50d, size))
        scaling = {
            "seconds_10": round(m10["seconds"], 3),
            "seconds_50": round(m50["seconds"], 3),
            "seconds_50_distinct": round(m50d["seconds"], 3),
            "clones_with_distinct_params": distinct,
            "added_percent": round(100 * (m50["seconds"] / m10["seconds"] - 1), 1),
            "added_percent_distinct": round(100 * (m50d["seconds"] / m10["seconds"] - 1), 1),
            "added_percent_cpu": round(100 * (m50["cpu_seconds"] / m10["cpu_seconds"] - 1), 1),
            "added_percent_distinct_cpu": round(100 * (m50d["cpu_seconds"] / m10["cpu_seconds"] - 1), 1),
        }
    return {
        "profile": profile,
        "file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
        "file_mb": round(size / 1e6, 1),
        "rules": scan1.get("rules"),
        "findings": scan1.get("findings"),
        "rows": rows,
        "ratio_scan_to_floor": round(scan1["seconds"] / fl["seconds"], 2),
        "ratio_scan_to_floor_cpu": round(scan1["cpu_seconds"] / fl["cpu_seconds"], 2),
        "ratio_cli_to_floor": round(cli["seconds"] / fl["seconds"], 2) if cli else None,
        "ratio_cli_to_floor_cpu": round(cli["cpu_seconds"] / fl["cpu_seconds"], 2) if cli else None,
        "ratio_scan_to_typed_floor": round(scan1["seconds"] / typed["seconds"], 2),
        "ratio_scan_to_envelope_floor": round(scan1["seconds"] / env["seconds"], 2),
        "ratio_parallel_scan_to_floor": round(scan_j["seconds"] / fl["seconds"], 2) if scan_j else None,
        "ratio_serve_to_scan": round(serve[0]["seconds"] / cli["seconds"], 2) if serve and cli else None,
        # CPU time: on a shared machine the wall time of a cycle mostly measures the other processes
        "ratio_serve_to_scan_cpu": round(serve[0]["cpu_seconds"] / cli["cpu_seconds"], 2) if serve and cli else None,
        "ratio_second_cycle_to_scan_cpu": round(serve[1]["cpu_seconds"] / cli["cpu_seconds"], 2)
        if len(serve) > 1 and cli else None,
        "state_growth_percent": round(100 * (serve[1]["state_bytes"] / serve[0]["state_bytes"] - 1), 2)
        if len(serve) > 1 and serve[0]["state_bytes"] else None,
        "rule_scaling": scaling,
        "bound": bound,
        "daemon_rounds": rounds,
    }


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    profiles = list(report["profiles"].values())
    lines = [f"{report['assets']:,} assets; machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}"]
    for p in profiles:
        lines.append(f"  {p['profile']}: {p['file_mb']:,} MB ({p['file']}), {p['rules']} shipped rules, "
                     f"{p['findings']:,} findings")  # fmt: skip
    lines.append("")
    names = list(dict.fromkeys(r["name"] for p in profiles for r in p["rows"]))
    width = max([40, *map(len, names)])
    head = f"{'measurement':<{width}}" + "".join(
        f" {p['profile'] + ' s':>9} {'cpu s':>7} {'peak MB':>8}" for p in profiles
    )
    lines.append(head)
    for name in names:
        line = f"{name:<{width}}"
        for p in profiles:
            r = next((r for r in p["rows"] if r["name"] == name), None)
            if r is None:
                line += f" {'':>9} {'':>7} {'':>8}"
            else:
                line += f" {r['seconds']:>9.2f} {r['cpu_seconds']:>7.2f} {r['peak_rss_mb']:>8.0f}"
        if "cycle" in name:
            line += "   state MB: " + " / ".join(
                str(next((r.get("state_mb") for r in p["rows"] if r["name"] == name), "-")) for p in profiles
            )
        lines.append(line)
    lines.append("")
    for p in profiles:
        lines.append(
            f"{p['profile']}: scan / floor {p['ratio_scan_to_floor']} (CPU {p['ratio_scan_to_floor_cpu']}); "
            f"CLI json / floor {p['ratio_cli_to_floor']} (CPU {p['ratio_cli_to_floor_cpu']}); "
            f"scan / typed floor {p['ratio_scan_to_typed_floor']}; serve / CLI scan {p['ratio_serve_to_scan']}"
        )
        if p.get("ratio_serve_to_scan_cpu") is not None:
            lines.append(
                f"  serve / CLI scan in CPU time: first cycle {p['ratio_serve_to_scan_cpu']}, second (nothing changed) "
                f"{p['ratio_second_cycle_to_scan_cpu']}; state file growth on the second cycle "
                f"{p['state_growth_percent']}%"
            )
        d = p.get("daemon_rounds")
        if d:
            for i, r in enumerate(d["rounds"], 1):
                lines.append(
                    f"  round {i}: scans {r['scan_seconds'][0]} / {r['scan_seconds'][1]} s, first cycle "
                    f"{r['first_seconds']} s = {r['first_ratio']}x, second {r['second_seconds']} s = "
                    f"{r['second_ratio']}x; peaks (scan, first, second, scan) {' / '.join(map(str, r['peak_mb']))} MB; "
                    f"state {r['state_bytes']:,} bytes, {r['state_growth_bytes']:+,} on the second cycle"
                )
            lines.append(f"  median over {len(d['rounds'])} rounds: first cycle {d['median_first_ratio']}x the scan, "
                         f"second {d['median_second_ratio']}x")  # fmt: skip
        b = p.get("bound")
        if b:
            lines.append(
                f"  lower bound (bench/bound.py, CPU): {b['bound_cpu_seconds']} s = {b['bound_ratio_to_floor']}x its "
                f"floor; lazy reader {b['lazy_bound_cpu_seconds']} s = {b['lazy_bound_ratio_to_floor']}x "
                f"({b['ranges']:,} source ranges, {b['findings']:,} findings)"
            )
        s = p["rule_scaling"]
        if s:
            lines.append(
                f"  10 -> 50 rules: {s['seconds_10']} s -> {s['seconds_50']} s ({s['added_percent']:+}%, CPU "
                f"{s['added_percent_cpu']:+}%) identical clones; -> {s['seconds_50_distinct']} s "
                f"({s['added_percent_distinct']:+}%, CPU {s['added_percent_distinct_cpu']:+}%) with distinct params "
                f"({s['clones_with_distinct_params']} of the 40 copies)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Scan speed and memory against the floor of decoding the export.")
    ap.add_argument("--assets", "-n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--gzip", action="store_true", help="benchmark a gzip-compressed export")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes for the parallel scan")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest counts")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI runs")
    ap.add_argument("--no-rule-scaling", action="store_true", help="skip the 10 and 50 rules runs")
    ap.add_argument("--no-serve", action="store_true", help="skip the `auditor serve --once` cycles")
    ap.add_argument("--profile", choices=["tidy", "messy", "both"], default="both", help="organization(s) to measure")
    ap.add_argument("--clean", action="store_true", help="delete the cached generated files first")
    ap.add_argument("--rule-costs", action="store_true", help="only: CPU seconds spent in each shipped rule's check")
    ap.add_argument("--bound", action="store_true",
                    help="also the least Python a scan runs beyond decoding (bench/bound.py; one scan more a profile)")
    ap.add_argument("--rule-files", action="store_true",
                    help="also the CLI scan with each shipped rule file left out, and with one rule matching nothing")
    ap.add_argument("--rounds", type=int, default=0,
                    help="also this many rounds of: CLI scan, the daemon's two cycles, CLI scan (ratios by round)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--rules", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        sys.stdout.write(json.dumps(measure(args.measure, Path(args.file), args.rules, args.jobs)) + "\n")
        return 0
    if args.clean and DATA.exists():
        shutil.rmtree(DATA)
    if args.rule_costs:
        path = dataset(args.assets, args.seed, args.gzip, "tidy" if args.profile == "both" else args.profile)
        costs = _subprocess("rule-costs", path)["rule_seconds"]
        if args.json:
            sys.stdout.write(json.dumps(costs, indent=2) + "\n")
        else:
            sys.stdout.write("".join(f"{v:>9.2f} s  {k}\n" for k, v in costs.items()))
        return 0
    report = run(args)
    sys.stdout.write((json.dumps(report, indent=2) if args.json else render(report)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
