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


class JumpOwner:
    """Which POSTROUTING jumps of a container's iptables chain are one attachment's.

    The chain is the container's on the network, shared by all its interfaces there; a jump is
    one address's (`-s <pod IP> -j CNI-...`). `mine`: the attachment's addresses, when known;
    else `others`: those its container's other attachments hold (their jumps stay, the rest is
    this attachment's); with neither, every jump is, as in the reference."""

    __slots__ = ("mine", "others")

    def __init__(self, mine: list[PodAddress] | None, others: set[bytes] = frozenset()) -> None:
        self.mine, self.others = mine, others

    def owns(self, src: tuple[bytes, int] | None) -> bool:
        if self.mine is not None:
            return src is not None and any(contains(src, a) for a in self.mine)
        return src is None or src[0] not in self.others


def stale_jump(chain: str | None, src: tuple[bytes, int] | None, bits: int,
               keep: dict[str, set[bytes] | None]) -> bool:
    """GC: a jump to a kept chain from a host address that no valid attachment holds
    (`keep[chain]`: the valid attachments' addresses; None: every jump stays)."""
    sources = keep.get(chain) if chain else None
    return sources is not None and src is not None and src[1] == bits and src[0] not in sources
