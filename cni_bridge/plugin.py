"""The bridge plugin's verbs: thin and symmetric.

Each verb reads the conf, starts its IPAM delegate (a process of its own) and only then
imports the modules that do its work (~6 ms), so the IPAM plugin runs meanwhile. ADD and DEL
with ipMasq also load python-iptables in a background thread from the start (DEL starts
its IPAM plugin only once the pod's interface is gone, as the reference does). The work itself
is in attach (ADD, DEL) and check (CHECK); masquerade does ipMasq and its GC.
"""
from __future__ import annotations

import errno

from cni_protocol.errors import (BRIDGE_FAILURE, CNIError, INVALID_CONFIG, IO_FAILURE,
                                 TRY_AGAIN_LATER)
from cni_protocol.request import Request
from cni_protocol.result import upgrade
from . import ipam
from .config import KNOWN_ARGS, BridgeConfig


def cmd_add(req: Request) -> dict:
    cfg = BridgeConfig(req)
    cfg.validate_for_add()
    call = ipam.start(cfg.ipam_type, "ADD", req) if cfg.ipam_type else None
    iptc_loaded = _preload_iptc() if cfg.ip_masq and call else None
    try:
        from .attach import add
        return add(req, cfg, call, iptc_loaded)
    except Exception as e:
        raise _as_cni_error(e) from None


def cmd_del(req: Request) -> None:
    cfg = BridgeConfig(req)
    iptc_loaded = _preload_iptc() if cfg.ip_masq and cfg.ipam_type else None
    try:
        from .attach import delete
        delete(req, cfg, iptc_loaded)
    except Exception as e:
        raise _as_cni_error(e) from None


def cmd_check(req: Request) -> None:
    cfg = BridgeConfig(req)
    cfg.validate_for_add()
    if not isinstance(req.conf.get("prevResult"), dict):
        raise CNIError(INVALID_CONFIG, "Required prevResult missing")
    prev = upgrade(req.conf["prevResult"])
    call = ipam.start(cfg.ipam_type, "CHECK", req) if cfg.ipam_type else None
    try:
        from .check import check_attachment
        check_attachment(req, cfg, prev)
    except Exception as e:
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
    container_ids = {container_id for container_id, _ in req.valid_attachments()}
    call = ipam.start(cfg.ipam_type, "GC", req) if cfg.ipam_type else None
    from . import masquerade
    error = None
    try:
        masquerade.gc_masquerade(req.network, container_ids)
    except masquerade.MasqueradeError as e:
        error = _as_cni_error(e)
    if call is not None:
        call.wait()
    if error is not None:
        raise error


# Worth a retry by the runtime (code 11); EINTR: a netlink dump kept being interrupted.
_TRANSIENT = (errno.EAGAIN, errno.EBUSY, errno.EINTR)


def _preload_iptc():
    """masquerade.preload(); the module is imported only by the verbs that masquerade."""
    from . import masquerade
    return masquerade.preload()


def _as_cni_error(e: Exception) -> Exception:
    """Domain errors of the lower layers as the runtime should see them; anything else is a
    bug and stays as it is (the skel reports it as an internal error)."""
    if isinstance(e, CNIError):
        return e
    from .addrs import AddressConflict
    from .links import LinkError
    from .masquerade import MasqueradeError
    from .netlink import NetlinkError
    from .netns import NetnsError
    if isinstance(e, (LinkError, MasqueradeError, AddressConflict)):
        return CNIError(BRIDGE_FAILURE, str(e))
    if isinstance(e, NetlinkError) and e.errno in _TRANSIENT:
        return CNIError(TRY_AGAIN_LATER, f"netlink: {e}")
    if isinstance(e, (NetlinkError, NetnsError)):
        return CNIError(BRIDGE_FAILURE, f"netlink: {e}")
    if isinstance(e, OSError):
        return CNIError(IO_FAILURE, f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    return e


HANDLERS = {verb: ipam.refusing_delegation_loops(handler) for verb, handler in (
    ("ADD", cmd_add), ("DEL", cmd_del), ("CHECK", cmd_check), ("GC", cmd_gc),
    ("STATUS", cmd_status))}
__all__ = ["HANDLERS", "KNOWN_ARGS"]
