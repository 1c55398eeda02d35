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
from .problems import Problems

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
    conf = att.conf
    p = Problems()
    pod, pod_link = pod_side(att)
    netns_alive = att.netns is not None and att.netns.exists()

    ips = att.cache.ips if att.cache and att.cache.ips else []
    if not ips and pod:
        ips = pod["addresses"]
    if not ips:
        ips = [f"{lease.ip}/{r.subnet.prefixlen}" if (r := conf.range_of(_address(lease.ip)))
               else lease.ip for lease in att.leases]
    addresses = [str(_address(c)) for c in ips]
    families = sorted({_address(c).version for c in ips}) or [4, 6]

    report = {
        "network": conf.network, "conf": conf.path, "container_id": att.container_id,
        "ifname": att.ifname, "netns": att.netns.path if att.netns else None,
        "netns_exists": netns_alive, "found_by": att.found_by,
        "cache_entry": att.cache.path if att.cache else None, "ips": ips, "pod": pod,
        "host_veth": None, "bridge": None, "node_routes": [], "forwarding": {},
        "neighbours": [], "leases": [], "masquerade": [], "macspoofchk": None,
        "conntrack": [], "problems": p.items,
    }

    # the pod and its veth pair -----------------------------------------------------------------
    if not netns_alive:
        where = (f"netns {att.netns.path} is gone" if att.netns else
                 "no netns in /run/netns holds its address")
        freeing = _freeing(att)
        if att.leases:
            p.add("lease-leaked", f"lease(s) {', '.join(l.ip for l in att.leases)} of "
                  f"{_who(att)} are left while the pod is gone ({where}): no DEL ran. {freeing}")
        elif att.cache:
            p.add("netns-gone", f"the runtime's cache entry {att.cache.path} names {where}: "
                  f"the pod is gone but no DEL ran. {freeing}")
    elif pod is None:
        p.add("no-interface", f"netns {att.netns.path} has no {att.ifname}: the pod lost its "
              f"interface (deleted, or never added). Recreate the pod (DEL, then ADD).")

    bridge = node.link(conf.bridge_name)
    veth = host_side(node, att, pod_link) if pod_link is not None else None
    if pod_link is not None and veth is None:
        p.add("veth-peer-missing", f"{att.ifname} (ifindex {pod_link.index}, peer ifindex "
              f"{pod_link.peer_ifindex}) has no peer in this node's netns: "
              + ("it is not a veth" if pod_link.kind != "veth" else
                 "its peer was moved to another netns")
              + f". Recreate the pod (DEL, then ADD).")
    if veth is not None:
        report["host_veth"] = link_summary(veth, node)
        if bridge is None or veth.master != bridge.index:
            p.add("veth-not-enslaved", f"host veth {veth.name} is "
                  + (f"a port of {report['host_veth']['master']}" if veth.master else
                     "on no bridge") + f", not of {conf.bridge_name}: the pod reaches nothing. "
                  f"`ip link set {veth.name} master {conf.bridge_name}` reconnects it.")
        if veth.oper_state != "UP":  # the pod's end is then LOWERLAYERDOWN
            p.add("veth-down", f"host veth {veth.name} is {veth.oper_state}: "
                  f"`ip link set {veth.name} up`.")
        elif pod["oper_state"] != "UP" and not conf.flag("disableContainerInterface"):
            p.add("veth-down", f"{att.ifname} in the pod is {pod['oper_state']}: "
                  f"`{att.netns.command(f'ip link set {att.ifname} up')}`.")

    # the bridge ---------------------------------------------------------------------------------
    if bridge is None:
        report["bridge"] = {"name": conf.bridge_name, "exists": False, "addresses": [],
                            "ports": 0}
        if netns_alive:
            p.add("bridge-missing", f"bridge {conf.bridge_name} does not exist on the node: "
                  "the next ADD creates it; this pod must be recreated to be on it.")
    else:
        bridge_addrs = node.addresses(bridge.index)
        report["bridge"] = {"name": bridge.name, "exists": True, "addresses": bridge_addrs,
                            "ports": len(node.ports(bridge)), "oper_state": bridge.oper_state,
                            "mac": bridge.mac, "kind": bridge.kind}
        if conf.is_gateway and netns_alive:
            for cidr in ips:
                rng = conf.range_of(_address(cidr))
                want = f"{rng.gateway}/{rng.subnet.prefixlen}" if rng else None
                if want and want not in bridge_addrs:
                    p.add("bridge-no-gateway", f"isGateway is on but bridge {bridge.name} lacks "
                          f"the gateway address {want}: the pod's default route leads nowhere. "
                          f"`ip addr add {want} dev {bridge.name}` (the next ADD adds it).")

    # routes -------------------------------------------------------------------------------------
    if pod is not None:
        for cidr in ips:
            ip = _address(cidr)
            want = conf.default_gateway(ip)
            if want is None:
                continue
            default = "0.0.0.0/0" if ip.version == 4 else "::/0"
            gateways = [r["gateway"] for r in pod["routes"] if r["dst"] == default]
            if not gateways:
                p.add("no-default-route", f"the pod has no default route ({default}) via "
                      f"{want}: it reaches only its subnet. "
                      f"`{att.netns.command(f'ip route add default via {want} dev {att.ifname}')}`.")
            elif str(want) not in gateways:
                p.add("wrong-default-gateway", f"the pod's default route goes via "
                      f"{', '.join(map(str, gateways))}, not the gateway {want} of its range. "
                      f"`{att.netns.command(f'ip route replace default via {want} dev {att.ifname}')}`.")
    if netns_alive and bridge is not None:
        for address in addresses:
            route = node.route_to(address)
            report["node_routes"].append({"to": address, **(route or {})})
            if route is None or route["dev"] != bridge.name:
                rng = conf.range_of(ipaddress.ip_address(address))
                subnet = rng.subnet if rng else address
                p.add("no-node-route", f"the node has no route to {address} via {bridge.name}"
                      + (f" (it goes via {route['dev']})" if route else "")
                      + f": replies to the pod get lost. `ip route replace {subnet} dev "
                        f"{bridge.name}` (the gateway address on the bridge brings it back).")

    # forwarding ---------------------------------------------------------------------------------
    for family in families:
        value = kernel.sysctl(FORWARDING_SYSCTLS[family])
        report["forwarding"][FAMILY_NAMES[family]] = None if value is None else value == "1"
        if conf.is_gateway and netns_alive and value == "0" and \
                any(_address(c).version == family for c in ips):
            p.add("forwarding-off", f"isGateway is on but {FORWARDING_SYSCTLS[family]} is 0: the "
                  f"node does not route the pod's traffic. `sysctl -w "
                  f"{FORWARDING_SYSCTLS[family]}=1` (the plugin sets it at each ADD).")

    # neighbours ---------------------------------------------------------------------------------
    if bridge is not None and pod is not None:
        for address in addresses:
            neigh = node.neighbour(address, bridge.index)
            if neigh is None:
                continue
            report["neighbours"].append(neigh)
            if neigh["mac"] and neigh["mac"] != pod["mac"] and neigh["state"] not in (
                    "FAILED", "INCOMPLETE"):
                p.add("stale-neighbour", f"the node's neighbour entry for {address} on "
                      f"{bridge.name} says {neigh['mac']} ({neigh['state']}) but the pod's "
                      f"{att.ifname} is {pod['mac']}: traffic to the pod goes to another MAC. "
                      f"`ip neigh del {address} dev {bridge.name}`.")

    _leases(report, att, pod, p)
    _masquerade(report, att, nf, addresses, netns_alive, p)
    _macspoofchk(report, att, nf, pod, veth, netns_alive, p)
    report["conntrack"] = kernel.conntrack(set(addresses)) if addresses else []
    return report


def _who(att: Attachment) -> str:
    return f"container {att.container_id} ({att.ifname})" if att.container_id else \
        f"the pod's {att.ifname}"


def _freeing(att: Attachment) -> str:
    if att.container_id is None:
        return "Remove it through the runtime."
    return ("Free it through the runtime (remove the pod), or by a CNI DEL of "
            f"CNI_CONTAINERID={att.container_id} CNI_IFNAME={att.ifname} with an empty "
            f"CNI_NETNS, or a GC (cniVersion 1.1.0) whose cni.dev/valid-attachments leaves it "
            f"out.")


def _leases(report: dict, att: Attachment, pod: dict | None, p: Problems) -> None:
    conf = att.conf
    if not conf.uses_host_local:
        return
    on_interface = {str(_address(c)) for c in pod["addresses"]} if pod else set()
    store = {lease.ip: lease for lease in leases.leases(conf.data_dir, conf.network)}
    shown = list(att.leases) + [store[a] for a in sorted(on_interface)
                                if a in store and store[a] not in att.leases]
    for lease in shown:
        mine = lease.names(att.container_id, att.ifname)
        matches = mine and (pod is None or lease.ip in on_interface)
        report["leases"].append({**lease.summary(), "matches": matches})
        if pod is not None and not matches:
            if not mine:
                p.add("lease-mismatch", f"lease {lease.path} of the pod's address {lease.ip} "
                      f"names container {lease.container_id} ({lease.ifname}), not "
                      f"{att.container_id} ({att.ifname}): host-local's store and the pod "
                      f"disagree; recreate the pod, or free the other lease if its pod is gone.")
            else:
                p.add("lease-mismatch", f"lease {lease.path} of {_who(att)} is for "
                      f"{lease.ip}, which is not on the pod's {att.ifname} "
                      f"({', '.join(sorted(on_interface)) or 'no address'}).")
    if pod is not None:
        for address in sorted(on_interface):
            in_range = conf.range_of(ipaddress.ip_address(address)) is not None
            if address not in store and in_range:
                p.add("no-lease", f"{address} on the pod's {att.ifname} has no lease in "
                      f"{conf.data_dir}/{conf.network}: host-local may give it to another "
                      f"pod. Recreate the pod, or write the lease back: printf '%s\\r\\n%s' "
                      f"{att.container_id or '<container ID>'} {att.ifname} > "
                      f"{conf.data_dir}/{conf.network}/{address}")


def _masquerade(report: dict, att: Attachment, nf: Netfilter, addresses: list[str],
                netns_alive: bool, p: Problems) -> None:
    found = nf.masquerade(att.conf.network, att.container_id, att.ifname, addresses)
    report["masquerade"] = found
    backends = sorted({entry["backend"] for entry in found})
    if not netns_alive:
        if found:
            p.add("masquerade-leaked", f"{_who(att)} is gone but its masquerade rules are left "
                  f"in {', '.join(backends)}: " + ", ".join(e["chain_or_table"] for e in found)
                  + f". {_freeing(att)}")
        return
    if len(backends) > 1:
        p.add("masquerade-two-backends", f"the pod's masquerade rules are in {len(backends)} "
              f"backends at once ({', '.join(backends)}): two plugins (or versions) added it; "
              "the node masquerades it twice over. Recreate the pod with one plugin.")
    if att.conf.flag("ipMasq") and addresses:
        working = [e for e in found if e["masquerades"] and e["jumped_to"]]
        if not working:
            detail = "; ".join(
                f"{e['backend']} {e['chain_or_table']} " +
                ("has no MASQUERADE rule" if not e["masquerades"] else
                 "is not jumped to from POSTROUTING") for e in found) or "no backend holds one"
            p.add("no-masquerade", f"ipMasq is on but no rule masquerades {', '.join(addresses)}"
                  f" ({detail}): the pod's traffic leaves the node with the pod's address. "
                  "Recreate the pod (DEL, then ADD).")


def _macspoofchk(report: dict, att: Attachment, nf: Netfilter, pod: dict | None,
                 veth: Link | None, netns_alive: bool, p: Problems) -> None:
    if att.container_id is None:
        return
    found = nf.macspoofchk(att.container_id, att.ifname)
    report["macspoofchk"] = found
    if not netns_alive:
        if found:
            p.add("macspoofchk-leaked", f"{_who(att)} is gone but its macspoofchk chains are "
                  f"left in bridge nat: {', '.join(found['chains'])}. {_freeing(att)}")
        return
    if not att.conf.flag("macspoofchk"):
        return
    if found is None or not found["jumped_to"] or len(found["chains"]) < 2:
        p.add("no-macspoofchk", f"macspoofchk is on but bridge nat has "
              + ("no chain" if found is None else "an incomplete set of chains")
              + f" for {att.container_id}-{att.ifname}: the pod may send with any source MAC. "
              "Recreate the pod (DEL, then ADD).")
    elif pod is not None and (found["mac"] != pod["mac"] or
                              (veth is not None and found["iifname"] != veth.name)):
        p.add("macspoofchk-mismatch", f"the macspoofchk rules allow MAC {found['mac']} on "
              f"{found['iifname']}, but the pod's {att.ifname} is {pod['mac']} on "
              f"{veth.name if veth else '?'}: its frames are dropped. Recreate the pod.")
