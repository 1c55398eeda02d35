"""host-local's verbs. Each one: load the config, open the store, one short step under its lock."""
from __future__ import annotations

from cni_protocol.errors import (ALLOCATION_FAILED, CNIError, IO_FAILURE, LEASE_NOT_FOUND,
                                 NOT_AVAILABLE)
from cni_protocol.ip import fmt, parse_ip
from cni_protocol.request import Request
from .config import IPAMConfig
from .store import DiskStore

KNOWN_ARGS = ("IP",)


class _Store:
    """`with _Store(conf, req) as store`: the network's DiskStore. An OSError in the block (a
    read-only or full dataDir, a planted symlink) is code 5 naming the path, not a bug."""

    def __init__(self, conf: IPAMConfig, req: Request) -> None:
        self.data_dir, self.network = conf.data_dir, req.network

    def __enter__(self) -> DiskStore:
        try:
            return DiskStore(self.data_dir, self.network)
        except OSError as e:
            raise self._error(e) from None

    def __exit__(self, kind: type | None, e: BaseException | None, tb: object) -> None:
        if isinstance(e, OSError):
            raise self._error(e) from None

    def _error(self, e: OSError) -> CNIError:
        where = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        return CNIError(IO_FAILURE, f"host-local: cannot use dataDir {self.data_dir}: {where}")


def cmd_add(req: Request) -> dict:
    from .allocator import Allocator  # only ADD allocates (DEL, CHECK: 0.4 ms less to import)
    from .dns import parse_resolv_conf
    conf = IPAMConfig(req)
    dns = parse_resolv_conf(conf.resolv_conf) if conf.resolv_conf else {}
    requested = list(conf.requested)
    ips: list[dict] = []
    with _Store(conf, req) as store:
        try:
            for index, range_set in enumerate(conf.range_sets):
                want = next((ip for ip in requested if range_set.contains(*ip)), None)
                if want is not None:
                    requested.remove(want)
                ips.append(Allocator(range_set, store, index).get(req.container_id, req.ifname,
                                                                  want))
            if requested:
                raise CNIError(ALLOCATION_FAILED, "failed to allocate all requested IPs: "
                               + _unmet(requested, conf))
        except BaseException:
            if ips:
                with store.lock():  # only what this call reserved: an older lease stays
                    for ip in ips:
                        store.release(ip["address"].split("/")[0])
            raise
    result: dict = {"ips": ips, "routes": conf.routes}
    if dns:
        result["dns"] = dns
    return result


def _unmet(requested: list[tuple[int, int]], conf: IPAMConfig) -> str:
    """Why requested addresses were left over: outside every set, or a second one in a set
    (a set gives one address; the earlier one listed got it)."""
    outside, doubled = [], []
    for ip in requested:
        range_set = next((s for s in conf.range_sets if s.contains(*ip)), None)
        if range_set is None:
            outside.append(fmt(*ip))
        else:
            doubled.append(f"{fmt(*ip)} is a second address requested from range set "
                           f"{range_set.label} ({range_set}), which gives one")
    parts = [f"no range set contains {', '.join(outside)}"] if outside else []
    return "; ".join(parts + doubled)


def cmd_del(req: Request) -> None:
    conf = IPAMConfig(req)
    with _Store(conf, req) as store, store.lock():
        store.release_by_id(req.container_id, req.ifname)


def cmd_check(req: Request) -> None:
    conf = IPAMConfig(req)
    with _Store(conf, req) as store, store.lock():
        if not store.get_by_id(req.container_id, req.ifname):
            raise CNIError(LEASE_NOT_FOUND,
                           f"host-local: Failed to find address added by container "
                           f"{req.container_id}")


def cmd_gc(req: Request) -> None:
    """Release every lease whose attachment the runtime no longer knows (spec 1.1.0 GC)."""
    attachments = req.valid_attachments()
    container_ids = {cid for cid, _ in attachments}
    conf = IPAMConfig(req)
    with _Store(conf, req) as store, store.lock():
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
        reserved = [parse_ip(name) for name in DiskStore(conf.data_dir, req.network).reserved()]
    except OSError as e:
        where = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        raise CNIError(NOT_AVAILABLE, f"host-local: dataDir {conf.data_dir} is not usable: "
                       f"{where}") from None
    for range_set in conf.range_sets:
        ranges = [range_set.range_of(*ip) for ip in reserved]
        used = sum(r is not None and ip[1] != r.gateway for r, ip in zip(ranges, reserved))
        if used >= range_set.size():
            raise CNIError(NOT_AVAILABLE, f"host-local: no IP addresses available in range set "
                           f"{range_set} ({range_set.label})")


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc,
            "STATUS": cmd_status}
