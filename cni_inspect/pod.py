"""`cni-inspect pod`: one attachment's path from its interface to the node's NAT, and what is
wrong with it.

Every fact is read from the kernel or the node's files; every problem says what to do. The
report is a dict, the `--json` output; its keys are documented in the README and stay stable.
"""
from __future__ import annotations

import ipaddress

from . import kernel, leases
from .kernel import Kernel, Link
from .locate import Attachment
from .netfilter import Netfilter
from .problems import Problems, freeing, not_enslaved

FAMILY_NAMES = {4: "ipv4", 6: "ipv6"}
FORWARDING_SYSCTLS = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


def _address(cidr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_interface(cidr).ip


def link_summary(link: Link, kern: Kernel | None = None) -> dict:
    """A link for --json; its master by name when `kern`, the netns it is in, is given; its
    bridge-port flags (None when it is no bridge's port)."""
    master = kern.link(index=link.master) if kern is not None and link.master else None
    return {"name": link.name, "ifindex": link.index, "mac": link.mac,
            "oper_state": link.oper_state, "mtu": link.mtu,
            "master": master.name if master else link.master,
            "hairpin": link.hairpin, "isolated": link.isolated}


def pod_side(att: Attachment) -> tuple[dict | None, Link | None]:
    """The pod's interface: MAC, ifindex, peer ifindex, state, addresses, routes."""
    if att.netns is None or not att.netns.exists():
        return None, None
    with Kernel(att.netns) as pod:
        link = pod.link(att.ifname)
        if link is None:
            return None, None
        summary = {"interface": link.name, "mac": link.mac, "ifindex": link.index,
                   "peer_ifindex": link.peer_ifindex, "kind": link.kind,
                   "oper_state": link.oper_state, "mtu": link.mtu,
                   "addresses": pod.addresses(link.index),
                   "routes": [r for r in pod.routes() if r["dev"] == link.name]}
    return summary, link


def host_side(node: Kernel, att: Attachment, pod_link: Link) -> Link | None:
    """The node's end of the pod's veth: the node link whose peer is the pod's interface in the
    pod's netns (matched by namespace id, as ifindexes repeat across namespaces)."""
    nsid = node.nsid(att.netns)
    if nsid is None:
        return None
    return next((link for link in node.links()
                 if link.link_netnsid == nsid and link.peer_ifindex == pod_link.index), None)


def inspect(node: Kernel, att: Attachment, nf: Netfilter) -> dict:
    return PodWalk(node, att, nf).run()


class PodWalk:
    """The walk for one attachment, step by step; each step fills its part of the report and
    adds the problems it finds."""

    def __init__(self, node: Kernel, att: Attachment, nf: Netfilter):
        self.node, self.att, self.conf, self.nf = node, att, att.conf, nf
        self.p = Problems()
        self.pod, self.pod_link = pod_side(att)
        self.alive = att.netns is not None and att.netns.exists()
        self.ips = self._ips()
        self.addresses = [str(_address(c)) for c in self.ips]
        self.bridge = node.link(self.conf.bridge_name)
        self.veth: Link | None = None
        self.report = {
            "network": self.conf.network, "conf": self.conf.path,
            "container_id": att.container_id, "ifname": att.ifname,
            "netns": att.netns.path if att.netns else None, "netns_exists": self.alive,
            "found_by": att.found_by, "cache_entry": att.cache.path if att.cache else None,
            "ips": self.ips, "pod": self.pod, "host_veth": None, "bridge": None,
            "node_routes": [], "forwarding": {}, "neighbours": [], "leases": [],
            "masquerade": [], "macspoofchk": None, "conntrack": [], "problems": self.p.items}

    def _ips(self) -> list[str]:
        """The attachment's CIDRs: the cached result's, else the interface's, else the leases'."""
        att = self.att
        if att.cache and att.cache.ips:
            return att.cache.ips
        if self.pod:
            return self.pod["addresses"]
        return [f"{lease.ip}/{r.subnet.prefixlen}" if (r := self.conf.range_of(_address(lease.ip)))
                else lease.ip for lease in att.leases]

    def run(self) -> dict:
        for step in (self.the_pod, self.veth_pair, self.the_bridge, self.routes,
                     self.forwarding, self.neighbours, self.the_leases, self.masquerade,
                     self.macspoofchk):
            step()
        self.report["conntrack"] = kernel.conntrack(set(self.addresses)) if self.addresses \
            else []
        return self.report

    def in_pod(self, cmd: str) -> str:
        return self.att.netns.command(cmd)

    # the steps ----------------------------------------------------------------------------------

    def the_pod(self) -> None:
        att = self.att
        if not self.alive:
            where = (f"netns {att.netns.path} is gone" if att.netns else
                     "no netns in /run/netns holds its address")
            if att.leases:
                self.p.add("lease-leaked", f"lease(s) "
                           f"{', '.join(lease.ip for lease in att.leases)} of {_who(att)} are "
                           f"left while the pod is gone ({where}): no DEL ran. {_freeing(att)}")
            elif att.cache:
                self.p.add("netns-gone", f"the runtime's cache entry {att.cache.path} names "
                           f"{where}: the pod is gone but no DEL ran. {_freeing(att)}")
        elif self.pod is None:
            self.p.add("no-interface", f"netns {att.netns.path} has no {att.ifname}: the pod "
                       "lost its interface (deleted, or never added). Recreate the pod (DEL, "
                       "then ADD).")

    def veth_pair(self) -> None:
        att, link = self.att, self.pod_link
        if link is None:
            return
        veth = self.veth = host_side(self.node, att, link)
        if veth is None:
            self.p.add("veth-peer-missing", f"{att.ifname} (ifindex {link.index}, peer ifindex "
                       f"{link.peer_ifindex}) has no peer in this node's netns: "
                       + ("it is not a veth" if link.kind != "veth" else
                          "its peer was moved to another netns")
                       + ". Recreate the pod (DEL, then ADD).")
            return
        summary = self.report["host_veth"] = link_summary(veth, self.node)
        if self.bridge is None or veth.master != self.bridge.index:
            self.p.add("veth-not-enslaved", not_enslaved(veth.name, summary["master"],
                                                         [self.conf.bridge_name]))
        if veth.oper_state != "UP":  # the pod's end is then LOWERLAYERDOWN
            self.p.add("veth-down", f"host veth {veth.name} is {veth.oper_state}: "
                       f"`ip link set {veth.name} up`.")
        elif self.pod["oper_state"] != "UP" and not self.conf.flag("disableContainerInterface"):
            self.p.add("veth-down", f"{att.ifname} in the pod is {self.pod['oper_state']}: "
                       f"`{self.in_pod(f'ip link set {att.ifname} up')}`.")

    def the_bridge(self) -> None:
        bridge = self.bridge
        if bridge is None:
            self.report["bridge"] = {"name": self.conf.bridge_name, "exists": False,
                                     "addresses": [], "ports": 0}
            if self.alive:
                self.p.add("bridge-missing", f"bridge {self.conf.bridge_name} does not exist on "
                           "the node: the next ADD creates it; this pod must be recreated to be "
                           "on it.")
            return
        addresses = self.node.addresses(bridge.index)
        self.report["bridge"] = {"name": bridge.name, "exists": True, "addresses": addresses,
                                 "ports": len(self.node.ports(bridge)),
                                 "oper_state": bridge.oper_state, "mac": bridge.mac,
                                 "kind": bridge.kind}
        if not (self.conf.is_gateway and self.alive):
            return
        for cidr in self.ips:
            rng = self.conf.range_of(_address(cidr))
            want = f"{rng.gateway}/{rng.subnet.prefixlen}" if rng else None
            if want and want not in addresses:
                self.p.add("bridge-no-gateway", f"isGateway is on but bridge {bridge.name} "
                           f"lacks the gateway address {want}: the pod's default route leads "
                           f"nowhere. `ip addr add {want} dev {bridge.name}` (the next ADD adds "
                           "it).")

    def routes(self) -> None:
        """The pod's default route via its range's gateway; the node's route back to the pod."""
        ifname = self.att.ifname
        for cidr in self.ips if self.pod else ():
            ip = _address(cidr)
            want = self.conf.default_gateway(ip)
            if want is None:
                continue
            default = "0.0.0.0/0" if ip.version == 4 else "::/0"
            gateways = [r["gateway"] for r in self.pod["routes"] if r["dst"] == default]
            if not gateways:
                self.p.add("no-default-route", f"the pod has no default route ({default}) via "
                           f"{want}: it reaches only its subnet. "
                           f"`{self.in_pod(f'ip route add default via {want} dev {ifname}')}`.")
            elif str(want) not in gateways:
                fix = self.in_pod(f"ip route replace default via {want} dev {ifname}")
                self.p.add("wrong-default-gateway", "the pod's default route goes via "
                           f"{', '.join(map(str, gateways))}, not the gateway {want} of its "
                           f"range. `{fix}`.")
        if not self.alive or self.bridge is None:
            return
        bridge = self.bridge.name
        for address in self.addresses:
            route = self.node.route_to(address)
            self.report["node_routes"].append({"to": address, **(route or {})})
            if route is None or route["dev"] != bridge:
                rng = self.conf.range_of(ipaddress.ip_address(address))
                self.p.add("no-node-route", f"the node has no route to {address} via {bridge}"
                           + (f" (it goes via {route['dev']})" if route else "")
                           + ": replies to the pod get lost. `ip route replace "
                           f"{rng.subnet if rng else address} dev {bridge}` (the gateway "
                           "address on the bridge brings it back).")

    def forwarding(self) -> None:
        families = sorted({_address(c).version for c in self.ips}) or [4, 6]
        for family in families:
            name = FORWARDING_SYSCTLS[family]
            value = kernel.sysctl(name)
            self.report["forwarding"][FAMILY_NAMES[family]] = None if value is None \
                else value == "1"
            if self.conf.is_gateway and self.alive and value == "0" and self.ips:
                self.p.add("forwarding-off", f"isGateway is on but {name} is 0: the node does "
                           f"not route the pod's traffic. `sysctl -w {name}=1` (the plugin sets "
                           "it at each ADD).")

    def neighbours(self) -> None:
        if self.bridge is None or self.pod is None:
            return
        bridge, mac = self.bridge.name, self.pod["mac"]
        for address in self.addresses:
            neigh = self.node.neighbour(address, self.bridge.index)
            if neigh is None:
                continue
            self.report["neighbours"].append(neigh)
            if neigh["mac"] and neigh["mac"] != mac and neigh["state"] not in ("FAILED",
                                                                              "INCOMPLETE"):
                self.p.add("stale-neighbour", f"the node's neighbour entry for {address} on "
                           f"{bridge} says {neigh['mac']} ({neigh['state']}) but the pod's "
                           f"{self.att.ifname} is {mac}: traffic to the pod goes to another "
                           f"MAC. `ip neigh del {address} dev {bridge}`.")

    def the_leases(self) -> None:
        att, conf, pod = self.att, self.conf, self.pod
        if not conf.uses_host_local:
            return
        on_interface = {str(_address(c)) for c in pod["addresses"]} if pod else set()
        store = {lease.ip: lease for lease in leases.leases(conf.data_dir, conf.network)}
        shown = list(att.leases) + [store[a] for a in sorted(on_interface)
                                    if a in store and store[a] not in att.leases]
        for lease in shown:
            mine = lease.names(att.container_id, att.ifname)
            matches = mine and (pod is None or lease.ip in on_interface)
            self.report["leases"].append({**lease.summary(), "matches": matches})
            if pod is None or matches:
                continue
            if not mine:
                self.p.add("lease-mismatch", f"lease {lease.path} of the pod's address "
                           f"{lease.ip} names container {lease.container_id} ({lease.ifname}), "
                           f"not {att.container_id} ({att.ifname}): host-local's store and the "
                           "pod disagree; recreate the pod, or free the other lease if its pod "
                           "is gone.")
            else:
                self.p.add("lease-mismatch", f"lease {lease.path} of {_who(att)} is for "
                           f"{lease.ip}, which is not on the pod's {att.ifname} "
                           f"({', '.join(sorted(on_interface)) or 'no address'}).")
        store_dir = leases.store_dir(conf.data_dir, conf.network)
        for address in sorted(on_interface):
            if address not in store and conf.range_of(ipaddress.ip_address(address)):
                self.p.add("no-lease", f"{address} on the pod's {att.ifname} has no lease in "
                           f"{store_dir}: host-local may give it to another pod. Recreate the "
                           "pod, or write the lease back: printf '%s\\r\\n%s' "
                           f"{att.container_id or '<container ID>'} {att.ifname} > "
                           f"{store_dir}/{address}")

    def masquerade(self) -> None:
        att = self.att
        found = self.nf.masquerade(self.conf.network, att.container_id, att.ifname,
                                   self.addresses)
        self.report["masquerade"] = found
        backends = sorted({entry["backend"] for entry in found})
        if not self.alive:
            if found:
                self.p.add("masquerade-leaked", f"{_who(att)} is gone but its masquerade rules "
                           f"are left in {', '.join(backends)}: "
                           + ", ".join(e["chain_or_table"] for e in found) + f". {_freeing(att)}")
            return
        if len(backends) > 1:
            self.p.add("masquerade-two-backends", "the pod's masquerade rules are in "
                       f"{len(backends)} backends at once ({', '.join(backends)}): two plugins "
                       "(or versions) added it. Recreate the pod with one plugin.")
        if not (self.conf.flag("ipMasq") and self.addresses):
            return
        if not any(e["masquerades"] and e["jumped_to"] for e in found):
            detail = "; ".join(
                f"{e['backend']} {e['chain_or_table']} "
                + ("has no MASQUERADE rule" if not e["masquerades"] else
                   "is not jumped to from POSTROUTING") for e in found) or "no backend holds one"
            self.p.add("no-masquerade", "ipMasq is on but no rule masquerades "
                       f"{', '.join(self.addresses)} ({detail}): the pod's traffic leaves the "
                       "node with the pod's address. Recreate the pod (DEL, then ADD).")

    def macspoofchk(self) -> None:
        att, pod, veth = self.att, self.pod, self.veth
        if att.container_id is None:
            return
        found = self.report["macspoofchk"] = self.nf.macspoofchk(att.container_id, att.ifname)
        if not self.alive:
            if found:
                self.p.add("macspoofchk-leaked", f"{_who(att)} is gone but its macspoofchk "
                           f"chains are left in bridge nat: {', '.join(found['chains'])}. "
                           f"{_freeing(att)}")
            return
        if not self.conf.flag("macspoofchk"):
            return
        if found is None or not found["jumped_to"] or len(found["chains"]) < 2:
            self.p.add("no-macspoofchk", "macspoofchk is on but bridge nat has "
                       + ("no chain" if found is None else "an incomplete set of chains")
                       + f" for {att.container_id}-{att.ifname}: the pod may send with any "
                       "source MAC. Recreate the pod (DEL, then ADD).")
        elif pod is not None and (found["mac"] != pod["mac"] or
                                  (veth is not None and found["iifname"] != veth.name)):
            self.p.add("macspoofchk-mismatch", f"the macspoofchk rules allow MAC "
                       f"{found['mac']} on {found['iifname']}, but the pod's {att.ifname} is "
                       f"{pod['mac']} on {veth.name if veth else '?'}: its frames are dropped. "
                       "Recreate the pod.")


def _who(att: Attachment) -> str:
    return f"container {att.container_id} ({att.ifname})" if att.container_id else \
        f"the pod's {att.ifname}"


def _freeing(att: Attachment) -> str:
    return freeing(att.container_id, att.ifname) if att.container_id else \
        "Remove it through the runtime."
