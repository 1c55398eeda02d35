"""Link-level steps of the bridge plugin: the bridge, the pod's veth pair, teardown.

Each step is safe to repeat or to race with another plugin process where the
reference plugin makes it so: many pods start at once on a fresh node and all of
them try to create the same bridge. Errors a user has to act on are raised as
`LinkError` subclasses with the reference plugin's wording.
"""

from __future__ import annotations

import _socket
import errno
import posix  # not os (~2 ms to import): cni_protocol/skel.py
import time

from . import netns
from .netlink import (AF_INET, AF_INET6, IFA_F_DADFAILED, IFA_F_TENTATIVE, Addr, AlreadyExists, Link,
                      Netlink, NetlinkError, NotFound)


class LinkError(Exception):
    """A link cannot be set up as configured; the message is meant for the user."""


class LinkNotBridge(LinkError):
    """A link with the bridge's name exists but is something else."""


class VethNameTaken(LinkError):
    """CNI_IFNAME already exists in the pod namespace."""


class PortNotUp(LinkError):
    """The host end of the veth never reached operstate "up"."""


def refetch(nl: Netlink, index: int, what: str) -> Link:
    """The link at `index` read again (its MAC or flags may have changed); a LinkError, not
    None, if another process deleted it meanwhile (the bridge, say, while the ADD ran)."""
    link = nl.get_link(index)
    if link is None:
        raise LinkError(f"{what} (index {index}) disappeared while the ADD was using it")
    return link


def write_sysctl(name: str, value: str) -> None:
    """Set /proc/sys/<name> (e.g. "net/ipv4/ip_forward") to value.

    Reads first and skips the write when the value is already there: rewriting
    ip_forward resets per-interface settings, and /proc/sys may be read-only in
    a container even when the value is already right. Applies to the network
    namespace of the calling thread.
    """
    path = "/proc/sys/" + name.lstrip("/")
    with open(path, "rb") as f:
        if f.read().strip() == value.encode():
            return
    with open(path, "wb") as f:
        f.write(value.encode())


def _disable_accept_ra(ifname: str) -> None:
    """We own this interface's routes; ignore router advertisements on it.

    Best effort, like the reference: the file is missing when IPv6 is disabled.
    """
    try:
        write_sysctl(f"net/ipv6/conf/{ifname}/accept_ra", "0")
    except OSError:
        pass


def ensure_bridge(nl: Netlink, name: str, mtu: int | None = None, promisc: bool = False,
                  vlan_filtering: bool = False) -> Link:
    """Create the bridge if needed, bring it up and return it.

    Losing a creation race to another plugin process is fine (EEXIST). mtu only
    applies when we create the bridge, as in the reference. vlan_filtering is
    also switched on for an existing bridge that lacks it (the reference only
    sets it at creation, silently ignoring `vlan` on a pre-existing bridge).
    """
    try:
        nl.create_bridge(name, mtu=mtu, vlan_filtering=vlan_filtering)
    except AlreadyExists:
        pass
    except NetlinkError as e:
        if vlan_filtering:
            raise _no_vlan_filtering(e, name) from None
        raise
    bridge = nl.get_link(name)
    if bridge is None:
        raise LinkError(f"bridge {name!r} disappeared right after creation")
    if bridge.kind != "bridge":
        raise LinkNotBridge(f'"{name}" already exists but is not a bridge')
    changed = False
    if vlan_filtering and not bridge.vlan_filtering:
        try:
            nl.set_bridge_vlan_filtering(bridge.index, True)
        except NetlinkError as e:
            raise _no_vlan_filtering(e, name) from None
        changed = True
    if promisc and not bridge.promisc:
        nl.set_link(bridge.index, promisc=True)
        changed = True
    _disable_accept_ra(name)
    if not bridge.up:
        nl.set_link(bridge.index, up=True)
        changed = True
    return refetch(nl, bridge.index, f"bridge {name}") if changed else bridge


def _no_vlan_filtering(e: NetlinkError, name: str) -> NetlinkError:
    """EOPNOTSUPP on turning VLAN filtering on: the same error, saying which keys need
    which kernel option."""
    if e.errno != errno.EOPNOTSUPP:
        return e
    return type(e)(e.errno, f"{e} (vlan/vlanTrunk need VLAN filtering on bridge {name}: this "
                            "kernel was built without CONFIG_BRIDGE_VLAN_FILTERING)")


def netlink_in(netns_path: str) -> Netlink:
    """A Netlink socket bound to the namespace at `netns_path`, usable from anywhere.

    Only the socket() call needs the thread inside the namespace, so the thread
    comes straight back and host-side work (sysctls included) stays host-side.
    """
    with netns.enter(netns_path):
        return Netlink()


def setup_veth(host_nl: Netlink, pod_netns_path: str, ifname: str, mtu: int | None, mac: str | None,
               bridge_index: int, *, hairpin: bool = False, isolated: bool = False) -> tuple[Link, Link]:
    """Create the pod's veth pair and plug the host end into the bridge.

    Call from the host namespace (the one `host_nl` was opened in). The pair is
    created inside the pod namespace with the pod end already named `ifname`, and
    the host end, named veth<8 hex>, is placed straight into the host namespace.
    The host end gets accept_ra=0, is enslaved to the bridge and brought up;
    hairpin/isolated are set on its bridge port. If a later step fails the pair is
    deleted again so a retried ADD starts clean. Returns (host link, pod link).
    """
    with netlink_in(pod_netns_path) as pod_nl:
        if pod_nl.get_link(ifname) is not None:
            raise VethNameTaken(f"container veth name provided ({ifname}) already exists")
        host_ns_fd = netns.open_current()
        try:
            host_name = _create_veth_pair(pod_nl, host_nl, ifname, host_ns_fd, mtu, mac)
        finally:
            posix.close(host_ns_fd)
        try:
            pod_link = pod_nl.get_link(ifname)
            host_link = _plug_into_bridge(host_nl, host_name, bridge_index, hairpin, isolated)
        except BaseException:
            _remove_pair(host_nl, host_name)
            raise
    return host_link, pod_link


def _remove_pair(host_nl: Netlink, host_name: str) -> None:
    """Best effort: delete the pair by its host end, whose random name is this ADD's own
    (deleting one end of a veth deletes both); the step's own error is what to report."""
    try:
        host = host_nl.get_link(host_name)
        if host is not None and host.kind == "veth":
            host_nl.delete_link(host.index)
    except OSError:  # NetlinkError included: the socket may be what failed
        pass


def _create_veth_pair(pod_nl: Netlink, host_nl: Netlink, ifname: str, host_ns_fd: int,
                      mtu: int | None, mac: str | None) -> str:
    """Create the pair from the pod side; return the random host-side name that worked.

    A request that fails without the kernel's answer (its ACK lost: ENOBUFS on the socket)
    may have created the pair all the same: it is looked for by its host name and deleted."""
    for _attempt in range(10):
        host_name = "veth" + posix.urandom(4).hex()  # NetworkManager ignores "veth*" devices
        try:
            pod_nl.create_veth(ifname, host_name, peer_netns_fd=host_ns_fd, mtu=mtu, mac=mac)
            return host_name
        except AlreadyExists:
            if pod_nl.get_link(ifname) is not None:  # a concurrent ADD took ifname
                raise VethNameTaken(f"container veth name provided ({ifname}) already exists") from None
            # otherwise the random host name was taken: draw another
        except BaseException:
            _remove_pair(host_nl, host_name)
            raise
    raise LinkError("failed to find a unique veth name")


def _plug_into_bridge(nl: Netlink, name: str, bridge_index: int, hairpin: bool, isolated: bool) -> Link:
    host = nl.get_link(name)
    if host is None:
        raise LinkError(f"host veth {name} vanished right after creation")
    _disable_accept_ra(name)
    nl.set_link(host.index, up=True, master=bridge_index)
    if hairpin or isolated:
        nl.set_bridge_port(host.index, hairpin=hairpin, isolated=isolated)
    return refetch(nl, host.index, f"host veth {name}")


def configure_port_vlans(nl: Netlink, port_index: int, vlan: int = 0,
                         trunk: list[tuple[int, int]] | tuple = (), preserve_default_vlan: bool = False) -> None:
    """Put a bridge port on VLANs: `vlan` as access VLAN (PVID, untagged egress),
    `trunk` as (first, last) ranges of tagged VLANs.

    Unless preserve_default_vlan, the bridge's default VLAN 1 is removed from the
    port first so the pod only reaches its own VLANs.
    """
    if not (vlan or trunk):
        return
    if not preserve_default_vlan:
        try:
            nl.bridge_vlan_del(port_index, 1)
        except NotFound:
            pass
    if vlan:
        nl.bridge_vlan_add(port_index, vlan, pvid=True, untagged=True)
    for first, last in trunk:
        nl.bridge_vlan_add(port_index, first, vid_end=last)


def ensure_vlan_gateway(nl: Netlink, bridge: Link, vlan: int, preserve_default_vlan: bool = False) -> Link:
    """The interface that carries the gateway address for an access VLAN, created if needed.

    As in the reference: a veth pair inside the host namespace, one end named
    "<bridge>.<vlan>" (where the gateway address goes), the other plugged into the
    bridge as an access port of `vlan`. Returns the "<bridge>.<vlan>" end, up.
    """
    name = f"{bridge.name}.{vlan}"
    gateway = nl.get_link(name)
    if gateway is None:
        # The pair's "pod" end lives in our own namespace here.
        host, gateway = setup_veth(nl, netns.CURRENT_PATH, name, bridge.mtu, None, bridge.index)
        try:
            configure_port_vlans(nl, host.index, vlan, (), preserve_default_vlan)
        except BaseException:
            # Left in place, the next ADD would reuse a gateway port without its VLAN.
            nl.delete_link(gateway.index)
            raise
    if not gateway.up:
        nl.set_link(gateway.index, up=True)
        gateway = refetch(nl, gateway.index, f"VLAN gateway {name}")
    return gateway


def wait_addresses_settled(nl: Netlink, index: int, timeout: float = 5.0, interval: float = 0.05) -> None:
    """Wait until no IPv6 address on the link is tentative (DAD still running).

    An address in use before DAD finishes is unusable, so ADD waits, like the
    reference's SettleAddresses (5 s). A failed DAD (duplicate address) is an
    error right away. A link that is administratively down never finishes DAD,
    so there is nothing to wait for.
    """
    link = nl.get_link(index)
    if link is None or not link.up:
        return
    deadline = time.monotonic() + timeout
    while True:
        tentative = False
        for addr in nl.list_addrs(index=index, family=AF_INET6):
            if addr.flags & IFA_F_DADFAILED:
                raise LinkError(f"link {link.name} has address {addr.address} in DADFAILED state")
            tentative = tentative or bool(addr.flags & IFA_F_TENTATIVE)
        if not tentative:
            return
        if time.monotonic() >= deadline:
            raise LinkError(f"link {link.name} still has tentative addresses after {timeout:g} seconds")
        time.sleep(interval)


def wait_oper_up(nl: Netlink, index: int, delays_ms: tuple = (0, 50, 500, 1000, 1000)) -> Link:
    """Poll until the link's operstate is "up", like the reference (~2.5 s at most).

    A host veth stays "lower-layer-down" while its pod end is down; that surfaces
    as "bridge port in error state: lower-layer-down".
    """
    link = None
    for delay in delays_ms:
        time.sleep(delay / 1000)
        link = nl.get_link(index)
        if link is None:
            raise LinkError(f"bridge port {index} disappeared")
        if link.operstate == "up":
            return link
    raise PortNotUp(f"bridge port in error state: {link.operstate}")


def _is_global_unicast(addr: Addr) -> bool:
    """Go's net.IP.IsGlobalUnicast: not unspecified, loopback, link-local, multicast or broadcast."""
    octets = _socket.inet_pton(addr.family, addr.address)
    if addr.family == AF_INET:
        unspecified_or_broadcast = octets in (bytes(4), b"\xff" * 4)
        return not (unspecified_or_broadcast or octets[0] == 127 or octets[:2] == b"\xa9\xfe"
                    or 224 <= octets[0] <= 239)
    unspecified_or_loopback = octets[:15] == bytes(15) and octets[15] in (0, 1)
    link_local = octets[0] == 0xFE and octets[1] & 0xC0 == 0x80
    return not (unspecified_or_loopback or link_local or octets[0] == 0xFF)


def del_pod_link(pod_netns_path: str, ifname: str) -> list[Addr]:
    """Delete the pod's interface (its host peer goes with it); return its global addresses.

    The addresses let DEL remove the matching masquerade rules. Returns [] when
    the link or the whole namespace is already gone, so DEL can be repeated.
    """
    try:
        nl = netlink_in(pod_netns_path)
    except netns.NetnsNotFound:
        return []
    with nl:
        link = nl.get_link(ifname)
        if link is None:
            return []
        addrs = nl.list_addrs(index=link.index)
        try:
            nl.delete_link(link.index)
        except NotFound:
            pass
    return [a for a in addrs if a.family in (AF_INET, AF_INET6) and _is_global_unicast(a)]
