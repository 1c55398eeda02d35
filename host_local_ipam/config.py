"""The `ipam` section (plus runtimeConfig and args) as the reference host-local reads it."""
from __future__ import annotations

from cni_protocol.errors import CNIError, INVALID_CONFIG, INVALID_ENV
from cni_protocol.request import Request
from cni_protocol.skel import config_error
from cni_protocol.version import at_least
from cni_protocol.ip import parse_cidr, parse_ip
from .ranges import RangeSet

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


class IPAMConfig:
    """Range sets in their final order (runtime ipRanges, legacy range, `ranges`): a set's
    index here is the N of its last_reserved_ip.N file."""

    __slots__ = ("range_sets", "routes", "data_dir", "resolv_conf", "requested")

    def __init__(self, req: Request) -> None:
        ipam = req.conf.get("ipam")
        if not isinstance(ipam, dict):
            raise CNIError(INVALID_CONFIG, "IPAM config missing 'ipam' key")
        self.data_dir = _string(ipam, "dataDir") or DEFAULT_DATA_DIR
        self.resolv_conf = _string(ipam, "resolvConf")
        self.routes = _routes(ipam.get("routes"))
        self.range_sets = _range_sets(req, ipam)
        self.requested = _requested_ips(req)


def _string(ipam: dict, key: str) -> str:
    value = ipam.get(key, "")
    if not isinstance(value, str):
        raise config_error(f"ipam.{key}", "must be a string", value)
    return value


def _routes(routes: object) -> list:
    if routes is None:
        return []
    if not isinstance(routes, list):
        raise config_error("ipam.routes", "must be a list of {dst, gw}", routes)
    for i, route in enumerate(routes):
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
            raise config_error(f"ipam.routes[{i}].dst", "is required (a CIDR)", route)
        try:
            parse_cidr(route["dst"])
            if route.get("gw") is not None:
                parse_ip(route["gw"])
        except (ValueError, AttributeError):
            raise config_error(f"ipam.routes[{i}]", "dst must be a CIDR and gw an IP",
                               route) from None
    return [{k: v for k, v in route.items() if v is not None} for route in routes]


def _range_sets(req: Request, ipam: dict) -> list[RangeSet]:
    sets = []
    runtime = req.runtime_config.get("ipRanges")
    if runtime:
        if not isinstance(runtime, list):
            raise config_error("runtimeConfig.ipRanges", "must be a list of range sets", runtime)
        sets += [RangeSet(s, f"runtimeConfig.ipRanges[{i}]") for i, s in enumerate(runtime)]
    if ipam.get("subnet"):
        legacy = {k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
        sets.append(RangeSet([legacy], "ipam.subnet", range_key="ipam"))
    configured = ipam.get("ranges") or []
    if not isinstance(configured, list):
        raise config_error("ipam.ranges", "must be a list of range sets", configured)
    sets += [RangeSet(s, f"ipam.ranges[{i}]") for i, s in enumerate(configured)]
    if not sets:
        raise config_error("ipam.ranges", "no IP ranges specified")
    for i, s in enumerate(sets):
        for j, other in enumerate(sets[:i]):
            if s.overlaps(other):
                raise config_error(s.label, f"range set overlaps with {other.label}")
    for family in (4, 6):
        if sum(s.family == family for s in sets) > 1 and not at_least(req.version, "0.3.0"):
            raise config_error("cniVersion", f"CNI version {req.version} does not support "
                               "more than 1 address per family", req.version)
    return sets


def _requested_ips(req: Request) -> list[tuple[int, int]]:
    """IP= in CNI_ARGS, args.cni.ips, runtimeConfig.ips (capability "ips"), in that order."""
    wanted: list[tuple[str, object]] = []
    if req.args.get("IP"):
        wanted += [("CNI_ARGS IP", ip) for ip in req.args["IP"].split(",")]
    args = req.conf.get("args")
    cni_args = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni_args, dict) and cni_args.get("ips"):
        wanted += [("args.cni.ips", ip) for ip in _list(cni_args["ips"], "args.cni.ips")]
    if req.runtime_config.get("ips"):
        wanted += [("runtimeConfig.ips", ip)
                   for ip in _list(req.runtime_config["ips"], "runtimeConfig.ips")]
    out: list[tuple[int, int]] = []
    for key, ip in wanted:
        try:
            out.append(parse_ip(str(ip).split("/", 1)[0]))
        except ValueError:
            if key == "CNI_ARGS IP":  # the environment, not the conf: code 4
                raise CNIError(INVALID_ENV, f"invalid CNI_ARGS: IP: cannot understand ip {ip!r}",
                               f"IP={req.args['IP']!r}") from None
            raise config_error(key, f"cannot understand ip {ip!r}", ip) from None
    return list(dict.fromkeys(out))  # the same address asked for twice is one request


def _list(value: object, key: str) -> list:
    if not isinstance(value, list):
        raise config_error(key, "must be a list of IP addresses", value)
    return value
