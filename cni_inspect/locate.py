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


def _holders(candidates: list[netns.Netns], ifname: str, addresses: set[str]) -> list[netns.Netns]:
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


def _by_container_id(target: str, ifname: str, entries, all_leases) -> str | None:
    ids = sorted({e.container_id for e in entries if e.ifname == ifname}
                 | {lease.container_id for lease in all_leases if lease.ifname in (None, ifname)})
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


def locate(node: Kernel, conf: NetworkConf, target: str, ifname: str, cache_dir: str,
           netns_path: str | None = None) -> Attachment:
    entries = cache.entries(cache_dir, conf.network)
    all_leases = leases.leases(conf.data_dir, conf.network)
    given_ns = netns.Netns(netns_path) if netns_path else None
    container_id, found_by, pod_ns = None, None, None

    ip = _ip(target)
    if ip is not None:
        lease = next((lease for lease in all_leases if _ip(lease.ip) == ip), None)
        entry = next((e for e in entries if e.ifname == ifname
                      and any(_ip(a.split("/")[0]) == ip for a in e.ips)), None)
        if lease is not None:
            container_id, found_by = lease.container_id, "lease"
            ifname = lease.ifname or ifname
        elif entry is not None:
            container_id, found_by = entry.container_id, "cache"
        else:
            pod_ns = given_ns or search_netns(node, ifname, {str(ip)})
            if pod_ns is None:
                raise InspectError(
                    f"no pod of network {conf.network!r} has {ip}: no lease in "
                    f"{leases.store_dir(conf.data_dir, conf.network)}, no cache entry, no netns "
                    f"in {netns.NETNS_RUN_DIRS[0]} with it on {ifname}")
            found_by = "netns"
    else:
        if "/" not in target:
            container_id = _by_container_id(target, ifname, entries, all_leases)
        if container_id is None:
            pod_ns = netns.resolve(target)
            if pod_ns is None:
                raise _unknown(target, conf, ifname, cache_dir)
            found_by = "netns"
            entry = next((e for e in entries if e.ifname == ifname and e.netns
                          and netns.Netns(e.netns).identity() == pod_ns.identity()), None)
            if entry is not None:
                container_id = entry.container_id
        else:
            found_by = "cache" if any(e.container_id == container_id for e in entries) \
                else "lease"

    entry = next((e for e in entries
                  if e.container_id == container_id and e.ifname == ifname), None) \
        if container_id is not None else None
    if pod_ns is not None and container_id is None:
        # a netns with no cache entry: its address's lease names the container
        with Kernel(pod_ns) as k:
            link = k.link(ifname)
            addresses = {a.split("/")[0] for a in k.addresses(link.index)} if link else set()
        lease = next((lease for lease in all_leases if lease.ip in addresses), None)
        if lease is not None:
            container_id = lease.container_id
        elif link is None or not any(conf.range_of(ipaddress.ip_address(a)) for a in addresses):
            raise InspectError(
                f"netns {pod_ns.path} is not a pod of network {conf.network!r}: "
                + (f"it has no {ifname}" if link is None else
                   f"{ifname} has no address of {', '.join(str(r.subnet) for r in conf.ranges)}"
                   if conf.ranges else f"no lease or cache entry names it"))
    owned = [lease for lease in all_leases if lease.names(container_id, ifname)]
    if given_ns is not None:
        pod_ns = given_ns
    elif pod_ns is None and entry is not None and entry.netns:
        pod_ns = netns.Netns(entry.netns)
    elif pod_ns is None and owned:
        pod_ns = search_netns(node, ifname, {lease.ip for lease in owned})
    return Attachment(conf, container_id, ifname, pod_ns, found_by, entry, owned)
