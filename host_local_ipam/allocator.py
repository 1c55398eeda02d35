"""Picks addresses from one range set against a store; never touches the filesystem itself.

The search order is the reference's round robin: start after last_reserved_ip.<set index>
(if it lies in the set), step through each range to its end, wrap to the next range's start,
skip gateways, and give up when back at the start. A crash-looping pod therefore does not get
its old address back until the set has gone round once.
"""
from __future__ import annotations

from cni_protocol.errors import ALLOCATION_FAILED, CNIError
from cni_protocol.ip import fmt, parse_ip
from .ranges import Range, RangeSet


class Allocator:
    def __init__(self, range_set: RangeSet, store, set_index: int) -> None:
        self.range_set = range_set
        self.store = store
        self.set_index = set_index

    def get(self, container_id: str, ifname: str, requested: tuple[int, int] | None = None
            ) -> dict:
        """Reserve one address for the attachment; the result's `ips` entry for it."""
        with self.store.lock():
            for held in self.store.get_by_id(container_id, ifname):
                try:
                    family, value = parse_ip(held)
                except ValueError:
                    continue
                if self.range_set.contains(family, value):
                    raise CNIError(ALLOCATION_FAILED,
                                   f"{held} has been allocated to {container_id}, "
                                   "duplicate allocation is not allowed")
            if requested is not None:
                return self._reserve_requested(container_id, ifname, *requested)
            for r, value in self.candidates():
                if self.store.reserve(container_id, ifname, fmt(r.family, value),
                                      self.set_index):
                    return _ip_config(r, value)
        raise CNIError(ALLOCATION_FAILED,
                       f"no IP addresses available in range set: {self.range_set}")

    def _reserve_requested(self, container_id: str, ifname: str, family: int, value: int
                           ) -> dict:
        r = self.range_set.range_of(family, value)
        text = fmt(family, value)
        if r is None:
            raise CNIError(ALLOCATION_FAILED,
                           f"requested IP address {text} is not in range set {self.range_set}")
        if value == r.gateway:
            raise CNIError(ALLOCATION_FAILED, f"requested ip {text} is subnet's gateway")
        if not self.store.reserve(container_id, ifname, text, self.set_index):
            raise CNIError(ALLOCATION_FAILED, f"requested IP address {text} is not available "
                           f"in range set {self.range_set}")
        return _ip_config(r, value)

    def candidates(self):
        """Yields (range, address) in the reference's search order."""
        ranges = self.range_set.ranges
        index, cur = 0, None
        last = self.store.last_reserved(self.set_index)
        if last:
            try:
                family, value = parse_ip(last)
            except ValueError:
                family, value = 0, 0
            for i, r in enumerate(ranges):
                if r.contains(family, value):
                    index, cur = i, value
                    break
        first = None
        while True:
            r = ranges[index]
            if cur is None:
                cur = r.start
            elif cur == r.end:
                index = (index + 1) % len(ranges)
                r = ranges[index]
                cur = r.start
            else:
                cur += 1
            if first is None:
                first = cur
            elif cur == first:
                return
            if cur != r.gateway:
                yield r, cur


def _ip_config(r: Range, value: int) -> dict:
    return {"address": f"{fmt(r.family, value)}/{r.prefixlen}",
            "gateway": fmt(r.family, r.gateway)}
