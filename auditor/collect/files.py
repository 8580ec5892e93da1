"""Offline sources: CAI export files and Kubernetes object lists, from a file or a folder of files.

CAI exports are read as a stream, one line at a time, and decoded into a small typed record whose
`resource.data` and `iam_policy` stay as raw JSON bytes until a check asks for them: a million-line
export never becomes a million dicts. Both spellings are accepted (`asset_type`/`iam_policy` from exports,
`assetType`/`iamPolicy` from the API). JSON arrays and `{"assets": [...]}` (an API listing saved to a file)
are read whole; Kubernetes lists (`kubectl get ... -o yaml|json`, `kind: List`) become RBAC assets.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
import yaml

from auditor.collect import SourceOptions, skip_record
from auditor.collect.k8s_objects import object_asset
from auditor.errors import SourceError
from auditor.model import Asset, SourceStatus

try:  # the C loader is several times faster where libyaml is present
    _YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader


_NO_RAW = msgspec.Raw(b"")  # msgspec cannot make Raw optional; an empty Raw means "absent"
_NULL = msgspec.Raw(b"null")


class _Resource(msgspec.Struct, gc=False):
    data: msgspec.Raw = _NO_RAW
    parent: str | None = None


class _Record(msgspec.Struct, gc=False):
    """One CAI asset line in either spelling; unknown keys are skipped without being decoded."""

    name: str | None = None
    asset_type: str | None = None
    assetType: str | None = None
    resource: _Resource | None = None
    iam_policy: msgspec.Raw = _NO_RAW
    iamPolicy: msgspec.Raw = _NO_RAW
    ancestors: list[str] | None = None
    update_time: str | None = None
    updateTime: str | None = None


class _Listing(msgspec.Struct):
    assets: list[msgspec.Raw]


_record_decoder = msgspec.json.Decoder(_Record)
_any_decoder = msgspec.json.Decoder()
_EXPORT_SUFFIXES = (".json", ".ndjson", ".jsonl", ".dump", ".gz")
_YAML_SUFFIXES = (".yaml", ".yml")
_BLOCK = 1 << 22  # NDJSON bytes read and decoded at a time


def record_to_asset(rec: _Record, origin: str, line: int = 0) -> Asset:
    """The Asset for one decoded record (read at `origin`, or at line `line` of file `origin`); ValueError names
    what is missing."""
    asset_type = rec.asset_type or rec.assetType
    if not rec.name:
        raise ValueError("asset has no 'name'")
    if not asset_type:
        raise ValueError(f"asset {rec.name} has no 'asset_type' (export spelling) or 'assetType' (API spelling)")
    iam = rec.iam_policy or rec.iamPolicy
    data = rec.resource.data if rec.resource is not None else _NO_RAW
    return Asset(
        name=rec.name,
        asset_type=asset_type,
        resource=data if data and not _is_null(data) else None,
        iam_policy=iam if iam and not _is_null(iam) else None,
        ancestors=tuple(rec.ancestors) if rec.ancestors else (),
        update_time=rec.update_time or rec.updateTime,
        origin=origin,
        line=line,
    )


def _is_null(raw: msgspec.Raw) -> bool:
    return len(raw) == 4 and bytes(raw) == b"null"


def decode_record(line: bytes | str) -> _Record:
    return _record_decoder.decode(line)


class _Bounded:
    """Reads at most `left` bytes of a file (one range of an NDJSON export)."""

    def __init__(self, fh: IO[bytes], left: int) -> None:
        self.fh = fh
        self.left = left

    def read(self, n: int) -> bytes:
        if self.left <= 0:
            return b""
        read = self.fh.read1 if isinstance(self.fh, io.BufferedReader) else self.fh.read
        data = read(min(n, self.left))
        self.left -= len(data)
        return data


def _open(path: Path) -> IO[bytes]:
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    magic = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


class FileSource:
    """A file, or every export and Kubernetes list file under a folder (sorted, recursively)."""

    def __init__(self, path: str, options: SourceOptions) -> None:
        self.uri = path
        self.options = options
        self.status = SourceStatus(source=path)
        self._wanted: Callable[[str, bool], bool] | None = None
        self._skipped_types: Counter[str] | None = None
        self._verdicts: tuple[dict[str, bool], dict[str, bool]] = ({}, {})  # [has IAM policy][asset type]
        self._next_line = 1
        self.lines_read = 0
        self._shared_ancestors: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._shared_types: dict[str, str] = {}
        p = Path(path)
        if not p.exists():
            raise SourceError(f"source {path}: no such file or folder")
        if p.is_dir():
            self.files = sorted(
                f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(_EXPORT_SUFFIXES + _YAML_SUFFIXES)
            )
            if not self.files:
                raise SourceError(f"source {path}: folder holds no .json, .ndjson, .dump, .gz, .yaml or .yml file")
        else:
            self.files = [p]

    def assets(self) -> Iterator[Asset]:
        for f in self.files:
            yield from self.file_assets(f)
        self.finish()

    def file_assets(self, f: Path) -> Iterator[Asset]:
        """The assets of one of the source's files (`assets` reads them all, then calls `finish`)."""
        name = f.name.lower().removesuffix(".gz")
        if name.endswith(_YAML_SUFFIXES):
            yield from self._yaml_file(f)
        else:
            yield from self._json_file(f)

    def finish(self) -> None:
        """Mark the snapshot partial when malformed records were skipped."""
        if self.status.skipped:
            self.status.fail("*", f"{self.status.skipped} malformed record(s) skipped; first: {self.status.errors[0]}")

    # -- parts of one NDJSON file, for readers in several processes ------------------------------------------------
    def is_ndjson(self, path: Path) -> bool:
        """Whether the file (gzip or not) reads as NDJSON: its first line is one asset, not a document's start."""
        if path.name.lower().removesuffix(".gz").endswith(_YAML_SUFFIXES):
            return False
        try:
            with _open(path) as fh:
                stripped = fh.readline().strip()
        except (OSError, EOFError):
            return False  # read where it is reported: in one process
        if not stripped:
            return True
        try:
            head = _any_decoder.decode(stripped) if stripped.startswith(b"{") else None
        except msgspec.DecodeError:
            return False
        return isinstance(head, dict) and not ("kind" in head and "items" in head) and "assets" not in head

    @staticmethod
    def is_gzip(path: Path) -> bool:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"

    def split(self, path: Path, parts: int, min_bytes: int = 8 << 20) -> list[tuple[int, int]] | None:
        """Byte ranges of whole lines dividing an uncompressed NDJSON export into up to `parts` pieces of at least
        `min_bytes`; None for anything else (gzip, a JSON document, a Kubernetes list, YAML)."""
        if self.is_gzip(path) or not self.is_ndjson(path):
            return None
        return self.cut(path, parts, min_bytes)

    @staticmethod
    def cut(path: Path, parts: int, min_bytes: int) -> list[tuple[int, int]]:
        """`split` for a file already known to be uncompressed NDJSON."""
        size = path.stat().st_size
        with open(path, "rb") as fh:
            parts = max(1, min(parts, size // max(min_bytes, 1)))
            cuts = [0]
            for i in range(1, parts):
                fh.seek(size * i // parts)
                fh.readline()  # to the end of the line the cut falls in
                pos = fh.tell()
                if cuts[-1] < pos < size:
                    cuts.append(pos)
        cuts.append(size)
        return list(itertools.pairwise(cuts))

    def range_assets(self, path: Path, start: int, end: int) -> Iterator[Asset]:
        """The assets of the lines in bytes [start, end) of an NDJSON file (a range from `split`), numbered from 1.

        Once the iterator is exhausted, `lines_read` holds the number of lines in the range.
        """
        self.lines_read = 0
        with open(path, "rb") as raw:
            raw.seek(start)
            fh = _Bounded(raw, end - start)
            yield from self._ndjson(path, fh, b"", 1)
        self.lines_read = self._next_line - 1

    def report(self, where: str, reason: str) -> None:
        """A problem found elsewhere (by a reader in another process) about this source's data."""
        self._problem(where, reason)

    # -- problems -------------------------------------------------------------------------------------------------
    def _problem(self, where: str, reason: str) -> None:
        skip_record(self.status, self.options, where, reason)

    # -- CAI exports and JSON documents ----------------------------------------------------------------------------
    def _json_file(self, path: Path) -> Iterator[Asset]:
        with _open(path) as fh:
            try:
                first = fh.readline()
            except (OSError, EOFError) as exc:
                raise SourceError(f"{path}: cannot read ({exc})") from exc
            stripped = first.strip()
            if not stripped:
                # blank first line: fall through to NDJSON reading which skips blank lines
                yield from self._ndjson(path, fh, first, 1)
                return
            if stripped.startswith(b"{"):
                try:
                    head = _any_decoder.decode(stripped)
                except msgspec.DecodeError:
                    head = None  # a pretty-printed document, or a broken first line
                if isinstance(head, dict) and ("kind" not in head or "items" not in head) and "assets" not in head:
                    yield from self._ndjson(path, fh, first, 1)
                    return
            rest = fh.read()
        yield from self._document(path, first + rest)

    def _ndjson(self, path: Path, fh: IO[bytes] | _Bounded, first: bytes, lineno: int) -> Iterator[Asset]:
        """NDJSON read in blocks of whole lines, one decoder call per block (see `_block`)."""
        pending = first  # the start of a line not yet complete (or the first line, read by the caller)
        # read1: one read into a fresh block, not a read into the file's buffer and a copy out of it (half the time)
        read = getattr(fh, "read1", fh.read)
        while True:
            data = read(_BLOCK)
            if not data:
                break
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than a block
                pending += data
                continue
            start = 0
            if pending:
                start = data.find(b"\n") + 1
                head = pending + data[:start]
                n = head.count(b"\n")
                yield from self._block(path, head, n, lineno)
                lineno += n
            n = data.count(b"\n", start, cut)
            if n:
                yield from self._block(path, memoryview(data)[start:cut], n, lineno)
                lineno += n
            pending = data[cut:]
        if pending:
            n = pending.count(b"\n") + (not pending.endswith(b"\n"))
            yield from self._block(path, pending, n, lineno)
            lineno += n
        self._next_line = lineno

    def select(self, wanted: Callable[[str, bool], bool], skipped: Counter[str]) -> None:
        """Build only the assets `wanted(asset_type, has_iam_policy)` accepts; count the others in `skipped`.

        The engine says what its rules read (Engine.wants); an NDJSON record of another type is checked for what
        makes it malformed and counted, but never becomes an Asset. Other formats are unaffected.
        """
        self._wanted = wanted
        self._skipped_types = skipped

    def _block(self, path: Path, buf: bytes | memoryview, lines: int, lineno: int) -> Iterator[Asset]:
        """The assets of `lines` whole lines starting at line `lineno`.

        A block without a blank or bad line is decoded in one call; otherwise it is read line by line, so that each
        problem is reported with its own line number.
        """
        try:
            recs = _record_decoder.decode_lines(buf)
        except (msgspec.DecodeError, msgspec.ValidationError):
            recs = None
        if recs is None or len(recs) != lines:
            yield from self._lines(path, bytes(buf).split(b"\n")[:lines], lineno)
            return
        status = self.status
        wanted = self._wanted
        skipped = self._skipped_types
        verdicts = self._verdicts
        shared: dict[tuple[str, ...], tuple[str, ...]] = self._shared_ancestors
        shared_types: dict[str, str] = self._shared_types
        where_file = str(path)
        out: list[Asset] = []
        skips: dict[str, int] = {}  # added to `skipped` once per block: this loop runs for every line of an export
        for rec in recs:
            asset_type = rec.asset_type or rec.assetType
            if not rec.name or not asset_type:
                where = f"{path}:{lineno}"
                try:
                    record_to_asset(rec, where)
                except ValueError as exc:
                    self._problem(where, str(exc))
                lineno += 1
                continue
            iam = rec.iam_policy or rec.iamPolicy
            has_iam = bool(iam) and iam != _NULL
            if wanted is not None:
                known = verdicts[has_iam]
                verdict = known.get(asset_type)
                if verdict is None:
                    verdict = known[asset_type] = wanted(asset_type, has_iam)
                if not verdict:
                    skips[asset_type] = skips.get(asset_type, 0) + 1
                    lineno += 1
                    continue
            data = rec.resource.data if rec.resource is not None else _NO_RAW
            ancestors: tuple[str, ...] = ()
            if rec.ancestors:
                # one tuple per distinct ancestry: the assets a scan holds to its end share it
                ancestors = tuple(rec.ancestors)
                ancestors = shared.setdefault(ancestors, ancestors)
                if len(shared) > 100_000:
                    shared.clear()
            # copies: the raw bytes would otherwise keep the whole block alive for as long as the asset lives
            out.append(
                Asset(
                    name=rec.name,
                    asset_type=shared_types.setdefault(asset_type, asset_type),
                    resource=bytes(data) if data and data != _NULL else None,
                    iam_policy=bytes(iam) if has_iam else None,
                    ancestors=ancestors,
                    update_time=rec.update_time or rec.updateTime,
                    origin=where_file,
                    line=lineno,
                )
            )
            lineno += 1
        if skips and skipped is not None:
            skipped.update(skips)
        status.assets += len(out) + sum(skips.values())
        yield from out

    def _lines(self, path: Path, lines: list[bytes], lineno: int) -> Iterator[Asset]:
        status = self.status
        for line in lines:
            if line.strip():
                where = f"{path}:{lineno}"
                try:
                    rec = _record_decoder.decode(line)
                    asset = record_to_asset(rec, str(path), lineno)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self._problem(where, f"malformed asset line ({exc})")
                except ValueError as exc:
                    self._problem(where, str(exc))
                else:
                    status.assets += 1
                    yield asset
            lineno += 1

    def _document(self, path: Path, data: bytes) -> Iterator[Asset]:
        if data.lstrip().startswith(b"["):
            try:
                raws = msgspec.json.decode(data, type=list[msgspec.Raw])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise SourceError(f"{path}: not a valid JSON array of assets ({exc})") from exc
            yield from self._raw_items(path, raws)
            return
        try:
            doc = _any_decoder.decode(data)
        except msgspec.DecodeError:
            # Not one JSON document: read it as NDJSON so each bad line is reported with its number.
            yield from self._ndjson_bytes(path, data)
            return
        if isinstance(doc, dict) and isinstance(doc.get("items"), list) and "kind" in doc:
            yield from self._k8s_items(path, doc["items"], 0)
        elif isinstance(doc, dict) and isinstance(doc.get("assets"), list):
            del doc  # decode again, keeping each asset as raw bytes (an API listing saved to a file)
            yield from self._raw_items(path, msgspec.json.decode(data, type=_Listing).assets)
        else:
            raise SourceError(
                f"{path}: expected NDJSON, a JSON array of assets, {{\"assets\": [...]}} or a Kubernetes List"
            )

    def _raw_items(self, path: Path, raws: list[msgspec.Raw]) -> Iterator[Asset]:
        for i, raw in enumerate(raws):
            where = f"{path}: item {i}"
            try:
                asset = record_to_asset(_record_decoder.decode(raw), where)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._problem(where, f"malformed asset ({exc})")
                continue
            except ValueError as exc:
                self._problem(where, str(exc))
                continue
            self.status.assets += 1
            yield asset

    def _ndjson_bytes(self, path: Path, data: bytes) -> Iterator[Asset]:
        buf = io.BytesIO(data)
        yield from self._ndjson(path, buf, buf.readline(), 1)

    # -- Kubernetes lists ------------------------------------------------------------------------------------------
    def _yaml_file(self, path: Path) -> Iterator[Asset]:
        with _open(path) as fh:
            text = fh.read().decode("utf-8", errors="replace")
        try:
            docs = list(yaml.load_all(text, Loader=_YamlLoader))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise SourceError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
        for n, doc in enumerate(docs):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                self._problem(f"{path}: document {n + 1}", "expected a Kubernetes object or List")
                continue
            if isinstance(doc.get("items"), list):
                yield from self._k8s_items(path, doc["items"], n)
            else:
                yield from self._k8s_items(path, [doc], n)

    def _k8s_items(self, path: Path, items: list[Any], doc_index: int) -> Iterator[Asset]:
        for i, obj in enumerate(items):
            where = f"{path}: item {i}" + (f" of document {doc_index + 1}" if doc_index else "")
            if not isinstance(obj, dict) or "kind" not in obj:
                self._problem(where, "not a Kubernetes object (no 'kind')")
                continue
            try:
                asset = object_asset(obj, self.options.cluster, origin=where)
            except ValueError as exc:
                self._problem(where, str(exc))
                continue
            if asset is not None:
                self.status.assets += 1
                yield asset


def iter_file_assets(path: str | os.PathLike[str], cluster: str = "local") -> Iterator[Asset]:
    """Every asset of a file or folder (a convenience for tests and the benchmark)."""
    yield from FileSource(str(path), SourceOptions(cluster=cluster)).assets()
