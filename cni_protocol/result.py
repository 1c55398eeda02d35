"""Result conversion between the spec's result shapes.

Plugins build results in the 1.x shape (`ips` without `version`); `emit` turns that into the
request's version, `upgrade` turns a prevResult of any version back into the 1.x shape.
  0.1.0 / 0.2.0        {"ip4": {"ip", "gateway", "routes"}, "ip6": {...}, "dns"}
  0.3.0 / 0.3.1 / 0.4.0 ips[] carry "version": "4" | "6"
  1.0.0 / 1.1.0        ips[] without "version"
"""
from __future__ import annotations

from .errors import CNIError, INCOMPATIBLE_VERSION, DECODE_FAILURE

LEGACY = ("0.1.0", "0.2.0")
WITH_IP_VERSION = ("0.3.0", "0.3.1", "0.4.0")


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


def upgrade(result: dict) -> dict:
    """A result of any supported version (a prevResult) in the 1.x shape."""
    if not isinstance(result, dict):
        raise CNIError(DECODE_FAILURE, "could not decode prevResult: not an object")
    try:
        return _upgrade(result)
    except (KeyError, TypeError, AttributeError) as e:  # a malformed part: code 6, not 999
        raise CNIError(DECODE_FAILURE, "could not decode prevResult: malformed result",
                       f"{type(e).__name__}: {e}") from None


def _upgrade(result: dict) -> dict:
    if "ip4" in result or "ip6" in result:
        out: dict = {"ips": [], "routes": []}
        for key in ("ip4", "ip6"):
            entry = result.get(key)
            if not entry:
                continue
            ip = {"address": entry["ip"]}
            if entry.get("gateway"):
                ip["gateway"] = entry["gateway"]
            out["ips"].append(ip)
            routes = entry.get("routes") or []
            if not isinstance(routes, list):
                raise TypeError(f"{key}.routes is not a list")
            out["routes"].extend(routes)
        if result.get("dns"):
            out["dns"] = result["dns"]
        return out
    out = {k: v for k, v in result.items() if k != "cniVersion"}
    if "ips" in out:
        out["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in out["ips"]]
    return out
