"""Addresses as (family, int): parsing, and printing exactly as Go's net.IP.String() names the
reference's lease files (dotted quad, RFC 5952, IPv4-mapped as IPv4)."""
from __future__ import annotations

import ipaddress
import random

import pytest

from cni_protocol.ip import fmt, network, parse_cidr, parse_ip


@pytest.mark.parametrize("text, expected", [
    ("10.1.2.3", (4, 0x0A010203)),
    (" 10.1.2.3\n", (4, 0x0A010203)),
    ("::ffff:10.1.2.3", (4, 0x0A010203)),
    ("::FFFF:a01:203", (4, 0x0A010203)),
    ("2001:0DB8:0000::0001", (6, 0x20010DB8 << 96 | 1)),
    ("::", (6, 0)),
    ("::1.2.3.4", (6, 0x01020304)),  # IPv4-compatible is not IPv4-mapped
])
def test_parse_ip(text, expected):
    assert parse_ip(text) == expected


@pytest.mark.parametrize("text", ["", "10.1.2", "10.1.2.256", "10.1.2.3/24", "1::2::3", "x",
                                  "10.1.2.3 4", "::ffff:10.1.2.300"])
def test_parse_ip_rejects(text):
    with pytest.raises(ValueError):
        parse_ip(text)


@pytest.mark.parametrize("text, expected", [
    ("10.1.2.0/24", (4, 0x0A010200, 24)),
    ("10.1.2.3/24", (4, 0x0A010203, 24)),
    ("2001:db8::/64", (6, 0x20010DB8 << 96, 64)),
    ("::ffff:10.1.2.0/120", (4, 0x0A010200, 24)),
    ("0.0.0.0/0", (4, 0, 0)),
])
def test_parse_cidr(text, expected):
    assert parse_cidr(text) == expected


@pytest.mark.parametrize("text", ["10.1.2.0", "10.1.2.0/33", "10.1.2.0/-1", "10.1.2.0/x",
                                  "2001:db8::/129", "/24", "10.1.2.0/",
                                  "10.1.2.0/\u0662\u0664", "10.1.2.0/\uff12\uff14",
                                  "10.1.2.0/\u00b2"])  # isdigit(), not ASCII: Go refuses them
def test_parse_cidr_rejects(text):
    with pytest.raises(ValueError):
        parse_cidr(text)


def test_network():
    assert network(4, 0x0A0102FF, 24) == 0x0A010200
    assert network(4, 0x0A0102FF, 0) == 0
    assert network(6, 0x20010DB8 << 96 | 5, 64) == 0x20010DB8 << 96


@pytest.mark.parametrize("family, value, text", [
    (4, 0x0A010203, "10.1.2.3"),
    (6, 0x20010DB8 << 96 | 2, "2001:db8::2"),
    (6, 0x20010DB8_00010000 << 64 | 0xFFFFFFFF_FFFFFFFF, "2001:db8:1:0:ffff:ffff:ffff:ffff"),
    (6, 0, "::"),
    (6, 1, "::1"),
    (6, 0x01020304, "::102:304"),  # glibc says ::1.2.3.4, Go does not
    (6, 0x00010000, "::1:0"),
    (6, 0x20010DB8_00000000_00010000_00000001, "2001:db8::1:0:0:1"),
    (6, 0x20010000_00000001_00000000_00000001, "2001:0:0:1::1"),  # the longer run wins
])
def test_fmt_is_go_net_ip_string(family, value, text):
    assert fmt(family, value) == text


def test_fmt_matches_rfc5952_on_random_addresses():
    rng = random.Random(5952)
    for _ in range(3000):
        groups = [rng.choice([0, 0, 0, 1, 0xFFFF, rng.randrange(1 << 16)]) for _ in range(8)]
        value = int("".join(f"{g:04x}" for g in groups), 16)
        if value >> 32 == 0xFFFF:
            continue  # IPv4-mapped: parse_ip makes those IPv4 before anything prints them
        assert fmt(6, value) == str(ipaddress.IPv6Address(value)), hex(value)
        assert parse_ip(fmt(6, value)) == (6, value)
    for _ in range(300):
        value = rng.randrange(1 << 32)
        assert fmt(4, value) == str(ipaddress.IPv4Address(value))
        assert parse_ip(fmt(4, value)) == (4, value)
