"""From what a person types (a container ID or prefix, a netns path or name, a pod IP) to the
attachment: network, container ID, ifname and netns.

Sources, in this order: the runtime's libcni cache (it holds the netns), host-local's leases (IP
-> container ID), the netns given; a pod's netns not in the cache is found by a search of the
named netns for the one whose interface holds the lease's address and whose veth peer is on this
node.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from . import cache, leases, netns
from .confs import NetworkConf
from .errors import InspectError
from .kernel import Kernel


@dataclass
class Attachment:
    conf: NetworkConf
    container_id: str | None  # None: a netns found with no cache entry or lease naming it
    ifname: str
    netns: netns.Netns | None  # None: no netns known to hold it
    found_by: str  # "cache", "lease" or "netns"
    cache: cache.CacheEntry | None = None
    leases: list[leases.Lease] = field(default_factory=list)  # the ones naming it


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _holders(candidates: list[netns.Netns], ifname: str,
             addresses: set[str]) -> list[netns.Netns]:
    holders = []
    for ns in candidates:
        try:
            with Kernel(ns) as k:
                link = k.link(ifname)
                held = link is not None and any(a.split("/")[0] in addresses
                                                for a in k.addresses(link.index))
        except OSError:
            continue
        if held:
            holders.append(ns)
    return holders


def search_netns(node: Kernel, ifname: str, addresses: set[str]) -> netns.Netns | None:
    """The named netns whose `ifname` holds one of the addresses.

    First among those a veth connects to this node (this netns has an id for them, which costs
    no fork to ask): another node's pod may have the same address. A netns not connected to
    this node (a pod whose veth peer went elsewhere) only if it is the only one.
    """
    named = netns.named()
    connected = [ns for ns in named if node.nsid(ns) is not None]
    holders = _holders(connected, ifname, addresses)
    if holders:
        return holders[0]
    holders = _holders([ns for ns in named if ns not in connected], ifname, addresses)
    return holders[0] if len(holders) == 1 else None


class _Records:
    """What the node records about a network's attachments: cache entries and leases."""

    def __init__(self, conf: NetworkConf, cache_dir: str):
        self.entries = cache.entries(cache_dir, conf.network)
        self.leases = leases.leases(conf.data_dir, conf.network)

    def entry(self, container_id: str | None, ifname: str) -> cache.CacheEntry | None:
        return next((e for e in self.entries
                     if e.container_id == container_id and e.ifname == ifname), None)

    def entry_of_netns(self, ns: netns.Netns, ifname: str) -> cache.CacheEntry | None:
        return next((e for e in self.entries if e.ifname == ifname and e.netns
                     and netns.Netns(e.netns).identity() == ns.identity()), None)

    def entry_of_ip(self, ip, ifname: str) -> cache.CacheEntry | None:
        return next((e for e in self.entries if e.ifname == ifname
                     and any(_ip(a.split("/")[0]) == ip for a in e.ips)), None)

    def lease_of_ip(self, ip) -> leases.Lease | None:
        return next((lease for lease in self.leases if _ip(lease.ip) == ip), None)

    def container_id(self, target: str, ifname: str) -> str | None:
        """The container ID that is `target` or, alone, starts with it."""
        ids = sorted({e.container_id for e in self.entries if e.ifname == ifname}
                     | {lease.container_id for lease in self.leases
                        if lease.ifname in (None, ifname)})
        if target in ids:
            return target
        prefixed = [i for i in ids if i.startswith(target)]
        if len(prefixed) > 1:
            raise InspectError(f"container ID prefix {target!r} is ambiguous: "
                               + ", ".join(prefixed))
        return prefixed[0] if prefixed else None


def _unknown(target: str, conf: NetworkConf, ifname: str, cache_dir: str) -> InspectError:
    elsewhere = sorted({e.network for e in cache.entries(cache_dir)
                        if e.container_id.startswith(target) and e.ifname == ifname})
    hint = (f"; the cache has it in network {', '.join(elsewhere)}: pass that network's --conf"
            if elsewhere else "")
    return InspectError(
        f"no pod {target!r} in network {conf.network!r} ({conf.path}): no cache entry in "
        f"{cache_dir}/results, no lease in {leases.store_dir(conf.data_dir, conf.network)}, "
        f"no such netns{hint}")


def _owner_of_netns(records: _Records, conf: NetworkConf, ns: netns.Netns,
                    ifname: str) -> str | None:
    """The container ID of a netns: its cache entry's, else its address's lease's; None for a
    pod of the network that neither names. Refused when it is no pod of the network."""
    entry = records.entry_of_netns(ns, ifname)
    if entry is not None:
        return entry.container_id
    with Kernel(ns) as k:
        link = k.link(ifname)
        addresses = [ipaddress.ip_interface(a).ip for a in k.addresses(link.index)] \
            if link else []
    lease = next(filter(None, map(records.lease_of_ip, addresses)), None)
    if lease is not None:
        return lease.container_id
    if link is not None and any(conf.range_of(a) for a in addresses):
        return None
    subnets = ", ".join(str(r.subnet) for r in conf.ranges) or "its ranges"
    raise InspectError(f"netns {ns.path} is not a pod of network {conf.network!r}: "
                       + (f"it has no {ifname}" if link is None else
                          f"its {ifname} has no address of {subnets} and no lease or cache "
                          "entry names it"))


def locate(node: Kernel, conf: NetworkConf, target: str, ifname: str, cache_dir: str,
           netns_path: str | None = None) -> Attachment:
    records = _Records(conf, cache_dir)
    given = netns.Netns(netns_path) if netns_path else None
    pod_ns = None
    ip = _ip(target)
    if ip is not None:
        lease, entry = records.lease_of_ip(ip), records.entry_of_ip(ip, ifname)
        if lease is not None:
            container_id, found_by, ifname = lease.container_id, "lease", lease.ifname or ifname
        elif entry is not None:
            container_id, found_by = entry.container_id, "cache"
        else:
            pod_ns = given or search_netns(node, ifname, {str(ip)})
            if pod_ns is None:
                raise InspectError(
                    f"no pod of network {conf.network!r} has {ip}: no lease in "
                    f"{leases.store_dir(conf.data_dir, conf.network)}, no cache entry, no netns "
                    f"in {netns.NETNS_RUN_DIRS[0]} with it on {ifname}")
            container_id, found_by = _owner_of_netns(records, conf, pod_ns, ifname), "netns"
    else:
        container_id = records.container_id(target, ifname) if "/" not in target else None
        if container_id is not None:
            found_by = "cache" if records.entry(container_id, ifname) else "lease"
        else:
            pod_ns = netns.resolve(target)
            if pod_ns is None:
                raise _unknown(target, conf, ifname, cache_dir)
            container_id, found_by = _owner_of_netns(records, conf, pod_ns, ifname), "netns"

    entry = records.entry(container_id, ifname) if container_id is not None else None
    owned = [lease for lease in records.leases if lease.names(container_id, ifname)]
    if given is not None:
        pod_ns = given
    elif pod_ns is None and entry is not None and entry.netns:
        pod_ns = netns.Netns(entry.netns)
    elif pod_ns is None and owned:
        pod_ns = search_netns(node, ifname, {lease.ip for lease in owned})
    return Attachment(conf, container_id, ifname, pod_ns, found_by, entry, owned)
