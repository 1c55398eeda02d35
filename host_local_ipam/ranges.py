"""Address ranges and range sets, canonicalised as the reference host-local does.

Addresses are ints inside a family (4 or 6) so that iteration is cheap; `fmt` turns them back
into the strings the store uses as file names (dotted quad, RFC 5952 for IPv6).
"""
from __future__ import annotations

from cni_protocol.ip import BITS, fmt, network, parse_cidr, parse_ip
from cni_protocol.skel import config_error


class Range:
    """One `{subnet, rangeStart, rangeEnd, gateway}` entry; bounds inclusive."""

    __slots__ = ("family", "network", "prefixlen", "start", "end", "gateway")

    def __init__(self, entry: dict, key: str) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("subnet"), str):
            raise config_error(f"{key}.subnet", "is required (a CIDR such as 10.200.0.0/24)",
                               entry.get("subnet") if isinstance(entry, dict) else entry)
        try:
            family, given, prefixlen = parse_cidr(entry["subnet"])
        except ValueError as e:
            raise config_error(f"{key}.subnet", f"is not a CIDR: {e}", entry["subnet"]) from None
        self.family, self.prefixlen = family, prefixlen
        self.network = network(family, given, prefixlen)
        if given != self.network:
            raise config_error(f"{key}.subnet",
                               f"has host bits set: for a mask of length {prefixlen} "
                               f"the network address is {fmt(family, self.network)}",
                               entry["subnet"])
        if prefixlen > BITS[family] - 2:
            raise config_error(f"{key}.subnet", f"network {self.subnet} is too small to "
                               "allocate from", entry["subnet"])
        last = self.network | ((1 << (BITS[family] - prefixlen)) - 1)
        self.start = self._ip(entry, "rangeStart", key, self.network + 1, inside=True)
        self.end = self._ip(entry, "rangeEnd", key, last - 1 if self.family == 4 else last,
                            inside=True)
        self.gateway = self._ip(entry, "gateway", key, self.network + 1, inside=False)
        if self.start > self.end:
            raise config_error(f"{key}.rangeStart",
                               f"{fmt(self.family, self.start)} is after rangeEnd "
                               f"{fmt(self.family, self.end)}")

    def _ip(self, entry: dict, name: str, key: str, default: int, inside: bool) -> int:
        text = entry.get(name)
        if text in (None, ""):
            return default
        try:
            family, value = parse_ip(str(text))
        except ValueError:
            raise config_error(f"{key}.{name}", "is not an IP address", text) from None
        if family != self.family:
            raise config_error(f"{key}.{name}", "is not of the subnet's address family", text)
        if inside and not self.in_subnet(value):
            raise config_error(f"{key}.{name}", f"{text} is not in network {self.subnet}", text)
        return value

    def in_subnet(self, value: int) -> bool:
        return network(self.family, value, self.prefixlen) == self.network

    def contains(self, family: int, value: int) -> bool:
        return family == self.family and self.start <= value <= self.end

    def overlaps(self, other: Range) -> bool:
        return other.family == self.family and self.start <= other.end and other.start <= self.end

    @property
    def subnet(self) -> str:
        return f"{fmt(self.family, self.network)}/{self.prefixlen}"

    def __str__(self) -> str:
        return f"{fmt(self.family, self.start)}-{fmt(self.family, self.end)}"


class RangeSet:
    """Ranges of one family, tried in order; an ADD takes one address from each set."""

    __slots__ = ("ranges", "label")

    def __init__(self, entries: list, label: str, range_key: str = "") -> None:
        """`range_key` names a lone range's keys in errors instead of <label>[i]."""
        if not isinstance(entries, list) or not entries:
            raise config_error(label, "a range set must be a non-empty list of ranges", entries)
        self.label = label
        self.ranges = [Range(e, range_key or f"{label}[{i}]") for i, e in enumerate(entries)]
        family = self.ranges[0].family
        for i, r in enumerate(self.ranges):
            if r.family != family:
                raise config_error(f"{label}[{i}].subnet", "mixes address families in one set")
            for j, other in enumerate(self.ranges[:i]):
                if r.overlaps(other):
                    raise config_error(f"{label}[{i}]", f"range {r} overlaps with {label}[{j}] "
                                       f"({other})")

    @property
    def family(self) -> int:
        return self.ranges[0].family

    def contains(self, family: int, value: int) -> bool:
        return any(r.contains(family, value) for r in self.ranges)

    def range_of(self, family: int, value: int) -> Range | None:
        for r in self.ranges:
            if r.contains(family, value):
                return r
        return None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def size(self) -> int:
        """Addresses a lease can take: the gateway is never handed out."""
        return sum(r.end - r.start + 1 - (r.start <= r.gateway <= r.end) for r in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)
