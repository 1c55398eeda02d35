"""host-local's verbs. Each one: load the config, open the store, one short step under its lock."""
from __future__ import annotations

from cni_protocol.errors import (ALLOCATION_FAILED, CNIError, IO_FAILURE, LEASE_NOT_FOUND,
                                 NOT_AVAILABLE)
from cni_protocol.ip import fmt, parse_ip
from cni_protocol.request import Request
from .allocator import Allocator
from .config import IPAMConfig
from .dns import parse_resolv_conf
from .store import DiskStore

KNOWN_ARGS = ("IP",)


def _open(req: Request) -> tuple[IPAMConfig, DiskStore]:
    conf = IPAMConfig(req)
    try:
        return conf, DiskStore(conf.data_dir, req.network)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"host-local: cannot use dataDir {conf.data_dir}: "
                       f"{e.strerror}") from None


def cmd_add(req: Request) -> dict:
    conf, store = _open(req)
    dns = parse_resolv_conf(conf.resolv_conf) if conf.resolv_conf else {}
    requested = list(conf.requested)
    ips: list[dict] = []
    try:
        for index, range_set in enumerate(conf.range_sets):
            want = next((ip for ip in requested if range_set.contains(*ip)), None)
            if want is not None:
                requested.remove(want)
            ips.append(Allocator(range_set, store, index).get(req.container_id, req.ifname, want))
        if requested:
            raise CNIError(ALLOCATION_FAILED, "failed to allocate all requested IPs: no range "
                           "set contains " + ", ".join(fmt(*ip) for ip in requested))
    except BaseException:
        with store.lock():  # only what this call reserved: an older lease stays
            for ip in ips:
                store.release(ip["address"].split("/")[0])
        raise
    result: dict = {"ips": ips, "routes": conf.routes}
    if dns:
        result["dns"] = dns
    return result


def cmd_del(req: Request) -> None:
    _, store = _open(req)
    with store.lock():
        store.release_by_id(req.container_id, req.ifname)


def cmd_check(req: Request) -> None:
    _, store = _open(req)
    with store.lock():
        if not store.get_by_id(req.container_id, req.ifname):
            raise CNIError(LEASE_NOT_FOUND,
                           f"host-local: Failed to find address added by container "
                           f"{req.container_id}")


def cmd_gc(req: Request) -> None:
    """Release every lease whose attachment the runtime no longer knows (spec 1.1.0 GC)."""
    attachments = req.valid_attachments()
    container_ids = {cid for cid, _ in attachments}
    _, store = _open(req)
    with store.lock():
        for name, container_id, ifname in store.leases():
            if ifname is None:
                keep = container_id in container_ids  # an id-only file of plugins < 0.8
            else:
                keep = (container_id, ifname) in attachments
            if not keep:
                try:
                    store.release(name)
                except OSError:
                    continue  # best effort: the next GC tries again


def cmd_status(req: Request) -> None:
    """Code 50 when an ADD could not get an address: some range set has none free."""
    conf = IPAMConfig(req)
    try:
        store = DiskStore(conf.data_dir, req.network)
        leased = []
        for name, _, _ in store.leases():
            try:
                leased.append(parse_ip(name))
            except ValueError:
                continue
    except OSError as e:
        raise CNIError(NOT_AVAILABLE, f"host-local: dataDir {conf.data_dir} is not usable: "
                       f"{e.strerror}") from None
    for range_set in conf.range_sets:
        used = sum(range_set.contains(*ip) for ip in leased)
        if used >= range_set.size():
            raise CNIError(NOT_AVAILABLE, f"host-local: no IP addresses available in range set "
                           f"{range_set} ({range_set.label})")


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc,
            "STATUS": cmd_status}
