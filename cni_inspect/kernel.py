"""What the kernel says, through pyroute2: links, veth peers, bridge ports, addresses, routes,
neighbours, namespace ids and conntrack; and the forwarding sysctls of the node.

One `Kernel` per netns. pyroute2 opens a socket in another netns from a forked child that
setns()es and hands the fd back; `flags=0` so that a missing netns is never created.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

from pyroute2 import Conntrack, IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .netns import Netns

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
NETNSA_NSID_NOT_ASSIGNED = (-1, 0xFFFFFFFF)  # pyroute2 decodes the -1 unsigned
NUD_STATES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY",
              0x10: "PROBE", 0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}


@dataclass
class Link:
    name: str
    index: int
    kind: str | None  # IFLA_INFO_KIND: veth, bridge, ... (None for lo and physical links)
    mac: str | None
    oper_state: str
    mtu: int | None
    master: int | None  # ifindex of the bridge it is a port of
    peer_ifindex: int | None  # IFLA_LINK: a veth's peer, in the netns of link_netnsid
    link_netnsid: int | None  # the peer's netns, as this netns numbers it
    hairpin: bool | None = None  # bridge-port flags, None when not a bridge port
    isolated: bool | None = None

    @classmethod
    def from_msg(cls, msg) -> Link:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        port = None
        if info and info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge":
            port = info.get_attr("IFLA_INFO_SLAVE_DATA")
        link = cls(msg.get_attr("IFLA_IFNAME"), msg["index"], kind, msg.get_attr("IFLA_ADDRESS"),
                   msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN", msg.get_attr("IFLA_MTU"),
                   msg.get_attr("IFLA_MASTER"), msg.get_attr("IFLA_LINK"),
                   msg.get_attr("IFLA_LINK_NETNSID"))
        if port is not None:
            link.hairpin = bool(port.get_attr("IFLA_BRPORT_MODE"))
            link.isolated = bool(port.get_attr("IFLA_BRPORT_ISOLATED"))
        return link


def _cidr(address: str, prefixlen: int) -> str:
    return str(ipaddress.ip_interface(f"{address}/{prefixlen}"))


class Kernel:
    """Netlink reads in one netns: `netns` None is the one we run in (the node's)."""

    def __init__(self, netns: Netns | None = None):
        self.netns = netns
        self.ipr = IPRoute() if netns is None else IPRoute(netns=netns.path, flags=0)
        self._links: list[Link] | None = None

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc) -> None:
        self.ipr.close()

    # links ------------------------------------------------------------------------------------

    def links(self) -> list[Link]:
        if self._links is None:
            self._links = [Link.from_msg(m) for m in self.ipr.get_links()]
        return self._links

    def link(self, name: str | None = None, index: int | None = None) -> Link | None:
        return next((link for link in self.links()
                     if (name is None or link.name == name)
                     and (index is None or link.index == index)), None)

    def ports(self, bridge: Link) -> list[Link]:
        return [link for link in self.links() if link.master == bridge.index]

    def nsid(self, netns: Netns) -> int | None:
        """This netns's id for another one, None when it has none (no veth between them)."""
        try:
            fd = os.open(netns.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            answer = self.ipr.get_netnsid(fd=fd) or {}
        except NetlinkError:  # EINVAL: a netns being torn down as we ask
            answer = {}
        finally:
            os.close(fd)
        nsid = answer.get("nsid")
        return None if nsid is None or nsid in NETNSA_NSID_NOT_ASSIGNED else nsid

    # addresses, routes, neighbours ------------------------------------------------------------

    def addresses(self, index: int) -> list[str]:
        """The link's global-scope addresses as CIDRs (link-local ones are not the pod's)."""
        return [_cidr(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in self.ipr.get_addr(index=index) if a["scope"] == RT_SCOPE_UNIVERSE]

    def _route(self, msg) -> dict:
        dst = msg.get_attr("RTA_DST")
        family_default = "0.0.0.0" if msg["family"] == socket.AF_INET else "::"
        oif = msg.get_attr("RTA_OIF")
        dev = self.link(index=oif)
        return {"dst": str(ipaddress.ip_network(f"{dst or family_default}/{msg['dst_len']}",
                                                strict=False)),
                "gateway": msg.get_attr("RTA_GATEWAY"), "dev": dev.name if dev else oif,
                "src": msg.get_attr("RTA_PREFSRC")}

    def routes(self) -> list[dict]:
        """Unicast routes of the main table, both families: {dst, gateway, dev, src}."""
        return [self._route(m) for m in self.ipr.get_routes(family=socket.AF_UNSPEC)
                if m.get_attr("RTA_TABLE") == RT_TABLE_MAIN and m["type"] == RTN_UNICAST]

    def route_to(self, ip: str) -> dict | None:
        """The kernel's choice for traffic to ip (`ip route get`), None when it has none."""
        try:
            answer = self.ipr.route("get", dst=ip)
        except NetlinkError:
            return None
        return self._route(answer[0]) if answer else None

    def neighbour(self, ip: str, index: int) -> dict | None:
        for n in self.ipr.get_neighbours(ifindex=index):
            if n.get_attr("NDA_DST") == ip:
                return {"ip": ip, "mac": n.get_attr("NDA_LLADDR"),
                        "state": NUD_STATES.get(n["state"], str(n["state"]))}
        return None


def conntrack(addresses: set[str]) -> list[dict]:
    """The node's conntrack entries with one of these addresses in their original direction,
    or as the reply's destination (a flow DNATed to the pod, e.g. through a Service)."""
    flows = []
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        if not any(ipaddress.ip_address(a).version == version for a in addresses):
            continue
        try:
            with Conntrack(nfgen_family=family) as ct:
                for e in ct.dump_entries():
                    orig, reply = e.tuple_orig, e.tuple_reply
                    if addresses.isdisjoint((orig.saddr, orig.daddr, reply.daddr)):
                        continue
                    snat = orig.saddr in addresses and reply.daddr != orig.saddr
                    flows.append({
                        "protocol": (orig.proto_name() or str(orig.proto)).lower(),
                        "src": orig.saddr, "dst": orig.daddr,
                        "sport": orig.sport, "dport": orig.dport,
                        "reply_src": reply.saddr, "reply_dst": reply.daddr,
                        "snat": snat, "snat_to": reply.daddr if snat else None,
                        "timeout": e.timeout})
        except (NetlinkError, OSError):
            continue  # no conntrack in this netns (nf_conntrack not loaded): no flows
    return flows


def sysctl(name: str) -> str | None:
    """A sysctl of the netns we run in (/proc/sys/net is per netns); None when absent."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None
