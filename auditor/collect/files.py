"""Offline sources: CAI export files, Kubernetes object lists and Compute API responses, from a file or a folder.

CAI exports are read as a stream, one line at a time, and decoded into a small typed record whose
`resource.data` and `iam_policy` stay as raw JSON bytes until a check asks for them: a million-line
export never becomes a million dicts. Both spellings are accepted (`asset_type`/`iam_policy` from exports,
`assetType`/`iamPolicy` from the API); `#` comment lines (Forseti's dumps) are skipped.

Every file is recognised or refused. It is cut into objects (NDJSON lines, one JSON document or array,
concatenated pretty-printed JSON objects, YAML documents), and each object is read by the reader of its shape
(`shapes.py`: CAI assets and listings, Kubernetes objects and lists, Compute security policies). Objects of kinds
no reader knows are counted by kind in the source's status; a source that gives no asset at all is an error naming
each file and what it held. Bytes that cannot be read (a corrupt gzip, a line or document over its size limit, a
nesting deeper than the limit, an unreadable file) give an error naming the file and line, never a traceback.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
import yaml

from auditor.collect import SourceOptions, skip_record
from auditor.collect.shapes import (
    _NO_RAW,
    _NULL,
    Nested,
    check_iam_policy,
    classify,
    decode_record,
    describe,
    known_shapes,
    record_decoder,
    record_to_asset,
)
from auditor.errors import SourceError
from auditor.model import Asset, SourceStatus

try:  # the C loader is several times faster where libyaml is present
    _YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader

__all__ = ["FileSource", "decode_record", "iter_file_assets", "record_to_asset"]

_record_decoder = record_decoder
_any_decoder = msgspec.json.Decoder()
_EXPORT_SUFFIXES = (".json", ".ndjson", ".jsonl", ".dump", ".gz")
_YAML_SUFFIXES = (".yaml", ".yml")
_BUFFER = 1 << 20  # lines are read one at a time from a buffer this large: one system call per megabyte, not 8 KB
_READ_ERRORS = (OSError, EOFError, zlib.error)  # an unreadable file, a corrupt or truncated gzip


class _Unreadable(Exception):
    """A read failed part way through a file (wraps the OSError, EOFError or zlib.error)."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n:,} bytes"


class _Bounded:
    """Reads at most `left` bytes of a file (one range of an NDJSON export)."""

    def __init__(self, fh: IO[bytes], left: int) -> None:
        self.fh = fh
        self.left = left

    def readline(self, n: int) -> bytes:
        if self.left <= 0:
            return b""
        line = self.fh.readline(min(n, self.left))
        self.left -= len(line)
        return line


def _open(path: Path) -> IO[bytes]:
    raw = open(path, "rb", buffering=_BUFFER)  # noqa: SIM115 - closed by the caller's with-block
    magic = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _looks_like_cai(obj: Any) -> bool:
    """An object with a CAI asset's fields but no reader: a CAI asset missing its name or type."""
    return isinstance(obj, dict) and "kind" not in obj and any(
        k in obj for k in ("name", "asset_type", "assetType", "iam_policy", "iamPolicy", "resource", "ancestors")
    )


def _is_data(line: bytes) -> bool:
    """Not blank and not a `#` comment (Forseti's dumps begin with comment lines)."""
    s = line.lstrip()
    return bool(s) and s[:1] != b"#"


class FileSource:
    """A file, or every export, Kubernetes list and API response file under a folder (sorted, recursively)."""

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
        self._empty: list[tuple[Path, str]] = []  # files that gave no asset, with what they held
        self._shape = ""  # what the file being read looked like, when it gives no asset
        p = Path(path)
        try:
            exists, is_dir = p.exists(), p.is_dir()
        except OSError as exc:
            raise SourceError(f"source {path}: cannot read ({exc.strerror or exc})") from exc
        if not exists and not p.is_symlink():
            raise SourceError(f"source {path}: no such file or folder")
        if is_dir:
            try:
                # symbolic links too: a dangling one is reported as unreadable rather than passed over in silence
                self.files = sorted(
                    f
                    for f in p.rglob("*")
                    if f.name.lower().endswith(_EXPORT_SUFFIXES + _YAML_SUFFIXES) and (f.is_symlink() or f.is_file())
                )
            except OSError as exc:
                raise SourceError(f"source {path}: cannot list the folder ({exc})") from exc
            if not self.files:
                raise SourceError(f"source {path}: folder holds no .json, .ndjson, .dump, .gz, .yaml or .yml file")
        else:
            self.files = [p]

    def assets(self) -> Iterator[Asset]:
        for f in self.files:
            yield from self.file_assets(f)
        self.finish()

    def file_assets(self, f: Path) -> Iterator[Asset]:
        """The assets of one of the source's files (`assets` reads them all, then calls `finish`).

        A file that cannot be read, or stops being readable part way (a truncated gzip), makes the source partial
        and is named with the line reached; a file that gives no asset is remembered for `finish`.
        """
        before, unknown_before = self.status.assets, sum(self.status.unknown.values())
        skipped_before = self.status.skipped
        self._shape, self._next_line = "", 1
        try:
            name = f.name.lower().removesuffix(".gz")
            if name.endswith(_YAML_SUFFIXES):
                yield from self._yaml_file(f)
            else:
                yield from self._json_file(f)
        except (_Unreadable, *_READ_ERRORS) as exc:
            cause = exc.__cause__ if isinstance(exc, _Unreadable) and exc.__cause__ is not None else exc
            why = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
            where = f"{f}:{self._next_line}" if self._next_line > 1 else str(f)
            reason = f"cannot read ({type(cause).__name__}: {why})"
            if self._next_line > 1:
                reason += "; the lines before were read"
            self._file_failed(f"{where}: {reason}")
            self._shape = "unreadable bytes"
        except SourceError as exc:
            if len(self.files) == 1 or self.options.strict:
                raise
            # one bad file of a folder: the others are read, and the source is partial
            self._file_failed(str(exc))
            self._shape = "a file refused"
        if self.status.assets == before:
            unknown = sum(self.status.unknown.values()) - unknown_before
            skipped = self.status.skipped - skipped_before
            shape = self._shape or "no data"
            if skipped:
                shape += f", {skipped} malformed record(s)"
            if unknown and "kind" not in shape:
                shape += f", {unknown} object(s) of kinds no reader knows"
            self._empty.append((f, shape))

    def _file_failed(self, msg: str) -> None:
        """A file that could not be read (in part or at all): the source is partial, the file named."""
        self.status.fail("*", msg)
        self.status.errors.append(msg)
        if self.options.on_problem is not None:
            self.options.on_problem(msg)
        if self.options.strict:
            raise SourceError(msg) from None

    def finish(self) -> None:
        """Mark the snapshot partial when malformed records were skipped; refuse a source that gave no asset."""
        if self.status.skipped:
            self.status.fail("*", f"{self.status.skipped} malformed record(s) skipped; first: {self.status.errors[0]}")
        if self.status.assets == 0:
            seen = "; ".join(f"{f}: {shape}" for f, shape in self._empty[:5])
            if len(self._empty) > 5:
                seen += f"; and {len(self._empty) - 5} more file(s)"
            kinds = ", ".join(f"{k} ({n})" for k, n in Counter(self.status.unknown).most_common(5) if k not in seen)
            raise SourceError(
                f"source {self.uri}: no asset read. {seen or 'no file read'}"
                + (f". Kinds seen: {kinds}" if kinds else "")
                + (f". First problem: {self.status.errors[0]}" if self.status.errors else "")
                + f". Known shapes: {known_shapes()}"
            )

    # -- parts of one NDJSON file, for readers in several processes ------------------------------------------------
    def _first_data_line(self, fh: IO[bytes]) -> tuple[bytes, bytes, int]:
        """(the lines before the first data line, that line, its number); the line is b"" at the end of the file.
        A line over the line-size limit is an error."""
        limit = self.options.max_line_bytes
        before = b""
        lineno = 1
        while True:
            line = fh.readline(limit + 1)
            if len(line) > limit and not line.endswith(b"\n"):
                raise SourceError(self._too_long(fh, lineno))
            if not line or _is_data(line):
                return before, line, lineno
            before += line
            lineno += 1
            if len(before) > limit:
                raise SourceError(self._too_long(fh, lineno))

    def _too_long(self, fh: Any, lineno: int) -> str:
        name = getattr(fh, "name", None) or self.uri
        limit = self.options.max_line_bytes
        return f"{name}:{lineno}: a line longer than {_mib(limit)} (the line-size limit, AUDITOR_MAX_LINE_BYTES)"

    def is_ndjson(self, path: Path) -> bool:
        """Whether the file (gzip or not) reads as NDJSON: its first data line is one object, not a document's
        start."""
        if path.name.lower().removesuffix(".gz").endswith(_YAML_SUFFIXES):
            return False
        try:
            with _open(path) as fh:
                _, first, _ = self._first_data_line(fh)
        except (SourceError, *_READ_ERRORS):
            return False  # read where it is reported: in one process
        stripped = first.strip()
        if not stripped:
            return False
        try:
            head = _any_decoder.decode(stripped) if stripped.startswith(b"{") else None
        except (msgspec.DecodeError, RecursionError):
            return False
        if not isinstance(head, dict):
            return False
        r = classify(head)  # a CAI asset a line (or what looks like a malformed one), not a list of things
        return r.name == "cai-asset" if r is not None else _looks_like_cai(head)

    @staticmethod
    def is_gzip(path: Path) -> bool:
        try:
            with open(path, "rb") as fh:
                return fh.read(2) == b"\x1f\x8b"
        except OSError:
            return False

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
        with open(path, "rb", buffering=_BUFFER) as raw:
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

    def _unknown(self, obj: Any) -> None:
        kind = describe(obj)
        self.status.unknown[kind] = self.status.unknown.get(kind, 0) + 1
        if not self._shape:
            self._shape = f"objects of a kind no reader knows ({kind})"

    def _depth_error(self) -> str:
        return (
            f"nested deeper than the decoder can follow (about {sys.getrecursionlimit() - 100} levels; documents are"
            f" held to {self.options.max_depth}, AUDITOR_MAX_DEPTH)"
        )

    # -- objects of any shape -------------------------------------------------------------------------------------
    def _check_tree(self, obj: Any) -> str | None:
        """Why a decoded value is over the nesting or size limits, or None. Walked without recursion: YAML
        aliases can make a small file a tree of billions of values, which must not reach a reader."""
        max_depth, budget = self.options.max_depth, self.options.max_values
        stack: list[tuple[Any, int]] = [(obj, 1)]
        while stack:
            value, depth = stack.pop()
            budget -= 1
            if budget < 0:
                return (
                    f"more than {self.options.max_values:,} values (the value limit, AUDITOR_MAX_VALUES; "
                    "YAML aliases expanding?)"
                )
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels (the nesting limit, AUDITOR_MAX_DEPTH)"
            if isinstance(value, dict):
                stack.extend((v, depth + 1) for v in value.values())
            elif isinstance(value, list):
                stack.extend((v, depth + 1) for v in value)
        return None

    def _objects(self, obj: Any, where: str) -> Iterator[Asset]:
        """The assets of one decoded object of any shape (see `shapes.py`); an object no reader knows is counted."""
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                yield from self._objects(item, f"{where}: item {i}")
            return
        r = classify(obj)
        if r is None:
            self._unknown(obj)
            return
        if not self._shape:
            self._shape = r.shape
        try:
            for item in r.read(obj, self.options.cluster, where):
                if isinstance(item, Nested):
                    yield from self._objects(item.obj, item.where)
                else:
                    self.status.assets += 1
                    yield item
        except ValueError as exc:
            self._problem(where, str(exc))

    # -- CAI exports and JSON documents ----------------------------------------------------------------------------
    def _json_file(self, path: Path) -> Iterator[Asset]:
        with _open(path) as fh:
            before, first, lineno = self._first_data_line(fh)
            stripped = first.strip()
            if not stripped:
                self._shape = "an empty file" if not before.strip() else "only comment lines"
                return
            if stripped.startswith(b"{"):
                try:
                    head = _any_decoder.decode(stripped)
                except (msgspec.DecodeError, RecursionError):
                    head = None  # a pretty-printed document, or a broken first line
                if isinstance(head, dict):
                    self._shape = "NDJSON"
                    yield from self._ndjson(path, fh, first, lineno)
                    return
            limit = self.options.max_document_bytes
            rest = fh.read(limit + 1 - len(before) - len(first))
            if len(before) + len(first) + len(rest) > limit:
                raise SourceError(
                    f"{path}: a JSON document larger than {_mib(limit)} (the document-size limit, "
                    "AUDITOR_MAX_DOCUMENT_BYTES; an export this large is read as NDJSON, one asset a line)"
                )
        yield from self._document(path, before + first + rest)

    def _ndjson(self, path: Path, fh: IO[bytes] | _Bounded, first: bytes, lineno: int) -> Iterator[Asset]:
        """NDJSON read and decoded one line at a time, `first` (read by the caller) being line `lineno`.

        A CAI record is built here, in this loop that runs for every line of an export; any other line (blank, a
        comment, malformed, a Kubernetes object...) goes to `_lines`, which reports each problem with its line.
        One line at a time rather than a block of lines per decoder call: the objects of one line are freed
        before the next is decoded (a block's were alive together, which cost about a fifth more).
        """
        readline = fh.readline
        limit = self.options.max_line_bytes
        decode = _record_decoder.decode
        status = self.status
        wanted = self._wanted
        skipped = self._skipped_types
        verdicts = self._verdicts
        shared: dict[tuple[str, ...], tuple[str, ...]] = self._shared_ancestors
        shared_types: dict[str, str] = self._shared_types
        where_file = str(path)
        try:
            line = first or readline(limit + 1)  # a range read by a worker starts with no line read
        except _READ_ERRORS as exc:
            self._next_line = lineno
            raise _Unreadable() from exc
        while line:
            if len(line) > limit and not line.endswith(b"\n"):
                self._next_line = lineno
                raise SourceError(f"{path}:{lineno}: a line longer than {_mib(limit)} (the line-size limit, "
                                  "AUDITOR_MAX_LINE_BYTES)")
            try:
                rec = decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                rec = None
            asset_type = None if rec is None or not rec.name else rec.asset_type or rec.assetType
            if not asset_type:
                yield from self._lines(path, [line], lineno)
            else:
                assert rec is not None
                iam = rec.iam_policy or rec.iamPolicy
                has_iam = bool(iam) and iam != _NULL
                verdict = True
                if wanted is not None:
                    known = verdicts[has_iam]
                    verdict = known.get(asset_type)  # type: ignore[assignment]
                    if verdict is None:
                        verdict = known[asset_type] = wanted(asset_type, has_iam)
                if not verdict:
                    if skipped is not None:
                        skipped[asset_type] += 1
                    status.assets += 1
                else:
                    asset_type = shared_types.setdefault(asset_type, asset_type)
                    asset = self._record(rec, asset_type, iam if has_iam else None, where_file, lineno, shared)
                    if asset is not None:
                        status.assets += 1
                        yield asset
            lineno += 1
            try:
                line = readline(limit + 1)
            except _READ_ERRORS as exc:
                self._next_line = lineno
                raise _Unreadable() from exc
        self._next_line = lineno

    def select(self, wanted: Callable[[str, bool], bool], skipped: Counter[str]) -> None:
        """Build only the assets `wanted(asset_type, has_iam_policy)` accepts; count the others in `skipped`.

        The engine says what its rules read (Engine.wants); an NDJSON record of another type is checked for what
        makes it malformed and counted, but never becomes an Asset. Other formats are unaffected.
        """
        self._wanted = wanted
        self._skipped_types = skipped

    def _record(self, rec: Any, asset_type: str, iam: msgspec.Raw | None, where_file: str, lineno: int,
                shared: dict[tuple[str, ...], tuple[str, ...]]) -> Asset | None:
        """The Asset of a decoded CAI record of a type some rule reads, or None when it is malformed (reported).

        Its payloads stay the decoder's Raw views of the line: an asset the engine keeps copies them then (`hold`),
        the others are let go with their line."""
        data = rec.resource.data if rec.resource is not None else _NO_RAW
        res = data if data and data != _NULL else None
        try:
            if res is not None and memoryview(res)[0] != 0x7B:  # not "{"
                raise ValueError(f"asset {rec.name}: 'resource.data' is not an object")
            if iam is not None:
                check_iam_policy(iam)
            if rec.ancestors:
                # one tuple per distinct ancestry: the assets a scan holds to its end share it
                ancestors = tuple(rec.ancestors)
                ancestors = shared.setdefault(ancestors, ancestors)
                if len(shared) > 100_000:
                    shared.clear()
            elif rec.ancestry_path:
                ancestors = record_to_asset(rec, where_file).ancestors
            else:
                ancestors = ()
        except ValueError as exc:
            self._problem(f"{where_file}:{lineno}", str(exc) if str(exc).startswith("asset ") else
                          f"asset {rec.name}: {exc}")
            return None
        except RecursionError:
            self._problem(f"{where_file}:{lineno}", f"asset {rec.name}: {self._depth_error()}")
            return None
        # name, asset_type, resource, iam_policy, ancestors, update_time, origin, line
        return Asset(rec.name, asset_type, res, iam, ancestors, rec.update_time or rec.updateTime, where_file, lineno)

    def _lines(self, path: Path, lines: list[bytes], lineno: int) -> Iterator[Asset]:
        status = self.status
        for line in lines:
            if _is_data(line):
                where = f"{path}:{lineno}"
                try:
                    rec = _record_decoder.decode(line)
                    if rec.name and (rec.asset_type or rec.assetType):
                        asset: Asset | None = record_to_asset(rec, str(path), lineno)
                    else:
                        asset = None
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self._problem(where, f"malformed asset line ({exc})")
                except ValueError as exc:
                    self._problem(where, str(exc))
                except RecursionError:
                    self._problem(where, self._depth_error())
                else:
                    if asset is not None:
                        status.assets += 1
                        yield asset
                    else:
                        yield from self._other_line(line, where)
            lineno += 1

    def _other_line(self, line: bytes, where: str) -> Iterator[Asset]:
        """A line that is not a CAI asset: a Kubernetes object, a Compute response, or a kind no reader knows."""
        try:
            obj = _any_decoder.decode(line)
        except msgspec.DecodeError as exc:
            self._problem(where, f"malformed line ({exc})")
            return
        except RecursionError:
            self._problem(where, self._depth_error())
            return
        over = self._check_tree(obj)
        if over is not None:
            self._problem(where, over)
            return
        if classify(obj) is None and _looks_like_cai(obj):
            try:  # a CAI asset with a field missing: malformed, with what is missing, not an unknown kind
                record_to_asset(_record_decoder.decode(line), where)
            except (msgspec.ValidationError, ValueError) as exc:
                self._problem(where, str(exc))
                return
        yield from self._objects(obj, where)

    def _document(self, path: Path, data: bytes) -> Iterator[Asset]:
        head = data.lstrip()[:1]
        if head == b"[":
            try:
                raws = msgspec.json.decode(data, type=list[msgspec.Raw])
            except msgspec.DecodeError as exc:
                raise SourceError(f"{path}: not a valid JSON array ({exc})") from None
            except msgspec.ValidationError as exc:
                raise SourceError(f"{path}: not a JSON array ({exc})") from None
            except RecursionError:
                raise SourceError(f"{path}: {self._depth_error()}") from None
            self._shape = "a JSON array"
            yield from self._raw_items(path, raws)
            return
        if head != b"{":
            snippet = data.lstrip()[:40].decode("utf-8", "replace")
            raise SourceError(
                f"{path}: neither JSON nor NDJSON (it starts with {snippet!r}); expected one of: {known_shapes()}"
            )
        try:
            doc = _any_decoder.decode(data)
        except msgspec.DecodeError:
            yield from self._concatenated(path, data)
            return
        except RecursionError:
            raise SourceError(f"{path}: {self._depth_error()}") from None
        over = self._check_tree(doc)
        if over is not None:
            raise SourceError(f"{path}: {over}")
        yield from self._objects(doc, str(path))

    def _concatenated(self, path: Path, data: bytes) -> Iterator[Asset]:
        """Pretty-printed JSON objects one after another (`gcloud ... --format=json` of several calls, `jq .`); or,
        when the text is not that, NDJSON with bad lines, each reported with its number."""
        text = data.decode("utf-8", "replace")
        decoder = json.JSONDecoder()
        pos, objects = 0, []
        try:
            while True:
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
                if pos >= len(text):
                    break
                obj, pos = decoder.raw_decode(text, pos)
                objects.append((obj, text.count("\n", 0, pos) + 1))
        except json.JSONDecodeError as exc:
            first_lines = [line for line in data.splitlines()[:50] if _is_data(line)]
            if len(first_lines) == 1 or any(self._one_line_object(line) for line in first_lines):
                self._shape = "NDJSON"
                buf = io.BytesIO(data)
                yield from self._ndjson(path, buf, buf.readline(), 1)
                return
            raise SourceError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        except RecursionError:
            raise SourceError(f"{path}: {self._depth_error()}") from None
        for n, (obj, end_line) in enumerate(objects):
            over = self._check_tree(obj)
            if over is not None:
                raise SourceError(f"{path}: object {n + 1}: {over}")
            yield from self._objects(obj, f"{path}: object {n + 1} (ending line {end_line})")

    @staticmethod
    def _one_line_object(line: bytes) -> bool:
        s = line.strip()
        if not s.startswith(b"{"):
            return False
        try:
            return isinstance(_any_decoder.decode(s), dict)
        except (msgspec.DecodeError, RecursionError):
            return False

    def _raw_items(self, path: Path, raws: list[msgspec.Raw]) -> Iterator[Asset]:
        for i, raw in enumerate(raws):
            where = f"{path}: item {i}"
            try:
                rec = _record_decoder.decode(raw)
                if rec.name and (rec.asset_type or rec.assetType):
                    asset = record_to_asset(rec, where)
                else:
                    yield from self._other_line(bytes(raw), where)
                    continue
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._problem(where, f"malformed asset ({exc})")
                continue
            except ValueError as exc:
                self._problem(where, str(exc))
                continue
            except RecursionError:
                self._problem(where, self._depth_error())
                continue
            self.status.assets += 1
            yield asset

    # -- YAML: Kubernetes lists and manifests, gcloud's YAML of assets and security policies ------------------------
    def _yaml_file(self, path: Path) -> Iterator[Asset]:
        limit = self.options.max_document_bytes
        with _open(path) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise SourceError(
                f"{path}: larger than {_mib(limit)} (the document-size limit, AUDITOR_MAX_DOCUMENT_BYTES)"
            )
        text = data.decode("utf-8", errors="replace")
        if not text.strip():
            self._shape = "an empty file"
            return
        docs = yaml.load_all(text, Loader=_YamlLoader)
        n = 0
        while True:
            try:
                doc = next(docs)
            except StopIteration:
                break
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = f":{mark.line + 1}" if mark is not None else ""
                raise SourceError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
            except RecursionError:
                raise SourceError(f"{path}: document {n + 1}: {self._depth_error()}") from None
            n += 1
            if doc is None:
                continue
            if isinstance(doc, str | int | float | bool):
                # a YAML file of another kind (a plain text) reads as one scalar: named, never an asset
                self._unknown(doc)
                continue
            over = self._check_tree(doc)
            if over is not None:
                raise SourceError(f"{path}: document {n}: {over}")
            yield from self._objects(doc, f"{path}: document {n}" if n > 1 else str(path))
        if not self._shape and n == 0:
            self._shape = "only comments"


def iter_file_assets(path: str | os.PathLike[str], cluster: str = "local") -> Iterator[Asset]:
    """Every asset of a file or folder (a convenience for tests and the benchmark)."""
    yield from FileSource(str(path), SourceOptions(cluster=cluster)).assets()
