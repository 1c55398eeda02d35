"""The reports as text for a person, one fact a line; with --explain each fact is followed by the
standard command that shows the same thing, so the tool teaches the walk it automates."""
from __future__ import annotations

import re

from .netfilter import LIST_TOOLS, MACSPOOF_TABLE, NFT_MASQ_TABLE
from .netns import Netns


def _route(r: dict, dst: bool = True) -> str:
    """As `ip route` prints it; without its destination for an `ip route get` answer."""
    words = [("default" if r["dst"] in ("0.0.0.0/0", "::/0") else r["dst"])] if dst else []
    if r.get("gateway"):
        words += ["via", r["gateway"]]
    words += ["dev", str(r["dev"])]
    if r.get("src"):
        words += ["src", r["src"]]
    return " ".join(words)


def _on(flag: bool | None) -> str:
    return {True: "on", False: "off", None: "-"}[flag]


def _endpoint(address: str, port: int | None) -> str:
    return f"{address}:{port}" if port else address


def _short(rule: str) -> str:
    """A rule without its comment: the plugin's comment only repeats the network and ID."""
    return re.sub(r' (-m comment --comment|comment) "(\\.|[^"\\])*"', "", rule)


def _masq_command(entry: dict) -> str:
    if entry["backend"] == "nftables":
        return f"nft list table {NFT_MASQ_TABLE}"
    tool = LIST_TOOLS[entry["backend"], entry["family"]]
    return f"{tool} -t nat -S {entry['chain_or_table']} -v; {tool} -t nat -S POSTROUTING -v"


def pod_commands(r: dict) -> dict[str, str]:
    """Per fact of a pod report, the command that shows it."""
    ns = Netns(r["netns"]) if r["netns"] else None
    ifname = r["ifname"]
    cmds = {"netns": "ip netns list" if ns and ns.name else "lsns -t net"}
    if r["cache_entry"]:
        cmds["cache"] = f"cat {r['cache_entry']}"
    if ns:
        cmds["pod"] = (f"{ns.command(f'ip -d link show {ifname}')}; "
                       f"{ns.command(f'ethtool -S {ifname}')}")
        cmds["addresses"] = ns.command(f"ip addr show dev {ifname}")
        cmds["routes"] = f"{ns.command('ip route')}; {ns.command('ip -6 route')}"
    if r["host_veth"]:
        veth = r["host_veth"]["name"]
        cmds["host_veth"] = f"ip -d link show {veth}; bridge -d link show dev {veth}"
    if r["bridge"]:
        br = r["bridge"]["name"]
        cmds["bridge"] = f"ip addr show dev {br}; ip link show master {br}"
        cmds["neighbours"] = f"ip neigh show dev {br}"
    cmds["node_routes"] = "; ".join(f"ip route get {x['to']}" for x in r["node_routes"]) \
        or "ip route"
    cmds["forwarding"] = "sysctl " + " ".join(
        {"ipv4": "net.ipv4.ip_forward", "ipv6": "net.ipv6.conf.all.forwarding"}[f]
        for f in r["forwarding"])
    cmds["leases"] = "; ".join(f"cat {x['path']}" for x in r["leases"]) or "ls <dataDir>"
    cmds["masquerade"] = "; ".join(dict.fromkeys(_masq_command(e) for e in r["masquerade"])) \
        or "iptables-legacy-save -c -t nat; iptables-nft-save -c -t nat; " \
           f"nft list table {NFT_MASQ_TABLE}"
    cmds["macspoofchk"] = f"nft list table {MACSPOOF_TABLE}"
    addresses = [ip.split("/")[0] for ip in r["ips"]]
    cmds["conntrack"] = "; ".join(f"conntrack -L -s {a}; conntrack -L -d {a}"
                                  for a in addresses) or "conntrack -L"
    return cmds


class _Lines:
    def __init__(self, commands: dict[str, str] | None):
        self.commands = commands
        self.lines: list[str] = []

    def add(self, text: str, key: str | None = None) -> None:
        self.lines.append(text)
        if self.commands is not None and key in self.commands:
            indent = len(text) - len(text.lstrip())
            self.lines.append(" " * (indent + 4) + "$ " + self.commands.pop(key))

    def text(self) -> str:
        return "\n".join(self.lines)


def _problems(out: _Lines, problems: list[dict], title: str = "problems") -> None:
    out.add(f"{title}:" + ("" if problems else " none"))
    for item in problems:
        out.add(f"  [{item['code']}] {item['message']}")


def pod_text(r: dict, explain: bool) -> str:
    out = _Lines(pod_commands(r) if explain else None)
    who = r["container_id"] or "(container ID unknown)"
    out.add(f"pod {who}: network {r['network']} ({r['conf']}), found by {r['found_by']}")
    out.add(f"  netns {r['netns'] or '-'}" + ("" if r["netns_exists"] else " (gone)")
            + f", ifname {r['ifname']}, ips {' '.join(r['ips']) or '-'}", "netns")
    if r["cache_entry"]:
        out.add(f"  libcni cache entry {r['cache_entry']}", "cache")
    pod = r["pod"]
    if pod:
        out.add(f"pod interface {pod['interface']}: mac {pod['mac']}, ifindex {pod['ifindex']}, "
                f"peer ifindex {pod['peer_ifindex']} ({pod['kind']}), {pod['oper_state']}, "
                f"mtu {pod['mtu']}", "pod")
        out.add(f"  addresses {' '.join(pod['addresses']) or '-'}", "addresses")
        out.add("  routes: " + ("; ".join(_route(x) for x in pod["routes"]) or "none"), "routes")
    else:
        out.add(f"pod interface {r['ifname']}: not found")
    veth = r["host_veth"]
    if veth:
        out.add(f"host veth {veth['name']}: ifindex {veth['ifindex']}, master "
                f"{veth['master'] or '-'}, hairpin {_on(veth['hairpin'])}, isolated "
                f"{_on(veth['isolated'])}, {veth['oper_state']}", "host_veth")
    else:
        out.add("host veth: not found")
    br = r["bridge"]
    if br:
        out.add(f"bridge {br['name']}: " + (f"{' '.join(br['addresses']) or 'no address'}, "
                                            f"{br['ports']} ports" if br["exists"]
                                            else "does not exist"), "bridge")
    for n in r["neighbours"]:
        out.add(f"  neighbour {n['ip']} lladdr {n['mac']} {n['state']}", "neighbours")
    for route in r["node_routes"]:
        out.add(f"node route to {route['to']}: " + (_route(route, dst=False) if route.get("dev")
                                                   else "none"), "node_routes")
    out.add("forwarding: " + ", ".join(f"{f} {_on(v)}" for f, v in r["forwarding"].items()),
            "forwarding")
    for lease in r["leases"]:
        out.add(f"lease {lease['path']}: {lease['container_id']} {lease['ifname'] or '(legacy)'}"
                + (" (matches)" if lease["matches"] else " (does not match)"), "leases")
    if not r["leases"]:
        out.add("lease: none", "leases")
    for m in r["masquerade"]:
        counted = "no counter" if m["packets"] is None else f"{m['packets']} packets masqueraded"
        out.add(f"masquerade ({m['backend']}) {m['chain_or_table']}: {counted}", "masquerade")
        for rule in m["rules"]:
            counters = "" if rule["packets"] is None else f"[{rule['packets']}:{rule['bytes']}] "
            out.add(f"  {counters}{_short(rule['rule'])}")
    if not r["masquerade"]:
        out.add("masquerade: none", "masquerade")
    spoof = r["macspoofchk"]
    if spoof:
        out.add(f"macspoofchk ({spoof['table']}): {', '.join(spoof['chains'])}, allows "
                f"{spoof['mac']} on {spoof['iifname']}", "macspoofchk")
    out.add(f"conntrack ({len(r['conntrack'])} entries, original -> reply):", "conntrack")
    for c in r["conntrack"]:
        note = f"  source NATed to {c['snat_to']}" if c["snat"] else ""
        out.add(f"  {c['protocol']} {_endpoint(c['src'], c['sport'])} -> "
                f"{_endpoint(c['dst'], c['dport'])}   reply {c['reply_src']} -> "
                f"{c['reply_dst']}{note}")
    _problems(out, r["problems"])
    return out.text()


def node_commands(r: dict) -> dict[str, str]:
    cmds = {"bridges": "; ".join(f"bridge -d link show master {b['name']}"
                                 for b in r["bridges"]) or "ip -d link show type bridge",
            "pods": "ip -d link show type veth; ip netns list",
            "leases": "; ".join(f"grep -r . {d['path']}"
                                for d in r["prerequisites"]["data_dirs"]) or "-",
            "cache": "ls -l /var/lib/cni/results",
            "masquerade": "iptables-legacy-save -c -t nat; iptables-nft-save -c -t nat; "
                          f"nft list table {NFT_MASQ_TABLE}",
            "macspoofchk": f"nft list table {MACSPOOF_TABLE}",
            "prerequisites": "sysctl net.bridge.bridge-nf-call-iptables; findmnt -T "
                             + " ".join(d["path"] for d in r["prerequisites"]["data_dirs"])}
    return cmds


def node_text(r: dict, explain: bool) -> str:
    out = _Lines(node_commands(r) if explain else None)
    out.add("confs: " + "; ".join(f"{c['network']} ({c['path']}, {'+'.join(c['plugins'])})"
                                  for c in r["confs"]))
    for b in r["bridges"]:
        if not b["exists"]:
            out.add(f"bridge {b['name']} ({', '.join(b['networks'])}): does not exist", "bridges")
            continue
        out.add(f"bridge {b['name']} ({', '.join(b['networks'])}): "
                f"{' '.join(b['addresses']) or 'no address'}, {len(b['ports'])} ports", "bridges")
        for port in b["ports"]:
            pod = port["pod"]
            peer = (f"{pod['ifname']} in {pod['netns']} {' '.join(pod['addresses'])}" if pod
                    else "no pod")
            out.add(f"  {port['name']} {port['oper_state']} hairpin {_on(port['hairpin'])} "
                    f"isolated {_on(port['isolated'])} -> {peer}")
    out.add(f"pods connected to the node: {len(r['pods'])}", "pods")
    for pod in r["pods"]:
        out.add(f"  {pod['container_id'] or '(unknown)'} {pod['ifname']} "
                f"{' '.join(pod['addresses']) or '-'} in {pod['netns']} via "
                f"{pod['host_veth']['name']} on {pod['bridge'] or 'no bridge'}")
    out.add(f"leases: {len(r['leases'])}", "leases")
    for lease in r["leases"]:
        out.add(f"  {lease['ip']:<15} {lease['container_id']} {lease['ifname'] or '(legacy)'}  "
                + ("pod alive" if lease["pod_alive"] else "NO POD"))
    if r["cache_entries"]:
        out.add(f"libcni cache entries: {len(r['cache_entries'])}", "cache")
        for e in r["cache_entries"]:
            out.add(f"  {e['network']} {e['container_id']} {e['ifname']} netns {e['netns']}"
                    + ("" if e["netns_exists"] else " (gone)"))
    out.add(f"masquerade (backends in use: {', '.join(r['backends']) or 'none'}):", "masquerade")
    for m in r["masquerade"]:
        out.add(f"  {m['backend']:<12} {m['chain_or_table']} {', '.join(m['sources'])} "
                f"{m['container_id'] or '(unknown)'}  "
                + ("pod alive" if m["pod_alive"] else "NO POD"))
    if r["macspoofchk"]:
        out.add("macspoofchk chains:", "macspoofchk")
        for m in r["macspoofchk"]:
            out.add(f"  {m['chain']}  " + ("pod alive" if m["pod_alive"] else "NO POD"))
    pre = r["prerequisites"]
    out.add(f"node: br_netfilter {'loaded' if pre['br_netfilter'] else 'not loaded'}, "
            f"bridge-nf-call-iptables {_on(pre['bridge_nf_call_iptables'])}, dataDir "
            + ", ".join(f"{d['path']} on {d['fstype']}" for d in pre["data_dirs"]),
            "prerequisites")
    _problems(out, r["problems"])
    _problems(out, r["warnings"], "warnings")
    return out.text()
