"""CHECK: is the attachment still what ADD reported in prevResult? As the reference checks it:
the bridge, the pod's veth in its sandbox, the host veth that is its peer and a port of the
bridge, the MACs, and the pod's addresses and routes; and, as the spec asks of resources the
plugin created (the reference does not look), its masquerade rules and its MAC check."""
from __future__ import annotations

from cni_protocol.errors import CHECK_FAILED, CNIError
from cni_protocol.request import Request
from . import links
from .config import BridgeConfig
from .netlink import AF_INET, AF_INET6, RT_TABLE_MAIN, Link, Netlink


def _fail(msg: str) -> CNIError:
    return CNIError(CHECK_FAILED, msg)


def check_attachment(req: Request, cfg: BridgeConfig, prev: dict, backend: str | None) -> None:
    """`backend`: where ipMasq put the attachment's rules (None: ipMasq is off)."""
    host, pod = _check_links(req, cfg, prev)
    if backend is not None:
        _check_masquerade(req, backend, prev.get("ips") or [])
    if cfg.macspoofchk:
        _check_macspoofchk(req, host, pod)


def _check_links(req: Request, cfg: BridgeConfig, prev: dict) -> tuple[Link, Link]:
    interfaces = [i for i in prev.get("interfaces") or [] if isinstance(i, dict)]
    bridge_entry = next((i for i in interfaces if i.get("name") == cfg.bridge), {})
    pod_entry = next((i for i in interfaces if i.get("name") == req.ifname
                      and i.get("sandbox") == req.netns), None)
    if pod_entry is None:
        raise _fail(f"Sandbox in prevResult doesn't match configured netns: {req.netns} "
                    f"(no interface {req.ifname} with that sandbox)")
    with Netlink() as nl:
        bridge = _check_bridge(nl, cfg, bridge_entry)
        with links.netlink_in(req.netns) as pod_nl:
            pod = pod_nl.get_link(req.ifname)
            if pod is None:
                raise _fail(f"CNI created interface in container {req.ifname} not found")
            if pod.kind != "veth":
                raise _fail(f"Error: Container interface {req.ifname} not of type veth")
            _check_mac(pod_entry, pod)
            _check_ips(pod_nl, pod, prev.get("ips") or [])
            _check_routes(pod_nl, prev.get("routes") or [])
        for entry in interfaces:
            if entry is bridge_entry or entry is pod_entry or entry.get("sandbox"):
                continue
            host = nl.get_link(entry.get("name", ""))
            if (host is not None and host.kind == "veth" and host.index == pod.link_index
                    and host.link_index == pod.index and host.master == bridge.index):
                _check_mac(entry, host)
                return host, pod
    raise _fail(f"CNI veth created for bridge {cfg.bridge} was not found")


def _check_masquerade(req: Request, backend: str, ips: list) -> None:
    from . import masquerade
    attachment = masquerade.Attachment(req.network, req.container_id, req.ifname)
    gaps = masquerade.missing(backend, attachment, [ip["address"] for ip in ips])
    if gaps:
        raise _fail(f"ipMasq rules of the attachment are missing ({backend}): "
                    + "; ".join(gaps))


def _check_macspoofchk(req: Request, host: Link, pod: Link) -> None:
    from . import macspoofchk
    from .nfnetlink import NfTables
    try:
        with NfTables() as nft:
            gaps = macspoofchk.missing(nft, req.container_id, req.ifname, host.name, pod.mac)
    except OSError as e:
        raise _fail(f"macspoofchk: cannot read nftables: {e}") from None
    if gaps:
        raise _fail("macspoofchk rules of the attachment are missing: " + "; ".join(gaps))


def _check_bridge(nl: Netlink, cfg: BridgeConfig, entry: dict) -> Link:
    bridge = nl.get_link(cfg.bridge)
    if bridge is None:
        raise _fail(f"CNI created bridge {cfg.bridge} in host namespace was not found")
    if bridge.kind != "bridge":
        raise _fail(f"Interface {cfg.bridge} does not have link type of bridge")
    if entry.get("mac") and entry["mac"] != bridge.mac:
        raise _fail(f"Bridge interface {cfg.bridge} Mac doesn't match: {entry['mac']}")
    if bridge.promisc != cfg.promisc_mode:
        raise _fail(f"Bridge interface {cfg.bridge} configured Promisc Mode {cfg.promisc_mode} "
                    f"doesn't match current state: {bridge.promisc}")
    return bridge


def _check_mac(entry: dict, link: Link) -> None:
    if entry.get("mac") and entry["mac"].lower() != link.mac:
        raise _fail(f"Interface {link.name} Mac {entry['mac']} doesn't match: {link.mac}")


def _check_ips(nl: Netlink, pod: Link, ips: list) -> None:
    present = {a.cidr for a in nl.list_addrs(index=pod.index)}
    for ip in ips:
        if ip.get("address") not in present:
            raise _fail(f"Failed to match addr {ip.get('address')} on interface {pod.name}")


def _check_routes(nl: Netlink, routes: list) -> None:
    tables: dict[int, list] = {}
    for route in routes:
        dst, _, prefixlen = route.get("dst", "").partition("/")
        family = AF_INET6 if ":" in dst else AF_INET
        if family not in tables:
            tables[family] = nl.list_routes(family, table=None)  # a route may name its table
        table = route.get("table") or RT_TABLE_MAIN
        found = any(r.dst == dst and str(r.prefixlen) == prefixlen and r.table == table
                    and (not route.get("gw") or any(gw == route["gw"] for gw, _ in r.nexthops))
                    for r in tables[family])
        if not found:
            raise _fail(f"Failed to find expected route {route.get('dst')} via "
                        f"{route.get('gw', 'the default gateway')}")
