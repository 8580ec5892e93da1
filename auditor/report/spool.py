"""Findings as they pass: counted (the summary) and kept encoded, grouped by rule, in memory up to a budget and
then in a temporary file, so that a report of any size is written with memory that does not grow with it.

A renderer encodes each finding once, as it is made, into the bytes it will write (one line each: a JSON object,
a CSV row, an XML element...); the spool keeps them by rule, in the order they came. Once the scan is over, the
renderer writes its header (the summary is known by then), the groups in report order, and its footer.

Each line may carry a fixed-size record beside it (`meta`): for findings, the asset copy that gave it, its id, its
severity and whether it is exempted (`finding_meta`). When a later copy of an asset replaces one whose findings
were already spooled, the scan finds that copy's lines by their record (`find`) and takes them back (`drop`)
before anything is written; the records are what it needs to correct the counts.
"""

from __future__ import annotations

import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple, Protocol, runtime_checkable

from auditor.model import SEVERITIES, SEVERITY_RANK, SEVERITY_TEXT, Finding, Severity

MEMORY_BUDGET = 4 << 20  # encoded bytes kept in memory before the groups are written to the temporary file
# The lines of a group read back (and written) at a time; a report's written form of them (JSON: with their rules'
# facts) is about twice as large
READ_CHUNK = 256 << 10

# An asset copy: 8 bytes of the hash of (name, has resource, has IAM policy) and how many earlier copies of it were
# replaced (see auditor/scan.py's Duplicates). NO_COPY: a finding made once every asset was read, which nothing
# replaces any more.
_COPY = struct.Struct("<qI")
COPY_BYTES = _COPY.size
NO_GEN = 0xFFFFFFFF
NO_COPY = _COPY.pack(0, NO_GEN)
META_BYTES = COPY_BYTES + 8 + 2  # the copy, 8 bytes of the finding id, its severity's rank, exempted or not


def copy_tag(key: int, gen: int) -> bytes:
    return _COPY.pack(key, gen)


def finding_meta(f: Finding, copy: bytes) -> bytes:
    """The record spooled beside a finding's line (see the module's docstring)."""
    return copy + finding_mark(f)


MARK_BYTES = META_BYTES - COPY_BYTES


# The last 2 bytes of a record, by severity and whether the finding is exempted
_FLAGS = {(s, exempted): bytes((s.rank, exempted)) for s in Severity for exempted in (False, True)}


def finding_mark(f: Finding) -> bytes:
    """The finding's own part of its record (all but the copy): 8 bytes of its id, its severity's rank, exempted."""
    return bytes.fromhex(f.id[:16]) + _FLAGS[f.severity, f.exempted is not None]


class Spot(NamedTuple):
    """Where a finding waits (its group and its place in the group) and what its record says."""

    group: str
    place: int
    meta: bytes

    @property
    def copy(self) -> bytes:
        return self.meta[:COPY_BYTES]

    @property
    def id(self) -> bytes:
        return self.meta[COPY_BYTES : COPY_BYTES + 8]

    @property
    def rule(self) -> str:
        """Groups are keyed by rule, perhaps with a qualifier after a NUL (JUnit's exempted findings)."""
        return self.group.partition("\x00")[0]

    @property
    def rank(self) -> int:
        return self.meta[COPY_BYTES + 8]

    @property
    def exempted(self) -> bool:
        return bool(self.meta[COPY_BYTES + 9])


def matching(copies: Container[bytes], claims: Container[bytes]) -> Callable[[bytes], bool]:
    """A test on records: the finding of one of `copies`, or one of `claims` (a copy followed by a finding id)."""
    return lambda m: m[:COPY_BYTES] in copies or m[: COPY_BYTES + 8] in claims


@runtime_checkable
class FindingSink(Protocol):
    """Where a scan hands its findings, each with the asset copy that gave it, and that can take back those of
    copies replaced after they were handed on (a spooled report, or the findings a scan keeps)."""

    def add(self, f: Finding, copy: bytes) -> None: ...

    def find(self, match: Callable[[bytes], bool]) -> list[Spot]: ...

    def drop(self, spots: Iterable[Spot]) -> None: ...


@runtime_checkable
class EncodingSink(FindingSink, Protocol):
    """A FindingSink that also takes findings encoded elsewhere (by the worker processes of `--jobs`): it tells
    them how to encode (`encoding`: a renderer class and its rules, built again in each worker) and takes each
    finding as its group, its encoded line and its record (`add_line`), so that no finding crosses between
    processes as an object."""

    def encoding(self) -> tuple[type[Any], list[Any]]: ...

    def add_line(self, group: str, line: bytes, meta: bytes) -> None:
        """One or more findings of the group: their lines one after the other, and their records."""


@dataclass
class Tally:
    """The counts a summary needs, kept as findings pass: open findings by severity and by rule, exempted ones."""

    open_by_severity: Counter[str] = field(default_factory=Counter)
    open_by_rule: Counter[str] = field(default_factory=Counter)
    exempted_by_rule: Counter[str] = field(default_factory=Counter)
    worst_rank: int = -1

    def add(self, f: Finding) -> None:
        if f.exempted is not None:
            self.exempted_by_rule[f.rule] += 1
            return
        severity = f.severity
        self.open_by_severity[SEVERITY_TEXT[severity]] += 1
        self.open_by_rule[f.rule] += 1
        rank = SEVERITY_RANK[severity]
        if rank > self.worst_rank:
            self.worst_rank = rank

    def add_record(self, rule: str, rank: int, exempted: bool) -> None:
        """`add`, from what a finding's record says of it (a finding encoded in a worker process)."""
        if exempted:
            self.exempted_by_rule[rule] += 1
            return
        self.open_by_severity[SEVERITIES[rank]] += 1
        self.open_by_rule[rule] += 1
        if rank > self.worst_rank:
            self.worst_rank = rank

    def add_records(self, rule: str, records: bytes) -> None:
        """`add_record` for each of these findings' records (META_BYTES each), all of one rule."""
        ranks = records[COPY_BYTES + 8 :: META_BYTES]
        exempted = records[COPY_BYTES + 9 :: META_BYTES]
        if exempted.count(0) != len(exempted):
            for rank, ex in zip(ranks, exempted, strict=True):
                self.add_record(rule, rank, bool(ex))
            return
        for rank in set(ranks):
            n = ranks.count(rank)
            self.open_by_severity[SEVERITIES[rank]] += n
            self.open_by_rule[rule] += n
            if rank > self.worst_rank:
                self.worst_rank = rank

    def remove(self, rule: str, rank: int, exempted: bool) -> None:
        """Take back a finding counted by `add` (one of a replaced asset copy)."""
        if exempted:
            self.exempted_by_rule[rule] -= 1
            return
        self.open_by_severity[SEVERITIES[rank]] -= 1
        self.open_by_rule[rule] -= 1
        self.worst_rank = max((SEVERITIES.index(s) for s, n in self.open_by_severity.items() if n > 0), default=-1)

    @property
    def open(self) -> int:
        return sum(self.open_by_severity.values())

    @property
    def exempted(self) -> int:
        return sum(self.exempted_by_rule.values())

    def by_severity(self) -> dict[str, int]:
        return {s: self.open_by_severity.get(s, 0) for s in reversed(SEVERITIES)}

    def count(self, rule: str) -> int:
        return self.open_by_rule.get(rule, 0) + self.exempted_by_rule.get(rule, 0)


class Spool:
    """Encoded lines grouped by a key, in arrival order within a group, each with a record of `meta_size` bytes;
    memory stays under `budget` bytes."""

    def __init__(self, budget: int = MEMORY_BUDGET, meta_size: int = 0) -> None:
        self.budget = budget
        self.meta_size = meta_size
        self._buffers: dict[str, bytearray] = {}
        self._metas: dict[str, bytearray] = {}
        self._held = 0
        # key -> (offset, length) of lines, then (offset, length) of their records, in the file
        self._segments: dict[str, list[tuple[int, int, int, int]]] = {}
        self._dropped: dict[str, set[int]] = {}  # key -> places in the group of the lines taken back
        self._file: IO[bytes] | None = None
        self._end = 0

    def add(self, key: str, line: bytes, meta: bytes = b"") -> None:
        """Add encoded lines (each ends with a newline and holds no other) and their records (`meta_size` bytes
        each)."""
        lines, records = self.group(key)
        lines += line
        records += meta
        self.added(len(line) + len(meta))

    def group(self, key: str) -> tuple[bytearray, bytearray]:
        """The lines and records of a group held in memory, for a writer that encodes into them in place (no bytes
        object a line), as `add` would have added them; it then tells how many bytes it added (`added`)."""
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = bytearray()
            self._metas[key] = bytearray()
        return buf, self._metas[key]

    def added(self, size: int) -> None:
        """Bytes were added in place to a group's lines and records (`group`)."""
        self._held += size
        if self._held > self.budget:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="auditor-report-")  # noqa: SIM115 (closed by close())
        fh = self._file
        fh.seek(self._end)
        for key, buf in self._buffers.items():
            if buf:
                metas = self._metas[key]
                fh.write(buf)
                fh.write(metas)
                self._segments.setdefault(key, []).append(
                    (self._end, len(buf), self._end + len(buf), len(metas))
                )
                self._end += len(buf) + len(metas)
                buf.clear()
                metas.clear()
        self._held = 0

    def _segments_of(self, key: str, records: bool = False) -> Iterator[bytes]:
        """A group's lines (or, `records`, their records) a segment at a time, in order: in the file, then in
        memory (a segment is at most the budget)."""
        fh = self._file
        for line_at, line_len, meta_at, meta_len in self._segments.get(key, ()):
            assert fh is not None
            fh.seek(meta_at if records else line_at)
            yield fh.read(meta_len if records else line_len)
        yield bytes((self._metas if records else self._buffers).get(key, b""))

    def find(self, match: Callable[[bytes], bool]) -> list[Spot]:
        """The lines whose record `match` accepts (one pass over the records, none over the lines)."""
        size = self.meta_size
        out: list[Spot] = []
        if not size:
            return out
        for key in self._buffers:
            index = 0
            for records in self._segments_of(key, records=True):
                for at in range(0, len(records), size):
                    meta = records[at : at + size]
                    if match(meta):
                        out.append(Spot(key, index, meta))
                    index += 1
        return out

    def drop(self, spots: Iterable[Spot]) -> None:
        """Leave these lines out of what `chunks` gives."""
        for s in spots:
            self._dropped.setdefault(s.group, set()).add(s.place)

    def groups(self) -> list[str]:
        return list(self._buffers)

    def chunks(self, key: str) -> Iterator[bytes]:
        """The lines of a group, in pieces of whole lines."""
        dropped = self._dropped.get(key)
        if dropped:
            yield from self._kept(key, dropped)
            return
        fh = self._file
        for offset, length, _, _ in self._segments.get(key, ()):
            assert fh is not None
            fh.seek(offset)
            while length > 0:
                piece = fh.read(min(length, READ_CHUNK))
                length -= len(piece)
                if length > 0 and not piece.endswith(b"\n"):
                    rest = fh.readline()
                    length -= len(rest)
                    piece += rest
                yield piece
        buf = self._buffers.get(key)
        if buf:
            yield from _pieces(buf)

    def _kept(self, key: str, dropped: set[int]) -> Iterator[bytes]:
        """The lines of a group but those taken back, a segment at a time."""
        index = 0
        for piece in self._segments_of(key):
            lines = piece.split(b"\n")[:-1]
            kept = [line for i, line in enumerate(lines, index) if i not in dropped]
            index += len(lines)
            if kept:
                yield b"\n".join(kept) + b"\n"

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buffers.clear()
        self._metas.clear()
        self._segments.clear()
        self._dropped.clear()


def _pieces(buf: bytearray) -> Iterator[bytes]:
    """Newline-ended lines held in memory, as pieces of whole lines of about READ_CHUNK bytes (each copied once:
    the whole of the budget copied at once, and then its written form, were most of a scan's peak)."""
    with memoryview(buf) as view:
        start, size = 0, len(buf)
        while start < size:
            end = start + READ_CHUNK
            if end >= size:
                end = size
            else:
                cut = buf.rfind(b"\n", start, end)
                end = cut + 1 if cut >= 0 else buf.index(b"\n", end) + 1  # a line longer than a piece: whole
            yield bytes(view[start:end])
            start = end
