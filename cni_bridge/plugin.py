"""The bridge plugin's verbs: thin and symmetric.

Each verb reads the conf and refuses what it cannot do before touching anything (a
masquerade backend the host cannot use included). ADD and CHECK then start their IPAM delegate
before importing the modules that do their own work, so that an exec'd IPAM plugin runs
meanwhile (our host-local of the same build runs in this process, within `ipam.start`); DEL
removes the pod's interface and rules first and releases the lease last. The work itself is
in attach (ADD), detach (DEL, GC) and check (CHECK); masquerade does ipMasq in whichever
backend, macspoofchk the MAC check.
"""
from __future__ import annotations

import errno

from cni_protocol.errors import (BRIDGE_FAILURE, CNIError, INVALID_CONFIG, INVALID_ENV,
                                 INVALID_NETNS, IO_FAILURE, TRY_AGAIN_LATER)
from cni_protocol.request import Request
from . import ipam
from .config import KNOWN_ARGS, BridgeConfig


def cmd_add(req: Request) -> dict:
    cfg = BridgeConfig(req)
    cfg.validate_for_add()
    _refuse_own_netns(req)
    backend = _masquerade_backend(cfg) if cfg.ip_masq and cfg.ipam_type else None
    if cfg.macspoofchk:
        _refuse_unnameable_macspoofchk(req)
    call = ipam.start(cfg.ipam_type, "ADD", req) if cfg.ipam_type else None
    try:
        from .attach import add
        return add(req, cfg, call, backend)
    except Exception as e:
        raise _as_cni_error(e) from None


def cmd_del(req: Request) -> None:
    cfg = BridgeConfig(req)
    _refuse_own_netns(req)
    try:
        from .detach import delete
        delete(req, cfg)
    except Exception as e:
        raise _as_cni_error(e) from None


def cmd_check(req: Request) -> None:
    cfg = BridgeConfig(req)
    cfg.validate_for_add()
    _refuse_own_netns(req)
    if not isinstance(req.conf.get("prevResult"), dict):
        raise CNIError(INVALID_CONFIG, "Required prevResult missing")
    from cni_protocol.result import upgrade
    prev = upgrade(req.conf["prevResult"])
    backend = _masquerade_backend(cfg) if cfg.ip_masq and cfg.ipam_type else None
    call = ipam.start(cfg.ipam_type, "CHECK", req) if cfg.ipam_type else None
    try:
        from .check import check_attachment
        check_attachment(req, cfg, prev, backend)
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
    """IPAM GC, then the masquerade rules and MAC checks of attachments the runtime no longer
    knows. Best effort: all of it runs, the first error is reported."""
    cfg = BridgeConfig(req)
    attachments = req.valid_attachments()
    call = ipam.start(cfg.ipam_type, "GC", req) if cfg.ipam_type else None
    from .detach import collect
    error = None
    try:
        collect(req, cfg, attachments)
    except Exception as e:
        error = _as_cni_error(e)
    if call is not None:
        call.wait()
    if error is not None:
        raise error


# Worth a retry by the runtime (code 11); EINTR: a netlink dump kept being interrupted.
_TRANSIENT = (errno.EAGAIN, errno.EBUSY, errno.EINTR)


def _masquerade_backend(cfg: BridgeConfig) -> str:
    """The backend ipMasq writes to (ADD) or must find the rules in (CHECK); a host that has
    none usable fails the verb here, before IPAM or any link (code 102)."""
    from . import masquerade
    try:
        return masquerade.choose(cfg.ip_masq_backend)
    except masquerade.MasqueradeError as e:
        raise CNIError(BRIDGE_FAILURE, str(e)) from None


def _refuse_unnameable_macspoofchk(req: Request) -> None:
    """nftables names chains in at most 255 bytes: a container ID too long for the MAC check's
    chains is refused before anything is made (code 4)."""
    from .macspoofchk import name_problem
    problem = name_problem(req.container_id, req.ifname)
    if problem:
        raise CNIError(INVALID_ENV, f"invalid CNI_CONTAINERID: {problem}")


def _refuse_own_netns(req: Request) -> None:
    """CNI_NETNS naming the plugin's own network namespace is refused (code 8), as libcni's
    skel refuses it, unless CNI_NETNS_OVERRIDE is 1 or true: an ADD there would move the
    node's own interfaces around. Two stat calls; a missing path is the verbs' business."""
    if not req.netns or req.env.get("CNI_NETNS_OVERRIDE", "").lower() in ("1", "true"):
        return
    import posix
    try:
        target = posix.stat(req.netns)
        own = posix.stat("/proc/thread-self/ns/net")
    except OSError:
        return
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise CNIError(INVALID_NETNS, "plugin's netns and netns from CNI_NETNS should not be "
                       "the same", f"CNI_NETNS={req.netns}")


def _as_cni_error(e: Exception) -> Exception:
    """Domain errors of the lower layers as the runtime should see them; anything else is a
    bug and stays as it is (the skel reports it as an internal error)."""
    if isinstance(e, CNIError):
        return e
    from .addrs import AddressConflict
    from .links import LinkError
    from .macspoofchk import MacSpoofCheckError
    from .masquerade import MasqueradeError
    from .netlink import NetlinkError
    from .netns import NetnsError, NotANetns
    if isinstance(e, (LinkError, MasqueradeError, MacSpoofCheckError, AddressConflict)):
        return CNIError(BRIDGE_FAILURE, str(e))
    if isinstance(e, NotANetns):
        return CNIError(INVALID_ENV, f"invalid CNI_NETNS: {e}")
    if isinstance(e, NetlinkError) and e.errno in _TRANSIENT:
        return CNIError(TRY_AGAIN_LATER, f"netlink: {e}")
    if isinstance(e, NetnsError):
        return CNIError(BRIDGE_FAILURE, str(e))
    if isinstance(e, NetlinkError):
        return CNIError(BRIDGE_FAILURE, f"netlink: {e}")
    if isinstance(e, OSError):
        return CNIError(IO_FAILURE, f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    return e


HANDLERS = {verb: ipam.refusing_delegation_loops(handler) for verb, handler in (
    ("ADD", cmd_add), ("DEL", cmd_del), ("CHECK", cmd_check), ("GC", cmd_gc),
    ("STATUS", cmd_status))}
__all__ = ["HANDLERS", "KNOWN_ARGS"]
