"""Address ranges as integer intervals: what the Cloud Armor checks reason with.

A range string (`10.0.0.0/8`, `2001:db8::/32`, a bare address, `*`) is parsed into closed intervals of integers
(once per policy rule: the checks share a rule's parsed ranges). Both families share one number line: IPv4
addresses are their own value, IPv6 addresses are shifted past every IPv4 one (`V6`), so an interval never spans
families and a sorted list of them needs no family tag. A union is a sorted list of merged intervals (adjacent
ones joined: two /25 halves are their /24); "is this range inside that union" is one binary search. No `ipaddress`
object is made in the hot path: the usual spellings are read by the C socket parser (`inet_pton`, as strict as
`ipaddress`), anything else once by `ipaddress`, whose verdict on what is an address stays the reference.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from functools import lru_cache
from socket import AF_INET, AF_INET6, inet_pton

V6 = 1 << 128  # where IPv6 addresses start on the shared number line
V4_ALL = (0, (1 << 32) - 1)
V6_ALL = (V6, V6 + (1 << 128) - 1)
EVERYTHING: tuple[tuple[int, int], ...] = (V4_ALL, V6_ALL)
FAMILIES = frozenset(EVERYTHING)

Interval = tuple[int, int]


# Prefix lengths in the spelling `ipaddress` writes, and the network and host masks of each (a bare address is a
# /32 or /128).
_MASKS4 = {str(b): ((1 << 32) - (1 << (32 - b)), (1 << (32 - b)) - 1) for b in range(33)}
_MASKS6 = {str(b): ((1 << 128) - (1 << (128 - b)), (1 << (128 - b)) - 1) for b in range(129)}
_BARE4, _BARE6 = _MASKS4["32"], _MASKS6["128"]
_from_bytes = int.from_bytes


def parse(text: str) -> tuple[Interval, ...] | None:
    """The intervals of one range: `*` is every IPv4 and IPv6 address, a bare address a /32 or /128, host bits
    are dropped (`10.1.2.3/8` is `10.0.0.0/8`, as `ipaddress.ip_network(strict=False)`); None when the text is not
    an address. Not cached: a memo of recent ranges missed on most of a large organization's ranges (single
    addresses occur once), and looking up a text in it costs a third of a parse once it outgrows the CPU's caches.

    The usual spelling is read here by the C parser (`inet_pton`: IPv4 as exactly four decimal octets without
    leading zeros, as `ipaddress` reads them; IPv6 in any spelling, read as `ipaddress` reads it) with a prefix
    length as `ipaddress` writes it; anything else (`*`, spaces, `/08`, a netmask, not an address) by `_other`.
    This runs for every range of every policy: the masks are looked up, not computed."""
    out, each = parse_many((text,))
    return (out[0],) if each is None else each[0]


def parse_many(texts: Sequence[str]) -> tuple[list[Interval], tuple[tuple[Interval, ...] | None, ...] | None]:
    """The intervals of several ranges (a rule's), in their order, and each range's own intervals (`parse` of each)
    when one is not a single interval (`*`, not an address); None in the usual case, where range k is interval k.

    The parse is written out in one loop: this runs for every range of every policy, and a call, a tuple around
    each range's interval and a flattening of them cost a third of it. The first range `inet_pton` does not read
    sends the rule to `parse`, range by range (and a range alone to `_other`)."""
    out: list[Interval] = []
    append = out.append
    for text in texts:
        addr, slash, prefix = text.partition("/")
        try:
            if ":" in addr:
                network, host = _MASKS6[prefix] if slash else _BARE6
                lo = (_from_bytes(inet_pton(AF_INET6, addr), "big") & network) + V6
            else:
                network, host = _MASKS4[prefix] if slash else _BARE4
                lo = _from_bytes(inet_pton(AF_INET, addr), "big") & network
        except (OSError, ValueError, KeyError):  # not an address in this spelling, a NUL in the text, another prefix
            if len(texts) == 1:
                one = _other(text)
                return list(one or ()), (one,)
            each = tuple(map(parse, texts))
            return [iv for ivs in each if ivs is not None for iv in ivs], each
        append((lo, lo + host))
    return out, None


def _other(text: str) -> tuple[Interval, ...] | None:
    """`parse` for what `inet_pton` does not read: `*`, surrounding spaces, other spellings `ipaddress` accepts."""
    text = text.strip()
    if text == "*":
        return EVERYTHING
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    lo, hi = int(net.network_address), int(net.broadcast_address)
    if net.version == 6:
        lo, hi = lo + V6, hi + V6
    return ((lo, hi),)


def is_everything(iv: Interval) -> bool:
    """The interval is a whole address family (a /0)."""
    return iv in (V4_ALL, V6_ALL)


class Union:
    """The union of intervals, sorted and merged, kept as one flat list of half-open bounds
    `[start0, end0 + 1, start1, end1 + 1, ...]` (disjoint, not adjacent, increasing): an address lies inside
    when the binary search for it lands after a start, at an odd place. One list instead of a list of starts and
    one of ends: a question is one search, adding an interval one or two searches and one slice assignment."""

    __slots__ = ("bounds",)

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        bounds: list[int] = []
        for lo, hi in sorted(intervals):
            if bounds and lo <= bounds[-1]:  # overlaps or touches the last interval
                if hi >= bounds[-1]:
                    bounds[-1] = hi + 1
            else:
                bounds += (lo, hi + 1)
        self.bounds = bounds

    @property
    def starts(self) -> list[int]:
        return self.bounds[0::2]

    @property
    def ends(self) -> list[int]:
        """Last addresses (closed) of the merged intervals."""
        return [e - 1 for e in self.bounds[1::2]]

    def covers(self, lo: int, hi: int) -> bool:
        """Whether every address of `lo..hi` is in the union (one binary search)."""
        i = bisect_right(self.bounds, lo)
        return i & 1 == 1 and self.bounds[i] > hi

    def covers_all(self, intervals: Iterable[Interval]) -> bool:
        bounds = self.bounds
        for lo, hi in intervals:
            i = bisect_right(bounds, lo)  # odd: lo is inside the interval ending (exclusive) at bounds[i]
            if not i & 1 or bounds[i] <= hi:
                return False
        return True

    def outside(self, texts: Iterable[str], intervals: Iterable[Interval]) -> list[str]:
        """The texts whose range, one interval each (`intervals`, in the same order), is not inside the union, in
        their order. One call for a rule's ranges (this runs for every range of every rule that lets traffic in)."""
        bounds = self.bounds
        out = []
        for text, (lo, hi) in zip(texts, intervals, strict=True):
            i = bisect_right(bounds, lo)  # odd: lo is inside the interval ending (exclusive) at bounds[i]
            if not i & 1 or bounds[i] <= hi:
                out.append(text)
        return out

    def outside_each(self, texts: Iterable[str], parsed: Iterable[tuple[Interval, ...] | None]) -> list[str]:
        """`outside` of ranges given as their intervals (`parsed`, None: not an address)."""
        bounds = self.bounds
        out = []
        for text, ivs in zip(texts, parsed, strict=True):
            if ivs is None:
                out.append(text)
                continue
            for lo, hi in ivs:
                i = bisect_right(bounds, lo)
                if not i & 1 or bounds[i] <= hi:
                    out.append(text)
                    break
        return out

    def add(self, lo: int, hi: int) -> None:
        """Add one interval, merging it with those it overlaps or touches."""
        self.add_all(((lo, hi),))

    def add_all(self, intervals: Iterable[Interval]) -> None:
        """Add intervals one by one (one call for a rule's ranges: this runs for every range of every policy)."""
        _insert_all(self.bounds, intervals, None)

    def __len__(self) -> int:
        return len(self.bounds) // 2


def _insert_all(bounds: list[int], intervals: Iterable[Interval], singles: set[int] | None) -> None:
    """Add intervals to `Union.bounds`, merging each with those it overlaps or touches; single addresses into
    `singles` instead, when given (`GrowingUnion`)."""
    for lo, hi in intervals:
        if lo == hi and singles is not None:
            singles.add(lo)
            continue
        end = hi + 1
        i = bisect_left(bounds, lo)  # bounds[i - 1] < lo <= bounds[i]
        # The two usual cases answered by this one search: inside an interval, or clear of every interval.
        if i & 1:  # lo is inside interval (i - 1) // 2, or just at its end
            if bounds[i] >= end:
                continue
        elif i == len(bounds) or bounds[i] > end:
            bounds[i:i] = (lo, end)
            continue
        j = bisect_right(bounds, end, i)  # bounds[j - 1] <= end < bounds[j]
        if i & 1:  # start where the interval lo is in starts
            i -= 1
            lo = bounds[i]
        if j & 1:  # end touches or is inside the interval starting at bounds[j - 1]: end where it ends
            end = bounds[j]
            j += 1
        bounds[i:j] = (lo, end)


class GrowingUnion:
    """A union grown a rule at a time and asked whether it covers a rule's ranges (the shadowing walk of a Cloud
    Armor policy): `Union.bounds`, but for single addresses, kept in a set beside them. They are four in ten ranges
    of a messy organization and seldom met again: one insertion in C instead of a search and a list insertion."""

    __slots__ = ("bounds", "singles")

    def __init__(self) -> None:
        self.bounds: list[int] = []
        self.singles: set[int] = set()

    def add_all(self, intervals: Iterable[Interval]) -> None:
        _insert_all(self.bounds, intervals, self.singles)

    def covers_all(self, intervals: Iterable[Interval]) -> bool:
        """Whether every address of the intervals is in the union: from an interval's first address on, each is
        inside an interval of the union (skipped to its end) or a single address of the set."""
        bounds, singles = self.bounds, self.singles
        for lo, hi in intervals:
            while lo <= hi:
                i = bisect_right(bounds, lo)
                if i & 1:  # inside the interval ending (exclusive) at bounds[i]
                    lo = bounds[i]
                elif lo in singles:
                    lo += 1
                else:
                    return False
        return True


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
