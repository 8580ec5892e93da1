"""Stage 1, collect: Cloud Asset Inventory feed messages pushed by Pub/Sub to `POST /v1/cai-feed`.

A push is a JSON envelope: `message.data` is the base64 of a `TemporalAsset` (`asset`, `priorAsset`, `deleted`,
`window.startTime`), `message.messageId` and `message.publishTime` say which delivery it is. `parse_push` turns it
into a `FeedChange` carrying the asset as every other source gives it (auditor/collect/files.py's reader);
`parse_message` reads one message's decoded data, for pushes and pulls (auditor/collect/pubsub_pull.py) alike.

Authentication (`PushAuth`): Pub/Sub signs each push with an OIDC token of the subscription's service account
(`Authorization: Bearer JWT`). With an audience configured, the token must verify against Google's signing
certificates (or those at `certs_url`: tests serve their own), carry that audience, Google as issuer, and, when
`service_account` is set, that verified email. With no audience configured only loopback callers are accepted (a
sidecar or a test), never the network.

Ordering (`FeedOrder`): Pub/Sub delivers at least once and in any order. A change whose `window.startTime` is not
after the last one accepted for the same asset and content (resource or IAM policy) is a redelivery or an older
state: it changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from auditor.collect.files import decode_record, record_to_asset
from auditor.errors import AuditorError
from auditor.model import Asset

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]00:00)$")


class FeedMessageError(AuditorError):
    """A push that is not a readable feed message (answered 400: Pub/Sub then retries or dead-letters it)."""


class Unauthorized(AuditorError):
    """A push whose caller could not be authenticated (answered 401 or 403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def epoch(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 UTC time (microseconds kept)."""
    key = time_key(value)
    return datetime.fromisoformat(key[:26]).replace(tzinfo=UTC).timestamp()


def time_key(value: str) -> str:
    """An RFC 3339 UTC time as a string that sorts by time (nanoseconds kept): `2026-12-07T02:33:00.120000000`."""
    m = _TIME.match(value.strip())
    if m is None:
        raise FeedMessageError(f"not an RFC 3339 UTC time: {value!r}")
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}"


@dataclass(frozen=True)
class FeedChange:
    """One changed asset, as a feed (or a Kubernetes watch) reported it."""

    asset: Asset  # the new state (for a deletion: the name and type, no data)
    deleted: bool
    window_start: str  # time_key of window.startTime
    content: str  # "iam_policy" when the message carries the IAM policy, else "resource"
    message_id: str
    publish_time: str | None
    prior: Asset | None = None
    source: str = "cai-feed"  # who reported it: "cai-feed", or "k8s-watch" (auditor/collect/kube_watch.py)
    # A key that sorts with the other changes of the same asset from the same source (a Kubernetes resourceVersion
    # zero-padded); None when the source gives no order beyond window_start.
    sequence: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.asset.name, self.content)


def parse_push(body: bytes) -> FeedChange:
    """The feed change in a Pub/Sub push envelope."""
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedMessageError(f"the push body is not JSON: {exc}") from None
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("data"), str):
        raise FeedMessageError("not a Pub/Sub push envelope: no message.data")
    message_id = str(message.get("messageId") or message.get("message_id") or "")
    try:
        raw = base64.b64decode(message["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FeedMessageError(f"message {message_id}: data is not base64 JSON: {exc}") from None
    publish = message.get("publishTime") or message.get("publish_time")
    return parse_message(raw, message_id, str(publish) if publish else None)


def parse_message(data: bytes, message_id: str, publish_time: str | None) -> FeedChange:
    """The feed change in one Pub/Sub message, however it came (a push envelope, a pull): `data` is the
    TemporalAsset JSON, already base64-decoded."""
    try:
        temporal = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedMessageError(f"message {message_id}: data is not JSON: {exc}") from None
    if not isinstance(temporal, dict) or not isinstance(temporal.get("asset"), dict):
        raise FeedMessageError(f"message {message_id}: not a TemporalAsset (no asset)")
    window = temporal.get("window") or {}
    start = window.get("startTime") if isinstance(window, dict) else None
    if not isinstance(start, str):
        raise FeedMessageError(f"message {message_id}: the TemporalAsset has no window.startTime")
    origin = f"pubsub:{message_id}"
    try:
        asset = record_to_asset(decode_record(json.dumps(temporal["asset"])), origin)
        prior_raw = temporal.get("priorAsset")
        prior = record_to_asset(decode_record(json.dumps(prior_raw)), origin) if isinstance(prior_raw, dict) else None
    except Exception as exc:  # the reader's own errors name what is missing
        raise FeedMessageError(f"message {message_id}: unreadable asset: {exc}") from None
    a = temporal["asset"]
    content = "iam_policy" if ("iamPolicy" in a or "iam_policy" in a) else "resource"
    return FeedChange(asset, bool(temporal.get("deleted")), time_key(start), content, message_id, publish_time, prior)


class FeedOrder:
    """The last window start accepted per (asset, content): redeliveries and older states are refused."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def check(self, change: FeedChange) -> str | None:
        """None when the change is newer than anything recorded for its asset, else why it changes nothing."""
        with self._lock:
            last = self._seen.get(change.key)
        if last is not None and change.window_start <= last:
            return "redelivery" if change.window_start == last else "out_of_order"
        return None

    def commit(self, change: FeedChange) -> None:
        """The change was handled: it, and anything not after it, changes nothing from now on."""
        self.seen(change.key, change.window_start)

    def seen(self, key: tuple[str, str], window_start: str) -> None:
        """Record a state known from elsewhere (a cycle's snapshot): older feed messages then change nothing."""
        with self._lock:
            if window_start > self._seen.get(key, ""):
                self._seen[key] = window_start


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


Fetch = Callable[[str], tuple[Mapping[str, str], float]]  # url -> (kid -> PEM certificate, seconds to keep them)


def _fetch_certs(url: str) -> tuple[Mapping[str, str], float]:
    import requests

    resp = requests.get(url, timeout=10)
    resp.raise_for_status()
    m = re.search(r"max-age=(\d+)", resp.headers.get("cache-control", ""))
    certs = resp.json()
    if not isinstance(certs, dict):
        raise ValueError("the certificates document is not an object of kid -> certificate")
    return {str(k): str(v) for k, v in certs.items()}, float(m.group(1)) if m else 300.0


class PushAuth:
    """Who may push: OIDC tokens for `audience`, or (no audience) loopback callers only."""

    def __init__(self, audience: str | None, *, certs_url: str = GOOGLE_CERTS_URL, service_account: str | None = None,
                 fetch: Fetch = _fetch_certs, clock: Callable[[], float] = time.time) -> None:
        self.audience = audience
        self.certs_url = certs_url
        self.service_account = service_account
        self._fetch = fetch
        self._clock = clock
        self._certs: Mapping[str, str] = {}
        self._until = 0.0
        self._fetched = float("-inf")
        self._lock = threading.Lock()

    def _current_certs(self, kid: str | None) -> Mapping[str, str]:
        with self._lock:
            now = self._clock()
            # refreshed when expired, or for a key not known yet (Google rotates keys), at most every 30 s
            unknown = kid is not None and kid not in self._certs
            if now >= self._until or (unknown and now - self._fetched >= 30):
                self._fetched = now
                try:
                    certs, ttl = self._fetch(self.certs_url)
                except Exception as exc:
                    if not self._certs:
                        raise Unauthorized(f"cannot read the signing certificates at {self.certs_url}: {exc}",
                                           503) from None
                else:
                    self._certs, self._until = certs, now + max(ttl, 30.0)
            return self._certs

    def check(self, headers: Mapping[str, str], client: str) -> dict[str, Any] | None:
        """The verified token's claims (None for an accepted loopback caller without audience); raises
        Unauthorized."""
        if self.audience is None:
            if is_loopback(client):
                return None
            raise Unauthorized("no push audience is configured: only loopback callers are accepted", 403)
        from google.auth import jwt

        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("no bearer token")
        try:
            header = jwt.decode_header(token)
        except Exception:
            raise Unauthorized("the bearer token is not a JWT") from None
        certs = self._current_certs(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(token, certs=dict(certs), audience=self.audience,
                                                clock_skew_in_seconds=10)
        except Exception as exc:  # google-auth raises ValueError or MalformedError with the reason
            raise Unauthorized(f"the token does not verify: {exc}") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthorized(f"the token's issuer {claims.get('iss')!r} is not Google")
        if self.service_account is not None and (
            claims.get("email") != self.service_account or not claims.get("email_verified")
        ):
            raise Unauthorized(f"the token is not the push service account's ({self.service_account})", 403)
        return claims
