"""`cni-inspect node`: every bridge of the confs and its ports, the leases against the live pods
(orphans both ways), masquerade and macspoofchk rules whose pod is gone, the backends in use, and
the node prerequisites the bridge plugin does not set up.
"""
from __future__ import annotations

import ipaddress
import os

from cni_bridge.masquerade import naming

from . import cache, kernel, leases, netns
from .confs import NetworkConf
from .kernel import Kernel
from .netfilter import Netfilter
from .pod import link_summary
from .problems import Problems, freeing, not_enslaved

BRIDGE_NF_CALL = {4: "net.bridge.bridge-nf-call-iptables", 6: "net.bridge.bridge-nf-call-ip6tables"}


def _fstype(path: str) -> tuple[str | None, str | None]:
    """(mount point, fstype) of the filesystem holding path (or its nearest existing parent)."""
    path = os.path.realpath(path)
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    best = (None, None)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields, _, tail = line.partition(" - ")
                point = fields.split()[4].encode().decode("unicode_escape")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and (best[0] is None or len(point) >= len(best[0])):
                    best = (point, tail.split()[0])
    except OSError:
        pass
    return best


def _live_pods(node: Kernel, entries: list[cache.CacheEntry],
               confs: list[NetworkConf]) -> list[dict]:
    """Every pod connected to this node by a veth that is a port of a conf's bridge or whose
    peer has an address of a conf's ranges (a pod detached from its bridge): the veth's peer
    netns is found among all namespaces by the id this netns has for it."""
    bridges = {c.bridge_name for c in confs}
    by_nsid = {}
    for ns in netns.every([e.netns for e in entries if e.netns]):
        nsid = node.nsid(ns)
        if nsid is not None:
            by_nsid.setdefault(nsid, ns)
    pods = []
    for veth in node.links():
        ns = by_nsid.get(veth.link_netnsid) if veth.kind == "veth" else None
        if ns is None:
            continue
        try:
            with Kernel(ns) as k:
                peer = k.link(index=veth.peer_ifindex)
                addresses = k.addresses(peer.index) if peer else []
        except OSError:
            continue
        if peer is None:
            continue
        master = node.link(index=veth.master) if veth.master else None
        ours = any(c.range_of(ipaddress.ip_interface(a).ip) for c in confs for a in addresses)
        if not ours and (master is None or master.name not in bridges):
            continue
        entry = next((e for e in entries if e.ifname == peer.name and e.netns
                      and netns.Netns(e.netns).identity() == ns.identity()), None)
        pods.append({"netns": ns.path, "ifname": peer.name, "addresses": addresses,
                     "mac": peer.mac, "bridge": master.name if master else None,
                     "host_veth": link_summary(veth, node),
                     "network": entry.network if entry else None,
                     "container_id": entry.container_id if entry else None})
    return pods


def inspect(node: Kernel, confs: list[NetworkConf], cache_dir: str, nf: Netfilter) -> dict:
    return NodeWalk(node, confs, cache_dir, nf).run()


class NodeWalk:
    """The node's bridges, pods, leases and rules, step by step; problems are what needs doing,
    warnings what the node's setup risks."""

    def __init__(self, node: Kernel, confs: list[NetworkConf], cache_dir: str, nf: Netfilter):
        self.node, self.nf = node, nf
        self.confs = [c for c in confs if c.bridge is not None]
        self.entries = cache.entries(cache_dir)
        self.pods = _live_pods(node, self.entries, self.confs)
        self.live_addresses = {ipaddress.ip_interface(a).ip: q for q in self.pods
                               for a in q["addresses"]}
        self.stores: dict[tuple[str, str], NetworkConf] = {}  # (dataDir, network) -> conf
        for conf in self.confs:
            if conf.uses_host_local:
                self.stores.setdefault((conf.data_dir, conf.network), conf)
        self.p, self.w = Problems(), Problems()
        self.report = {"confs": [c.summary() for c in confs], "bridges": [], "pods": self.pods,
                       "leases": [], "cache_entries": [], "masquerade": [], "macspoofchk": [],
                       "backends": [], "prerequisites": {}, "problems": self.p.items,
                       "warnings": self.w.items}

    def run(self) -> dict:
        for step in (self.bridges, self.leases, self.detached_pods, self.unleased_pods,
                     self.cache_entries, self.masquerade, self.macspoofchk, self.backends,
                     self.prerequisites):
            step()
        return self.report

    def bridges(self) -> None:
        for name in dict.fromkeys(c.bridge_name for c in self.confs):
            link = self.node.link(name)
            networks = [c.network for c in self.confs if c.bridge_name == name]
            if link is None:
                self.report["bridges"].append({"name": name, "networks": networks,
                                               "exists": False, "addresses": [], "ports": []})
                continue
            ports = []
            for port in self.node.ports(link):
                pod = next((q for q in self.pods if q["host_veth"]["ifindex"] == port.index),
                           None)
                ports.append({**link_summary(port, self.node),
                              "pod": {k: pod[k] for k in ("netns", "ifname", "addresses")}
                              if pod else None})
            self.report["bridges"].append({
                "name": name, "networks": networks, "exists": True, "kind": link.kind,
                "addresses": self.node.addresses(link.index), "oper_state": link.oper_state,
                "ports": ports})

    def leases(self) -> None:
        """Every lease against the live pods; a pod known by its lease alone gets its ID."""
        for (data_dir, network), conf in self.stores.items():
            for lease in leases.leases(data_dir, network):
                pod = self.live_addresses.get(ipaddress.ip_address(lease.ip))
                if pod is not None and pod["container_id"] is None:
                    pod.update(network=network, container_id=lease.container_id)
                self.report["leases"].append({**lease.summary(), "network": network,
                                              "pod_alive": pod is not None,
                                              "pod_netns": pod["netns"] if pod else None})
                if pod is None:
                    self.p.add("lease-leaked", f"lease {lease.path} ({lease.ip}) of container "
                               f"{lease.container_id} ({lease.ifname or 'any ifname'}) has no "
                               "live pod: no DEL ran for it. "
                               + freeing(lease.container_id, lease.ifname or "eth0"))

    def _bridges_of(self, pod: dict) -> set[str]:
        """The bridges of the confs whose ranges hold one of the pod's addresses."""
        return {c.bridge_name for c in self.confs for a in pod["addresses"]
                if c.range_of(ipaddress.ip_interface(a).ip)}

    def detached_pods(self) -> None:
        for pod in self.pods:
            owners = self._bridges_of(pod)
            if owners and pod["bridge"] not in owners:
                self.p.add("veth-not-enslaved", not_enslaved(
                    pod["host_veth"]["name"], pod["bridge"], sorted(owners),
                    f" of the pod in {pod['netns']}"))

    def unleased_pods(self) -> None:
        leased = {(x["network"], ipaddress.ip_address(x["ip"])) for x in self.report["leases"]}
        for pod in self.pods:
            for cidr in pod["addresses"]:
                ip = ipaddress.ip_interface(cidr).ip
                owners = [c for c in self.stores.values()
                          if c.bridge_name == pod["bridge"] and c.range_of(ip)]
                if owners and not any((c.network, ip) in leased for c in owners):
                    self.p.add("no-lease", f"{ip} of the pod in {pod['netns']} "
                               f"({pod['ifname']}, on {pod['bridge']}) has no lease in "
                               + " or ".join(leases.store_dir(c.data_dir, c.network)
                                             for c in owners)
                               + ": host-local may give it to another pod. Recreate the pod, "
                                 "or write the lease back (`cni-inspect pod` prints how).")

    def cache_entries(self) -> None:
        networks = {c.network for c in self.confs}
        for entry in self.entries:
            alive = bool(entry.netns) and netns.Netns(entry.netns).exists()
            self.report["cache_entries"].append({
                "path": entry.path, "network": entry.network,
                "container_id": entry.container_id, "ifname": entry.ifname,
                "netns": entry.netns, "netns_exists": alive})
            if not alive and entry.network in networks:
                self.p.add("netns-gone", f"the runtime's cache entry {entry.path} names netns "
                           f"{entry.netns or '(none)'}, which is gone: the pod is gone but no "
                           "DEL ran. " + freeing(entry.container_id, entry.ifname))

    def masquerade(self) -> None:
        """Rules whose owner is no live pod and whose source address is on none."""
        live_ids = {(q["network"], q["container_id"]) for q in self.pods if q["container_id"]}
        live_sources = {str(ip) for ip in self.live_addresses}
        for entry in self.nf.iptables_chains() + self.nf.nft_rules():
            alive = (entry["network"], entry["container_id"]) in live_ids or \
                bool(set(entry["sources"]) & live_sources)
            entry["pod_alive"] = alive
            self.report["masquerade"].append(entry)
            if not alive:
                owner = (f"container {entry['container_id']} of network {entry['network']}"
                         if entry["container_id"] else "an unknown attachment")
                self.p.add("masquerade-leaked", f"{entry['backend']} {entry['chain_or_table']} "
                           f"masquerades {', '.join(entry['sources']) or 'nothing'} for "
                           f"{owner}, whose pod is gone. A DEL or GC of the attachment removes "
                           "it.")

    def macspoofchk(self) -> None:
        live = {naming.macspoof_chain(q["container_id"], q["ifname"])
                for q in self.pods if q["container_id"]}
        for chain in self.nf.macspoof_chains():
            self.report["macspoofchk"].append({"chain": chain, "pod_alive": chain in live})
            if chain not in live:
                self.p.add("macspoofchk-leaked", f"bridge nat chain {chain} has no live pod. "
                           "A DEL of the attachment removes it.")

    def backends(self) -> None:
        used = self.report["backends"] = self.nf.backends_in_use()
        if "legacy" in used and len(used) > 1:
            self.w.add("backends-mixed", "CNI masquerade rules are both in the legacy tables "
                       f"and in nf_tables ({', '.join(used)}): their order on the postrouting "
                       "hook is undefined, and each plugin's DEL sees only part of them. Use one "
                       "backend on the node.")

    def prerequisites(self) -> None:
        """What the bridge plugin does not set up: br_netfilter for Services between pods of
        one bridge, and a dataDir that a reboot empties."""
        loaded = os.path.isdir("/proc/sys/net/bridge")
        call = kernel.sysctl(BRIDGE_NF_CALL[4])
        data_dirs = []
        for data_dir in dict.fromkeys(c.data_dir for c in self.stores.values()):
            point, fstype = _fstype(data_dir)
            data_dirs.append({"path": data_dir, "mount_point": point, "fstype": fstype,
                              "tmpfs": fstype == "tmpfs"})
            if fstype != "tmpfs":
                self.w.add("data-dir-persistent", f"host-local's dataDir {data_dir} is on "
                           f"{fstype} ({point}): its leases survive a reboot that kills every "
                           "pod, so they leak unless the runtime sends GC at start (CRI-O does) "
                           "or the dir is emptied at boot (a tmpfs, or a systemd-tmpfiles rule).")
        self.report["prerequisites"] = {
            "br_netfilter": loaded,
            "bridge_nf_call_iptables": None if call is None else call == "1",
            "data_dirs": data_dirs}
        if not loaded:
            self.w.add("br-netfilter-missing", "br_netfilter is not loaded: kube-proxy's Service "
                       "rules do not see traffic between pods of one bridge. "
                       "`modprobe br_netfilter`.")
        elif call != "1":
            self.w.add("bridge-nf-call-iptables-off", "net.bridge.bridge-nf-call-iptables is 0: "
                       "kube-proxy's Service rules do not see traffic between pods of one "
                       "bridge. `sysctl -w net.bridge.bridge-nf-call-iptables=1`.")
