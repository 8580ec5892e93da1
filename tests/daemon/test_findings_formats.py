"""`/findings.json?format=`: the daemon's open findings as SARIF (valid against the OASIS schema), JUnit, CSV and
NDJSON, filters applied, an unknown format refused."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jsonschema
from junitparser import Failure, JUnitXml

from auditor.cycle import Auditor
from auditor.daemon import Daemon, respond
from auditor.http_server import CLIENT_HEADER
from auditor.scan import run_scan
from auditor.settings import load_settings
from auditor.state import Store
from tests.conftest import DATA
from tests.daemon.support import example_org, write_config

LOCAL = {CLIENT_HEADER: "127.0.0.1"}  # the report answers this host without a token


def test_findings_in_every_report_format(tmp_path: Path) -> None:
    example_org(tmp_path)
    settings = load_settings(write_config(tmp_path / "config.yaml"))
    auditor = Auditor(settings, Store(settings.state_path))
    auditor.run_cycle()
    daemon = Daemon(settings, auditor)
    try:
        plain = json.loads(respond(daemon, "GET", "/findings.json", LOCAL).body)
        open_ids = [f["id"] for f in plain["findings"]]
        assert open_ids
        # Each finding says where its asset sits, as the scan of the same sources does.
        scanned = run_scan(list(settings.sources), auditor.rules, settings.sources_options())
        where = {f.id: (f.project, f.ancestry) for f in scanned.findings}
        assert {f["id"]: (f["project"], f["ancestry"]) for f in plain["findings"]} == {i: where[i] for i in open_ids}
        assert any(f["ancestry"].startswith("organizations/") for f in plain["findings"])

        sarif = respond(daemon, "GET", "/findings.json?format=sarif", LOCAL)
        assert sarif.status == 200 and sarif.content_type == "application/sarif+json"
        doc = json.loads(sarif.body)
        jsonschema.validate(doc, json.loads((DATA / "specs" / "sarif-schema-2.1.0.json").read_text()))
        results = doc["runs"][0]["results"]
        assert sorted(r["partialFingerprints"]["findingId/v1"] for r in results) == sorted(open_ids)

        critical = respond(daemon, "GET", "/findings.json?format=ndjson&severity=critical", LOCAL)
        lines = [json.loads(line) for line in critical.body.splitlines()]
        assert lines and {f["severity"] for f in lines} == {"critical"}
        assert all(f["rationale"] and "remedy" in f for f in lines)

        body = respond(daemon, "GET", "/findings.json?format=csv", LOCAL).body
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert sorted(r["id"] for r in rows) == sorted(open_ids)
        assert {r["id"]: (r["project"] or None, r["ancestry"]) for r in rows} == {i: where[i] for i in open_ids}

        junit = JUnitXml.fromstring(respond(daemon, "GET", "/findings.json?format=junit", LOCAL).body.decode())
        failures = sum(1 for suite in junit for case in suite for r in case.result if isinstance(r, Failure))
        assert failures == sum(1 for f in plain["findings"] if not f["exempted"])

        bad = respond(daemon, "GET", "/findings.json?format=pdf", LOCAL)
        assert bad.status == 400 and b"unknown format pdf" in bad.body
    finally:
        auditor.store.close()
