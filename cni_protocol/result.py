"""Result conversion between the spec's result shapes, and the shape check where results enter.

Plugins build results in the 1.x shape (`ips` without `version`); `emit` turns that into the
request's version. `parse` turns a result of any version (an IPAM plugin's answer, a
prevResult) back into the 1.x shape and checks every field we read on the way: what it returns
can be trusted by the verbs; what it refuses raises InvalidResult, naming the field.
  0.1.0 / 0.2.0        {"ip4": {"ip", "gateway", "routes"}, "ip6": {...}, "dns"}
  0.3.0 / 0.3.1 / 0.4.0 ips[] carry "version": "4" | "6"
  1.0.0 / 1.1.0        ips[] without "version"
"""
from __future__ import annotations

from .errors import CNIError, INCOMPATIBLE_VERSION, DECODE_FAILURE
from .ip import parse_cidr, parse_ip

LEGACY = ("0.1.0", "0.2.0")
WITH_IP_VERSION = ("0.3.0", "0.3.1", "0.4.0")
U32 = 2**32 - 1
# Route attributes that are integers, with their range: the kernel's u32 metrics, priority and
# table, and rtm_scope's u8.
ROUTE_INTS = {"mtu": U32, "advmss": U32, "priority": U32, "table": U32, "scope": 255}
INTERFACE_STRINGS = ("name", "mac", "sandbox", "socketPath", "pciID")
DNS_LISTS = ("nameservers", "search", "options")


class InvalidResult(ValueError):
    """A result that is not what the spec's result type allows; str() names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")


def family(address: str) -> str:
    """'4' or '6' for an address or CIDR string."""
    return "6" if ":" in address else "4"


def emit(result: dict, version: str) -> dict:
    """A 1.x-shaped result, as the runtime expects it for `version`."""
    if version in LEGACY:
        return _to_legacy(result, version)
    out = {"cniVersion": version}
    for key in ("interfaces", "ips", "routes", "dns"):
        if result.get(key):
            out[key] = result[key]
    if version in WITH_IP_VERSION and "ips" in out:
        out["ips"] = [dict(ip, version=family(ip["address"])) for ip in out["ips"]]
    return out


def _to_legacy(result: dict, version: str) -> dict:
    out: dict = {"cniVersion": version}
    for ip in result.get("ips", []):
        key = "ip" + family(ip["address"])
        if key in out:
            raise CNIError(INCOMPATIBLE_VERSION,
                           f"cannot convert result to version {version}: "
                           f"more than one IPv{key[-1]} address",
                           "use cniVersion 0.3.0 or later for several addresses per family")
        entry = {"ip": ip["address"]}
        if ip.get("gateway"):
            entry["gateway"] = ip["gateway"]
        out[key] = entry
    for route in result.get("routes", []):
        key = "ip" + family(route["dst"])
        if key in out:
            out[key].setdefault("routes", []).append(
                {k: route[k] for k in ("dst", "gw") if k in route})
    if result.get("dns"):
        out["dns"] = result["dns"]
    return out


def upgrade(result: object) -> dict:
    """A prevResult of any supported version in the 1.x shape; code 6 naming the field if it
    is malformed."""
    try:
        return parse(result)
    except InvalidResult as e:
        raise CNIError(DECODE_FAILURE, f"could not decode prevResult: {e}") from None


def parse(result: object) -> dict:
    """A result of any supported version in the 1.x shape, checked; InvalidResult if not."""
    if not isinstance(result, dict):
        raise InvalidResult("result", "is not an object")
    if "ip4" in result or "ip6" in result:
        return _parse_legacy(result)
    out: dict = {}
    interfaces = _list(result, "interfaces", "")
    if interfaces is not None:
        out["interfaces"] = [_interface(entry, f"interfaces[{i}]")
                             for i, entry in enumerate(interfaces)]
    ips = _list(result, "ips", "")
    if ips is not None:
        out["ips"] = [_ip(entry, f"ips[{i}]", "address") for i, entry in enumerate(ips)]
    routes = _list(result, "routes", "")
    if routes is not None:
        out["routes"] = [_route(route, f"routes[{i}]") for i, route in enumerate(routes)]
    if result.get("dns") is not None:
        out["dns"] = _dns(result["dns"])
    return out


def _parse_legacy(result: dict) -> dict:
    out: dict = {"ips": [], "routes": []}
    for key in ("ip4", "ip6"):
        entry = result.get(key)
        if not entry:
            continue
        out["ips"].append(_ip(entry, key, "ip"))
        for i, route in enumerate(_list(entry, "routes", key) or []):
            out["routes"].append(_route(route, f"{key}.routes[{i}]"))
    if result.get("dns") is not None:
        out["dns"] = _dns(result["dns"])
    return out


def _list(parent: dict, key: str, where: str) -> list | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, list):
        raise InvalidResult(f"{where}.{key}" if where else key, "is not a list")
    return value


def _object(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidResult(field, "is not an object")
    return value


def _interface(entry: object, field: str) -> dict:
    entry = _object(entry, field)
    for key in INTERFACE_STRINGS:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise InvalidResult(f"{field}.{key}", "is not a string")
    if entry.get("mtu") is not None:
        _int(entry["mtu"], f"{field}.mtu", U32)
    return entry


def _ip(entry: object, field: str, key: str) -> dict:
    """An ips[] entry (key "address") or a legacy ip4/ip6 (key "ip", returned as "address"),
    without the 0.3.x `version`."""
    entry = _object(entry, field)
    address = entry.get(key)
    if not isinstance(address, str):
        raise InvalidResult(f"{field}.{key}", "is required: an address with its prefix length")
    try:
        family_ = parse_cidr(address)[0]
    except ValueError:
        raise InvalidResult(f"{field}.{key}",
                            f"{address!r} is not an address with its prefix length") from None
    if key == "ip":
        out = {"address": address}
    else:
        out = {k: v for k, v in entry.items() if k != "version"}
        if entry.get("interface") is not None:
            _int(entry["interface"], f"{field}.interface", U32)
    gateway = entry.get("gateway")
    if gateway is not None and gateway != "":  # Go omits an unset one; "" means the same
        _address(gateway, f"{field}.gateway", family_)
        out["gateway"] = gateway
    else:
        out.pop("gateway", None)
    return out


def _route(route: object, field: str) -> dict:
    route = _object(route, field)
    dst = route.get("dst")
    if not isinstance(dst, str):
        raise InvalidResult(f"{field}.dst", "is required: a destination CIDR")
    try:
        family_ = parse_cidr(dst)[0]
    except ValueError:
        raise InvalidResult(f"{field}.dst", f"{dst!r} is not a CIDR") from None
    if route.get("gw") is not None and route["gw"] != "":
        _address(route["gw"], f"{field}.gw", family_)
    for key, maximum in ROUTE_INTS.items():
        if route.get(key) is not None:
            _int(route[key], f"{field}.{key}", maximum)
    return route


def _address(value: object, field: str, family_: int) -> None:
    if not isinstance(value, str):
        raise InvalidResult(field, "is not a string")
    try:
        ok = parse_ip(value)[0] == family_
    except ValueError:
        raise InvalidResult(field, f"{value!r} is not an IP address") from None
    if not ok:
        raise InvalidResult(field, f"{value!r} is not an IPv{family_} address")


def _int(value: object, field: str, maximum: int) -> None:
    if type(value) is not int:  # JSON true is no number, 1.5 or 1e3 no integer
        raise InvalidResult(field, f"{value!r} is not an integer")
    if not 0 <= value <= maximum:
        raise InvalidResult(field, f"{value} is not between 0 and {maximum}")


def _dns(dns: object) -> dict:
    dns = _object(dns, "dns")
    if dns.get("domain") is not None and not isinstance(dns["domain"], str):
        raise InvalidResult("dns.domain", "is not a string")
    for key in DNS_LISTS:
        values = _list(dns, key, "dns")
        if values is not None and not all(isinstance(v, str) for v in values):
            raise InvalidResult(f"dns.{key}", "is not a list of strings")
    return dns
