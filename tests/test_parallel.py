"""The workers' encoding of findings for a report (`--jobs`): grouped by report group, each finding's line, record
and copy kept, a copy's repeats of an id left out (the collector would leave them out whatever becomes of the
copy). Whole scans over several processes are compared with one process in tests/bench/test_parallel_scan.py."""

from __future__ import annotations

from auditor.model import Finding, Mode, Severity, finding_id
from auditor.parallel import _Copies, _Encoder
from auditor.report.spool import COPY_BYTES, META_BYTES, copy_tag, finding_mark


class _Renderer:
    @staticmethod
    def key(f: Finding) -> str:
        return f.rule

    @staticmethod
    def line_into(f: Finding, buf: bytearray) -> None:
        buf += f"{f.rule} {f.asset} {f.message}\n".encode()


def _finding(rule: str, asset: str, key: str, message: str) -> Finding:
    return Finding(finding_id(rule, asset, key), rule, "check", Severity.high, Mode.audit, asset, "t", message)


def test_findings_are_grouped_with_their_copy_and_a_copys_repeats_left_out() -> None:
    copies = _Copies()
    encoder = _Encoder(_Renderer(), copies)
    made = [
        (11, [_finding("a", "x", "1", "first"), _finding("b", "x", "1", "b"), _finding("a", "x", "1", "again")]),
        (12, [_finding("a", "y", "1", "y")]),
        (11, [_finding("a", "x", "1", "second copy")]),  # the same asset read again: its own finding, kept
    ]
    for key, findings in made:
        copies.keys.append(key)
        for f in findings:
            encoder(f)
    assert len(encoder) == 5  # every finding made, those left out too
    encoded = encoder.done()
    assert encoded.groups == ["a", "b"] and len(encoded) == 4
    a, b = encoded.parts
    assert a.lines == b"a x first\na y y\na x second copy\n"
    assert list(a.ends) == [10, 16, 32] and list(a.copies) == [0, 1, 2] and list(b.copies) == [0]
    assert list(a.ids) == [int(_finding("a", n, "1", "").id[:16], 16) for n in "xyx"]
    records = [a.records[j * META_BYTES : (j + 1) * META_BYTES] for j in range(3)]
    assert [r[:COPY_BYTES] for r in records] == [copy_tag(11, 0), copy_tag(12, 0), copy_tag(11, 0)]
    assert records[1][COPY_BYTES:] == finding_mark(_finding("a", "y", "1", "y"))
