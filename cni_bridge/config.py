"""The bridge plugin's network conf: every key of the reference bridge, validated up front so
that a bad conf fails before anything is created."""
from __future__ import annotations

from cni_protocol.errors import CNIError
from cni_protocol.request import Request, check_ifname
from cni_protocol.skel import config_error

DEFAULT_BRIDGE = "cni0"
KNOWN_ARGS = ("MAC",)
MIN_MTU, MAX_MTU = 68, 65535  # what the kernel accepts for a veth (IPv4's minimum, ETH_MAX_MTU)
_HEX = frozenset("0123456789abcdef")


class BridgeConfig:
    """What every verb reads. Checks that only matter when an attachment is made are in
    validate_for_add: DEL must clean up even after an ADD that a bad conf made fail, as the
    reference's DEL does (it only decodes the conf)."""

    __slots__ = ("bridge", "is_gateway", "is_default_gateway", "force_address", "ip_masq",
                 "mtu", "hairpin_mode", "promisc_mode", "vlan", "vlan_trunk",
                 "preserve_default_vlan", "enable_dad", "port_isolation",
                 "disable_container_interface", "macspoofchk", "ip_masq_backend", "ipam_type",
                 "dns", "mac", "mac_key")

    def __init__(self, req: Request) -> None:
        conf = req.conf
        self.bridge = _get(conf, "bridge", str, DEFAULT_BRIDGE)
        self.is_default_gateway = _get(conf, "isDefaultGateway", bool, False)
        self.is_gateway = _get(conf, "isGateway", bool, False) or self.is_default_gateway
        self.force_address = _get(conf, "forceAddress", bool, False)
        self.ip_masq = _get(conf, "ipMasq", bool, False)
        self.mtu = _get(conf, "mtu", int, 0)
        self.hairpin_mode = _get(conf, "hairpinMode", bool, False)
        self.promisc_mode = _get(conf, "promiscMode", bool, False)
        self.vlan = _get(conf, "vlan", int, 0)
        if not 0 <= self.vlan <= 4094:
            raise config_error("vlan", f"invalid VLAN ID {self.vlan} (must be between 0 and 4094)",
                               self.vlan)
        self.vlan_trunk = _vlan_trunk(conf.get("vlanTrunk"))
        if self.vlan and self.vlan_trunk:
            raise config_error("vlanTrunk", "cannot set vlan and vlanTrunk at the same time")
        self.preserve_default_vlan = _get(conf, "preserveDefaultVlan", bool, False)
        self.enable_dad = _get(conf, "enabledad", bool, False)
        self.port_isolation = _get(conf, "portIsolation", bool, False)
        self.disable_container_interface = _get(conf, "disableContainerInterface", bool, False)
        self.macspoofchk = _get(conf, "macspoofchk", bool, False)
        # Read only with ipMasq, as the reference reads it; None: unset, the host decides.
        self.ip_masq_backend = _get(conf, "ipMasqBackend", str, None) if self.ip_masq else None
        ipam = conf.get("ipam") or {}
        if not isinstance(ipam, dict):
            raise config_error("ipam", "must be an object", ipam)
        self.ipam_type = _get(ipam, "type", str, "", key="ipam.type")
        if self.ipam_type and ("/" in self.ipam_type or self.ipam_type in (".", "..")):
            raise config_error("ipam.type", "must be a plugin name, not a path", self.ipam_type)
        self.dns = _dns_override(conf.get("dns"))
        self.mac, self.mac_key = _requested_mac(req)

    def validate_for_add(self) -> None:
        """Code 7 for values an attachment cannot be made with. ADD and CHECK call it."""
        if "\0" in self.bridge:
            raise config_error("bridge", "contains a NUL character", self.bridge)
        if not _utf8(self.bridge):
            raise config_error("bridge", "is not valid UTF-8 (a lone surrogate)", self.bridge)
        try:
            check_ifname(self.bridge)
        except CNIError as e:
            raise config_error("bridge", e.msg.split(": ", 1)[-1], self.bridge) from None
        if self.mtu and not MIN_MTU <= self.mtu <= MAX_MTU:
            raise config_error("mtu", f"must be between {MIN_MTU} and {MAX_MTU} (or 0: the "
                               "kernel's default)", self.mtu)
        if self.hairpin_mode and self.promisc_mode:
            raise config_error("hairpinMode", "cannot set hairpin mode and promiscuous mode "
                               "(promiscMode) at the same time")
        if self.disable_container_interface and self.ipam_type:
            raise config_error("disableContainerInterface",
                               "cannot use IPAM when disableContainerInterface is set")
        if self.ip_masq_backend not in (None, "iptables", "nftables"):
            raise config_error("ipMasqBackend", 'unknown ipmasq backend: must be "iptables" '
                               'or "nftables" (or unset)', self.ip_masq_backend)
        if self.mac:
            self.mac = _canonical_mac(self.mac, self.mac_key)

    @property
    def vlan_filtering(self) -> bool:
        return bool(self.vlan or self.vlan_trunk)


def _get(conf: dict, name: str, kind: type, default, key: str | None = None):
    value = conf.get(name, default)
    if value is None:
        return default
    # JSON true is not an int here, and an int is not a bool.
    if type(value) is not kind:
        raise config_error(key or name, f"must be a {'boolean' if kind is bool else kind.__name__}",
                           value)
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _vlan_trunk(entries: object) -> list[int]:
    """Sorted unique VLAN ids from [{id} | {minID, maxID}]."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise config_error("vlanTrunk", "must be a list of {id} or {minID, maxID}", entries)
    vids: set[int] = set()
    for i, item in enumerate(entries):
        key = f"vlanTrunk[{i}]"
        if not isinstance(item, dict):
            raise config_error(key, "must be {id} or {minID, maxID}", item)
        low, high = item.get("minID"), item.get("maxID")
        if (low is None) != (high is None):
            raise config_error(key, "minID and maxID must be set together", item)
        if low is not None:
            for name, v in (("minID", low), ("maxID", high)):
                if type(v) is not int or not 1 <= v <= 4094:
                    raise config_error(f"{key}.{name}", "must be between 1 and 4094", v)
            if high < low:
                raise config_error(key, "minID is greater than maxID", item)
            vids.update(range(low, high + 1))
        if item.get("id") is not None:
            vid = item["id"]
            if type(vid) is not int or not 1 <= vid <= 4094:
                raise config_error(f"{key}.id", "must be between 1 and 4094", vid)
            vids.add(vid)
    return sorted(vids)


def _dns_override(dns: object) -> dict | None:
    """The conf's `dns` if it gives any list (an empty one too) or a domain: it then replaces
    what IPAM returned, its empty fields left out (the reference's dnsConfSet). None: IPAM's
    stands."""
    if dns is None:
        return None
    if not isinstance(dns, dict):
        raise config_error("dns", "must be an object", dns)
    for key in ("nameservers", "search", "options"):
        value = dns.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            raise config_error(f"dns.{key}", "must be a list of strings", value)
    if dns.get("domain") is not None and not isinstance(dns["domain"], str):
        raise config_error("dns.domain", "must be a string", dns["domain"])
    if all(dns.get(key) is None for key in ("nameservers", "search", "options")) \
            and not dns.get("domain"):
        return None
    return {k: dns[k] for k in ("nameservers", "domain", "search", "options") if dns.get(k)}


def _requested_mac(req: Request) -> tuple[str, str]:
    """(MAC, where it came from): CNI_ARGS MAC < args.cni.mac < runtimeConfig.mac."""
    mac, key = req.args.get("MAC", ""), "CNI_ARGS MAC"
    args = req.conf.get("args")
    cni_args = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni_args, dict) and cni_args.get("mac"):
        mac, key = cni_args["mac"], "args.cni.mac"
    if req.runtime_config.get("mac"):
        mac, key = req.runtime_config["mac"], "runtimeConfig.mac"
    return str(mac), key


def _canonical_mac(mac: str, key: str) -> str:
    """aa:bb:cc:dd:ee:ff, from that or AA-BB-CC-DD-EE-FF (as Go's net.ParseMAC reads them)."""
    octets = mac.lower().replace("-", ":").split(":")
    if len(octets) != 6 or any(len(o) != 2 or not set(o) <= _HEX for o in octets):
        raise config_error(key, "is not a MAC address like 0a:58:0a:f4:00:02", mac)
    if int(octets[0], 16) & 1:
        raise config_error(key, "is a multicast MAC address", mac)
    return ":".join(octets)
