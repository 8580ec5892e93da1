"""The least a scan of an export must run in Python beyond decoding it: a lower bound for the ratio of
`auditor scan` to the floor (bench/run.py), whatever the rules' logic.

A scan that judges Cloud Armor rules by their source ranges turns each range into a number at least once; a
report encodes each finding once and names it by a digest of what makes it one. Each is measured here alone, at
its cheapest (one loop, C calls only: `str.partition`, `inet_pton`, `int.from_bytes`; msgspec's encoder into one
buffer; SHA-256 of a short text, as `auditor.model.finding_id`), over data gathered beforehand and not timed: the
ranges of the export, the findings of its report (read back a batch at a time). Nothing else a scan does is in
the bound: no check, no union of ranges, no report group, no reading of the assets into objects. CPU seconds.

Two bounds: over the floor itself, and over what a lazy reader must at least decode (`floor-envelope`: every
line's envelope, payloads left as raw bytes) plus the payloads of the Cloud Armor policies (generically), which
no reader of their ranges can skip; the IAM policies and Kubernetes objects the rules also read are left out.

    .venv/bin/auditor scan --source FILE --format ndjson -o REPORT
    .venv/bin/python bench/bound.py FILE REPORT [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_pton
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import BLOCK, floor  # noqa: E402

BATCH = 10_000  # findings read back (untimed) between two timed passes


class _Match(msgspec.Struct):
    config: dict[str, Any] = {}


class _ArmorRule(msgspec.Struct):
    match: _Match | None = None


class _ArmorData(msgspec.Struct):
    rule: list[_ArmorRule] = []


class _RawResource(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw(b"")


class _RawLine(msgspec.Struct):
    asset_type: str = ""
    resource: _RawResource | None = None


def source_ranges(path: Path) -> tuple[list[str], float]:
    """Every `srcIpRange` of every Cloud Armor policy of the export, in file order; and the CPU seconds a generic
    decode of those policies' payloads (`resource.data`) took, alone."""
    envelope, typed, generic = (msgspec.json.Decoder(_RawLine).decode, msgspec.json.Decoder(_ArmorData).decode,
                                msgspec.json.Decoder().decode)
    out: list[str] = []
    decoding = 0.0
    with open(path, "rb", buffering=BLOCK) as fh:
        for line in fh:
            if b"compute.googleapis.com/SecurityPolicy" not in line:
                continue
            rec = envelope(line)
            if rec.asset_type != "compute.googleapis.com/SecurityPolicy" or rec.resource is None:
                continue
            raw = rec.resource.data
            if not raw or bytes(raw) == b"null":
                continue
            t0 = time.process_time()
            generic(raw)
            decoding += time.process_time() - t0
            for r in typed(raw).rule:
                texts = r.match.config.get("srcIpRange") if r.match is not None else None
                if isinstance(texts, list):
                    out.extend(t for t in texts if isinstance(t, str))
    return out, decoding


def parse_each(texts: list[str]) -> tuple[float, int]:
    """CPU seconds to turn each range's address into its number; how many `inet_pton` refused (`*`, a typo)."""
    from_bytes = int.from_bytes
    refused = 0
    t0 = time.process_time()
    for text in texts:
        addr = text.partition("/")[0]
        try:
            from_bytes(inet_pton(AF_INET6 if ":" in addr else AF_INET, addr), "big")
        except OSError:
            refused += 1
    return time.process_time() - t0, refused


def findings(report: Path) -> Iterator[list[dict[str, Any]]]:
    """The findings of an NDJSON report, a batch at a time."""
    decode = msgspec.json.Decoder().decode
    with open(report, "rb", buffering=BLOCK) as fh:
        lines = (line for line in fh if line.strip())
        while batch := [decode(line) for line in itertools.islice(lines, BATCH)]:
            yield batch


def encode_and_name(report: Path) -> tuple[float, float, int]:
    """CPU seconds to encode every finding as a line, and to digest a name for each; the number of findings."""
    encode_into = msgspec.json.Encoder().encode_into
    sha256 = hashlib.sha256
    encoding = naming = 0.0
    n = 0
    buf = bytearray()
    for batch in findings(report):
        t0 = time.process_time()
        for f in batch:
            encode_into(f, buf, -1)
            buf += b"\n"
        t1 = time.process_time()
        for f in batch:
            sha256(f"{f['rule']}\x1f{f['asset']}\x1f{f['message']}".encode()).hexdigest()[:20]
        t2 = time.process_time()
        encoding, naming, n = encoding + t1 - t0, naming + t2 - t1, n + len(batch)
        buf.clear()
    return encoding, naming, n


def bound(path: Path, report: Path) -> dict[str, Any]:
    t0 = time.process_time()
    assets = floor(path, "floor")
    floor_s = time.process_time() - t0
    t0 = time.process_time()
    floor(path, "floor-envelope")
    envelope_s = time.process_time() - t0
    texts, armor_s = source_ranges(path)
    parse_s, refused = parse_each(texts)
    encode_s, name_s, n = encode_and_name(report)
    extra = parse_s + encode_s + name_s
    total, lazy = floor_s + extra, envelope_s + armor_s + extra
    return {
        "assets": assets,
        "ranges": len(texts),
        "ranges_refused": refused,
        "findings": n,
        "floor_cpu_seconds": round(floor_s, 3),
        "envelope_cpu_seconds": round(envelope_s, 3),
        "armor_payload_cpu_seconds": round(armor_s, 3),
        "range_parse_cpu_seconds": round(parse_s, 3),
        "finding_encode_cpu_seconds": round(encode_s, 3),
        "finding_id_cpu_seconds": round(name_s, 3),
        "bound_cpu_seconds": round(total, 3),
        "bound_ratio_to_floor": round(total / floor_s, 2) if floor_s else None,
        "lazy_bound_cpu_seconds": round(lazy, 3),
        "lazy_bound_ratio_to_floor": round(lazy / floor_s, 2) if floor_s else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The least Python a scan runs beyond decoding the export.")
    ap.add_argument("export", type=Path, help="the CAI export (NDJSON)")
    ap.add_argument("report", type=Path, help="its findings: `auditor scan --format ndjson -o REPORT`")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    b = bound(args.export, args.report)
    if args.json:
        print(json.dumps(b, indent=2))
    else:
        print(f"{b['assets']} assets, {b['ranges']} source ranges, {b['findings']} findings (CPU seconds)")
        print(f"floor (generic decode)   {b['floor_cpu_seconds']:8.2f}")
        print(f"+ each range's number    {b['range_parse_cpu_seconds']:8.2f}")
        print(f"+ each finding's line    {b['finding_encode_cpu_seconds']:8.2f}")
        print(f"+ each finding's id      {b['finding_id_cpu_seconds']:8.2f}")
        print(f"= lower bound            {b['bound_cpu_seconds']:8.2f}  ({b['bound_ratio_to_floor']}x the floor)")
        print(f"lazy reader: envelopes {b['envelope_cpu_seconds']:.2f} + Cloud Armor payloads "
              f"{b['armor_payload_cpu_seconds']:.2f} + the same = {b['lazy_bound_cpu_seconds']:.2f}  "
              f"({b['lazy_bound_ratio_to_floor']}x the floor)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
