"""Findings as they pass: counted (the summary) and kept encoded, grouped by rule, in memory up to a budget and
then in a temporary file, so that a report of any size is written with memory that does not grow with it.

A renderer encodes each finding once, as it is made, into the bytes it will write (one line each: a JSON object,
a CSV row, an XML element...); the spool keeps them by rule, in the order they came. Once the scan is over, the
renderer writes its header (the summary is known by then), the groups in report order, and its footer.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from auditor.model import SEVERITIES, Finding

MEMORY_BUDGET = 8 << 20  # encoded bytes kept in memory before the groups are written to the temporary file
READ_CHUNK = 1 << 20


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
        self.open_by_severity[f.severity.value] += 1
        self.open_by_rule[f.rule] += 1
        rank = f.severity.rank
        if rank > self.worst_rank:
            self.worst_rank = rank

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
    """Encoded lines grouped by a key, in arrival order within a group; memory stays under `budget` bytes."""

    def __init__(self, budget: int = MEMORY_BUDGET) -> None:
        self.budget = budget
        self._buffers: dict[str, bytearray] = {}
        self._held = 0
        self._segments: dict[str, list[tuple[int, int]]] = {}  # key -> (offset, length) in the file
        self._file: IO[bytes] | None = None
        self._end = 0

    def add(self, key: str, line: bytes) -> None:
        """Add one encoded line (it ends with a newline and holds no other)."""
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = bytearray()
        buf += line
        self._held += len(line)
        if self._held > self.budget:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="auditor-report-")  # noqa: SIM115 (closed by close())
        fh = self._file
        fh.seek(self._end)
        for key, buf in self._buffers.items():
            if buf:
                fh.write(buf)
                self._segments.setdefault(key, []).append((self._end, len(buf)))
                self._end += len(buf)
                buf.clear()
        self._held = 0

    def groups(self) -> list[str]:
        return list(self._buffers)

    def chunks(self, key: str) -> Iterator[bytes]:
        """The lines of a group, in pieces of whole lines."""
        fh = self._file
        for offset, length in self._segments.get(key, ()):
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
            yield bytes(buf)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buffers.clear()
        self._segments.clear()
