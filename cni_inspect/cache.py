"""The runtime's libcni cache: which netns and result each attachment got at ADD.

libcni writes `<cacheDir>/results/<network>-<containerID>-<ifname>` after a successful ADD of
the whole conf list and removes it after DEL: JSON `{"kind": "cniCacheV1", "containerId",
"config" (base64 of the conf list), "ifName", "networkName", "netns", "cniArgs",
"capabilityArgs", "result"}`; libcni before 1.2 (containerd 1.6's) writes no "netns", and the
netns is then the `sandbox` of the result's interface. An entry whose netns is gone is an
attachment no DEL has freed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

DEFAULT_CACHE_DIR = "/var/lib/cni"


@dataclass
class CacheEntry:
    path: str
    network: str
    container_id: str
    ifname: str
    netns: str  # may be "" (libcni caches what the runtime passed)
    result: dict

    @property
    def ips(self) -> list[str]:
        """The CIDRs of the cached result (any result version that has `ips`)."""
        return [ip["address"] for ip in self.result.get("ips") or ()
                if isinstance(ip, dict) and isinstance(ip.get("address"), str)]


def _sandbox(result: dict, ifname: str) -> str:
    """The netns the result's interface `ifname` was put in ("" when it names none)."""
    for interface in result.get("interfaces") or ():
        if isinstance(interface, dict) and interface.get("name") == ifname:
            return interface.get("sandbox") or ""
    return ""


def entries(cache_dir: str, network: str | None = None) -> list[CacheEntry]:
    """Every readable entry (of one network); unreadable files are not attachments."""
    results = os.path.join(cache_dir, "results")
    try:
        names = sorted(os.listdir(results))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(results, name)
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
            result = doc.get("result") or {}
            entry = CacheEntry(path, doc["networkName"], doc["containerId"], doc["ifName"],
                               doc.get("netns") or _sandbox(result, doc["ifName"]), result)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if network is None or entry.network == network:
            found.append(entry)
    return found
