"""The staging of a cycle's findings: findings seen as stored are counted and not staged, and drift stays what
staging every finding gives (the reference: a staging that does not read the open findings first)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.model import Exempted, Finding, Mode, Severity
from auditor.state import Store
from auditor.state.staging import SCRATCH, Staging, content_row, finding_digest, id_key
from tests.state.test_store import cycle, finding


def _staged(store: Store) -> int:
    return int(store.db.rows("SELECT count(*) FROM cycle_seen")[0][0])


def _left_after_cycle(store: Store) -> int:
    """What a recorded cycle left of its staging: on SQLite, the attached scratch database; else rows."""
    if store.dialect == "sqlite":
        return sum(r[1] == SCRATCH for r in store.db.rows("PRAGMA database_list"))
    return sum(int(store.db.rows(f"SELECT count(*) FROM {t}")[0][0])
               for t in ("cycle_seen", "cycle_unevaluated", "cycle_gone", "cycle_unseen"))


def _state(store: Store) -> list[tuple[object, ...]]:
    return [(f.id, f.message, f.severity, f.exempted, f.stale, f.first_seen, f.last_seen, f.details)
            for f in store.open_findings()]


def test_a_cycle_with_no_change_stages_nothing(state_target: str) -> None:
    a, b = finding("r1", "//a"), finding("r2", "//b", exempt=True)
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b]))
        staging = store.staging()
        staging.extend([a, b, a])  # a repeated id counts once
        assert staging.unchanged == 2 and _staged(store) == 0
        assert list(staging.counts()) == [("r1", "high", False, 1), ("r2", "high", True, 1)]
        rec = store.record_cycle(cycle(200, staging))
        assert rec.changed == 0 and rec.drift == [] and rec.still_open == 2 and rec.open == 1  # not exempted


def test_what_changed_is_staged_and_recorded(state_target: str) -> None:
    """A changed message, severity, detail or exemption makes another digest: staged, compared, recorded."""
    a, b, c = finding("r1", "//a"), finding("r1", "//b"), finding("r1", "//c")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b, c]))
        staging = store.staging()
        worse = msgspec.structs.replace(a, details={"members": ["allUsers"]})
        exempted = msgspec.structs.replace(b, exempted=Exempted("reason", "team", None, "2030-01-01"))
        staging.extend([worse, exempted, c])
        assert staging.unchanged == 1 and _staged(store) == 2
        rec = store.record_cycle(cycle(200, staging))
        assert rec.changed == 2
        assert [(e.change, e.asset) for e in rec.drift] == [("resolved", "//b")]  # exempted now
        got = store.finding(a.id)
        assert got is not None and got.details == {"members": ["allUsers"]} and got.first_seen == 101
        # The next cycle sees the new content as stored.
        staging = store.staging()
        staging.extend([worse, exempted, c])
        assert staging.unchanged == 3 and _staged(store) == 0


def test_the_first_of_a_repeated_id_is_recorded_before_and_after_sealing(state_target: str) -> None:
    """Staged rows carry no index on the id until the staging is sealed: repeated ids are dropped then, the first
    staged winning, and once sealed as they come."""
    a = finding("r1", "//a")
    first, second, third = (msgspec.structs.replace(a, message=m) for m in ("first", "second", "third"))
    with Store(state_target) as store:
        staging = Staging(store.db, batch=1)
        staging.extend([first, second, finding("r1", "//b")])
        staging.withdraw("//b", {"r1"})
        staging.seal()
        staging.extend([third, finding("r1", "//b")])
        assert list(staging.counts()) == [("r1", "high", False, 2)]
        store.record_cycle(cycle(100, staging))
        got = store.finding(a.id)
        assert got is not None and got.message == "first"
        assert {f.asset for f in store.open_findings()} == {"//a", "//b"}
        # The next staging starts unsealed and empty.
        staging = store.staging()
        staging.extend([second, third])
        store.record_cycle(cycle(200, staging))
        got = store.finding(a.id)
        assert got is not None and got.message == "second"


def test_a_repeated_new_id_is_dropped_as_it_comes_and_one_sharing_its_key_is_not(state_target: str) -> None:
    """The store's staging remembers the new ids it staged (key and last digits: the whole id): a repeat is not
    staged at all, one taken back with its asset's copy is staged again, and another id with the same 16 first
    digits is a finding of its own."""
    a = finding("r1", "//a")
    first, second = (msgspec.structs.replace(a, message=m) for m in ("first", "second"))
    twin, other = (msgspec.structs.replace(finding("r1", f"//t{n}"), id="0123456789abcdef000" + str(n)) for n in (1, 2))
    with Store(state_target) as store:
        staging = store.staging()
        staging.extend([first, second, finding("r1", "//b"), first])
        assert _staged(store) == 2
        staging.withdraw("//b", {"r1"})
        staging.extend([finding("r1", "//b"), twin, twin, other])
        assert _staged(store) == 4
        staging.extend([twin])  # the key remembers other's last digits now: staged again, and sealing drops it
        assert _staged(store) == 5
        rec = store.record_cycle(cycle(100, staging))
        got = store.finding(a.id)
        assert got is not None and got.message == "first" and rec.new_count == 4
        assert {f.asset for f in store.open_findings()} == {"//a", "//b", "//t1", "//t2"}


def test_the_digest_follows_every_stored_column() -> None:
    """Any change to what a stored column is made of changes the digest; the same content gives the same one."""
    a = finding("r1", "//a", ancestors=("projects/1", "folders/2", "organizations/3"))
    variants = [
        msgspec.structs.replace(a, rule="r2"), msgspec.structs.replace(a, check="other"),
        msgspec.structs.replace(a, severity=Severity.low), msgspec.structs.replace(a, mode=Mode.enforce),
        msgspec.structs.replace(a, asset="//b"), msgspec.structs.replace(a, asset_type="other"),
        msgspec.structs.replace(a, message="other"), msgspec.structs.replace(a, details={"n": 1}),
        msgspec.structs.replace(a, details={"n": "1"}), msgspec.structs.replace(a, ancestors=("projects/2",)),
        msgspec.structs.replace(a, exempted=Exempted("reason", "team", None, None)),
        msgspec.structs.replace(a, expired_exemption=Exempted("reason", "team", None, None)),
        msgspec.structs.replace(a, exempted=Exempted("reason", "team", None, "2030-01-01")),
        msgspec.structs.replace(a, id="0" * 20),
    ]
    digests = {finding_digest(v) for v in variants}
    assert len(digests) == len(variants) and finding_digest(a) not in digests
    # Equal findings built apart (details in another key order) have the same digest, the one of their row.
    b = msgspec.structs.replace(a, details={"y": 1, "x": [1, 2]})
    c = msgspec.structs.replace(a, details={"x": [1, 2], "y": 1})
    assert finding_digest(b) == finding_digest(c) == content_row(b)[-1]
    # Rows differ in their columns only where the digests differ.
    rows = {content_row(v)[:-1] for v in variants}
    assert len(rows) == len(variants)


def test_digests_are_signed_64_bit_stable_across_processes_and_stored_as_made(state_target: str) -> None:
    """Both backends store a digest as a signed 64-bit integer; another interpreter (another string hash seed) makes
    the same digest, and a cycle compares against what it stored (a second cycle of the same findings stages none)."""
    many = [finding("r1", f"//a{i}", ancestors=("projects/1",)) for i in range(200)]
    digests = [finding_digest(f) for f in many]
    assert all(-(1 << 63) <= d < 1 << 63 for d in digests) and min(digests) < 0 <= max(digests)
    script = ("from tests.state.test_store import finding; from auditor.state.staging import finding_digest;"
              " print(finding_digest(finding('r1', '//a7', ancestors=('projects/1',))))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=Path(__file__).parents[2])
    assert int(out.stdout) == digests[7]
    with Store(state_target) as store:
        store.record_cycle(cycle(100, many))
        stored = dict(store.db.rows("SELECT id, digest FROM findings"))
        assert [stored[f.id] for f in many] == digests
        staging = store.staging()
        staging.extend(many)
        assert staging.unchanged == len(many) and _staged(store) == 0


def test_open_findings_not_seen_are_resolved_among_the_unmarked_only(state_target: str) -> None:
    many = [finding("r1", f"//a{i}") for i in range(300)]
    with Store(state_target) as store:
        store.record_cycle(cycle(100, many))
        staging = Staging(store.db, batch=7, compare=True)
        staging.extend(many[::3])
        rec = store.record_cycle(cycle(200, staging))
        assert rec.resolved_count == 200 and rec.new_count == 0 and rec.still_open == 100
        assert {f.id for f in store.open_findings()} == {f.id for f in many[::3]}
        assert _left_after_cycle(store) == 0


def test_an_unchanged_finding_of_a_replaced_copy_is_taken_back(state_target: str) -> None:
    """A later copy of an asset replaces the earlier one's findings (`withdraw`): an unchanged finding it took back is
    uncounted, and resolved if the later copy does not give it again."""
    a, b = finding("r1", "//a"), finding("r1", "//b")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b]))
        staging = store.staging()
        staging.extend([a, b])
        staging.withdraw("//a", {"r1"})
        assert staging.unchanged == 1 and list(staging.counts()) == [("r1", "high", False, 1)]
        rec = store.record_cycle(cycle(200, staging))
        assert [(e.change, e.asset) for e in rec.drift] == [("resolved", "//a")]
        # Taken back, then given again by the later copy: still open, nothing written.
        store.record_cycle(cycle(300, [a, b]))
        staging = store.staging()
        staging.extend([a, b])
        staging.withdraw("//b", {"r1"})
        staging.extend([b])
        assert staging.unchanged == 2 and _staged(store) == 0
        rec = store.record_cycle(cycle(400, staging))
        assert rec.drift == [] and rec.changed == 0 and rec.open == 2


def test_rows_stored_before_digests_are_filled_by_the_next_cycle(state_target: str) -> None:
    """Rows without a digest (migration v6) or with another one (an older digest): the next cycle writes the digest
    alone, and nothing else about them changes."""
    a, b, c = finding("r1", "//a"), finding("r1", "//b"), finding("r1", "//c")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a, b, c]))
        before = store.db.rows("SELECT * FROM findings ORDER BY id")
        store.db.execute("UPDATE findings SET digest = NULL WHERE asset != '//c'")  # as migration v6 leaves them
        store.db.execute("UPDATE findings SET digest = 12345 WHERE asset = '//c'")
        rec = store.record_cycle(cycle(200, [a, b, c]))
        assert rec.drift == [] and rec.changed == 3
        assert [tuple(r) for r in store.db.rows("SELECT * FROM findings ORDER BY id")] == [tuple(r) for r in before]
        staging = store.staging()
        staging.extend([a, b, c])
        assert staging.unchanged == 3


def test_a_stale_finding_seen_again_is_staged(state_target: str) -> None:
    a = finding("r1", "//a")
    with Store(state_target) as store:
        store.record_cycle(cycle(100, [a], rule_ids=frozenset({"r1"})))
        store.record_cycle(cycle(200, [], outcome="partial", not_evaluated=[("r1", "")]))
        staging = store.staging()
        staging.extend([a])
        assert staging.unchanged == 0 and _staged(store) == 1
        rec = store.record_cycle(cycle(300, staging))
        assert rec.stale == 0 and rec.drift == []
        f = store.finding(a.id)
        assert f is not None and not f.stale and f.first_seen == 101


def test_open_findings_that_share_a_key_are_always_staged(tmp_path: Path) -> None:
    """Two ids with the same first 16 hexadecimal digits (a 64-bit key): neither is taken as seen by the other."""
    a = msgspec.structs.replace(finding("r1", "//a"), id="0123456789abcdef0001")
    b = msgspec.structs.replace(finding("r1", "//b"), id="0123456789abcdef0002")
    assert id_key(a.id) == id_key(b.id)
    with Store(tmp_path / "s.db") as store:
        store.record_cycle(cycle(100, [a, b]))
        staging = store.staging()
        staging.extend([a])
        assert staging.unchanged == 0 and _staged(store) == 1
        rec = store.record_cycle(cycle(200, staging))
        assert [(e.change, e.finding_id) for e in rec.drift] == [("resolved", b.id)]
        assert [f.id for f in store.open_findings()] == [a.id]


def _variant(f: Finding, v: int) -> Finding:
    """The finding as a cycle may give it: unchanged, with another message, severity or exemption."""
    if v == 1:
        return msgspec.structs.replace(f, message=f.message + " (changed)")
    if v == 2:
        return msgspec.structs.replace(f, exempted=Exempted("reason", "team", None, None))
    if v == 3:
        return msgspec.structs.replace(f, details={"n": 1})
    return f


_POOL = [finding(f"r{i % 3}", f"//a{i % 7}") for i in range(12)]
_cycles = st.lists(
    st.tuples(
        st.lists(st.tuples(st.integers(0, len(_POOL) - 1), st.integers(0, 4)), max_size=14),  # findings, variant
        st.lists(st.integers(0, 6), max_size=2),  # assets whose findings a later copy takes back
        st.sampled_from(["success", "success", "partial"]),
    ),
    min_size=1, max_size=5,
)


def _run(store: Store, compare: bool, cycles: Sequence[tuple[list[tuple[int, int]], list[int], str]]) -> list[object]:
    out: list[object] = []
    for n, (seen, taken_back, outcome) in enumerate(cycles):
        staging = Staging(store.db, batch=3, compare=compare)
        findings = [_variant(_POOL[i], v) for i, v in seen]
        half = len(findings) // 2
        staging.extend(findings[:half])
        for asset in taken_back:
            staging.withdraw(f"//a{asset}", {"r0", "r1", "r2"})
        staging.extend(findings[half:])
        counts = list(staging.counts())
        kw: dict[str, object] = {"not_evaluated": [("r1", "")]} if outcome == "partial" else {}
        rec = store.record_cycle(cycle(100.0 * (n + 1), staging, outcome=outcome, **kw))
        out.append((counts, rec.new_count, rec.resolved_count, rec.open, rec.stale, rec.still_open,
                    [(e.change, e.finding_id, e.exempted, e.message) for e in rec.drift], _state(store)))
    return out


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None,
          max_examples=60)
@given(cycles=_cycles)
def test_drift_is_that_of_staging_every_finding(tmp_path: Path, cycles: Iterable[
        tuple[list[tuple[int, int]], list[int], str]]) -> None:
    """Property: whatever the cycles (findings changing, coming, going, repeated, taken back, rules not evaluated),
    comparing with the stored digests records what staging every finding records."""
    cycles = list(cycles)
    results = []
    for compare in (True, False):
        path = tmp_path / f"{compare}-{id(cycles)}.db"
        with Store(path) as store:
            results.append(_run(store, compare, cycles))
        for f in tmp_path.glob(f"{compare}-{id(cycles)}.db*"):
            f.unlink()
    assert results[0] == results[1]
