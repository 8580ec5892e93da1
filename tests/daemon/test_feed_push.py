"""POST /v1/cai-feed: Pub/Sub push envelopes of Cloud Asset Inventory feed messages, authenticated by the OIDC token
Pub/Sub sends (verified with google-auth against certificates the test serves from its own keys), ordered by
window.startTime (redeliveries and older states change nothing)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from auditor.collect.cai_feed import PushAuth, parse_push, time_key
from auditor.cycle import Auditor
from auditor.daemon import Daemon
from auditor.settings import load_settings
from auditor.state import Store
from tests.daemon.support import example_org, write_config

AUDIENCE = "https://auditor.example.com/v1/cai-feed"
PUSHER = "pubsub-push@sec-tools.iam.gserviceaccount.com"
BUCKET = "//storage.googleapis.com/ml-training-data"


class Keys:
    """An RSA key and its self-signed certificate, as Google publishes its token signing keys (kid -> PEM)."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-signer")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=1)).sign(self.key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        self.signer = crypt.RSASigner.from_string(pem, key_id=kid)

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "iat": now, "exp": now + 3600,
                   "email": PUSHER, "email_verified": True, "sub": "1234567890", **claims}
        return jwt.encode(self.signer, payload).decode()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys("key-1")


@pytest.fixture
def certs_url(keys: Keys) -> Iterator[str]:
    doc = json.dumps({keys.kid: keys.cert_pem}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            self.wfile.write(doc)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/oauth2/v1/certs"
    finally:
        server.shutdown()
        server.server_close()


def envelope(start: str, *, deleted: bool = False, members: list[str] | None = None, message_id: str = "1") -> bytes:
    asset: dict[str, Any] = {"name": BUCKET, "assetType": "storage.googleapis.com/Bucket",
                             "ancestors": ["projects/401000000001", "organizations/583920174615"],
                             "updateTime": start}
    if not deleted:
        asset["iamPolicy"] = {"bindings": [{"role": "roles/storage.objectViewer", "members": members or ["allUsers"]}],
                              "etag": "BwYAAAAAAAE="}
    temporal = {"window": {"startTime": start}, "deleted": deleted, "asset": asset, "priorAssetState": "PRESENT"}
    data = base64.b64encode(json.dumps(temporal).encode()).decode()
    return json.dumps({"message": {"data": data, "messageId": message_id, "publishTime": start,
                                   "attributes": {}},
                       "subscription": "projects/sec-tools/subscriptions/cai-push"}).encode()


def post(url: str, body: bytes, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def metric(d: Daemon, outcome: str) -> float:
    # read from the daemon's registry: /metrics caches its page for a second
    value = d.registry.get_sample_value("auditor_feed_messages_total", {"outcome": outcome})
    assert value is not None, f"no auditor_feed_messages_total for {outcome}"
    return value


def exported(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return resp.read().decode()


@pytest.fixture
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, str]]:
    example_org(tmp_path)
    feed = getattr(request, "param", {})
    settings = load_settings(write_config(tmp_path / "config.yaml", feed=feed))
    with Store(settings.state_path) as store:
        d = Daemon(settings, Auditor(settings, store))
        host, port = d.start_http()
        try:
            yield d, f"http://{host}:{port}"
        finally:
            assert d.server is not None
            d.server.shutdown()


def _with_audience(certs_url: str) -> dict[str, Any]:
    return {"audience": AUDIENCE, "service_account": PUSHER, "certs_url": certs_url}


def test_valid_and_invalid_tokens(tmp_path: Path, keys: Keys, certs_url: str) -> None:
    example_org(tmp_path)
    settings = load_settings(write_config(tmp_path / "config.yaml", feed=_with_audience(certs_url)))
    with Store(settings.state_path) as store:
        d = Daemon(settings, Auditor(settings, store))
        host, port = d.start_http()
        base = f"http://{host}:{port}"
        url = base + "/v1/cai-feed"
        try:
            assert post(url, envelope("2026-12-07T02:00:00.100Z"), keys.token())[0] == 204
            [change] = list(d.auditor.feed_changes)
            assert change.asset.name == BUCKET and change.content == "iam_policy" and not change.deleted
            assert change.asset.iam_policy["bindings"][0]["members"] == ["allUsers"]

            other = Keys("key-1")  # same key id, another key: the signature does not verify
            refused = [
                post(url, envelope("2026-12-07T02:00:01Z"))[0],  # no token
                post(url, envelope("2026-12-07T02:00:01Z"), other.token())[0],
                post(url, envelope("2026-12-07T02:00:01Z"), keys.token(aud="https://elsewhere.example.com"))[0],
                post(url, envelope("2026-12-07T02:00:01Z"), keys.token(exp=int(time.time()) - 600,
                                                                        iat=int(time.time()) - 4200))[0],
                post(url, envelope("2026-12-07T02:00:01Z"), keys.token(iss="https://evil.example.com"))[0],
            ]
            assert refused == [401, 401, 401, 401, 401]
            assert post(url, envelope("2026-12-07T02:00:01Z"), keys.token(email="x@evil.example.com"))[0] == 403
            assert len(d.auditor.feed_changes) == 1  # nothing refused was handed on
            assert metric(d, "unauthorized") == 6 and metric(d, "accepted") == 1
            assert post(url, b'{"message": {"data": "not base64!"}}', keys.token())[0] == 400
            assert metric(d, "invalid") == 1
            assert 'auditor_feed_messages_total{outcome="accepted"}' in exported(base)
            assert "auditor_feed_lag_seconds" in exported(base)
        finally:
            assert d.server is not None
            d.server.shutdown()


def test_redelivery_and_out_of_order_change_nothing(daemon: tuple[Daemon, str]) -> None:
    d, base = daemon  # no audience configured: the test, on loopback, may push without a token
    url = base + "/v1/cai-feed"
    assert post(url, envelope("2026-12-07T02:00:05.5Z", message_id="a"))[0] == 204
    assert post(url, envelope("2026-12-07T02:00:05.500Z", message_id="a"))[0] == 204  # redelivered
    assert post(url, envelope("2026-12-07T02:00:04Z", members=["user:old@example.com"], message_id="b"))[0] == 204
    assert post(url, envelope("2026-12-07T02:00:09Z", deleted=True, message_id="c"))[0] == 204
    changes = list(d.auditor.feed_changes)
    assert [(c.message_id, c.deleted) for c in changes] == [("a", False), ("c", True)]
    assert (metric(d, "accepted"), metric(d, "redelivery"), metric(d, "out_of_order")) == (2, 1, 1)


def test_no_audience_accepts_loopback_callers_only() -> None:
    auth = PushAuth(None)
    assert auth.check({}, "127.0.0.1") is None and auth.check({}, "::1") is None
    from auditor.collect.cai_feed import Unauthorized

    for client in ("10.20.30.40", "203.0.113.9", ""):
        with pytest.raises(Unauthorized):
            auth.check({"authorization": "Bearer whatever"}, client)


def test_certificates_are_read_once_and_again_for_an_unknown_key(keys: Keys) -> None:
    fetched: list[str] = []
    current = {keys.kid: keys.cert_pem}
    clock = [1000.0]

    def fetch(url: str) -> tuple[dict[str, str], float]:
        fetched.append(url)
        return dict(current), 3600.0

    auth = PushAuth(AUDIENCE, certs_url="http://certs.invalid/", fetch=fetch, clock=lambda: clock[0])
    for _ in range(3):
        assert auth.check({"authorization": f"Bearer {keys.token()}"}, "198.51.100.1") is not None
    assert len(fetched) == 1
    rotated = Keys("key-2")
    current[rotated.kid] = rotated.cert_pem
    clock[0] += 60  # past the 30 s between refreshes for unknown keys
    assert auth.check({"authorization": f"Bearer {rotated.token()}"}, "198.51.100.1") is not None
    assert len(fetched) == 2


def test_envelope_parsing_and_time_keys() -> None:
    change = parse_push(envelope("2026-12-07T02:00:05.123456789Z", deleted=True))
    assert change.deleted and change.asset.asset_type == "storage.googleapis.com/Bucket"
    assert change.window_start == "2026-12-07T02:00:05.123456789"
    assert time_key("2026-12-07T02:00:05Z") < time_key("2026-12-07T02:00:05.000000001Z")
