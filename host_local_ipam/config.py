"""The `ipam` section (plus runtimeConfig and args) as the reference host-local reads it."""
from __future__ import annotations

from cni_protocol.errors import CNIError, INVALID_CONFIG, INVALID_ENV
from cni_protocol.request import Request
from cni_protocol.skel import config_error
from cni_protocol.version import at_least
from cni_protocol.ip import parse_cidr, parse_ip
from .ranges import RangeSet
from .store import DEFAULT_DATA_DIR


class IPAMConfig:
    """Range sets in their final order (runtime ipRanges, legacy range, `ranges`): a set's
    index here is the N of its last_reserved_ip.N file."""

    __slots__ = ("range_sets", "routes", "data_dir", "resolv_conf", "requested")

    def __init__(self, req: Request) -> None:
        ipam = req.conf.get("ipam")
        if not isinstance(ipam, dict):
            raise CNIError(INVALID_CONFIG, "IPAM config missing 'ipam' key")
        self.data_dir = _path(ipam, "dataDir") or DEFAULT_DATA_DIR
        self.resolv_conf = _path(ipam, "resolvConf")
        self.routes = _routes(ipam.get("routes"))
        self.range_sets = _range_sets(req, ipam)
        self.requested = _requested_ips(req)


def _path(ipam: dict, key: str) -> str:
    value = ipam.get(key, "")
    if not isinstance(value, str):
        raise config_error(f"ipam.{key}", "must be a string", value)
    if "\0" in value:
        raise config_error(f"ipam.{key}", "must be a path, it contains a NUL character", value)
    try:
        value.encode()
    except UnicodeEncodeError:  # "\ud800" in the JSON: no file name is that
        raise config_error(f"ipam.{key}", "must be a path, it contains a lone surrogate "
                           "(\\ud800-\\udfff)", value) from None
    return value


def _routes(routes: object) -> list:
    if routes is None:
        return []
    if not isinstance(routes, list):
        raise config_error("ipam.routes", "must be a list of {dst, gw}", routes)
    return [_route(route, f"ipam.routes[{i}]") for i, route in enumerate(routes)]


def _route(route: object, key: str) -> dict:
    if not isinstance(route, dict):
        raise config_error(key, "must be an object {dst, gw, ...}", route)
    dst, gw = route.get("dst"), route.get("gw")
    if not isinstance(dst, str):
        raise config_error(f"{key}.dst", "is required (a CIDR)", dst)
    try:
        parse_cidr(dst)
    except ValueError:
        raise config_error(f"{key}.dst", "is not a CIDR", dst) from None
    if gw not in (None, ""):  # "" is no gateway, as the reference's net.IP reads it
        try:
            parse_ip(gw if isinstance(gw, str) else "")
        except ValueError:
            raise config_error(f"{key}.gw", "is not an IP address", gw) from None
    from cni_protocol.result import ROUTE_INTS  # the spec's route type's integers

    for name, top in ROUTE_INTS.items():
        value = route.get(name)
        if value is not None and (type(value) is not int or not 0 <= value <= top):
            raise config_error(f"{key}.{name}", f"must be an integer from 0 to {top}", value)
    return {k: v for k, v in route.items() if v is not None and (k, v) != ("gw", "")}


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
    """IP= in CNI_ARGS, args.cni.ips, runtimeConfig.ips (capability "ips"), in that order.

    CONVENTIONS.md: a plugin that understands `args` ignores a CNI_ARGS field whose equivalent
    the runtime passed there, so args.cni.ips (even an empty list) replaces IP=. The reference
    adds all three; runtimeConfig.ips still adds to args.cni.ips, as there."""
    wanted: list[tuple[str, object]] = []
    args = req.conf.get("args")
    cni_args = args.get("cni") if isinstance(args, dict) else None
    args_ips = cni_args.get("ips") if isinstance(cni_args, dict) else None
    if args_ips is not None:
        wanted += [("args.cni.ips", ip) for ip in _list(args_ips, "args.cni.ips")]
    elif req.args.get("IP"):
        wanted += [("CNI_ARGS IP", ip) for ip in req.args["IP"].split(",")]
    if req.runtime_config.get("ips"):
        wanted += [("runtimeConfig.ips", ip)
                   for ip in _list(req.runtime_config["ips"], "runtimeConfig.ips")]
    out: list[tuple[int, int]] = []
    for key, ip in wanted:
        try:
            out.append(_requested_address(ip))
        except ValueError:
            if key == "CNI_ARGS IP":  # the environment, not the conf: code 4
                raise CNIError(INVALID_ENV, f"invalid CNI_ARGS: IP: cannot understand ip {ip!r}",
                               f"IP={req.args['IP']!r}") from None
            raise config_error(key, f"cannot understand ip {ip!r}", ip) from None
    return list(dict.fromkeys(out))  # the same address asked for twice is one request


def _requested_address(ip: object) -> tuple[int, int]:
    """An address, or an address/prefix whose prefix length is valid (the reference parses it
    as a CIDR then): only the address counts."""
    if not isinstance(ip, str):
        raise ValueError(f"{ip!r} is not an IP address")
    if "/" in ip:
        family, value, _ = parse_cidr(ip)
        return family, value
    return parse_ip(ip)


def _list(value: object, key: str) -> list:
    if not isinstance(value, list):
        raise config_error(key, "must be a list of IP addresses", value)
    return value
