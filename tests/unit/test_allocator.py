"""The allocator against the in-memory store: the reference's round-robin order, gateway
skipping, wrapping across ranges, exhaustion, duplicate detection and requested addresses."""
from __future__ import annotations

import pytest

from cni_protocol.errors import CNIError
from cni_protocol.errors import ALLOCATION_FAILED
from host_local_ipam.allocator import Allocator
from host_local_ipam.ranges import RangeSet
from host_local_ipam.store import MemoryStore


def allocator(*ranges: dict, store: MemoryStore | None = None, index: int = 0) -> Allocator:
    return Allocator(RangeSet(list(ranges), f"ipam.ranges[{index}]"), store or MemoryStore(),
                     index)


def take(a: Allocator, cid: str, ifname: str = "eth0", requested=None) -> str:
    return a.get(cid, ifname, requested)["address"]


def fails(a: Allocator, cid: str, ifname: str = "eth0", requested=None) -> str:
    with pytest.raises(CNIError) as e:
        a.get(cid, ifname, requested)
    assert e.value.code == ALLOCATION_FAILED == 100
    return e.value.msg


def test_first_lease_skips_the_gateway_and_is_recorded():
    a = allocator({"subnet": "10.1.2.0/24"})
    assert a.get("dummy", "eth0") == {"address": "10.1.2.2/24", "gateway": "10.1.2.1"}
    assert a.store.files == {"10.1.2.2": "dummy\r\neth0"}
    assert a.store.last == {0: "10.1.2.2"}


def test_container_id_is_stored_trimmed():
    a = allocator({"subnet": "10.1.2.0/24"})
    take(a, "   dummy\n ")
    assert a.store.files == {"10.1.2.2": "dummy\r\neth0"}


def test_sequential_then_round_robin_after_releases():
    a = allocator({"subnet": "10.1.0.0/29"})  # .1 gateway, .2-.6 usable, .7 broadcast
    assert [take(a, f"c{i}") for i in range(5)] == [f"10.1.0.{i}/29" for i in range(2, 7)]
    assert fails(a, "c5") == "no IP addresses available in range set: 10.1.0.1-10.1.0.6"
    a.store.release("10.1.0.4")
    assert take(a, "c5") == "10.1.0.4/29"  # after .6: wraps, skips gateway .1, .2 .3 taken
    a.store.release("10.1.0.3")
    a.store.release("10.1.0.5")
    assert take(a, "c6") == "10.1.0.5/29"  # after last reserved .4, not the lowest free .3
    assert take(a, "c7") == "10.1.0.3/29"
    assert a.store.last == {0: "10.1.0.3"}


def test_crash_looping_pod_does_not_get_its_address_back():
    a = allocator({"subnet": "10.1.2.0/24"})
    assert take(a, "pod") == "10.1.2.2/24"
    a.store.release_by_id("pod", "eth0")
    assert take(a, "pod") == "10.1.2.3/24"


@pytest.mark.parametrize("last, expected", [
    ("10.1.2.100", "10.1.2.101/24"),  # in the set: start after it
    ("10.1.2.254", "10.1.2.2/24"),    # the range's end: wrap, skip the gateway
    ("10.1.2.1", "10.1.2.2/24"),      # the gateway itself
    ("192.168.0.9", "10.1.2.2/24"),   # outside the set: start at rangeStart
    ("2001:db8::5", "10.1.2.2/24"),   # another family
    ("garbage", "10.1.2.2/24"),       # unparsable (e.g. a torn write)
    ("10.1.2.", "10.1.2.2/24"),
])
def test_start_after_last_reserved(last, expected):
    store = MemoryStore()
    store.last[0] = last
    assert take(allocator({"subnet": "10.1.2.0/24"}, store=store), "c") == expected


def test_last_reserved_of_another_set_index_is_ignored():
    store = MemoryStore()
    store.last[1] = "10.1.2.100"
    assert take(allocator({"subnet": "10.1.2.0/24"}, store=store, index=0), "c") == "10.1.2.2/24"
    assert store.last == {0: "10.1.2.2", 1: "10.1.2.100"}


def test_gateway_inside_the_range_is_skipped():
    a = allocator({"subnet": "10.1.0.0/29", "gateway": "10.1.0.4"})
    got = [a.get(f"c{i}", "eth0") for i in range(5)]
    assert [g["address"] for g in got] == ["10.1.0.1/29", "10.1.0.2/29", "10.1.0.3/29",
                                           "10.1.0.5/29", "10.1.0.6/29"]
    assert {g["gateway"] for g in got} == {"10.1.0.4"}
    assert fails(a, "c5") == "no IP addresses available in range set: 10.1.0.1-10.1.0.6"


def test_several_ranges_wrap_cyclically_with_their_own_prefix_and_gateway():
    a = allocator({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.11"},
                  {"subnet": "10.2.0.0/16", "rangeStart": "10.2.0.20", "rangeEnd": "10.2.0.21",
                   "gateway": "10.2.0.21"})
    first = [a.get(f"c{i}", "eth0") for i in range(3)]
    assert first == [{"address": "10.1.0.10/24", "gateway": "10.1.0.1"},
                     {"address": "10.1.0.11/24", "gateway": "10.1.0.1"},
                     {"address": "10.2.0.20/16", "gateway": "10.2.0.21"}]
    assert fails(a, "c3") == ("no IP addresses available in range set: "
                              "10.1.0.10-10.1.0.11,10.2.0.20-10.2.0.21")
    a.store.release("10.1.0.10")
    assert take(a, "c3") == "10.1.0.10/24"  # from the last range's end back to the first


def test_ipv6_rfc5952_names_and_full_range_end():
    a = allocator({"subnet": "2001:DB8:0:0::/64", "rangeStart": "2001:db8::ffff"})
    assert a.get("c0", "eth0") == {"address": "2001:db8::ffff/64", "gateway": "2001:db8::1"}
    assert take(a, "c1") == "2001:db8::1:0/64"
    assert list(a.store.files) == ["2001:db8::ffff", "2001:db8::1:0"]
    store = MemoryStore()
    store.last[0] = "2001:db8::ffff:ffff:ffff:fffe"
    a = allocator({"subnet": "2001:db8::/64", "rangeStart": "2001:db8::ffff"}, store=store)
    assert take(a, "c") == "2001:db8::ffff:ffff:ffff:ffff/64"  # v6 has no broadcast
    assert take(a, "d") == "2001:db8::ffff/64"


def test_every_candidate_once_then_exhausted():
    a = allocator({"subnet": "10.3.0.0/28", "rangeStart": "10.3.0.4", "gateway": "10.3.0.9"})
    got = {take(a, f"c{i}") for i in range(a.range_set.size())}
    assert got == {f"10.3.0.{i}/28" for i in range(4, 15) if i != 9}
    assert a.range_set.size() == 10
    assert fails(a, "x") == "no IP addresses available in range set: 10.3.0.4-10.3.0.14"


def test_duplicate_allocation_in_the_same_set_is_refused():
    a = allocator({"subnet": "10.1.2.0/24"})
    take(a, "c1")
    assert fails(a, "c1") == ("10.1.2.2 has been allocated to c1, duplicate allocation is "
                              "not allowed")
    assert take(a, "c1", "eth1") == "10.1.2.3/24"  # another interface of the same container


def test_legacy_id_only_lease_counts_as_a_duplicate():
    store = MemoryStore()
    store.files["10.1.2.50"] = "c1"
    a = allocator({"subnet": "10.1.2.0/24"}, store=store)
    assert fails(a, "c1").startswith("10.1.2.50 has been allocated to c1")


def test_a_lease_in_another_set_is_not_a_duplicate():
    store = MemoryStore()
    take(allocator({"subnet": "10.1.2.0/24"}, store=store, index=0), "c1")
    assert take(allocator({"subnet": "10.9.0.0/24"}, store=store, index=1), "c1") == "10.9.0.2/24"
    assert store.files == {"10.1.2.2": "c1\r\neth0", "10.9.0.2": "c1\r\neth0"}
    assert store.last == {0: "10.1.2.2", 1: "10.9.0.2"}


def test_requested_address():
    a = allocator({"subnet": "10.1.2.0/24", "rangeEnd": "10.1.2.100"})
    assert a.get("c1", "eth0", (4, 0x0A010205)) == {"address": "10.1.2.5/24",
                                                     "gateway": "10.1.2.1"}
    assert a.store.last == {0: "10.1.2.5"}  # requested addresses move round robin too
    assert take(a, "c2") == "10.1.2.6/24"
    assert fails(a, "c3", requested=(4, 0x0A010205)) == (
        "requested IP address 10.1.2.5 is not available in range set 10.1.2.1-10.1.2.100")
    assert fails(a, "c3", requested=(4, 0x0A010201)) == "requested ip 10.1.2.1 is subnet's gateway"
    assert fails(a, "c3", requested=(4, 0x0A0102C8)) == (  # in the subnet, past rangeEnd
        "requested IP address 10.1.2.200 is not in range set 10.1.2.1-10.1.2.100")
    assert fails(a, "c3", requested=(6, 0x20010DB8 << 96 | 5)) == (
        "requested IP address 2001:db8::5 is not in range set 10.1.2.1-10.1.2.100")
    assert a.store.files == {"10.1.2.5": "c1\r\neth0", "10.1.2.6": "c2\r\neth0"}
