"""Address, route and forwarding steps of the bridge plugin, idempotent where ADD needs it.

Parallel ADDs on a fresh node all try to put the same gateway address on the
bridge (plugins PR #366: "could not add IP address to cni0: file exists"), so
"already there" is success here.
"""

from __future__ import annotations

import _socket
import errno

from .links import write_sysctl
from .netlink import AF_INET, AF_INET6, AlreadyExists, Netlink, NotFound


class AddressConflict(Exception):
    """The bridge holds another gateway address and forceAddress is off."""


def ensure_addr(nl: Netlink, index: int, address: str, prefixlen: int) -> None:
    """Add address/prefixlen to the link unless it is already there."""
    try:
        nl.add_addr(index, address, prefixlen)
    except AlreadyExists:
        pass


def _as_int(family: int, address: str) -> int:
    return int.from_bytes(_socket.inet_pton(family, address), "big")


def _same_network(family: int, a: str, b: str, prefixlen: int) -> bool:
    bits = 32 if family == AF_INET else 128
    return (_as_int(family, a) ^ _as_int(family, b)) >> (bits - prefixlen) == 0


def ensure_gateway_addr(nl: Netlink, bridge_index: int, gw: str, prefixlen: int,
                        force_address: bool = False, mac: str | None = None) -> None:
    """Put the gateway address gw/prefixlen on the bridge, as the reference's forceAddress does.

    Any other IPv4 address, or an IPv6 address whose subnet overlaps gw's, means
    the bridge was set up for a different subnet: error out, or with
    force_address delete it. Non-overlapping IPv6 subnets may share the bridge.
    Afterwards the bridge MAC is pinned (to `mac`, the bridge's own from before the pod's
    port joined, or else its current one), so it stops following the lowest-numbered
    port's MAC as pods come and go.
    """
    bridge = nl.get_link(bridge_index)
    if bridge is None:
        raise NotFound(errno.ENODEV, f"bridge with index {bridge_index} does not exist")
    family = AF_INET6 if ":" in gw else AF_INET
    wanted = _as_int(family, gw)
    for addr in nl.list_addrs(index=bridge_index, family=family):
        if _as_int(family, addr.address) == wanted and addr.prefixlen == prefixlen:
            return
        overlaps = _same_network(family, addr.address, gw, min(addr.prefixlen, prefixlen))
        if family == AF_INET or overlaps:
            if not force_address:
                raise AddressConflict(f'"{bridge.name}" already has an IP address different from {gw}/{prefixlen}')
            try:
                nl.del_addr(bridge_index, addr.address, addr.prefixlen)
            except NotFound:  # a concurrent ADD already removed it
                pass
    ensure_addr(nl, bridge_index, gw, prefixlen)
    if not mac or mac == "00:00:00:00:00:00":
        # A portless bridge whose MAC was never pinned reads as all zeros (its last port
        # left): setting that is EADDRNOTAVAIL (plugins #620). Pin the one it took from our port.
        mac = bridge.mac
    nl.set_link(bridge_index, mac=mac)


def ensure_route(nl: Netlink, dst: str, prefixlen: int, **route) -> None:
    """Netlink.add_route, treating an identical existing route as success."""
    try:
        nl.add_route(dst, prefixlen, **route)
    except AlreadyExists:
        pass


def enable_forwarding(family: int) -> None:
    """Turn on routing between interfaces for AF_INET or AF_INET6 (in the caller's netns)."""
    if family == AF_INET:
        write_sysctl("net/ipv4/ip_forward", "1")
    else:
        write_sysctl("net/ipv6/conf/all/forwarding", "1")
