"""The bridge plugin's verbs.

ADD follows the reference's sequence (bridge, veth, IPAM, pod addresses and routes, gateway
on the bridge, ipMasq, port up), with two differences that only change timing: the IPAM
plugin is started first and runs while we do the netlink work, and python-iptables is loaded
in a background thread meanwhile. Everything ADD creates is undone if a later step fails.
"""
from __future__ import annotations

from cni_protocol.errors import CNIError, INVALID_CONFIG, INVALID_ENV, IO_FAILURE
from cni_protocol.ip import fmt, network, parse_cidr
from cni_protocol.request import Request
from cni_protocol.result import upgrade
from . import addrs, ipam, links, masquerade, netns
from .check import check_attachment
from .config import KNOWN_ARGS, BridgeConfig
from .netlink import AF_INET, AF_INET6, NetlinkError, Netlink, NotFound

BRIDGE_FAILURE = 102  # ours: a netlink, sysctl or iptables step failed; msg says which


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


def cmd_add(req: Request) -> dict:
    cfg = BridgeConfig(req)
    cfg.refuse_unsupported()
    call = ipam.start(cfg.ipam_type, "ADD", req) if cfg.ipam_type else None
    loader = _preload_iptc() if cfg.ip_masq and call else None
    undo = _Undo()
    try:
        with Netlink() as nl:
            return _add(req, cfg, nl, call, loader, undo)
    except BaseException as e:
        if call is not None and not call.done:
            try:
                call.wait()
                undo.push(lambda: ipam.run(cfg.ipam_type, "DEL", req))
            except CNIError:
                pass  # the IPAM ADD failed too: it holds no lease to release
        undo.run()
        raise _as_cni_error(e) from None


def _add(req: Request, cfg: BridgeConfig, nl: Netlink, call, loader, undo: _Undo) -> dict:
    bridge = links.ensure_bridge(nl, cfg.bridge, cfg.mtu or None, cfg.promisc_mode,
                                 cfg.vlan_filtering)
    host, pod = _setup_veth(req, cfg, nl, bridge.index)
    undo.push(lambda: _delete_link(nl, host.index))
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
            loader.join()
            undo.push(lambda: masquerade.teardown_masquerade(req.network, req.container_id))
            masquerade.setup_masquerade(req.network, req.container_id,
                                        [ip["address"] for ip in ips])
        result["ips"] = [dict(ip, interface=2) for ip in ips]
        result["routes"] = routes
        if ipam_result.get("dns"):
            result["dns"] = ipam_result["dns"]
    if not cfg.disable_container_interface:
        host = links.wait_oper_up(nl, host.index)
    # Both MACs may have changed since we read them: the bridge takes its ports' lowest
    # MAC until an address pins it.
    result["interfaces"][0]["mac"] = nl.get_link(bridge.index).mac
    result["interfaces"][1]["mac"] = host.mac
    if cfg.dns:
        result["dns"] = cfg.dns
    return result


def _preload_iptc():
    """Load python-iptables (~25 ms) in a thread while IPAM and netlink work run. A failure
    here is ignored: the masquerade step loads it again and reports the error itself."""
    import threading
    thread = threading.Thread(target=masquerade.load_iptc, daemon=True)
    thread.start()
    return thread


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


def cmd_del(req: Request) -> None:
    """Idempotent: whatever is already gone is skipped. With no netns (containerd's ctr, a
    second DEL) the lease and the masquerade chain are still released, which the
    reference does not do for the chain (its issue #810)."""
    cfg = BridgeConfig(req)
    call = ipam.start(cfg.ipam_type, "DEL", req) if cfg.ipam_type else None
    loader = _preload_iptc() if cfg.ip_masq and call else None
    try:
        pod_addrs = links.del_pod_link(req.netns, req.ifname) if req.netns else []
        if loader is not None:
            ips = [a.cidr for a in pod_addrs] or _prev_ips(req)
            loader.join()
            masquerade.teardown_masquerade(req.network, req.container_id, ips or None)
    except Exception as e:
        if call is not None:
            call.wait()  # release the lease even though our own part failed
        raise _as_cni_error(e) from None
    if call is not None:
        call.wait()


def _prev_ips(req: Request) -> list[str]:
    prev = req.conf.get("prevResult")
    if not isinstance(prev, dict):
        return []
    try:
        return [ip["address"] for ip in upgrade(prev).get("ips", [])]
    except (CNIError, KeyError, TypeError):
        return []


def cmd_check(req: Request) -> None:
    cfg = BridgeConfig(req)
    cfg.refuse_unsupported()
    if not isinstance(req.conf.get("prevResult"), dict):
        raise CNIError(INVALID_CONFIG, "Required prevResult missing")
    prev = upgrade(req.conf["prevResult"])
    call = ipam.start(cfg.ipam_type, "CHECK", req) if cfg.ipam_type else None
    try:
        check_attachment(req, cfg, prev)
    except BaseException as e:
        if call is not None:
            call.wait()  # an IPAM error is reported first, as the reference runs it first
        raise _as_cni_error(e) from None
    if call is not None:
        call.wait()


def cmd_status(req: Request) -> None:
    cfg = BridgeConfig(req)
    if cfg.ipam_type:
        ipam.run(cfg.ipam_type, "STATUS", req)


def cmd_gc(req: Request) -> None:
    """IPAM GC, then the masquerade chains of attachments the runtime no longer knows.
    Best effort: both run, the first error is reported."""
    cfg = BridgeConfig(req)
    valid = req.conf.get("cni.dev/valid-attachments", req.conf.get("cni.dev/attachments"))
    if not isinstance(valid, list):
        raise CNIError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments",
                       "a list of {containerID, ifname}")
    call = ipam.start(cfg.ipam_type, "GC", req) if cfg.ipam_type else None
    error = None
    try:
        masquerade.gc_masquerade(req.network, {a.get("containerID") for a in valid
                                               if isinstance(a, dict)})
    except masquerade.MasqueradeError as e:
        error = _as_cni_error(e)
    if call is not None:
        call.wait()
    if error is not None:
        raise error


def _as_cni_error(e: BaseException) -> BaseException:
    """Domain errors of the lower layers as the runtime should see them."""
    if isinstance(e, CNIError) or not isinstance(e, Exception):
        return e
    if isinstance(e, (links.LinkError, masquerade.MasqueradeError, addrs.AddressConflict)):
        return CNIError(BRIDGE_FAILURE, str(e))
    if isinstance(e, (NetlinkError, netns.NetnsError)):
        return CNIError(BRIDGE_FAILURE, f"netlink: {e}")
    if isinstance(e, OSError):
        return CNIError(IO_FAILURE, f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    return e


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc,
            "STATUS": cmd_status}
__all__ = ["HANDLERS", "KNOWN_ARGS"]
