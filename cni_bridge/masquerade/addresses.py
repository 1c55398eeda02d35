"""A pod's address as every backend needs it: the host address and its subnet, packed."""
from __future__ import annotations

from cni_protocol.ip import BITS, fmt, network, parse_cidr


class PodAddress:
    """'10.22.0.2/24': the pod's address (text, packed) and its subnet (text, packed)."""

    __slots__ = ("family", "text", "packed", "bits", "prefixlen", "network_text",
                 "network_packed")

    def __init__(self, cidr: str) -> None:
        family, value, prefixlen = parse_cidr(cidr if "/" in cidr else f"{cidr}/{128 if ':' in cidr else 32}")
        self.family = family
        self.bits = BITS[family]
        self.prefixlen = prefixlen
        self.text = fmt(family, value)
        self.packed = value.to_bytes(self.bits // 8, "big")
        net = network(family, value, prefixlen)
        self.network_text = f"{fmt(family, net)}/{prefixlen}"
        self.network_packed = net.to_bytes(self.bits // 8, "big")

    def __repr__(self) -> str:
        return f"PodAddress({self.text}/{self.prefixlen})"


def parse(cidrs: list[str]) -> list[PodAddress]:
    """Pod addresses from CIDR strings, duplicates dropped; ValueError names a bad one."""
    out: list[PodAddress] = []
    for cidr in cidrs:
        address = PodAddress(cidr)
        if not any(a.packed == address.packed for a in out):
            out.append(address)
    return out


def prefix_network(address: PodAddress) -> tuple[bytes, int]:
    return address.network_packed, address.prefixlen


def contains(prefix: tuple[bytes, int], address: PodAddress) -> bool:
    """Whether `address` lies in (packed network, prefix length)."""
    packed, prefixlen = prefix
    if len(packed) != len(address.packed):
        return False
    shift = address.bits - prefixlen
    return int.from_bytes(packed, "big") >> shift == int.from_bytes(address.packed, "big") >> shift
