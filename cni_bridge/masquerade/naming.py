"""Names and comments of the netfilter objects the bridge plugin makes, for every backend.

They are the reference plugins' (containernetworking/plugins `pkg/utils/utils.go`,
`pkg/ip/ipmasq_nftables_linux.go`, `pkg/link/spoofcheck.go`), so that either implementation's
DEL and GC find the other's rules, and so that cni-inspect finds both:

- iptables (legacy and nf_tables-backed): chain ``CNI-`` + 24 hex of sha512(network + ID),
  every rule commented ``name: "<network>" id: "<ID>"``; the interface name is not part of it.
- nftables: rules in ``inet cni_plugins_masquerade`` chain ``masq_checks`` commented
  ``<16 hex of sha512(network)>-<16 hex of sha512(ifname:ID)>, net: .., if: .., id: ..``.
- macspoofchk: ``bridge nat`` chains ``cni-br-iface-<ID>-<ifname>`` and ``...-mac``, rules
  commented ``macspoofchk-<ID>-<ifname>``.
"""
from __future__ import annotations

LEGACY, IPTABLES_NFT, NFTABLES = "legacy", "iptables-nft", "nftables"  # the backends

IPTABLES_CHAIN_PREFIX = "CNI-"
IPTABLES_CHAIN_LENGTH = 28  # "CNI-" + 24 hex: within iptables' 29-byte chain names
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}

NFT_TABLE = "cni_plugins_masquerade"  # family inet
NFT_TABLE_COMMENT = "Masquerading for plugins from github.com/containernetworking/plugins"
NFT_MASQ_CHAIN = "masq_checks"
NFT_MASQ_CHAIN_COMMENT = ("Masquerade traffic from certain IPs to any (non-multicast) IP outside "
                          "their subnet")
NFT_POSTROUTING_CHAIN = "postrouting"
NFT_COMMENT_MAX = 128  # bytes, as knftables cuts them

MACSPOOF_TABLE = "nat"  # family bridge
MACSPOOF_CHAIN_PREFIX = "cni-br-iface-"
MACSPOOF_BASE_CHAIN = "PREROUTING"
MACSPOOF_PRIORITY = -300


def _sha512_hex(text: str) -> str:
    try:
        from _sha512 import sha512  # CPython <= 3.11 builtin: avoids hashlib's OpenSSL load
    except ImportError:
        from hashlib import sha512
    return sha512(text.encode()).hexdigest()


def iptables_chain(network: str, container_id: str) -> str:
    """``CNI-`` + 24 hex of sha512(network + container ID) (utils.FormatChainName)."""
    return IPTABLES_CHAIN_PREFIX + _sha512_hex(network + container_id)[:24]


def iptables_comment(network: str, container_id: str) -> str:
    """The comment on every rule of the attachment's chain (utils.FormatComment)."""
    return f'name: "{network}" id: "{container_id}"'


def is_iptables_chain_name(name: str) -> bool:
    """``CNI-`` + 24 lower-case hex: the shape of our chains (portmap's CNI-DN-... is not)."""
    tail = name[len(IPTABLES_CHAIN_PREFIX):]
    return (len(name) == IPTABLES_CHAIN_LENGTH and name.startswith(IPTABLES_CHAIN_PREFIX)
            and all(c in "0123456789abcdef" for c in tail))


def nft_network_prefix(network: str) -> str:
    """What every nftables masquerade comment of the network starts with (hashForNetwork)."""
    return _sha512_hex(network)[:16]


def nft_instance_prefix(network: str, ifname: str, container_id: str) -> str:
    """What the comments of one attachment's rules start with (hashForInstance)."""
    return f"{nft_network_prefix(network)}-{_sha512_hex(ifname + ':' + container_id)[:16]}"


def nft_comment(network: str, ifname: str, container_id: str) -> bytes:
    """The whole comment of the attachment's rules, cut to 128 bytes (commentForInstance).

    Bytes, because the cut may fall inside a multi-byte character, as in the reference."""
    def unquoted(s: str) -> str:
        return s.replace('"', "")

    text = (f"{nft_instance_prefix(network, ifname, container_id)}, net: {unquoted(network)}, "
            f"if: {unquoted(ifname)}, id: {unquoted(container_id)}")
    return text.encode()[:NFT_COMMENT_MAX]


def macspoof_chain(container_id: str, ifname: str) -> str:
    """The attachment's own chain in ``bridge nat``; its MAC check is this + ``-mac``."""
    return f"{MACSPOOF_CHAIN_PREFIX}{container_id}-{ifname}"


def macspoof_comment(container_id: str, ifname: str) -> str:
    return f"macspoofchk-{container_id}-{ifname}"
