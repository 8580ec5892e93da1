"""Report formats written as findings stream: JSON, NDJSON, CSV, SARIF 2.1.0, JUnit XML and Markdown.

Each format is a `Renderer` registered under its name in `renderers` (the plugin registry type of
auditor/plugins.py). It encodes every finding once, as the engine makes it,
into the bytes it will write (`line`); the findings wait in a `Spool` grouped by rule, and once the scan is over
`write` puts out the header (the summary is known by then), the groups in report order (worst severity first,
then rule id; findings of a rule in the order they were found) and the footer. Memory does not grow with the
number of findings: only the spool's budget, the rules and the counts are held.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar
from xml.sax.saxutils import escape, quoteattr

import msgspec

from auditor import __version__
from auditor.model import SEVERITIES, Exempted, Finding, Mode, Severity, place_of
from auditor.plugins import Registry
from auditor.report.escape import md_code, md_text
from auditor.report.records import RuleFacts, finding_record, report_order
from auditor.report.spool import META_BYTES, NO_COPY, Spool, Spot, Tally, finding_mark

if TYPE_CHECKING:
    from auditor.evaluate.engine import EvaluationError
    from auditor.evaluate.rulebook import LoadedRule
    from auditor.scan import ScanResult

_enc = msgspec.json.Encoder()
INFORMATION_URI = "https://github.com/drift-auditor/drift-auditor"


@dataclass
class Document:
    """What a renderer writes besides the findings: the scan's facts, the counts, and where the findings wait."""

    head: dict[str, Any]  # version, tool_version, scanned_at, complete, sources
    summary: dict[str, Any]
    summary_line: str
    partial: list[str]  # why the result is not whole (types not read, rules not evaluated, errors); empty if whole
    errors: list[EvaluationError]
    stale_exemptions: list[dict[str, Any]]
    rules: list[RuleFacts]
    tally: Tally
    spool: Spool
    tail: dict[str, Any] = field(default_factory=dict)  # what the JSON report holds after its findings

    @property
    def complete(self) -> bool:
        return not self.partial and bool(self.head.get("complete", True))


class Renderer:
    """One report format. Subclasses set `name`, `media_type` and `suffix` and implement `line` and `write`."""

    name: ClassVar[str]
    media_type: ClassVar[str]
    suffix: ClassVar[str]

    def __init__(self, rules: list[RuleFacts]) -> None:
        self.rules = rules
        self.by_id = {r.id: r for r in rules}

    def key(self, f: Finding) -> str:
        """The group a finding waits in until it is written: its rule (a format may add a qualifier after a NUL)."""
        return f.rule

    def line(self, f: Finding) -> bytes:
        raise NotImplementedError

    def line_into(self, f: Finding, buf: bytearray) -> None:
        """Append the finding's line (`line`) to `buf`."""
        buf += self.line(f)

    def write(self, out: BinaryIO, doc: Document) -> None:
        raise NotImplementedError

    def groups(self, doc: Document) -> Iterator[tuple[RuleFacts | None, str]]:
        """(rule, group key) in report order, then groups of rules the report does not list (none, normally)."""
        for r in doc.rules:
            yield r, r.id
        for key in doc.spool.groups():
            if key not in self.by_id and "\x00" not in key:
                yield None, key


renderers: Registry[type[Renderer]] = Registry("report format")


def renderer(cls: type[Renderer]) -> type[Renderer]:
    """Register a format under its `name`."""
    return renderers.add(cls.name, cls)


def format_names() -> list[str]:
    return renderers.names()


def _joined(doc: Document, keys: Iterator[str], sep: bytes) -> Iterator[bytes]:
    """The lines of the groups, newline-ended, as one sequence separated by `sep` (JSON arrays)."""
    first = True
    for key in keys:
        for chunk in doc.spool.chunks(key):
            body = chunk[:-1].replace(b"\n", sep)
            yield body if first else sep + body
            first = False


# -- JSON and NDJSON ----------------------------------------------------------------------------------------------
@renderer
class JsonRenderer(Renderer):
    """The report as one JSON document (schema: auditor/report/schemas/scan-report.schema.json).

    A finding's line in the spool is its own record only (`line`); the part every finding of its rule shares
    (rationale, remedy, labels: about 40% of a line) is added to each line as the group is written (`_tail`), not
    encoded, spooled and read back once per finding."""

    name = "json"
    media_type = "application/json"
    suffix = ".json"

    def __init__(self, rules: list[RuleFacts]) -> None:
        super().__init__(rules)
        self._tails = {r.id: self._tail(r) for r in rules}
        self._scratch = bytearray()

    @staticmethod
    def _tail(r: RuleFacts | None) -> bytes:
        """The rule's part of each of its findings, encoded once: `,"rationale":..,"remedy":..,"labels":..}`."""
        facts: dict[str, Any] = (
            {"rationale": r.rationale, "remedy": r.remedy, "labels": r.labels}
            if r is not None
            else {"rationale": "", "remedy": None, "labels": {}}
        )
        return b"," + _enc.encode(facts)[1:]

    def tail(self, key: str) -> bytes:
        """The rule's part of the lines of a group (that of no rule for a group of a rule the report does not
        list)."""
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = self._tail(None)
        return tail

    def line(self, f: Finding) -> bytes:
        buf = bytearray()
        self.line_into(f, buf)
        return bytes(buf)

    def line_into(self, f: Finding, buf: bytearray) -> None:
        """The finding's record, its closing `}` replaced by a newline: the line as written but for the rule's part
        (`tail`), which closes it when it is written. A JSON text holds no raw newline: one ends each line."""
        record = finding_record(f, *place_of(f.ancestors))
        # Encoded into a buffer of its own, then copied: encoding straight into `buf` grew it by half each time it
        # had to grow, not by an eighth, and held the spool's memory half as large again.
        scratch = self._scratch
        _enc.encode_into(record, scratch)
        scratch[-1] = 10
        buf += scratch

    def lines(self, doc: Document, key: str, sep: bytes) -> Iterator[bytes]:
        """A group's lines as written, each with its rule's part and followed by `sep`, a piece at a time."""
        joint = self.tail(key) + sep
        for chunk in doc.spool.chunks(key):
            yield chunk.replace(b"\n", joint)

    def write(self, out: BinaryIO, doc: Document) -> None:
        head = _enc.encode({**doc.head, "summary": doc.summary})
        out.write(head[:-1] + b',"findings":[\n')
        first = True
        for _, key in self.groups(doc):
            for piece in self.lines(doc, key, b",\n"):
                if not first:
                    out.write(b",\n")
                out.write(memoryview(piece)[:-2])  # but the separator after its last line (not copied)
                first = False
        out.write(b"\n]")
        for key, value in doc.tail.items():
            out.write(b"," + _enc.encode(key) + b":" + _enc.encode(value))
        out.write(b"}\n")


@renderer
class NdjsonRenderer(JsonRenderer):
    """One finding per line, as in the JSON report (nothing else: the summary goes to stderr)."""

    name = "ndjson"
    media_type = "application/x-ndjson"
    suffix = ".ndjson"

    def write(self, out: BinaryIO, doc: Document) -> None:
        for _, key in self.groups(doc):
            for piece in self.lines(doc, key, b"\n"):
                out.write(piece)


# -- CSV ----------------------------------------------------------------------------------------------------------
CSV_COLUMNS = (
    "id", "rule", "severity", "mode", "check", "asset", "asset_type", "project", "ancestry", "message", "exempted",
    "exemption_reason", "exemption_owner", "exemption_ticket", "exemption_expires", "remediation", "details",
)  # fmt: skip


@renderer
class CsvRenderer(Renderer):
    """One row per finding (RFC 4180, a header row); `details` is the JSON object of the finding's details."""

    name = "csv"
    media_type = "text/csv"
    suffix = ".csv"

    def __init__(self, rules: list[RuleFacts]) -> None:
        super().__init__(rules)
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf)

    def line(self, f: Finding) -> bytes:
        e = f.exempted
        r = self.by_id.get(f.rule)
        self._csv.writerow((
            f.id, f.rule, f.severity.value, f.mode.value, f.check, f.asset, f.asset_type, f.project or "",
            f.ancestry, f.message, "true" if e is not None else "false",
            e.reason if e else "", e.owner if e else "", (e.ticket or "") if e else "", (e.expires or "") if e else "",
            (r.remedy.kind or "") if r else "", _enc.encode(f.details).decode(),
        ))  # fmt: skip
        text = self._buf.getvalue()
        self._buf.seek(0)
        self._buf.truncate()
        return text.encode()

    def write(self, out: BinaryIO, doc: Document) -> None:
        out.write((",".join(CSV_COLUMNS) + "\r\n").encode())
        for _, key in self.groups(doc):
            for chunk in doc.spool.chunks(key):
                out.write(chunk)


# -- SARIF 2.1.0 --------------------------------------------------------------------------------------------------
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
# GitHub code scanning reads `security-severity` (0.0-10.0): over 9 critical, 7-8.9 high, 4-6.9 medium, under 4 low
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}


def _exemption_text(f: Finding) -> str:
    e = f.exempted
    assert e is not None
    return f"{e.reason} (owner {e.owner}; ticket {e.ticket or '-'}; until {e.expires or 'no expiry'})"


@renderer
class SarifRenderer(Renderer):
    """SARIF 2.1.0: one run, one reporting descriptor per rule, one result per finding, the asset as a logical
    location, the finding id as its partial fingerprint; exempted findings carry an accepted suppression."""

    name = "sarif"
    media_type = "application/sarif+json"
    suffix = ".sarif"

    def __init__(self, rules: list[RuleFacts]) -> None:
        super().__init__(rules)
        self.index = {r.id: i for i, r in enumerate(rules)}

    @staticmethod
    def descriptor(r: RuleFacts) -> dict[str, Any]:
        props: dict[str, Any] = {
            "security-severity": SECURITY_SEVERITY[r.severity],
            "severity": r.severity,
            "tags": ["security", r.check.split(".", 1)[0], *(f"{k}:{v}" for k, v in sorted(r.labels.items()))],
            "check": r.check,
            "mode": r.mode,
        }
        if r.remedy.kind:
            props["remediation"] = r.remedy.kind
        if r.labels:
            props["labels"] = r.labels
        return {
            "id": r.id,
            "name": r.id,
            "shortDescription": {"text": r.title},
            "fullDescription": {"text": r.rationale or r.title},
            "help": {"text": r.remedy.text},
            "defaultConfiguration": {"level": SARIF_LEVEL[r.severity]},
            "properties": props,
        }

    def line(self, f: Finding) -> bytes:
        result: dict[str, Any] = {
            "ruleId": f.rule,
            "level": SARIF_LEVEL[f.severity.value],
            "kind": "fail",
            "message": {"text": f.message},
            "locations": [
                {
                    "logicalLocations": [
                        {"name": f.asset.rsplit("/", 1)[-1], "fullyQualifiedName": f.asset, "kind": "resource"}
                    ]
                }
            ],
            "partialFingerprints": {"findingId/v1": f.id},
            "properties": {
                "severity": f.severity.value,
                "asset_type": f.asset_type,
                "project": f.project,
                "ancestry": f.ancestry,
                "details": f.details,
            },
        }
        index = self.index.get(f.rule)
        if index is not None:
            result["ruleIndex"] = index
        if f.exempted is not None:
            result["suppressions"] = [{"kind": "external", "status": "accepted", "justification": _exemption_text(f)}]
        return _enc.encode(result) + b"\n"

    def write(self, out: BinaryIO, doc: Document) -> None:
        notes = [
            {"level": "error", "message": {"text": f"rule {e.rule} could not be evaluated on {e.asset}: {e.error}"},
             "descriptor": {"id": e.rule}}
            for e in doc.errors
        ] + [
            {"level": "error", "message": {"text": f"partial result: {reason}"}}
            for reason in doc.partial
        ]  # fmt: skip
        run_head = {
            "tool": {
                "driver": {
                    "name": "drift-auditor",
                    "version": str(doc.head.get("tool_version") or __version__),
                    "informationUri": INFORMATION_URI,
                    "rules": [self.descriptor(r) for r in self.rules],
                }
            },
            "invocations": [
                {
                    "executionSuccessful": doc.complete and not doc.errors,
                    "startTimeUtc": doc.head.get("scanned_at"),
                    "toolExecutionNotifications": notes,
                }
            ],
            "properties": {"summary": doc.summary},
        }
        out.write(b'{"$schema":"' + SARIF_SCHEMA.encode() + b'","version":"2.1.0","runs":[')
        out.write(_enc.encode(run_head)[:-1] + b',"results":[\n')
        for piece in _joined(doc, (k for _, k in self.groups(doc)), b",\n"):
            out.write(piece)
        out.write(b"\n]}]}\n")


# -- JUnit XML ----------------------------------------------------------------------------------------------------
def _xml_text(text: str) -> str:
    return escape(text).replace("\n", "&#10;")


def _attr(text: str) -> str:
    return quoteattr(text).replace("\n", "&#10;")


@renderer
class JunitRenderer(Renderer):
    """JUnit XML: a test case per rule, a failure per open finding, an error per asset the rule could not be
    evaluated on, exempted findings in the case's output; a partial snapshot is an erroring `snapshot` case."""

    name = "junit"
    media_type = "application/xml"
    suffix = ".xml"

    def key(self, f: Finding) -> str:
        return f.rule if f.exempted is None else f"{f.rule}\x00exempted"

    def line(self, f: Finding) -> bytes:
        if f.exempted is not None:
            text = f"exempted {f.id} {f.asset}: {f.message} [{_exemption_text(f)}]"
            return f"<system-out>{_xml_text(text)}</system-out>\n".encode()
        message = f"{f.asset}: {f.message}"
        body = f"id {f.id}&#10;asset {f.asset}&#10;{_xml_text(f.message)}"
        if f.project:
            body += f"&#10;project {_xml_text(f.project)}"
        return f"<failure type={_attr(f.severity.value)} message={_attr(message)}>{body}</failure>\n".encode()

    def write(self, out: BinaryIO, doc: Document) -> None:
        errors: dict[str, list[EvaluationError]] = defaultdict(list)
        for e in doc.errors:
            errors[e.rule].append(e)
        failed = sum(1 for r in self.rules if doc.tally.open_by_rule.get(r.id))
        erring = sum(1 for r in self.rules if r.id in errors) + (0 if doc.complete else 1)
        tests = len(self.rules) + (0 if doc.complete else 1)
        counts = f'tests="{tests}" failures="{failed}" errors="{erring}" skipped="0"'
        out.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write(f'<testsuites name="drift-auditor" {counts}>\n'.encode())
        stamp = str(doc.head.get("scanned_at") or "").removesuffix("Z")
        out.write(f'<testsuite name="drift-auditor baseline" {counts} timestamp={_attr(stamp)}>\n'.encode())
        if not doc.complete:
            reasons = "&#10;".join(_xml_text(why) for why in doc.partial) or "the result is partial"
            out.write(b'<testcase classname="drift-auditor" name="snapshot">'
                      + f'<error type="partial" message="the snapshot is partial">{reasons}</error>'.encode()
                      + b"</testcase>\n")  # fmt: skip
        for r, key in self.groups(doc):
            check = r.check if r else "unknown"
            origin = f" file={_attr(r.origin.rsplit(':', 1)[0])}" if r else ""
            out.write(f"<testcase classname={_attr(check)} name={_attr(key)}{origin}>\n".encode())
            for e in errors.get(key, ()):
                out.write(f"<error type=\"evaluation\" message={_attr(f'{e.asset}: {e.error}')}/>\n".encode())
            for chunk in doc.spool.chunks(key):
                out.write(chunk)
            for chunk in doc.spool.chunks(f"{key}\x00exempted"):
                out.write(chunk)
            out.write(b"</testcase>\n")
        out.write(b"</testsuite>\n</testsuites>\n")


# -- Markdown -----------------------------------------------------------------------------------------------------
def _short(name: str) -> str:
    return name.removeprefix("//")


@renderer
class MarkdownRenderer(Renderer):
    """A readable report: findings by severity, then rule (with its description and rationale), as tables."""

    name = "markdown"
    media_type = "text/markdown"
    suffix = ".md"

    def line(self, f: Finding) -> bytes:
        status = "open"
        if f.exempted is not None:
            e = f.exempted
            status = f"exempted ({e.reason}, {e.owner}, until {e.expires or '-'})"
        elif f.expired_exemption is not None:
            status = f"open: exemption expired {f.expired_exemption.expires}"
        # Names and messages come from the organization: escaped (no HTML, links or cell breaks get through).
        return f"| {md_code(_short(f.asset))} | {md_text(f.message)} | {md_text(status)} |\n".encode()

    def write(self, out: BinaryIO, doc: Document) -> None:
        w: Callable[[str], Any] = lambda s: out.write(s.encode())  # noqa: E731
        stamp = str(doc.head.get("scanned_at") or "")[:16].replace("T", " ")
        w(f"# Baseline audit, {stamp} UTC\n\n{md_text(doc.summary_line)}\n\n")
        if not doc.complete:
            w("> **The result is partial.** Findings may be missing:\n>\n")
            w("".join(f"> - {md_text(r)}\n" for r in doc.partial) + "\n")
        for sev in reversed(SEVERITIES):
            rules = [r for r in self.rules if r.severity == sev and doc.tally.count(r.id)]
            if not rules:
                continue
            w(f"## {sev.capitalize()} ({sum(doc.tally.count(r.id) for r in rules)})\n\n")
            for r in rules:
                w(f"### `{r.id}`: {r.title}\n\n")
                if r.rationale:
                    w(f"*Why:* {r.rationale}\n\n")
                w(f"*Remedy:* {r.remedy.text}\n\n| asset | finding | status |\n| --- | --- | --- |\n")
                for chunk in doc.spool.chunks(r.id):
                    out.write(chunk)
                w("\n")
        if doc.stale_exemptions:
            w("## Stale exemptions (matched nothing)\n\n")
            w("".join(f"- {md_code(e['rule'], False)}: {md_code(e['resource'], False)} "
                      f"({md_text(e['owner'])}, {md_text(e['ticket'] or 'no ticket')})\n"
                      for e in doc.stale_exemptions) + "\n")  # fmt: skip


# -- the report of one scan -----------------------------------------------------------------------------------------
class StreamedReport:
    """A report in the making: `add` each finding as it is found (the scan's sink), then `write` once.

    Holds the encoded findings (spooled), never the findings themselves; the counts are the scan's
    (`ScanResult.counts`). A FindingSink (auditor/report/spool.py): the findings of an asset copy that a later copy
    replaced are taken back before the report is written."""

    def __init__(self, fmt: str, rules: list[LoadedRule], budget: int | None = None) -> None:
        cls = renderers.get(fmt)
        if cls is None:
            raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(renderers)}")
        self.facts = report_order(rules)
        self.renderer = cls(self.facts)
        self.spool = Spool(meta_size=META_BYTES) if budget is None else Spool(budget, META_BYTES)

    def add(self, f: Finding, copy: bytes = NO_COPY) -> None:
        lines, records = self.spool.group(self.renderer.key(f))
        size = len(lines)
        self.renderer.line_into(f, lines)
        records += copy
        records += finding_mark(f)
        self.spool.added(len(lines) - size + META_BYTES)

    def encoding(self) -> tuple[type[Renderer], list[RuleFacts]]:
        """What a worker process needs to encode findings as `add` does (see spool.EncodingSink)."""
        return type(self.renderer), self.facts

    def add_line(self, group: str, line: bytes, meta: bytes) -> None:
        """Findings a worker process encoded: their group (`Renderer.key`), their lines (`Renderer.line`) one after
        the other and their records."""
        self.spool.add(group, line, meta)

    def find(self, match: Callable[[bytes], bool]) -> list[Spot]:
        return self.spool.find(match)

    def drop(self, spots: Iterable[Spot]) -> None:
        self.spool.drop(spots)

    def document(self, result: ScanResult) -> Document:
        from auditor.report.render import summary_line

        full = result.to_dict(findings=False)
        head = {k: full[k] for k in ("version", "tool_version", "scanned_at", "complete", "sources")}
        return Document(
            head=head,
            summary=full["summary"],
            summary_line=summary_line(result),
            partial=[] if result.complete else (result.partial_reasons() or ["the result is partial"]),
            errors=list(result.evaluation.errors),
            stale_exemptions=result.stale_exemptions,
            rules=self.facts,
            tally=result.counts(),
            spool=self.spool,
            tail={k: v for k, v in full.items() if k not in head and k != "summary"},
        )

    def write(self, out: BinaryIO, result: ScanResult) -> None:
        try:
            self.renderer.write(out, self.document(result))
        finally:
            self.spool.close()


def render_bytes(fmt: str, result: ScanResult) -> bytes:
    """A whole report in memory, from a result that kept its findings (the daemon's, tests)."""
    report = StreamedReport(fmt, result.rules)
    for f in result.findings:
        report.add(f)
    buf = io.BytesIO()
    report.write(buf, result)
    return buf.getvalue()


def finding_from_json(d: dict[str, Any]) -> Finding:
    """A finding as the daemon publishes it (`/findings.json`) back into the typed form the renderers read."""
    e = d.get("exemption") if d.get("exempted") else None
    exempted = Exempted(e["reason"], e["owner"], e.get("ticket"), e.get("expires")) if isinstance(e, dict) else None
    # `organizations/1/folders/2/projects/3` back into the ancestors, from the asset upwards
    parts = str(d.get("ancestry") or "").split("/")
    ancestors = tuple(reversed(["/".join(parts[i:i + 2]) for i in range(0, len(parts) - 1, 2)]))
    if not ancestors and d.get("project"):
        ancestors = (str(d["project"]),)
    return Finding(
        id=d["id"],
        rule=d["rule"],
        check=d.get("check") or "",
        severity=Severity(d["severity"]),
        mode=Mode(d.get("mode") or "audit"),
        asset=d["asset"],
        asset_type=d["asset_type"],
        message=d["message"],
        details=d.get("details") or {},
        exempted=exempted,
        ancestors=ancestors,
    )


def render_published(fmt: str, doc: dict[str, Any], findings: list[dict[str, Any]], rules: list[LoadedRule]) -> bytes:
    """The daemon's open findings (`/findings.json?format=`) in a report format, with its last cycle as the scan."""
    from auditor.report.render import summary_text

    cls = renderers.get(fmt)
    if cls is None:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(renderers)}")
    facts = report_order(rules)
    renderer_ = cls(facts)
    spool, tally = Spool(), Tally()
    try:
        for d in findings:
            f = finding_from_json(d)
            tally.add(f)
            spool.add(renderer_.key(f), renderer_.line(f))
        cycle = doc.get("cycle") or {}
        raw = cycle.get("incomplete")
        partial = [f"{t}: {why}" for t, why in raw.items()] if isinstance(raw, dict) else []
        if cycle.get("complete") is False and not partial:
            partial = [f"last cycle {cycle.get('outcome')}: {cycle.get('error') or 'partial'}"]
        summary = {
            "assets": cycle.get("assets", 0),
            "findings": tally.open,
            "exempted": tally.exempted,
            "by_severity": tally.by_severity(),
            "rules": len(rules),
            "complete": not partial,
        }
        head = {
            "version": 1,
            "tool_version": __version__,
            "scanned_at": cycle.get("started_at") or doc.get("generated_at"),
            "complete": not partial,
            "sources": cycle.get("sources") or [],
        }
        document = Document(head, summary, summary_text(summary), partial, [], [], facts, tally, spool)
        buf = io.BytesIO()
        renderer_.write(buf, document)
        return buf.getvalue()
    finally:
        spool.close()
