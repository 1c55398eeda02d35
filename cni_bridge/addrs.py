"""Address, route and forwarding steps of the bridge plugin, idempotent where ADD needs it.

Parallel ADDs on a fresh node all try to put the same gateway address on the
bridge (plugins PR #366: "could not add IP address to cni0: file exists"), so
"already there" is success here.
"""

from __future__ import annotations

import errno

from cni_protocol.ip import network, parse_ip
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
    family, wanted = parse_ip(gw)
    for addr in nl.list_addrs(index=bridge_index, family=AF_INET if family == 4 else AF_INET6):
        _, have = parse_ip(addr.address)
        if have == wanted and addr.prefixlen == prefixlen:
            return
        shorter = min(addr.prefixlen, prefixlen)
        overlaps = network(family, have, shorter) == network(family, wanted, shorter)
        if family == 4 or overlaps:
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
