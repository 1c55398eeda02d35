"""Detaching a pod: DEL, and GC's sweep of the attachments a runtime no longer knows.

Leaner than attach on purpose: the second DEL of every pod (no netns, nothing left) imports
neither the link nor the address code, only what finds out that nothing is there.
"""
from __future__ import annotations

from cni_protocol.errors import CNIError
from cni_protocol.request import Request
from . import ipam
from .config import BridgeConfig


def delete(req: Request, cfg: BridgeConfig) -> None:
    """DEL, idempotent: whatever is already gone is skipped. The pod's interface goes first,
    then its masquerade rules and MAC check, then the lease, so that the address is not handed
    out again while the pod or a rule still holds it. With no netns (containerd's ctr, the
    second DEL of every pod) the rules still go, found by the attachment's names, which the
    reference does not do (its issue #810); when nothing is left, finding that out is a few
    netlink queries. Every step runs even if an earlier one failed; the first error is
    reported."""
    pod_addrs = []
    if req.netns:
        from .links import del_pod_link
        pod_addrs = del_pod_link(req.netns, req.ifname)
    errors: list[Exception] = []
    if cfg.ip_masq and cfg.ipam_type:
        from . import masquerade
        cidrs = [a.cidr for a in pod_addrs] or _prev_ips(req)
        try:
            masquerade.teardown(masquerade.Attachment(req.network, req.container_id, req.ifname),
                                cidrs or None, lambda: _leased(req, cfg))
        except Exception as e:
            errors.append(e)
    if cfg.macspoofchk:
        from . import macspoofchk
        try:
            macspoofchk.remove(req.container_id, req.ifname)
        except Exception as e:
            errors.append(e)
    if cfg.ipam_type:
        try:
            ipam.run(cfg.ipam_type, "DEL", req)
        except CNIError as e:
            errors.append(e)
    if errors:
        raise errors[0]  # each step ran; the first failure is the one to report


def _leased(req: Request, cfg: BridgeConfig) -> tuple[list[str], list[str]] | None:
    """(the attachment's addresses, its container's other attachments' addresses) as
    host-local's store has them, before its DEL; None if the store tells nothing."""
    leases = ipam.host_local_leases(req, cfg.ipam_type)
    if leases is None:
        return None
    container_id = req.container_id.strip()
    mine = [ip for ip, cid, ifname in leases if cid == container_id and ifname in (req.ifname, None)]
    others = [ip for ip, cid, ifname in leases if cid == container_id and ifname not in (req.ifname, None)]
    return mine, others


def collect(req: Request, cfg: BridgeConfig, attachments: set[tuple[str, str]]) -> None:
    """GC's sweep: the network's masquerade rules in every backend and the MAC checks of
    attachments that are not in `attachments`. Both run; the first error is raised."""
    from . import macspoofchk, masquerade
    from .netlink import Netlink
    from .nfnetlink import NfTables
    errors: list[Exception] = []
    try:
        masquerade.gc(req.network, attachments, ipam.host_local_leases(req, cfg.ipam_type))
    except masquerade.MasqueradeError as e:
        errors.append(e)
    with Netlink() as nl:
        bridge = nl.get_link(cfg.bridge)

        def is_ours(veth: str) -> bool:
            """A MAC check is this network's if its veth is gone or a port of our bridge."""
            link = nl.get_link(veth) if veth else None
            return link is None or (bridge is not None and link.master == bridge.index)

        try:
            nft = NfTables()
        except OSError:
            nft = None  # no nf_tables in this kernel: no MAC check can exist
        if nft is not None:
            with nft:
                try:
                    macspoofchk.gc(nft, attachments, is_ours)
                except (OSError, macspoofchk.MacSpoofCheckError) as e:
                    errors.append(e)
    if errors:
        raise errors[0]


def _prev_ips(req: Request) -> list[str]:
    prev = req.conf.get("prevResult")
    if not isinstance(prev, dict):
        return []
    from cni_protocol.result import upgrade
    try:
        return [ip["address"] for ip in upgrade(prev).get("ips", [])]
    except (CNIError, KeyError, TypeError):
        return []
