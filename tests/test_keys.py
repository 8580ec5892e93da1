"""The compact key tables a scan remembers its findings and assets in (auditor/keys.py), against Python's own set
and dict fed the same keys: membership, growth past many doublings, keys that collide in the table's hash (same
slot) and keys that are equal modulo 2**64, the key 0, and update times that come back exactly as they were."""

from __future__ import annotations

import random

import pytest

from auditor.keys import _GOLDEN, _M64, _MIN_BITS, KeyMap, KeySet, UpdateTimes


def test_set_matches_python_set_through_growth() -> None:
    rng = random.Random(14)
    keys = [rng.getrandbits(64) for _ in range(50_000)]
    keys += keys[::7]  # repeats
    rng.shuffle(keys)
    s, ref = KeySet(), set[int]()
    start = s.nbytes()
    for k in keys:
        assert (s.add(k) < 0) == (k not in ref)
        ref.add(k)
        assert k in s
    assert len(s) == len(ref)
    assert all(k in s for k in ref)
    absent = [rng.getrandbits(64) for _ in range(5_000)]
    assert [k in s for k in absent] == [k in ref for k in absent]
    # it grew (several doublings) and stays at most half full: 8 bytes a slot
    assert s.nbytes() > start and len(s) <= s.nbytes() // 8 // 2
    assert s.nbytes() <= 8 * 4 * len(ref)


def test_colliding_keys_probe_past_each_other() -> None:
    """Keys whose hash lands in the same slot of a table of the smallest size: linear probing keeps them all, and
    a key between them is still found, also after growth moves them."""
    shift = 64 - _MIN_BITS
    target, k = 5, 1
    same_slot: list[int] = []
    while len(same_slot) < 40:
        if (k * _GOLDEN & _M64) >> shift == target:
            same_slot.append(k)
        k += 1
    s = KeySet()
    for i, key in enumerate(same_slot):
        assert s.add(key) < 0
        assert all(x in s for x in same_slot[: i + 1])
        assert same_slot[-1] not in s or i == len(same_slot) - 1
    assert s.add(same_slot[3]) >= 0  # already there
    for i in range(2_000):  # grow: the colliding keys are moved and found again
        s.add(random.Random(i).getrandbits(64))
    assert all(x in s for x in same_slot)


def test_keys_are_taken_modulo_2_64_and_zero_is_a_key() -> None:
    s = KeySet()
    assert 0 not in s and s.add(0) < 0 and 0 in s and s.add(0) >= 0
    assert s.add(-1) < 0  # a signed hash ...
    assert (1 << 64) - 1 in s  # ... is its unsigned twin
    assert len(s) == 2


def test_map_values_follow_their_keys() -> None:
    rng = random.Random(7)
    m, ref = KeyMap(), dict[int, int]()
    for _ in range(30_000):
        k, v = rng.getrandbits(63) - (1 << 62), rng.getrandbits(64)
        place = m.add(k, v)
        if k in ref:
            assert place >= 0 and m.value_at(place) == ref[k]
            m.set_at(place, v)
        else:
            assert place < 0
        ref[k] = v
    m.put(0, 9)
    ref[0] = 9
    m.put(0, 10)
    ref[0] = 10
    assert len(m) == len(ref)
    assert all(m.get(k) == v for k, v in ref.items())
    assert m.get(12345678901234567, -1) == -1 or 12345678901234567 in ref


@pytest.mark.parametrize(
    "text",
    [
        None,
        "2026-11-20T09:14:07.518Z",
        "2026-11-20T09:14:07Z",
        "2021-05-12T10:20:30.123456Z",
        "2021-05-12T10:20:30.000000Z",
        "2021-05-12T10:20:30.0Z",  # one digit of fraction: kept as text
        "2021-05-12T10:20:30.123456789Z",  # nanoseconds: kept as text
        "2019-07-12T18:39:34.829-07:00",  # an offset: kept as text
        "2099-12-31T23:59:60.999999Z",
        "2099-99-99T99:99:99.999999Z",  # digits as written, whatever they say
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:00:00.000Z",
        "1970-01-01T00:00:00.000000Z",
        "1969-12-31T23:59:59Z",  # before 1970: kept as text
        "2100-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "2026-01-01T00:00:00\u0663Z",  # a digit that is not ASCII
        "",
        "not a time",
    ],
)
def test_update_times_come_back_exactly(text: str | None) -> None:
    times = UpdateTimes()
    code = times.encode(text)
    assert 0 <= code < 1 << 64
    assert times.decode(code) == text
    assert times.encode(text) == code
    packed = text is not None and len(text) in (20, 24, 27) and "1970" <= text[:4] <= "2099" and text[-1] == "Z"
    if packed:
        assert code % 2 == 0 and not times._texts  # in the value, nothing kept beside it


def test_unusual_times_are_kept_once() -> None:
    times = UpdateTimes()
    codes = {times.encode("2019-07-12T18:39:34.829-07:00") for _ in range(100)}
    assert len(codes) == 1
    assert times.encode("2019-07-12T18:39:34.829-08:00") not in codes
    assert len(times._texts) == 2
    assert times.encode("2026-11-20T09:14:07.518Z") % 2 == 0  # packed, not kept
    assert len(times._texts) == 2


def test_times_in_a_row_encode_as_alone() -> None:
    """The last time encoded is remembered: times repeated, alternating or unusual between come back the same."""
    row = ["2026-11-20T09:14:07.518Z", "2026-11-20T09:14:07.518Z", None, "2026-11-20T09:14:07.519Z",
           "not a time", "not a time", "2026-11-20T09:14:07.518Z", "2021-05-12T10:20:30Z", "not a time"]
    times = UpdateTimes()
    for t in row:
        code = times.encode(t)
        assert times.decode(code) == t
        assert code == (times.encode(t) if t == "not a time" else UpdateTimes().encode(t))
