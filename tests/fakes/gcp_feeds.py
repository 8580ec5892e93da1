"""Cloud Asset Inventory feeds for the fake Google Cloud server (`tests.fakes.gcp`): what `auditor feeds ensure`
calls, as the REST API shapes them.

`POST /v1/{parent}/feeds` (body `{feedId, feed}`; 409 ALREADY_EXISTS for a taken id), `GET /v1/{parent}/feeds/{id}`
(404 when missing), `PATCH /v1/{parent}/feeds/{id}` (body `{feed, updateMask}`; only the masked fields change; 400
for an empty or unknown mask), `GET /v1/{parent}/feeds` and `DELETE`. A feed needs `assetNames` or `assetTypes` and a
Pub/Sub topic, as the real API requires. Enums arrive as numbers or names and are stored as names.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.gcp import CONTENT_TYPES, ApiError, FakeGcp, RecordedRequest

_PARENT = r"(?P<parent>(?:organizations|folders|projects)/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"^/v1/{_PARENT}/feeds$"), "create_feed"),
    ("GET", re.compile(rf"^/v1/{_PARENT}/feeds$"), "list_feeds"),
    ("GET", re.compile(rf"^/v1/{_PARENT}/feeds/(?P<feed>[^/]+)$"), "get_feed"),
    ("PATCH", re.compile(rf"^/v1/{_PARENT}/feeds/(?P<feed>[^/]+)$"), "update_feed"),
    ("DELETE", re.compile(rf"^/v1/{_PARENT}/feeds/(?P<feed>[^/]+)$"), "delete_feed"),
]
_MASKABLE = {"assetNames", "assetTypes", "contentType", "feedOutputConfig", "condition", "relationshipTypes"}


def _camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class FakeGcpFeeds(FakeGcp):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feeds: dict[str, dict[str, Any]] = {}

    def handle(self, req: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        for method, pattern, action in _ROUTES:
            m = pattern.match(req.path) if method == req.method else None
            if m is None:
                continue
            with self._lock:
                self.requests.append(req)
            fault = self._fault_for(req)
            try:
                if fault is not None and fault.status is not None:
                    raise fault.error(req)
                fn: Callable[..., Any] = getattr(self, "_" + action)
                return 200, fn(req, **m.groupdict()), {}
            except ApiError as err:
                return err.code, err.body(), err.headers
        return super().handle(req)

    @staticmethod
    def _normalise(feed: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(feed)
        if "contentType" in out:
            out["contentType"] = CONTENT_TYPES.get(str(out["contentType"]), str(out["contentType"]))
        return out

    @staticmethod
    def _validate(feed: dict[str, Any]) -> None:
        if not feed.get("assetNames") and not feed.get("assetTypes"):
            raise ApiError(400, "You must specify either or both of asset_names and asset_types.")
        topic = ((feed.get("feedOutputConfig") or {}).get("pubsubDestination") or {}).get("topic")
        if not topic or not re.match(r"^projects/[^/]+/topics/[^/]+$", topic):
            raise ApiError(400, "feed_output_config.pubsub_destination.topic is required: projects/P/topics/T")

    def _create_feed(self, req: RecordedRequest, parent: str) -> dict[str, Any]:
        body = req.body if isinstance(req.body, dict) else {}
        feed_id = body.get("feedId")
        if not feed_id:
            raise ApiError(400, "feed_id is required")
        feed = self._normalise(body.get("feed") or {})
        self._validate(feed)
        name = f"{parent}/feeds/{feed_id}"
        with self._lock:
            if name in self.feeds:
                raise ApiError(409, f"Feed {name} already exists.", status="ALREADY_EXISTS")
            feed["name"] = name
            self.feeds[name] = feed
            return copy.deepcopy(feed)

    def _get_feed(self, req: RecordedRequest, parent: str, feed: str) -> dict[str, Any]:
        name = f"{parent}/feeds/{feed}"
        with self._lock:
            if name not in self.feeds:
                raise ApiError(404, f"Feed {name} not found.")
            return copy.deepcopy(self.feeds[name])

    def _list_feeds(self, req: RecordedRequest, parent: str) -> dict[str, Any]:
        with self._lock:
            return {"feeds": [copy.deepcopy(f) for n, f in sorted(self.feeds.items()) if n.startswith(parent + "/")]}

    def _update_feed(self, req: RecordedRequest, parent: str, feed: str) -> dict[str, Any]:
        body = req.body if isinstance(req.body, dict) else {}
        name = f"{parent}/feeds/{feed}"
        mask = body.get("updateMask") or (req.query.get("updateMask") or [""])[0]
        paths = [_camel(p.strip()) for p in (mask.split(",") if isinstance(mask, str) else mask.get("paths", []))
                 if p.strip()]
        if not paths or any(p not in _MASKABLE for p in paths):
            raise ApiError(400, f"update_mask must name fields of the feed, got {mask!r}")
        sent = self._normalise(body.get("feed") or {})  # its name travels in the path, as the transcoding puts it
        if sent.get("name") not in (None, name):
            raise ApiError(400, f"feed.name {sent.get('name')!r} does not match {name}")
        with self._lock:
            if name not in self.feeds:
                raise ApiError(404, f"Feed {name} not found.")
            new = copy.deepcopy(self.feeds[name])
            for p in paths:
                if p in sent:
                    new[p] = sent[p]
                else:
                    new.pop(p, None)
            self._validate(new)
            self.feeds[name] = new
            return copy.deepcopy(new)

    def _delete_feed(self, req: RecordedRequest, parent: str, feed: str) -> dict[str, Any]:
        with self._lock:
            if self.feeds.pop(f"{parent}/feeds/{feed}", None) is None:
                raise ApiError(404, "Feed not found.")
        return {}


@pytest.fixture
def fake_gcp_feeds() -> Iterator[FakeGcpFeeds]:
    with FakeGcpFeeds() as fake:
        yield fake
