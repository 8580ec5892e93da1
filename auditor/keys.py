"""Compact sets and maps of 64-bit keys, for what a scan must remember of every finding or asset it has seen.

A Python `set[int]` of hashes costs about 70 bytes a key (its slots and an int object each), a `dict[int, str]` well
over 100 with its values: at a million findings and a million assets that was most of a scan's peak memory. These
keep each key (and each value) as 8 bytes in an `array('Q')`, found by open addressing (linear probing from a
multiplicative hash of the key, at most half full): about 16 to 32 bytes a key, 8 more with a value.

Keys are integers taken modulo 2**64 (a signed 64-bit hash and its unsigned twin are the same key); values are
integers from 0 to 2**64 - 1. `UpdateTimes` turns the update times of assets into such values and back, exactly.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator
from itertools import repeat

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: the top bits of key * 2**64/phi spread even patterned keys
_MIN_BITS = 10
EMPTY = 0  # a free slot; the key 0 itself is remembered apart


class KeyMap:
    """A map from 64-bit keys to 64-bit values (a set when made with `values=False`), 8 bytes a slot each."""

    __slots__ = ("_bits", "_has_zero", "_keys", "_limit", "_n", "_shift", "_vals", "_zero_val")

    def __init__(self, values: bool = True, expected: int = 0) -> None:
        bits = _MIN_BITS
        while (1 << bits) < 2 * expected:
            bits += 1
        self._alloc(bits, values)
        self._n = 0
        self._has_zero, self._zero_val = False, 0

    def _alloc(self, bits: int, values: bool) -> None:
        self._bits, self._shift = bits, 64 - bits
        self._limit = (1 << bits) // 2  # grow past half full: linear probing stays short (about 2.5 probes a miss)
        self._keys = array("Q", (0,)) * (1 << bits)  # repeated in place: no zeroed bytes object beside it
        self._vals: array[int] | None = array("Q", (0,)) * (1 << bits) if values else None

    def __len__(self) -> int:
        return self._n + self._has_zero

    def __contains__(self, key: int) -> bool:
        return self.find(key) >= 0

    def _probe(self, key: int) -> int:
        """The slot that holds `key` (masked, not EMPTY), or the free slot where it would go."""
        keys, mask = self._keys, (1 << self._bits) - 1
        i = (key * _GOLDEN & _M64) >> self._shift
        while True:
            k = keys[i]
            if k in (key, EMPTY):
                return i
            i = (i + 1) & mask

    def add(self, key: int, value: int = 0) -> int:
        """Put the key in if it is not there (with `value`); -1 when it was put in, else where it is (`value_at`,
        `set_at`: its value is left as it was)."""
        key &= _M64
        if key == EMPTY:
            if self._has_zero:
                return 1 << 64  # a place no slot has: the key 0 lives apart
            self._has_zero, self._zero_val = True, value
            return -1
        # `_probe`, written out: this runs for every asset and finding of a scan
        keys, mask = self._keys, (1 << self._bits) - 1
        i = (key * _GOLDEN & _M64) >> self._shift
        k = keys[i]
        while k != key and k != EMPTY:
            i = (i + 1) & mask
            k = keys[i]
        if k == key:
            return i
        keys[i] = key
        if self._vals is not None:
            self._vals[i] = value
        self._n += 1
        if self._n > self._limit:
            self._grow()
        return -1

    def value_at(self, place: int) -> int:
        if place >> 64:
            return self._zero_val
        assert self._vals is not None
        return self._vals[place]

    def set_at(self, place: int, value: int) -> None:
        if place >> 64:
            self._zero_val = value
            return
        assert self._vals is not None
        self._vals[place] = value

    def get(self, key: int, default: int | None = None) -> int | None:
        place = self.find(key)
        return default if place < 0 else self.value_at(place)

    def find(self, key: int) -> int:
        """Where the key is (see `add`), or -1 when it is not there; nothing is put in."""
        key &= _M64
        if key == EMPTY:
            return 1 << 64 if self._has_zero else -1
        i = self._probe(key)
        return i if self._keys[i] == key else -1

    def put(self, key: int, value: int) -> None:
        place = self.add(key, value)
        if place >= 0:
            self.set_at(place, value)

    def _grow(self) -> None:
        old_keys, old_vals = self._keys, self._vals
        self._alloc(self._bits + 1, old_vals is not None)
        keys, vals, shift, mask = self._keys, self._vals, self._shift, (1 << self._bits) - 1
        if vals is None:
            for key in old_keys:
                if key != EMPTY:
                    i = (key * _GOLDEN & _M64) >> shift
                    while keys[i] != EMPTY:
                        i = (i + 1) & mask
                    keys[i] = key
            return
        assert old_vals is not None
        for key, value in zip(old_keys, old_vals, strict=True):
            if key != EMPTY:
                i = (key * _GOLDEN & _M64) >> shift
                while keys[i] != EMPTY:
                    i = (i + 1) & mask
                keys[i] = key
                vals[i] = value

    def items(self) -> Iterator[tuple[int, int]]:
        """Every (key, value), in no particular order (value 0 in a set)."""
        if self._has_zero:
            yield 0, self._zero_val
        vals = self._vals if self._vals is not None else repeat(0)
        for key, value in zip(self._keys, vals, strict=False):  # vals may be an endless run of 0
            if key != EMPTY:
                yield key, value

    def nbytes(self) -> int:
        """The bytes its slots take (what it costs beyond a few hundred bytes of itself)."""
        return self._keys.itemsize * len(self._keys) * (1 if self._vals is None else 2)


class KeySet(KeyMap):
    """A set of 64-bit keys, 8 bytes a slot."""

    __slots__ = ()

    def __init__(self, expected: int = 0) -> None:
        super().__init__(values=False, expected=expected)


# RFC 3339 times as Google's APIs write them (protobuf's JSON: UTC, "Z", no fraction or 3 or 6 digits of one), of
# the years 1970 to 2099: their digits read as one decimal number less that of the first second of 1970 (at most
# 1.3e18 with 6 digits of fraction), then which of the three forms (2 bits), then 0 (an even value). Only ASCII
# digits, and the digits are kept as written: the text comes back exactly. Anything else is kept as text.
_TIME = re.compile(
    r"(?:19[7-9][0-9]|20[0-9][0-9])-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9](?:\.[0-9]{3}|\.[0-9]{6})?Z"
)
_BASE = {20: 1970 * 10**10, 24: 1970 * 10**13, 27: 1970 * 10**16}  # by the length of the text
_FORM = {20: 1, 24: 2, 27: 3}
_LENGTH = {1: 20, 2: 24, 3: 27}


class UpdateTimes:
    """Update times (strings or None) as 64-bit values and back, exactly: 0 is None; a time of the usual form is
    packed into the value (even values); any other text is kept once in a list, and its value names it (odd)."""

    __slots__ = ("_codes", "_last", "_texts")

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._codes: dict[str, int] = {}
        self._last: tuple[str | None, int] = (None, 0)  # the last time encoded: an export's assets often share one

    def encode(self, t: str | None) -> int:
        if t is None:
            return 0
        last, code = self._last
        if t == last:
            return code
        if _TIME.fullmatch(t) is None:
            known = self._codes.get(t)
            if known is None:
                known = self._codes[t] = len(self._texts) << 1 | 1
                self._texts.append(t)
            return known
        n = len(t)
        digits = int(t[0:4] + t[5:7] + t[8:10] + t[11:13] + t[14:16] + t[17:19] + t[20:-1])
        code = (digits - _BASE[n]) << 3 | _FORM[n] << 1
        self._last = (t, code)
        return code

    def decode(self, code: int) -> str | None:
        if code == 0:
            return None
        if code & 1:
            return self._texts[code >> 1]
        n = _LENGTH[code >> 1 & 3]
        d = str((code >> 3) + _BASE[n])
        tail = "." + d[14:] if n > 20 else ""
        return f"{d[0:4]}-{d[4:6]}-{d[6:8]}T{d[8:10]}:{d[10:12]}:{d[12:14]}{tail}Z"
