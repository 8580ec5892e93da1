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
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
import yaml

from auditor.collect import SourceOptions
from auditor.collect.k8s_objects import object_asset
from auditor.errors import SourceError
from auditor.model import Asset, SourceStatus

try:  # the C loader is several times faster where libyaml is present
    _YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader


_NO_RAW = msgspec.Raw(b"")  # msgspec cannot make Raw optional; an empty Raw means "absent"


class _Resource(msgspec.Struct):
    data: msgspec.Raw = _NO_RAW
    parent: str | None = None


class _Record(msgspec.Struct):
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


def record_to_asset(rec: _Record, origin: str) -> Asset:
    """The Asset for one decoded record; ValueError names what is missing."""
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
        resource=data if data and bytes(data) != b"null" else None,
        iam_policy=iam if iam and bytes(iam) != b"null" else None,
        ancestors=tuple(rec.ancestors) if rec.ancestors else (),
        update_time=rec.update_time or rec.updateTime,
        origin=origin,
    )


def decode_record(line: bytes | str) -> _Record:
    return _record_decoder.decode(line)


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
            name = f.name.lower().removesuffix(".gz")
            if name.endswith(_YAML_SUFFIXES):
                yield from self._yaml_file(f)
            else:
                yield from self._json_file(f)
        if self.status.skipped:
            self.status.fail("*", f"{self.status.skipped} malformed record(s) skipped; first: {self.status.errors[0]}")

    # -- problems -------------------------------------------------------------------------------------------------
    def _problem(self, where: str, reason: str) -> None:
        msg = f"{where}: {reason}"
        if self.options.strict:
            raise SourceError(msg)
        self.status.skipped += 1
        self.status.errors.append(msg)
        if self.options.on_problem is not None:
            self.options.on_problem(msg)

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

    def _ndjson(self, path: Path, fh: IO[bytes], first: bytes, lineno: int) -> Iterator[Asset]:
        status = self.status
        line = first
        while line:
            if line.strip():
                where = f"{path}:{lineno}"
                try:
                    rec = _record_decoder.decode(line)
                    asset = record_to_asset(rec, where)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self._problem(where, f"malformed asset line ({exc})")
                except ValueError as exc:
                    self._problem(where, str(exc))
                else:
                    status.assets += 1
                    yield asset
            line = fh.readline()
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
