"""Stage 1, collect: the Cloud Asset Inventory API as a source (`cai://organizations/ID`, `folders/ID`, `projects/ID`).

What is read: only the asset types the loaded rules need. `SourceOptions.asset_types` holds their globs; globs
become the RE2 expressions CAI accepts in `assetTypes` (`*` -> `[^/]*`). A `*` glob means "every type": for the
IAM_POLICY content type that is one listing with no type filter, which CAI supports and which returns only the
assets that carry a policy. RESOURCE is listed for the resource globs, IAM_POLICY for the IAM globs when any
loaded check reads IAM (`extra["needs_iam"]`). Before reading, the scan hands the source `Engine.wants` (see
`select`): a listing that no rule reads is dropped, and a `*` listing becomes one per named type unless a rule reads
that part of every type (the shipped IAM rules read the IAM policy of every type, but the resources of a few).
`extra["resource_types"]` and `extra["iam_types"]` narrow each content type further when a caller knows better.

How: one listing per (content type, asset type glob), grouped into at most `concurrency` (default 4) ListAssets
listings per content type (a listing costs a request even when it finds nothing), page size 1000, all pinned to
one `read_time` (the server's time of the first page, or `read_time=` given), run by a bounded pool of threads under
one requests-per-minute budget (`rpm`, default 100: CAI's default quota per consumer project), shared by every
`cai://` source of the process. Each page is
retried on its own (auditor/collect/retry.py), so a failure on page 40 does not re-read pages 1-39. Assets are
handed to the engine as pages arrive, through a bounded queue (memory stays flat).

Pages are read as raw JSON over the REST API (the URL and parameters the google-cloud-asset REST client sends,
with google-auth credentials and google-api-core errors) and decoded with the offline reader's msgspec decoder:
`resource.data` and `iamPolicy` stay undecoded bytes until a check reads them. Going through the generated client
would parse every page into protobuf and back (about 3000 assets a second on one core, less than the 100 pages a
minute CAI can serve) and turn every integer in resource data into a float. ExportAssets and its long-running
operation use the generated client.

Resource and IAM policy of one asset are NOT merged: each arrives as its own asset, as in CAI exports (one file per
content type). Merging would hold every asset of the organization in memory until both listings end, and no check
reads both parts. Offline and live scans therefore see exactly the same assets.

Completeness: a listing that does not finish (a permanent error, or a transient one that outlasts the retries)
records `status.fail(asset_type, reason)`; a 403 names the permission that is missing. Other listings carry on.

The export route (`?export=gs://bucket/prefix`) runs ExportAssets per content type to
`gs://bucket/prefix/<time>/<content>/<asset type>/<shard>`, waits for the long-running operations, downloads the
files and reads them with the offline reader (auditor/collect/files.py). Large organizations use it to spend one
request per content type instead of one per 1000 assets.

URI options (query string; `SourceOptions.extra` keys in brackets give the same from the config file):
`rpm` [cai_requests_per_minute], `concurrency` [cai_concurrency], `page_size` [cai_page_size],
`read_time` [cai_read_time], `export` [cai_export], `export_timeout` [cai_export_timeout, seconds],
`timeout` [cai_timeout, seconds a page may take before it is retried];
endpoint: `AUDITOR_GCP_ENDPOINT` or [gcp_endpoint]; retries: [retry_attempts], [retry_initial], [retry_maximum].
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import re
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from auditor.collect import SourceOptions, gcp_clients, register_scheme, skip_record
from auditor.collect.files import FileSource, decode_record, record_to_asset
from auditor.collect.retry import RateBudget, RetryPolicy, status_of
from auditor.errors import SourceError
from auditor.model import Asset, SourceStatus
from auditor.permissions import declare

log = logging.getLogger(__name__)  # the daemon routes it through structlog; the CLI prints warnings on stderr

SCHEME = "cai"
PAGE_SIZE = 1000  # the most ListAssets serves per page
DEFAULT_RPM = 100.0
DEFAULT_CONCURRENCY = 4
DEFAULT_EXPORT_TIMEOUT = 3600.0
DEFAULT_TIMEOUT = 120.0  # seconds to wait for one page
ALL_TYPES = "*"

# Enum values as the REST client sends them (google.cloud.asset_v1.ContentType).
RESOURCE = "RESOURCE"
IAM_POLICY = "IAM_POLICY"
_CONTENT_ENUM = {RESOURCE: 1, IAM_POLICY: 2}
LIST_PERMISSION = {RESOURCE: "cloudasset.assets.listResource", IAM_POLICY: "cloudasset.assets.listIamPolicy"}
EXPORT_PERMISSION = {RESOURCE: "cloudasset.assets.exportResource", IAM_POLICY: "cloudasset.assets.exportIamPolicy"}

declare(
    "collect.asset_inventory",
    [*LIST_PERMISSION.values()],
    why="list resources and IAM policies of the asset types the rules read (Cloud Asset Inventory ListAssets)",
)
declare(
    "collect.asset_inventory_export",
    [*EXPORT_PERMISSION.values(), "storage.objects.get"],
    why="the export route (cai://...?export=gs://...): ExportAssets, then read the written objects; the Cloud "
    "Asset service agent also needs storage.objects.create on the bucket",
)


class _Page(msgspec.Struct):
    """One ListAssets answer; each asset stays raw until the offline reader's decoder takes it."""

    assets: list[msgspec.Raw] = []
    nextPageToken: str = ""
    readTime: str | None = None


_page_decoder = msgspec.json.Decoder(_Page)

_SCOPE = re.compile(r"^(organizations/\d+|folders/\d+|projects/[a-z0-9][a-z0-9.:-]*[a-z0-9])$")


def glob_to_cai(pattern: str) -> str:
    """An asset type glob as the RE2 expression CAI's `assetTypes` accepts (plain types stay as they are)."""
    if not any(c in pattern for c in "*?"):
        return pattern
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class Listing:
    """One ListAssets listing: a content type and one asset type glob (`*`: no type filter)."""

    content: str
    glob: str

    @property
    def asset_types(self) -> list[str]:
        return [] if self.glob in ("*", "**") else [glob_to_cai(self.glob)]

    def __str__(self) -> str:
        return f"{self.glob} ({self.content})"

    @property
    def failure_key(self) -> str:
        """The asset type recorded as incomplete when this listing fails: the type or glob it lists
        (`compute.googleapis.com/*`); the state store keeps open every finding of a type the glob matches."""
        return self.glob


@dataclass(frozen=True)
class Batch:
    """Listings of one content type read together: one ListAssets listing with all their `assetTypes`."""

    listings: tuple[Listing, ...]

    @property
    def content(self) -> str:
        return self.listings[0].content

    @property
    def asset_types(self) -> list[str]:
        return [t for x in self.listings for t in x.asset_types]

    def __str__(self) -> str:
        return f"{', '.join(x.glob for x in self.listings)} ({self.content})"


def batch_listings(listings: list[Listing], concurrency: int) -> list[Batch]:
    """Listings grouped into at most `concurrency` batches per content type (a `*` listing stays alone).

    Every listing costs at least one request, so thirty small types listed one by one cost thirty requests where
    four batches cost four; with more than a page of assets, pages dominate either way. A batch that fails marks
    each of its types incomplete, so completeness stays per type.
    """
    out: list[Batch] = []
    for content in (RESOURCE, IAM_POLICY):
        mine = [x for x in listings if x.content == content]
        if any(x.glob == ALL_TYPES for x in mine):
            out.append(Batch((Listing(content, ALL_TYPES),)))
            continue
        n = min(concurrency, len(mine))
        out.extend(Batch(tuple(mine[i::n])) for i in range(n))
    return out


def plan_listings(
    globs: frozenset[str] | None,
    needs_iam: bool,
    resource_globs: frozenset[str] | None = None,
    iam_globs: frozenset[str] | None = None,
) -> list[Listing]:
    """The listings a scan needs: one per asset type glob and content type; `*` absorbs the other globs."""
    every = frozenset({ALL_TYPES}) if globs is None else globs
    res = every if resource_globs is None else resource_globs
    iam = (every if iam_globs is None else iam_globs) if needs_iam else frozenset()
    out: list[Listing] = []
    for content, chosen in ((RESOURCE, res), (IAM_POLICY, iam)):
        if not chosen:
            continue
        if "*" in chosen or "**" in chosen:
            out.append(Listing(content, ALL_TYPES))
        else:
            out.extend(Listing(content, g) for g in sorted(chosen))
    return out


# An asset type no rule names: what the rules want of it is what they want of every type they do not name.
PROBE_TYPE = "auditor.invalid/AnyOtherType"


def _wildcard(glob: str) -> bool:
    return any(c in glob for c in "*?")


def refine_listings(
    listings: list[Listing], chosen: dict[str, frozenset[str]], wanted: Callable[[str, bool], bool]
) -> list[Listing]:
    """Drop the listings no rule reads, asking the engine (`Engine.wants(asset_type, has_iam_policy)`).

    A `*` listing stays only if some rule reads that part of an asset type it does not name (an IAM rule on every
    type keeps the IAM_POLICY `*` listing, but not the RESOURCE one); otherwise it becomes one listing per named
    glob. A listing for an exact type stays only if a rule reads that part of it. Partial globs
    (`compute.googleapis.com/*`) are kept: a probe could not stand for every type they match.
    """
    out: list[Listing] = []
    for listing in listings:
        iam = listing.content == IAM_POLICY
        if listing.glob == ALL_TYPES:
            if wanted(PROBE_TYPE, iam):
                out.append(listing)
                continue
            named = sorted(g for g in chosen.get(listing.content, frozenset()) if g not in ("*", "**"))
            out.extend(Listing(listing.content, g) for g in named if _wildcard(g) or wanted(g, iam))
        elif _wildcard(listing.glob) or wanted(listing.glob, iam):
            out.append(listing)
    return list(dict.fromkeys(out))


def api_message(exc: BaseException) -> str:
    """What the API said, without the method and URL google-api-core puts in front of it."""
    resp = getattr(exc, "response", None)
    try:
        payload = resp.json() if resp is not None else None
    except Exception:  # not an HTTP answer (an operation's error), or not JSON
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict) and payload["error"].get("message"):
        return str(payload["error"]["message"])
    return str(getattr(exc, "message", None) or exc)


def describe_error(
    exc: BaseException, content: str, what: str, scope: str, export: bool = False, permission: str | None = None
) -> str:
    """One line saying what failed and, for a 403, which permission the caller lacks."""
    status = status_of(exc)
    message = api_message(exc)
    if status == 403:
        metadata = getattr(exc, "metadata", None)
        named = metadata.get("permission") if isinstance(metadata, dict) else None
        permission = named or permission or (EXPORT_PERMISSION if export else LIST_PERMISSION).get(content)
        role = "roles/storage.objectViewer" if str(permission).startswith("storage.") else "roles/cloudasset.viewer"
        return (
            f"permission denied on {scope} for {what}: the caller lacks {permission} (in {role}); "
            f"the API said: {message}"
        )
    if status == 400:
        return f"request refused (400) for {what}: {message}"
    if status is not None and status != 0:
        return f"{status} for {what}: {message}"
    return f"{type(exc).__name__} for {what}: {message}"


@dataclass
class _Reading:
    """What the listings of one ListAssets read share: the URL, an HTTP session per thread, the hand-over to the
    consumer, the stop flag, and the read time the first page fixes (the others wait for it behind `gate`)."""

    url: str
    session: Callable[[], Any]
    put: Callable[[tuple[str, Any]], None]
    stop: threading.Event
    read_time: str | None
    gate: threading.Lock = field(default_factory=threading.Lock)


class _Stop(Exception):
    """The consumer went away; workers end quietly."""


class AssetInventorySource:
    """`cai://SCOPE[?options]`: assets of the needed types under an organization, folder or project."""

    def __init__(self, uri: str, options: SourceOptions) -> None:
        self.uri = uri
        self.options = options
        self.status = SourceStatus(source=uri)
        parsed = urllib.parse.urlsplit(uri)
        scope = (parsed.netloc + parsed.path).strip("/")
        if not _SCOPE.match(scope):
            raise SourceError(
                f"source {uri}: expected cai://organizations/ID, cai://folders/ID or cai://projects/ID, got {scope!r}"
            )
        self.scope = scope
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        known = {"rpm", "concurrency", "page_size", "read_time", "export", "export_timeout", "timeout"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise SourceError(
                f"source {uri}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        extra = options.extra

        def setting(name: str, key: str, default: Any, conv: Any) -> Any:
            raw = query.get(name, extra.get(key))
            if raw is None or raw == "":
                return default
            try:
                return conv(raw)
            except (TypeError, ValueError) as exc:
                raise SourceError(f"source {uri}: {name}={raw!r} is not valid ({exc})") from exc

        self.rpm = setting("rpm", "cai_requests_per_minute", DEFAULT_RPM, float)
        self.concurrency = setting("concurrency", "cai_concurrency", DEFAULT_CONCURRENCY, int)
        self.page_size = setting("page_size", "cai_page_size", PAGE_SIZE, int)
        self.read_time = setting("read_time", "cai_read_time", None, _parse_time)
        self.export = setting("export", "cai_export", None, str)
        self.export_timeout = setting("export_timeout", "cai_export_timeout", DEFAULT_EXPORT_TIMEOUT, float)
        self.timeout = setting("timeout", "cai_timeout", DEFAULT_TIMEOUT, float)
        if self.rpm <= 0 or self.concurrency < 1 or not 1 <= self.page_size <= PAGE_SIZE:
            raise SourceError(f"source {uri}: rpm must be > 0, concurrency >= 1, page_size between 1 and {PAGE_SIZE}")
        if self.export is not None and not self.export.startswith("gs://"):
            raise SourceError(f"source {uri}: export must be a Cloud Storage URI (gs://bucket/prefix)")
        self.endpoint = gcp_clients.resolve_endpoint(extra.get("gcp_endpoint") or None)  # type: ignore[arg-type]
        self.retry = RetryPolicy.from_settings(extra)
        self.budget = shared_budget(self.endpoint.url or "google", self.rpm)
        needs_iam = bool(extra.get("needs_iam", True))
        every = options.asset_types if options.asset_types is not None else frozenset({ALL_TYPES})
        resource_globs, iam_globs = _globs(extra.get("resource_types")), _globs(extra.get("iam_types"))
        self._chosen = {  # an explicit empty list lists nothing of that content type
            RESOURCE: every if resource_globs is None else resource_globs,
            IAM_POLICY: (every if iam_globs is None else iam_globs) if needs_iam else frozenset(),
        }
        self.listings = plan_listings(options.asset_types, needs_iam, self._chosen[RESOURCE], self._chosen[IAM_POLICY])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first_problem = ""

    def select(self, wanted: Callable[[str, bool], bool], skipped: Counter[str]) -> None:
        """Called by the scan with `Engine.wants` before reading: list only what some rule reads."""
        self.listings = refine_listings(self.listings, self._chosen, wanted)

    # -- public -----------------------------------------------------------------------------------------------------
    @property
    def requests(self) -> int:
        """API requests made so far (also in the status, for reports)."""
        return self.status.requests

    def assets(self) -> Iterator[Asset]:
        if not self.listings:
            return
        if self.export is not None:
            yield from self._exported()
        else:
            yield from self._listed()

    # -- ListAssets -------------------------------------------------------------------------------------------------
    def _listed(self) -> Iterator[Asset]:
        base = gcp_clients.base_url(self.endpoint, gcp_clients.ASSET_DEFAULT_ENDPOINT)
        local = threading.local()  # one HTTP session per worker thread

        def session() -> Any:
            if not hasattr(local, "session"):
                local.session = gcp_clients.authorized_session(self.endpoint)
                with self._lock:
                    sessions.append(local.session)
            return local.session

        sessions: list[Any] = []
        out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self.concurrency * 2)
        stop = self._stop = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise _Stop

        reading = _Reading(
            f"{base}/v1/{self.scope}/assets", session, put, stop, _fmt_time(self.read_time) if self.read_time else None
        )

        def read(batch: Batch) -> None:
            pages: list[int] = [0]
            try:
                self._run_listing(reading, batch, pages)
            except (_Stop, SourceError):
                raise
            except Exception as exc:  # recorded as incomplete types; never takes the other listings down
                if status_of(exc) == 400 and pages[0] == 0 and len(batch.listings) > 1:
                    # CAI refuses a whole listing for one type it does not know: read the others on their own.
                    for listing in batch.listings:
                        read(Batch((listing,)))
                    return
                reason = describe_error(exc, batch.content, str(batch), self.scope)
                log.warning("%s: %s not read completely: %s", self.uri, batch, reason)
                for listing in batch.listings:
                    self.status.fail(listing.failure_key, reason)

        def work(batch: Batch) -> None:
            try:
                read(batch)
            except _Stop:
                return
            except SourceError as exc:  # --strict: a malformed record ends the scan, in the reading thread
                with contextlib.suppress(_Stop):
                    put(("error", exc))
                return
            try:
                put(("done", batch))
            except _Stop:
                return

        batches = batch_listings(self.listings, self.concurrency)
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches)), thread_name_prefix="cai")
        try:
            for batch in batches:
                pool.submit(work, batch)
            remaining = len(batches)
            while remaining:
                kind, payload = out.get()
                if kind == "done":
                    remaining -= 1
                    continue
                if kind == "error":
                    raise payload
                for asset in payload:
                    self.status.assets += 1
                    yield asset
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for s in sessions:
                s.close()
        if reading.read_time is not None:
            self.status.read_time = reading.read_time

    def _run_listing(self, reading: _Reading, listing: Batch, pages: list[int]) -> None:
        bad = [0]
        try:
            self._read_pages(reading, listing, pages, bad)
        finally:
            if bad[0]:
                reason = f"{bad[0]} malformed asset(s) skipped; first: {self._first_problem}"
                for x in listing.listings:
                    self.status.fail(x.failure_key, reason)

    def _read_pages(self, reading: _Reading, listing: Batch, pages: list[int], bad: list[int]) -> None:
        token = ""
        page_no = 0
        while True:
            if reading.stop.is_set():
                raise _Stop
            # The parameters the google-cloud-asset REST client sends (enums as integers).
            params: list[tuple[str, str]] = [("assetTypes", t) for t in listing.asset_types]
            params += [
                ("contentType", str(_CONTENT_ENUM[listing.content])),
                ("pageSize", str(self.page_size)),
                ("$alt", "json;enum-encoding=int"),
            ]
            if token:
                params.append(("pageToken", token))
            page = None
            if reading.read_time is None:
                with reading.gate:  # held only by the one request that fixes the read time
                    if reading.read_time is None:
                        page = self._page(reading.session, reading.url, params)
                        reading.read_time = page.readTime or _fmt_time(datetime.now(UTC))
            if page is None:
                page = self._page(reading.session, reading.url, [*params, ("readTime", str(reading.read_time))])
            page_no += 1
            pages[0] = page_no
            origin = f"{self.uri} {listing} page {page_no}"
            assets = []
            for i, raw in enumerate(page.assets):
                try:
                    assets.append(self._asset(raw, origin))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                    # One bad record is reported and skipped, as in a file; its types are then incomplete.
                    self._problem(f"{origin} item {i}", str(exc))
                    bad[0] += 1
            reading.put(("assets", assets))
            token = page.nextPageToken
            if not token:
                return

    def _page(self, session: Callable[[], Any], url: str, params: list[tuple[str, str]]) -> _Page:
        """One ListAssets page, within the budget, retried on transient errors."""
        from google.api_core import exceptions as gexc

        def call() -> _Page:
            if self._stop.is_set():  # the scan stopped reading (an error downstream, a shutdown): no more requests
                raise _Stop
            self.budget.acquire()
            with self._lock:
                self.status.requests += 1
            resp = session().get(url, params=params, timeout=(min(10.0, self.timeout), self.timeout))
            if resp.status_code >= 400:
                raise gexc.from_http_response(resp)
            try:
                return _page_decoder.decode(resp.content)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # A truncated or garbled page: worth another try, like a dropped connection.
                raise gexc.InternalServerError(f"unreadable ListAssets page ({exc})") from exc

        page: _Page = self._retry_until_stopped().call(call, on_retry=self._log_retry("ListAssets"))
        return page

    @staticmethod
    def _asset(raw: msgspec.Raw, origin: str) -> Asset:
        return record_to_asset(decode_record(raw), origin)

    # -- ExportAssets -----------------------------------------------------------------------------------------------
    def _exported(self) -> Iterator[Asset]:
        from google.cloud import asset_v1

        assert self.export is not None
        client = gcp_clients.asset_client(self.endpoint)
        # A moment just past, so that a client clock ahead of Google's never asks for the future.
        read_time = self.read_time or datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
        self.status.read_time = _fmt_time(read_time)
        stamp = read_time.strftime("%Y%m%dT%H%M%SZ")
        by_content: dict[str, list[Listing]] = {}
        for listing in self.listings:
            by_content.setdefault(listing.content, []).append(listing)
        operations: list[tuple[str, list[Listing], Any]] = []
        for content, listings in by_content.items():
            types = sorted({t for x in listings for t in x.asset_types})
            if any(not x.asset_types for x in listings):
                types = []
            request = asset_v1.ExportAssetsRequest(
                parent=self.scope,
                content_type=_CONTENT_ENUM[content],
                asset_types=types,
                read_time=read_time,
                output_config=asset_v1.OutputConfig(
                    gcs_destination=asset_v1.GcsDestination(
                        uri_prefix=f"{self.export.rstrip('/')}/{stamp}/{content.lower()}"
                    )
                ),
            )
            try:
                op = self._call(lambda r=request: client.export_assets(request=r, retry=None, timeout=120.0))
            except Exception as exc:
                self._fail_all(listings, describe_error(exc, content, f"export of {content}", self.scope, True))
                continue
            operations.append((content, listings, op))
        storage = None
        for content, listings, op in operations:
            try:
                result = op.result(timeout=self.export_timeout)
            except Exception as exc:
                # The call was accepted: what failed is the export itself (often the service agent's access to
                # the bucket), not the caller's permission.
                message = api_message(exc) or type(exc).__name__
                reason = f"export of {content} to {self.export} failed: {message}"
                if "storage.objects" in message:
                    reason += " (grant the Cloud Asset service agent roles/storage.objectCreator on the bucket)"
                self._fail_all(listings, reason)
                continue
            uris = list(result.output_result.gcs_result.uris)
            storage = storage or gcp_clients.storage_client(self.endpoint)
            for uri in uris:
                try:
                    yield from self._read_object(storage, uri)
                except SourceError:
                    raise
                except Exception as exc:
                    reason = describe_error(exc, content, f"reading {uri}", uri, permission="storage.objects.get")
                    self._fail_all(listings, reason)
        if self.status.skipped:
            self.status.fail("*", f"{self.status.skipped} malformed record(s) skipped; first: {self.status.errors[0]}")

    def _read_object(self, storage: Any, uri: str) -> Iterator[Asset]:
        bucket, _, name = uri[len("gs://") :].partition("/")
        with tempfile.TemporaryDirectory(prefix="auditor-cai-") as tmp:
            path = Path(tmp) / (name.replace("/", "_") or "export.json")
            if not path.name.lower().endswith((".json", ".ndjson", ".jsonl", ".dump", ".gz")):
                path = path.with_name(path.name + ".json")  # so the file reader takes it as an export
            blob = storage.bucket(bucket).blob(name)
            # Cloud Storage has its own quota: downloads are retried but do not spend the CAI budget.
            self.retry.call(
                lambda: blob.download_to_filename(str(path)), on_retry=self._log_retry(f"reading {uri}")
            )
            if path.stat().st_size == 0:
                return
            reader = FileSource(str(path), self.options)
            for asset in reader.assets():
                asset.origin = asset.origin.replace(str(path), uri, 1)
                self.status.assets += 1
                yield asset
            self.status.skipped += reader.status.skipped
            self.status.errors.extend(e.replace(str(path), uri, 1) for e in reader.status.errors)

    def _call(self, fn: Any) -> Any:
        def call() -> Any:
            self.budget.acquire()
            with self._lock:
                self.status.requests += 1
            return fn()

        return self.retry.call(call, on_retry=self._log_retry("ExportAssets"))

    def _problem(self, where: str, reason: str) -> None:
        with self._lock:  # pages are decoded on several threads
            msg = skip_record(self.status, self.options, where, reason)
            self._first_problem = self._first_problem or msg

    def _retry_until_stopped(self) -> RetryPolicy:
        """The retry policy whose waits end early when the scan stops reading (a retry may wait up to a minute)."""
        if self.retry.sleep is not time.sleep:
            return self.retry  # a caller's own sleep (tests record the waits)
        stop = self._stop

        def sleep(seconds: float) -> None:
            stop.wait(seconds)

        return dataclasses.replace(self.retry, sleep=sleep)

    def _log_retry(self, what: str) -> Callable[[int, BaseException, float], None]:
        def log_it(attempt: int, exc: BaseException, wait: float) -> None:
            if status_of(exc) == 429 and self.retry.sleep is time.sleep:
                # The quota is spent: every listing waits, not only this one. (A caller's own sleep, as in tests,
                # does not let time pass, so the shared budget is then left alone.)
                self.budget.hold(wait)
            log.warning(
                "%s: %s failed (%s), attempt %d of %d; retrying in %.1f s",
                self.uri, what, describe_error(exc, "", what, self.scope), attempt, self.retry.attempts, wait,
            )

        return log_it

    def _fail_all(self, listings: list[Listing], reason: str) -> None:
        log.warning("%s: %s", self.uri, reason)
        for listing in listings:
            self.status.fail(listing.failure_key, reason)


_budgets: dict[tuple[str, float], RateBudget] = {}
_budgets_lock = threading.Lock()


def shared_budget(endpoint: str, per_minute: float) -> RateBudget:
    """One budget per endpoint and rate for the whole process: CAI's quota belongs to the consumer project, not to
    one source, so two `cai://` sources of a scan, and consecutive daemon cycles, draw from the same bucket."""
    with _budgets_lock:
        budget = _budgets.get((endpoint, per_minute))
        if budget is None:
            budget = _budgets[(endpoint, per_minute)] = RateBudget(per_minute)
        return budget


def _globs(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list | tuple | set | frozenset):
        return frozenset(str(v) for v in value)
    raise SourceError(f"asset type globs must be a list, got {value!r}")


def _parse_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _fmt_time(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def open_asset_inventory(uri: str, options: SourceOptions) -> AssetInventorySource:
    return AssetInventorySource(uri, options)


register_scheme(SCHEME, open_asset_inventory)
