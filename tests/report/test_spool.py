"""The spool keeps at most its budget in memory, whatever the number of findings, and gives each group back whole
and in order, across the temporary file and memory."""

from __future__ import annotations

from auditor.report.spool import Spool


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
