"""Attaching a pod to the bridge: the netlink, sysctl and netfilter work of ADD, in the
reference's order. Everything ADD creates is undone if a later step fails. (DEL and GC are in
detach.py: they need little of this, and every call pays for its imports.)
"""
from __future__ import annotations

from cni_protocol.errors import BRIDGE_FAILURE, CNIError, INVALID_CONFIG, INVALID_ENV
from cni_protocol.ip import fmt, network, parse_cidr
from cni_protocol.request import Request
from . import addrs, ipam, links, netns
from .config import BridgeConfig
from .netlink import AF_INET, AF_INET6, Netlink, NotFound


class _Undo:
    """Steps that reverse what ADD has done so far, run newest first if ADD fails."""

    def __init__(self) -> None:
        self._steps: list = []

    def push(self, step) -> None:
        self._steps.append(step)

    def run(self) -> None:
        for step in reversed(self._steps):
            try:
                step()
            except Exception:
                pass  # best effort: the ADD's own error is what the runtime must see


def add(req: Request, cfg: BridgeConfig, call: ipam.IPAMCall | None, backend: str | None) -> dict:
    """ADD. `call` is the IPAM ADD already running, `backend` the masquerade backend (ipMasq)."""
    undo = _Undo()
    nl = None
    try:
        nl = Netlink()
        return _add(req, cfg, nl, call, backend, undo)
    except BaseException:
        if call is not None and not call.done:
            try:
                call.wait()
                undo.push(lambda: ipam.run(cfg.ipam_type, "DEL", req))
            except CNIError:
                pass  # the IPAM ADD failed too: it holds no lease to release
        undo.run()  # before the socket closes: the veth is deleted through it
        raise
    finally:
        if nl is not None:
            nl.close()


def _add(req: Request, cfg: BridgeConfig, nl: Netlink, call, backend: str | None,
         undo: _Undo) -> dict:
    bridge = links.ensure_bridge(nl, cfg.bridge, cfg.mtu or None, cfg.promisc_mode,
                                 cfg.vlan_filtering)
    host, pod = _setup_veth(req, cfg, nl, bridge.index)
    undo.push(lambda: _delete_link(nl, host.index))
    if cfg.macspoofchk:
        from . import macspoofchk
        undo.push(lambda: macspoofchk.remove(req.container_id, req.ifname))
        macspoofchk.add(req.container_id, req.ifname, host.name, pod.mac)
    result = {"interfaces": [{"name": bridge.name, "mac": bridge.mac},
                             {"name": host.name, "mac": host.mac},
                             {"name": req.ifname, "mac": pod.mac, "sandbox": req.netns}]}
    if call is None:
        if not cfg.disable_container_interface:
            with links.netlink_in(req.netns) as pod_nl:
                pod_nl.set_link(pod.index, up=True)
    else:
        ipam_result = call.wait()
        undo.push(lambda: ipam.run(cfg.ipam_type, "DEL", req))
        ips = ipam_result.get("ips") or []
        if not ips:
            raise CNIError(INVALID_CONFIG, f"IPAM plugin {cfg.ipam_type} returned no IP config")
        routes = list(ipam_result.get("routes") or [])
        gateways = _gateways(cfg, ips, routes)
        _configure_pod(req, cfg, pod.index, ips, routes)
        if cfg.is_gateway:
            _configure_gateways(cfg, nl, bridge, gateways, result)
        if cfg.ip_masq:
            from . import masquerade
            attachment = masquerade.Attachment(req.network, req.container_id, req.ifname)
            cidrs = [ip["address"] for ip in ips]
            undo.push(lambda: masquerade.teardown(attachment, cidrs))
            masquerade.setup(backend, attachment, cidrs)
        result["ips"] = [dict(ip, interface=2) for ip in ips]
        result["routes"] = routes
        if ipam_result.get("dns"):
            result["dns"] = ipam_result["dns"]
    if not cfg.disable_container_interface:
        host = links.wait_oper_up(nl, host.index)
    # Both MACs may have changed since we read them: the bridge takes its ports' lowest
    # MAC until an address pins it.
    result["interfaces"][0]["mac"] = links.refetch(nl, bridge.index, f"bridge {bridge.name}").mac
    result["interfaces"][1]["mac"] = host.mac
    if cfg.dns is not None:
        result.pop("dns", None)
        if cfg.dns:
            result["dns"] = cfg.dns
    return result


def _setup_veth(req: Request, cfg: BridgeConfig, nl: Netlink, bridge_index: int):
    try:
        host, pod = links.setup_veth(nl, req.netns, req.ifname, cfg.mtu or None, cfg.mac or None,
                                     bridge_index, hairpin=cfg.hairpin_mode,
                                     isolated=cfg.port_isolation)
    except netns.NetnsNotFound:
        raise CNIError(INVALID_ENV, f"failed to open netns {req.netns!r}: no such namespace",
                       f"CNI_NETNS={req.netns}") from None
    if cfg.vlan_filtering:
        links.configure_port_vlans(nl, host.index, cfg.vlan, _ranges(cfg.vlan_trunk),
                                   cfg.preserve_default_vlan)
    return host, pod


def _ranges(vids: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7] -> [(1, 3), (7, 7)]: one netlink range per run of VLAN ids."""
    out: list[tuple[int, int]] = []
    for vid in vids:
        if out and out[-1][1] == vid - 1:
            out[-1] = (out[-1][0], vid)
        else:
            out.append((vid, vid))
    return out


def _gateways(cfg: BridgeConfig, ips: list[dict], routes: list[dict]) -> list[tuple[str, int]]:
    """(gateway, prefixlen) per IP for the bridge; fills in missing gateways and, with
    isDefaultGateway, a default route per family (as the reference's calcGateways)."""
    gateways = []
    default_found = {4: False, 6: False}
    for route in routes:
        if route.get("gw") and route.get("dst") in ("0.0.0.0/0", "::/0"):
            default_found[6 if ":" in route["dst"] else 4] = True
    for ip in ips:
        family, value, prefixlen = parse_cidr(ip["address"])
        if not ip.get("gateway") and cfg.is_gateway:
            ip["gateway"] = fmt(family, network(family, value, prefixlen) + 1)
        if cfg.is_default_gateway and not default_found[family]:
            routes.append({"dst": "0.0.0.0/0" if family == 4 else "::/0", "gw": ip["gateway"]})
            default_found[family] = True
        if cfg.is_gateway:
            gateways.append((ip["gateway"], prefixlen))
    return gateways


def _configure_pod(req: Request, cfg: BridgeConfig, index: int, ips: list[dict],
                   routes: list[dict]) -> None:
    """Addresses, link up and routes inside the pod, as the reference's ConfigureIface."""
    with netns.enter(req.netns), Netlink() as pod_nl:
        dad = "1" if cfg.enable_dad else "0"
        _sysctl(f"net/ipv6/conf/{req.ifname}/accept_dad", dad)
        if cfg.enable_dad:
            _sysctl(f"net/ipv6/conf/{req.ifname}/enhanced_dad", "1")
        _sysctl(f"net/ipv4/conf/{req.ifname}/arp_notify", "1")
        has_v6 = False
        for ip in ips:
            address, prefixlen = ip["address"].split("/")
            if ":" in address:
                has_v6 = True
                _sysctl(f"net/ipv6/conf/{req.ifname}/disable_ipv6", "0")
                _sysctl(f"net/ipv6/conf/{req.ifname}/keep_addr_on_down", "1")
            addrs.ensure_addr(pod_nl, index, address, int(prefixlen))
        pod_nl.set_link(index, up=True)
        if has_v6 and cfg.enable_dad:
            links.wait_addresses_settled(pod_nl, index)
        default_gw = {}
        for ip in ips:
            family = 6 if ":" in ip["address"] else 4
            if ip.get("gateway"):
                default_gw.setdefault(family, ip["gateway"])
        for route in routes:
            dst, _, prefixlen = route["dst"].partition("/")
            family = 6 if ":" in dst else 4
            addrs.ensure_route(pod_nl, dst, int(prefixlen or (128 if family == 6 else 32)),
                               gw=route.get("gw") or default_gw.get(family), oif=index,
                               mtu=route.get("mtu"), advmss=route.get("advmss"),
                               table=route.get("table"), priority=route.get("priority"),
                               scope=route.get("scope"))


def _configure_gateways(cfg: BridgeConfig, nl: Netlink, bridge, gateways, result) -> None:
    """Gateway addresses on the bridge (or on its VLAN interface) and forwarding on."""
    target = bridge
    if cfg.vlan and gateways:
        target = links.ensure_vlan_gateway(nl, bridge, cfg.vlan, cfg.preserve_default_vlan)
        result["interfaces"].append({"name": target.name, "mac": target.mac})
    families = set()
    for gw, prefixlen in gateways:
        try:
            addrs.ensure_gateway_addr(nl, target.index, gw, prefixlen, cfg.force_address,
                                      mac=target.mac)
        except addrs.AddressConflict as e:
            raise CNIError(BRIDGE_FAILURE, f"failed to set bridge addr: {e}") from None
        families.add(AF_INET6 if ":" in gw else AF_INET)
    for family in families:
        addrs.enable_forwarding(family)


def _sysctl(name: str, value: str) -> None:
    """Pod-side sysctls are best effort, as in the reference (IPv6 may be off)."""
    try:
        links.write_sysctl(name, value)
    except OSError:
        pass


def _delete_link(nl: Netlink, index: int) -> None:
    try:
        nl.delete_link(index)
    except NotFound:
        pass
