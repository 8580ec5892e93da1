"""JSON and NDJSON reports write each finding as its record followed by its rule's facts, the rule's part added only
as the report is written: checked against that line encoded whole (the reference), for findings of any text
(newlines, braces, quotes, controls, non-ASCII), exempted or not, of rules the report lists or not, spilled to the
temporary file or held, some taken back."""

from __future__ import annotations

import io
import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.evaluate.rulebook import load_rules
from auditor.model import Exempted, Finding, Mode, Severity
from auditor.report.formats import Document, StreamedReport
from auditor.report.records import ExemptionRecord, FindingRecord, RuleFacts
from auditor.report.spool import Tally

RULES = load_rules(None)[:4]
FACTS = {r.id: RuleFacts.of(r) for r in RULES}

text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["}", "}\n", '"}', "\n", "\\", ""])
exemption = st.builds(Exempted, text, text, st.none() | text, st.none() | text)


@st.composite
def findings(draw: st.DrawFn) -> Finding:
    rule = draw(st.sampled_from([*FACTS, "not-a-listed-rule"]))
    ancestors = draw(st.lists(st.sampled_from(["projects/1", "folders/2", "organizations/3", "projects/4"]),
                              max_size=3).map(tuple))
    exempted = draw(st.none() | exemption)
    return Finding(
        id=draw(st.text("0123456789abcdef", min_size=20, max_size=20)),
        rule=rule,
        check=draw(text),
        severity=draw(st.sampled_from(Severity)),
        mode=draw(st.sampled_from(Mode)),
        asset=draw(text),
        asset_type=draw(text),
        message=draw(text),
        details=draw(st.dictionaries(text, text | st.integers() | st.lists(text, max_size=2), max_size=3)),
        exempted=exempted,
        expired_exemption=None if exempted else draw(st.none() | exemption),
        ancestors=ancestors,
    )


def reference_record(f: Finding) -> FindingRecord:
    """The record field by field, as the report's schema names them (the renderer builds it by position)."""

    def exemption(e: Exempted | None) -> ExemptionRecord | None:
        if e is None:
            return None
        return ExemptionRecord(reason=e.reason, owner=e.owner, ticket=e.ticket, expires=e.expires)

    return FindingRecord(
        id=f.id,
        rule=f.rule,
        check=f.check,
        severity=f.severity.value,
        mode=f.mode.value,
        asset=f.asset,
        asset_type=f.asset_type,
        project=f.project,
        ancestry=f.ancestry,
        message=f.message,
        details=f.details,
        exempted=f.exempted is not None,
        exemption=exemption(f.exempted),
        expired_exemption=exemption(f.expired_exemption),
    )


def reference_line(f: Finding) -> bytes:
    r = FACTS.get(f.rule)
    facts: dict[str, Any] = (
        {"rationale": r.rationale, "remedy": r.remedy, "labels": r.labels}
        if r is not None
        else {"rationale": "", "remedy": None, "labels": {}}
    )
    return msgspec.json.encode(reference_record(f))[:-1] + b"," + msgspec.json.encode(facts)[1:]


def written(fmt: str, fs: list[Finding], budget: int, drop: set[int]) -> bytes:
    report = StreamedReport(fmt, RULES, budget)
    for i, f in enumerate(fs):
        report.add(f, i.to_bytes(12, "big"))  # each its own copy, to take some back by it
    gone = {i.to_bytes(12, "big") for i in drop}
    report.drop(report.find(lambda meta: meta[:12] in gone))
    doc = Document({"version": 1}, {}, "", [], [], [], report.facts, Tally(), report.spool)
    out = io.BytesIO()
    try:
        report.renderer.write(out, doc)
    finally:
        report.spool.close()
    return out.getvalue()


@settings(max_examples=150, deadline=None)
@given(st.lists(findings(), max_size=25), st.sampled_from([64, 300, 1 << 20]), st.sets(st.integers(0, 24)))
def test_lines_are_the_record_and_the_rule_facts(fs: list[Finding], budget: int, drop: set[int]) -> None:
    order = {r.id: i for i, r in enumerate(StreamedReport("json", RULES).facts)}
    kept = [f for i, f in enumerate(fs) if i not in drop]
    # the report's order: listed rules in report order, then the others; in the order found within a rule
    expected = sorted(kept, key=lambda f: order.get(f.rule, len(order)))
    lines = [reference_line(f) for f in expected]
    assert written("ndjson", fs, budget, drop) == b"".join(line + b"\n" for line in lines)
    body = written("json", fs, budget, drop)
    assert body == b'{"version":1,"summary":{},"findings":[\n' + b",\n".join(lines) + b"\n]}\n"
    assert [json.dumps(f, sort_keys=True) for f in json.loads(body)["findings"]] == [
        json.dumps(json.loads(line), sort_keys=True) for line in lines
    ]
