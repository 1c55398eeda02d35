"""The network conf a pod is judged by: a conf file, or the first of a conf dir as runtimes pick it.

containerd (go-cni, max_conf_num 1) and `ctr run --cni` use the first file of the conf dir in
sorted order with a libcni extension; a .conf holds one plugin, a .conflist a chain of them. Only
the chain's `bridge` plugin and its host-local IPAM matter here.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field

from host_local_ipam.store import DEFAULT_DATA_DIR

from .errors import InspectError

CONF_EXTENSIONS = (".conf", ".conflist", ".json")  # libcni ConfFiles
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BRIDGE = "cni0"  # the bridge plugin's

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Range:
    subnet: Network
    gateway: Address


@dataclass
class NetworkConf:
    path: str
    network: str
    plugin_types: list[str]
    bridge: dict | None  # the chain's bridge plugin, None if it has none
    ranges: list[Range] = field(default_factory=list)  # every range of every range set
    data_dir: str = DEFAULT_DATA_DIR

    def flag(self, key: str) -> bool:
        return bool(self.bridge and self.bridge.get(key) is True)

    @property
    def bridge_name(self) -> str:
        return (self.bridge or {}).get("bridge") or DEFAULT_BRIDGE

    @property
    def is_gateway(self) -> bool:
        return self.flag("isGateway") or self.flag("isDefaultGateway")

    @property
    def ipam(self) -> dict:
        ipam = (self.bridge or {}).get("ipam")
        return ipam if isinstance(ipam, dict) else {}

    @property
    def uses_host_local(self) -> bool:
        return self.ipam.get("type") == "host-local"

    def range_of(self, ip: Address) -> Range | None:
        return next((r for r in self.ranges if ip in r.subnet), None)

    def default_gateway(self, ip: Address) -> Address | None:
        """The gateway of the pod's default route for ip's family, None when it gets none.

        isDefaultGateway adds one via the range's gateway; an IPAM route to 0.0.0.0/0 (::/0)
        goes via its own gw, or the range's gateway when it has none (ipam.ConfigureIface).
        """
        default = ipaddress.ip_network("0.0.0.0/0" if ip.version == 4 else "::/0")
        rng = self.range_of(ip)
        for route in self.ipam.get("routes") or ():
            try:
                if ipaddress.ip_network(route.get("dst", "")) == default:
                    gw = route.get("gw")
                    return ipaddress.ip_address(gw) if gw else (rng.gateway if rng else None)
            except (ValueError, AttributeError):
                continue
        if self.flag("isDefaultGateway") and rng:
            return rng.gateway
        return None

    def summary(self) -> dict:
        """What --json says about the conf."""
        return {"path": self.path, "network": self.network, "plugins": self.plugin_types,
                "bridge": self.bridge_name if self.bridge else None,
                "is_gateway": self.is_gateway, "ip_masq": self.flag("ipMasq"),
                "ip_masq_backend": (self.bridge or {}).get("ipMasqBackend"),
                "macspoofchk": self.flag("macspoofchk"),
                "ipam": self.ipam.get("type"), "data_dir": self.data_dir,
                "subnets": [str(r.subnet) for r in self.ranges]}


def _ranges(ipam: dict) -> list[Range]:
    sets = list(ipam.get("ranges") or ())
    if ipam.get("subnet"):  # the legacy single range, prepended as its own set
        sets.insert(0, [{k: ipam[k] for k in ("subnet", "gateway") if k in ipam}])
    ranges = []
    for range_set in sets:
        for item in range_set if isinstance(range_set, list) else ():
            try:
                subnet = ipaddress.ip_network(item["subnet"])
                gateway = ipaddress.ip_address(item.get("gateway") or subnet.network_address + 1)
            except (KeyError, TypeError, ValueError):
                continue  # the plugin refuses it; nothing of it can be on the node
            ranges.append(Range(subnet, gateway))
    return ranges


def load(path: str) -> NetworkConf:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise InspectError(f"no network conf {path}") from None
    except (OSError, ValueError) as e:
        raise InspectError(f"cannot read network conf {path}: {e}") from None
    if not isinstance(doc, dict) or not doc.get("name"):
        raise InspectError(f"network conf {path} has no network name")
    plugins = doc["plugins"] if isinstance(doc.get("plugins"), list) else [doc]
    plugins = [p for p in plugins if isinstance(p, dict)]
    bridge = next((p for p in plugins if p.get("type") == "bridge"), None)
    conf = NetworkConf(path, doc["name"], [str(p.get("type")) for p in plugins], bridge)
    if bridge is not None:
        conf.ranges = _ranges(conf.ipam)
        conf.data_dir = conf.ipam.get("dataDir") or DEFAULT_DATA_DIR
    return conf


def conf_files(conf_dir: str) -> list[str]:
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        raise InspectError(f"no network conf: conf dir {conf_dir} does not exist") from None
    except OSError as e:
        raise InspectError(f"cannot read conf dir {conf_dir}: {e}") from None
    return [os.path.join(conf_dir, n) for n in names if n.endswith(CONF_EXTENSIONS)]


def first_conf(conf_dir: str) -> NetworkConf:
    """The conf a runtime uses: the first file of the conf dir."""
    files = conf_files(conf_dir)
    if not files:
        raise InspectError(f"no network conf in {conf_dir}")
    return load(files[0])


def bridge_conf(conf: NetworkConf, data_dir: str | None) -> NetworkConf:
    """The conf, refused when it has no bridge plugin; --data-dir overrides its dataDir."""
    if conf.bridge is None:
        raise InspectError(f"network {conf.network!r} ({conf.path}) has no bridge plugin "
                           f"(plugins: {', '.join(conf.plugin_types)}): not a bridge network")
    if data_dir:
        conf.data_dir = data_dir
    return conf
