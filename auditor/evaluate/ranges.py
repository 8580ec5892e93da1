"""Address ranges as integer intervals: what the Cloud Armor checks reason with.

A range string (`10.0.0.0/8`, `2001:db8::/32`, a bare address, `*`) is parsed once per distinct string into
closed intervals of integers. Both families share one number line: IPv4 addresses are their own value, IPv6
addresses are shifted past every IPv4 one (`V6`), so an interval never spans families and a sorted list of them
needs no family tag. A union is a sorted list of merged intervals (adjacent ones joined: two /25 halves are their
/24); "is this range inside that union" is one binary search. No `ipaddress` object is made in the hot path:
IPv4 in the canonical spelling is read by splitting it and looking its octets up, IPv6 by the C socket parser,
anything else once by `ipaddress`, whose verdict on what is an address stays the reference.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from functools import lru_cache
from socket import AF_INET6, inet_pton

V6 = 1 << 128  # where IPv6 addresses start on the shared number line
V4_ALL = (0, (1 << 32) - 1)
V6_ALL = (V6, V6 + (1 << 128) - 1)
EVERYTHING: tuple[tuple[int, int], ...] = (V4_ALL, V6_ALL)
FAMILIES = frozenset(EVERYTHING)

Interval = tuple[int, int]


# Exact spellings read without parsing: an octet is one of these 256 strings (no sign, space, leading zero or
# non-ASCII digit, which `int` would accept and `ipaddress` refuses); a prefix length maps to its host mask.
_OCTET = {str(i): i for i in range(256)}
_HOST4 = {str(b): (1 << (32 - b)) - 1 for b in range(33)}
_HOST6 = {str(b): (1 << (128 - b)) - 1 for b in range(129)}
_MISSING = object()
CACHE_SIZE = 8192  # distinct strings remembered; emptied when full (ranges that never repeat cost no bookkeeping)
_cache: dict[str, tuple[Interval, ...] | None] = {}


def _fast(text: str) -> Interval | None:
    """The interval of an address or CIDR range in the spelling `ipaddress` writes (canonical IPv4 octets and
    prefix lengths, any IPv6 spelling the C parser reads, which `ipaddress` reads the same), or None to let
    `ipaddress` decide (other spellings, or not an address)."""
    addr, slash, prefix = text.partition("/")
    if ":" in addr:
        try:
            n = int.from_bytes(inet_pton(AF_INET6, addr), "big")
        except (OSError, ValueError):
            return None
        host = _HOST6.get(prefix) if slash else 0
        if host is None:
            return None
        lo = (n & ~host) + V6
        return (lo, lo + host)
    try:
        a, b, c, d = addr.split(".")
        n = (_OCTET[a] << 24) | (_OCTET[b] << 16) | (_OCTET[c] << 8) | _OCTET[d]
    except (KeyError, ValueError):
        return None
    host = _HOST4.get(prefix) if slash else 0
    if host is None:
        return None
    lo = n & ~host
    return (lo, lo + host)


def _parse(text: str) -> tuple[Interval, ...] | None:
    text = text.strip()
    if text == "*":
        return EVERYTHING
    fast = _fast(text)
    if fast is not None:
        return (fast,)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    lo, hi = int(net.network_address), int(net.broadcast_address)
    if net.version == 6:
        lo, hi = lo + V6, hi + V6
    return ((lo, hi),)


def parse(text: str) -> tuple[Interval, ...] | None:
    """The intervals of one range: `*` is every IPv4 and IPv6 address, a bare address a /32 or /128, host bits
    are dropped (`10.1.2.3/8` is `10.0.0.0/8`, as `ipaddress.ip_network(strict=False)`); None when the text is not
    an address. Remembered per string (a plain dict, emptied when full): an organization's policies repeat their
    trusted and internal ranges, while most single addresses occur once."""
    got = _cache.get(text, _MISSING)
    if got is _MISSING:
        got = _parse(text)
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        _cache[text] = got
    return got  # type: ignore[return-value]


def is_everything(iv: Interval) -> bool:
    """The interval is a whole address family (a /0)."""
    return iv in (V4_ALL, V6_ALL)


class Union:
    """The union of intervals, sorted and merged: `starts[i]..ends[i]` are disjoint and not adjacent."""

    __slots__ = ("ends", "starts")

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for lo, hi in sorted(intervals):
            if self.ends and lo <= self.ends[-1] + 1:
                if hi > self.ends[-1]:
                    self.ends[-1] = hi
            else:
                self.starts.append(lo)
                self.ends.append(hi)

    def covers(self, lo: int, hi: int) -> bool:
        """Whether every address of `lo..hi` is in the union (one binary search)."""
        i = bisect_right(self.starts, lo) - 1
        return i >= 0 and self.ends[i] >= hi

    def covers_all(self, intervals: Iterable[Interval]) -> bool:
        return all(self.covers(lo, hi) for lo, hi in intervals)

    def add(self, lo: int, hi: int) -> None:
        """Add one interval, merging it with those it overlaps or touches."""
        starts, ends = self.starts, self.ends
        i = bisect_left(ends, lo - 1)  # first interval ending at or after the address before lo: may merge
        j = bisect_right(starts, hi + 1)  # intervals before j start at or before the address after hi
        if i < j:
            lo = min(lo, starts[i])
            hi = max(hi, ends[j - 1])
        starts[i:j] = [lo]
        ends[i:j] = [hi]

    def __len__(self) -> int:
        return len(self.starts)


def union_of(texts: Iterable[str]) -> Union:
    """The union of range strings; texts that are not addresses add nothing."""
    return Union(iv for t in texts for iv in (parse(t) or ()))


@lru_cache(maxsize=4096)
def cached_union(texts: tuple[str, ...]) -> Union:
    """`union_of`, made once per distinct tuple: a rule's trusted ranges are the same for every policy."""
    return union_of(texts)


def within(text: str, union: Union) -> bool:
    """Whether the range `text` lies inside `union` (False when it is not an address)."""
    ivs = parse(text)
    return ivs is not None and union.covers_all(ivs)
