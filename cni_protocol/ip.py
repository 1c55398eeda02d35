"""IP addresses as (family, int), parsed and printed by the C library.

The ipaddress module costs ~5 ms to import (functools, collections) in a process that lives
for ~20 ms. Printing matches Go's net.IP.String(), which names the reference's lease files:
dotted quad for IPv4, RFC 5952 for IPv6, IPv4-mapped IPv6 as plain IPv4.
"""
from __future__ import annotations

import _socket

_AF = {4: _socket.AF_INET, 6: _socket.AF_INET6}
BITS = {4: 32, 6: 128}


def parse_ip(text: str) -> tuple[int, int]:
    """(family, value); an IPv4-mapped IPv6 address counts as IPv4, as in the Go store."""
    text = text.strip()
    family = 6 if ":" in text else 4
    try:
        value = int.from_bytes(_socket.inet_pton(_AF[family], text), "big")
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IP address") from None
    if family == 6 and value >> 32 == 0xFFFF:
        return 4, value & 0xFFFFFFFF
    return family, value


def parse_cidr(text: str) -> tuple[int, int, int]:
    """(family, address value, prefix length) of 'address/prefix'."""
    address, sep, prefix = text.partition("/")
    if not sep or not (prefix.isascii() and prefix.isdigit()):  # isdigit alone takes '²', '٣'
        raise ValueError(f"{text!r} is not a CIDR (address/prefix length)")
    family, value = parse_ip(address)
    prefixlen = int(prefix)
    if ":" in address and family == 4:  # ::ffff:a.b.c.d/120 is an IPv4 /24
        prefixlen -= 96
    if not 0 <= prefixlen <= BITS[family]:
        raise ValueError(f"{text!r} has an invalid prefix length")
    return family, value, prefixlen


def network(family: int, value: int, prefixlen: int) -> int:
    """The address with its host bits cleared."""
    host_bits = BITS[family] - prefixlen
    return value >> host_bits << host_bits


def fmt(family: int, value: int) -> str:
    if family == 4:
        return _socket.inet_ntop(_socket.AF_INET, value.to_bytes(4, "big"))
    packed = value.to_bytes(16, "big")
    if packed[:12] == bytes(12) and packed[12:14] != b"\0\0":
        # glibc prints ::a.b.c.d (RFC 4291's deprecated IPv4-compatible form); Go does not.
        return f"::{value >> 16 & 0xFFFF:x}:{value & 0xFFFF:x}"
    return _socket.inet_ntop(_socket.AF_INET6, packed)
