"""Secure by default: with no report token, /report and /findings.json answer loopback callers only, whatever the
listen address; /metrics and the probes stay open. Callers from another address are made real: the daemon and its
client run in a network namespace of their own whose loopback device also carries 192.0.2.1 (TEST-NET-1), so a
request from that address reaches the server as a non-loopback peer without leaving the namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditor.daemon import is_loopback
from tests.conftest import REPO
from tests.daemon.support import example_org, write_config

OTHER = "192.0.2.1"

_CLIENT = textwrap.dedent(
    """
    import json, subprocess, sys, urllib.request, urllib.error, http.client
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "OTHER/32", "dev", "lo"], check=True)
    from auditor.cycle import Auditor
    from auditor.daemon import Daemon
    from auditor.settings import load_settings
    from auditor.state import Store
    settings = load_settings(sys.argv[1])
    daemon = Daemon(settings, Auditor(settings, Store(settings.state_path)))
    host, port = daemon.start_http()

    def get(source, path, token=None):
        conn = http.client.HTTPConnection("OTHER" if source != "127.0.0.1" else "127.0.0.1", port, timeout=10,
                                          source_address=(source, 0))
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return [resp.status, body]

    out = {}
    for source in ("127.0.0.1", "OTHER"):
        for path in ("/report", "/findings.json", "/metrics", "/"):
            out[f"{source} {path}"] = get(source, path)
            out[f"{source} {path} token"] = get(source, path, "s3cret-token")
    print(json.dumps(out))
    """
).replace("OTHER", OTHER)


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


def _serve_in_namespace(cfg: Path) -> dict[str, list[object]]:
    p = subprocess.run(["unshare", "-n", sys.executable, "-c", _CLIENT, str(cfg)], capture_output=True, text=True,
                       cwd=REPO, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


needs_namespaces = pytest.mark.skipif(not _namespaces_work(), reason="needs root and network namespaces")


@needs_namespaces
def test_without_a_token_only_loopback_reads_the_report(tmp_path: Path) -> None:
    example_org(tmp_path)
    out = _serve_in_namespace(write_config(tmp_path / "config.yaml", listen="0.0.0.0:0"))
    for path in ("/report", "/findings.json"):
        assert out[f"127.0.0.1 {path}"][0] == 200
        status, body = out[f"{OTHER} {path}"]
        assert status == 403 and "only this host" in str(body) and "report_token_file" in str(body)
        assert out[f"{OTHER} {path} token"][0] == 403  # a token nobody configured opens nothing
    assert out[f"{OTHER} /metrics"][0] == 200 and out[f"{OTHER} /"][0] == 200


@needs_namespaces
def test_with_a_token_other_hosts_read_the_report_with_it(tmp_path: Path) -> None:
    example_org(tmp_path)
    (tmp_path / "token").write_text("s3cret-token\n")
    out = _serve_in_namespace(write_config(tmp_path / "config.yaml", listen="0.0.0.0:0",
                                           report_token_file=str(tmp_path / "token")))
    for source in ("127.0.0.1", OTHER):
        for path in ("/report", "/findings.json"):
            assert out[f"{source} {path}"][0] == 401
            assert out[f"{source} {path} token"][0] == 200
    assert out[f"{OTHER} /metrics"][0] == 200


@pytest.mark.parametrize(
    ("client", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True), ("10.0.0.5", False),
     ("192.0.2.1", False), ("::ffff:10.1.2.3", False), ("2001:db8::1", False), ("", False), ("fe80::1%eth0", False)],
)
def test_what_counts_as_loopback(client: str, loopback: bool) -> None:
    assert is_loopback(client) is loopback
