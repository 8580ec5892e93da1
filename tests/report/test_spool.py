"""The spool keeps at most its budget in memory, whatever the number of findings, and gives each group back whole
and in order, across the temporary file and memory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import auditor.report.spool as spool_module
from auditor.model import SEVERITIES
from auditor.report.spool import COPY_BYTES, META_BYTES, Spool, Tally


def test_memory_stays_under_the_budget_and_groups_come_back_in_order() -> None:
    spool = Spool(budget=4096)
    expected: dict[str, list[bytes]] = {"a": [], "b": [], "c": []}
    peak = 0
    for i in range(20_000):
        key = "abc"[i % 7 % 3]
        line = f'{{"n":{i},"pad":"{"x" * (i % 50)}"}}\n'.encode()
        spool.add(key, line)
        expected[key].append(line)
        peak = max(peak, spool._held)
    assert peak <= 4096 + 100  # the budget, and one line over it at most before it spills
    assert spool._file is not None  # most of it went to disk
    for key, lines in expected.items():
        chunks = list(spool.chunks(key))
        assert all(c.endswith(b"\n") for c in chunks)
        assert b"".join(chunks) == b"".join(lines)
    assert spool.groups() == ["a", "b", "c"]
    spool.close()
    assert list(spool.chunks("a")) == []


def test_lines_held_in_memory_come_back_in_pieces_of_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "READ_CHUNK", 64)
    rng = random.Random(5)
    spool = Spool(budget=1 << 20)
    lines = [b"x" * rng.choice([0, 1, 10, 63, 64, 65, 200]) + b"\n" for _ in range(500)]
    for line in lines:
        spool.add("a", line)
    pieces = list(spool.chunks("a"))
    assert spool._file is None  # all of it in memory
    assert b"".join(pieces) == b"".join(lines)
    for piece in pieces:
        assert piece.endswith(b"\n")
        assert len(piece) <= 64 or piece.count(b"\n") == 1  # a piece is at most the size, or one longer line
    spool.close()


@given(st.lists(st.tuples(st.integers(0, len(SEVERITIES) - 1), st.booleans()), max_size=40), st.booleans())
def test_a_tally_of_records_is_the_tally_of_each_record(marks: list[tuple[int, bool]], open_only: bool) -> None:
    if open_only:
        marks = [(rank, False) for rank, _ in marks]
    records = b"".join(bytes(COPY_BYTES + 8) + bytes((rank, exempted)) for rank, exempted in marks)
    assert len(records) == META_BYTES * len(marks)
    one_by_one, at_once = Tally(), Tally()
    one_by_one.add_record("r0", 1, False)
    at_once.add_record("r0", 1, False)
    for rank, exempted in marks:
        one_by_one.add_record("r1", rank, exempted)
    at_once.add_records("r1", records)
    assert at_once == one_by_one
