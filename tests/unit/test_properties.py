"""Property-based tests (hypothesis) of the pure layers, each against a simple model or the
standard library: the allocator's round-robin order and exhaustion (MemoryStore), range-set
parsing (canonical form, overlaps, size), result conversion between every pair of versions,
CNI_ARGS parsing, and the JSON layer against `json`.

Every test runs a fixed profile: derandomized (the same examples on every run, so CI is
repeatable) and a bounded number of examples, a few seconds in all.
"""
from __future__ import annotations

import ipaddress
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip(
    "hypothesis", reason="hypothesis is not installed: `make venv` (rm .venv/.ready first in an "
    "older venv) installs the pinned version")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from cni_protocol import jsonio  # noqa: E402
from cni_protocol.errors import CNIError  # noqa: E402
from cni_protocol.ip import fmt  # noqa: E402
from cni_protocol.request import parse_cni_args  # noqa: E402
from cni_protocol.result import LEGACY, emit, upgrade  # noqa: E402
from cni_protocol.version import SUPPORTED_VERSIONS  # noqa: E402
from host_local_ipam.allocator import Allocator  # noqa: E402
from host_local_ipam.ranges import Range, RangeSet  # noqa: E402
from host_local_ipam.store import MemoryStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROFILE = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the allocator against a model -------------------------------------------------------------

BLOCK = 16  # each range lives in its own /28 (IPv4) or /124 (IPv6): offsets 0..15


def _block_base(family: int, block: int) -> int:
    if family == 4:
        return int(ipaddress.IPv4Address(f"10.0.{block}.0"))
    return int(ipaddress.IPv6Address(f"2001:db8:0:{block:x}::"))


def _address(family: int, value: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


def _text(family: int, value: int) -> str:
    return str(_address(family, value))


@st.composite
def range_sets(draw) -> tuple[int, list[dict]]:
    """A family and 1-3 ranges, each in its own block (so they never overlap), with random
    bounds (the network and broadcast addresses included: the reference allows them) and a
    gateway that may lie inside the range, outside it, or be the default."""
    family = draw(st.sampled_from([4, 6]))
    blocks = draw(st.lists(st.integers(0, 15), min_size=1, max_size=3, unique=True))
    entries = []
    for block in blocks:
        base = _block_base(family, block)
        lo = draw(st.integers(0, BLOCK - 1))
        hi = draw(st.integers(lo, BLOCK - 1))
        entry = {"subnet": f"{_text(family, base)}/{(32 if family == 4 else 128) - 4}",
                 "rangeStart": _text(family, base + lo), "rangeEnd": _text(family, base + hi)}
        gateway = draw(st.one_of(st.none(), st.integers(0, BLOCK - 1)))
        if gateway is not None:
            entry["gateway"] = _text(family, base + gateway)
        entries.append(entry)
    return family, entries


class Model:
    """The reference's search, written as plainly as possible: every address of every range in
    order, as one cycle, entered after last_reserved_ip when that lies in a range."""

    def __init__(self, family: int, entries: list[dict]) -> None:
        self.family = family
        self.ranges = []  # (start, end, gateway) as ints
        for e in entries:
            net = ipaddress.ip_network(e["subnet"])
            gateway = int(ipaddress.ip_address(e["gateway"])) if "gateway" in e else \
                int(net.network_address) + 1
            self.ranges.append((int(ipaddress.ip_address(e["rangeStart"])),
                                int(ipaddress.ip_address(e["rangeEnd"])), gateway))
        self.cycle = [v for start, end, _ in self.ranges for v in range(start, end + 1)]
        self.gateways = {v for start, end, gw in self.ranges for v in range(start, end + 1)
                         if v == gw}
        self.leases: dict[int, str] = {}
        self.last: str | None = None

    def _last_value(self) -> int | None:
        try:
            ip = ipaddress.ip_address((self.last or "").strip())
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip.version != self.family:
            return None
        return int(ip) if int(ip) in self.cycle else None

    def order(self) -> list[int]:
        last = self._last_value()
        if last is None:
            order = self.cycle
        else:
            i = self.cycle.index(last)
            order = self.cycle[i + 1:] + self.cycle[:i + 1]
        return [v for v in order if v not in self.gateways]

    def range_of(self, value: int) -> tuple[int, int, int] | None:
        return next((r for r in self.ranges if r[0] <= value <= r[1]), None)

    def take(self, cid: str, value: int) -> str:
        self.leases[value] = cid
        self.last = _text(self.family, value)
        return self.last


cids = st.sampled_from([f"c{i}" for i in range(8)])
offsets = st.tuples(st.integers(0, 15), st.integers(0, BLOCK - 1))  # (block, offset)
operations = st.lists(st.one_of(
    st.tuples(st.just("add"), cids),
    st.tuples(st.just("add"), cids),
    st.tuples(st.just("del"), cids),
    st.tuples(st.just("request"), cids, offsets),
    st.tuples(st.just("hint"), st.one_of(offsets, st.sampled_from(["garbage", "", "10.0.0."]))),
), max_size=60)


def _expect_error(a: Allocator, cid: str, requested: tuple[int, int] | None) -> str:
    with pytest.raises(CNIError) as e:
        a.get(cid, "eth0", requested)
    assert e.value.code == 100
    return e.value.msg


@PROFILE
@given(range_sets(), operations)
def test_allocator_follows_the_round_robin_model(spec, ops):
    family, entries = spec
    range_set = RangeSet(entries, "ipam.ranges[0]")
    store = MemoryStore()
    a = Allocator(range_set, store, 0)
    m = Model(family, entries)
    for op in ops:
        if op[0] == "del":
            store.release_by_id(op[1], "eth0")
            m.leases = {v: c for v, c in m.leases.items() if c != op[1]}
        elif op[0] == "hint":
            text = op[1] if isinstance(op[1], str) else \
                _text(family, _block_base(family, op[1][0]) + op[1][1])
            store.last[0] = m.last = text
        else:
            cid = op[1]
            held = [v for v, c in m.leases.items() if c == cid]
            requested = None
            if op[0] == "request":
                requested = (family, _block_base(family, op[2][0]) + op[2][1])
            if held:
                assert _expect_error(a, cid, requested) == (
                    f"{_text(family, held[0])} has been allocated to {cid}, duplicate "
                    "allocation is not allowed")
            elif requested is not None:
                value, text = requested[1], _text(family, requested[1])
                r = m.range_of(value)
                if r is None:
                    assert _expect_error(a, cid, requested) == (
                        f"requested IP address {text} is not in range set {range_set}")
                elif value == r[2]:
                    assert _expect_error(a, cid, requested) == (
                        f"requested ip {text} is subnet's gateway")
                elif value in m.leases:
                    assert _expect_error(a, cid, requested) == (
                        f"requested IP address {text} is not available in range set "
                        f"{range_set}")
                else:
                    assert a.get(cid, "eth0", requested)["address"].split("/")[0] == \
                        m.take(cid, value)
            else:
                free = [v for v in m.order() if v not in m.leases]
                if not free:
                    assert _expect_error(a, cid, None) == (
                        f"no IP addresses available in range set: {range_set}")
                else:
                    assert a.get(cid, "eth0")["address"].split("/")[0] == m.take(cid, free[0])
        assert sorted(store.files) == sorted(_text(family, v) for v in m.leases)
        assert store.last.get(0) == m.last


@PROFILE
@given(range_sets(), st.integers(0, 200))
def test_every_address_once_then_exhausted(spec, start):
    """From any last_reserved_ip, as many ADDs succeed as the set has addresses, each a new
    one and never a gateway; the next one fails."""
    family, entries = spec
    range_set = RangeSet(entries, "ipam.ranges[0]")
    m = Model(family, entries)
    store = MemoryStore()
    store.last[0] = _text(family, m.cycle[start % len(m.cycle)])
    a = Allocator(range_set, store, 0)
    got = [a.get(f"c{i}", "eth0")["address"].split("/")[0] for i in range(range_set.size())]
    assert len(set(got)) == len(got) == len(m.order())
    assert not {ipaddress.ip_address(g) for g in got} & {ipaddress.ip_address(v)
                                                          for v in m.gateways}
    assert _expect_error(a, "last", None).startswith("no IP addresses available")


# --- range sets --------------------------------------------------------------------------------

addresses4 = st.integers(0, 2**32 - 1)
addresses6 = st.integers(0, 2**128 - 1).filter(lambda v: v >> 32 != 0xFFFF)  # not v4-mapped


@PROFILE
@given(st.one_of(st.tuples(st.just(4), addresses4, st.integers(0, 32)),
                 st.tuples(st.just(6), addresses6, st.integers(0, 128))))
def test_a_subnet_is_taken_in_canonical_form_or_refused(spec):
    family, value, prefix = spec
    network = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    net = network((value, prefix), strict=False)
    text = _text(family, value)
    subnet = f"{text}/{prefix}"
    if int(net.network_address) != value:
        with pytest.raises(CNIError, match="has host bits set"):
            Range({"subnet": subnet}, "k")
        return
    if prefix > net.max_prefixlen - 2:
        with pytest.raises(CNIError, match="too small to allocate from"):
            Range({"subnet": subnet}, "k")
        return
    r = Range({"subnet": subnet}, "k")
    last = int(net.broadcast_address) - (1 if family == 4 else 0)
    assert (r.family, r.subnet) == (family, str(net))
    assert (r.start, r.end, r.gateway) == (value + 1, last, value + 1)
    spellings = [subnet.upper(), f"{net.network_address.exploded}/{prefix}"]
    if family == 4:
        spellings.append(f"::ffff:{text}/{prefix + 96}")
    for spelling in spellings:  # the same range, however the subnet is written
        again = Range({"subnet": spelling}, "k")
        assert (again.family, again.subnet, again.start, again.end) == (
            family, str(net), r.start, r.end)


bounds = st.tuples(st.integers(1, 254), st.integers(1, 254)).map(sorted)


@PROFILE
@given(st.lists(bounds, min_size=1, max_size=4), st.one_of(st.none(), st.integers(1, 254)))
def test_ranges_of_a_set_are_refused_exactly_when_they_overlap(spans, gateway):
    entries = [{"subnet": "10.1.2.0/24", "rangeStart": f"10.1.2.{lo}", "rangeEnd": f"10.1.2.{hi}"}
               for lo, hi in spans]
    if gateway is not None:
        entries[0]["gateway"] = f"10.1.2.{gateway}"
    overlap = any(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(spans)
                  for b in spans[:i])
    if overlap:
        with pytest.raises(CNIError, match="overlaps with"):
            RangeSet(entries, "s")
        return
    rs = RangeSet(entries, "s")
    addresses = {v for lo, hi in spans for v in range(lo, hi + 1)}
    gateways = {gateway if i == 0 and gateway is not None else 1
                for i, (lo, hi) in enumerate(spans) if lo <= (gateway if i == 0 and
                                                              gateway is not None else 1) <= hi}
    assert rs.size() == len(addresses) - len(gateways)
    candidates = [v for _, v in Allocator(rs, MemoryStore(), 0).candidates()]
    assert len(candidates) == len(set(candidates)) == rs.size()
    assert str(rs) == ",".join(f"10.1.2.{lo}-10.1.2.{hi}" for lo, hi in spans)
    other = RangeSet([{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.100",
                       "rangeEnd": "10.1.2.120"}], "t")
    assert rs.overlaps(other) == other.overlaps(rs) == bool(addresses & set(range(100, 121)))


# --- result conversion between every pair of versions ------------------------------------------

ip4s = addresses4.map(lambda v: str(ipaddress.IPv4Address(v)))
ip6s = addresses6.map(lambda v: str(ipaddress.IPv6Address(v)))
anyip = st.one_of(ip4s, ip6s)


@st.composite
def cidr_and_gateway(draw, key: str, gateway_key: str) -> dict:
    """{key: a CIDR} and maybe {gateway_key: an address of its family}: an ips entry or a
    route."""
    address = draw(anyip)
    entry = {key: f"{address}/{draw(st.integers(0, 32 if ':' not in address else 128))}"}
    if draw(st.booleans()):
        entry[gateway_key] = draw(ip4s if ":" not in address else ip6s)
    return entry


ip_configs, routes = cidr_and_gateway("address", "gateway"), cidr_and_gateway("dst", "gw")


words = st.text("abcdefghijklmnopqrstuvwxyz.-:", min_size=1, max_size=12)
dns = st.fixed_dictionaries({}, optional={"nameservers": st.lists(anyip, max_size=3),
                                          "domain": words, "search": st.lists(words, max_size=3),
                                          "options": st.lists(words, max_size=3)})
results = st.fixed_dictionaries({}, optional={
    "ips": st.lists(ip_configs, max_size=3), "routes": st.lists(routes, max_size=4),
    "dns": dns})


def _family(cidr: str) -> str:
    return "6" if ":" in cidr else "4"


def carried(result: dict, version: str) -> dict:
    """What a result of `version` keeps of a 1.x result, back in the 1.x shape."""
    if version not in LEGACY:
        return {k: v for k, v in result.items() if v}
    ips = sorted(result.get("ips", []), key=lambda ip: _family(ip["address"]))
    families = [_family(ip["address"]) for ip in ips]
    out = {"ips": ips,  # routes of a family without an address have nowhere to go
           "routes": [{k: r[k] for k in ("dst", "gw") if k in r}
                      for family in families for r in result.get("routes", [])
                      if _family(r["dst"]) == family]} if ips else {}
    if result.get("dns"):
        out["dns"] = result["dns"]
    return out


def _legacy_refuses(result: dict) -> bool:
    families = [_family(ip["address"]) for ip in result.get("ips", [])]
    return len(families) != len(set(families))


@PROFILE
@given(results)
def test_result_conversion_between_every_pair_of_versions(result):
    for v1 in SUPPORTED_VERSIONS:
        if v1 in LEGACY and _legacy_refuses(result):
            with pytest.raises(CNIError) as e:
                emit(result, v1)
            assert e.value.code == 1
            continue
        sent = emit(result, v1)
        assert sent["cniVersion"] == v1
        assert all(sent[k] for k in sent)  # no empty parts
        if v1 not in LEGACY:
            assert all(("version" in ip) == (v1 < "1.0.0") for ip in sent.get("ips", []))
        prev = upgrade(json.loads(json.dumps(sent)))  # as it reaches the next plugin
        assert prev == carried(result, v1)
        for v2 in SUPPORTED_VERSIONS:  # and on to a plugin of any version
            if v2 in LEGACY and _legacy_refuses(prev):
                continue
            assert emit(prev, v2) == emit(carried(result, v1), v2)
            assert upgrade(emit(prev, v2)) == carried(prev, v2)


# --- CNI_ARGS ----------------------------------------------------------------------------------

keys = st.text(st.characters(blacklist_characters="=;\0", blacklist_categories=["Cs"]),
               min_size=1, max_size=10).filter(lambda k: k != "IgnoreUnknown")
values = st.text(st.characters(blacklist_characters=";\0", blacklist_categories=["Cs"]),
                 max_size=10)


@PROFILE
@given(st.lists(st.tuples(keys, values), max_size=6), st.lists(st.integers(0, 8), max_size=3),
       st.sampled_from([None, "1", "true", "TRUE", "0", "false"]))
def test_cni_args_parse_as_a_model(pairs, empty_at, ignore):
    segments = [f"{k}={v}" for k, v in pairs]
    for i in empty_at:  # empty segments ("A=1;;B=2;") are nothing
        segments.insert(min(i, len(segments)), "")
    if ignore is not None:
        segments.insert(len(segments) // 2, f"IgnoreUnknown={ignore}")
    raw = ";".join(segments)
    expected = dict(pairs)  # the last of a key wins
    assert parse_cni_args(raw, tuple(expected)) == expected
    if ignore in ("1", "true", "TRUE"):
        assert parse_cni_args(raw, ()) == expected
    elif expected:
        with pytest.raises(CNIError) as e:
            parse_cni_args(raw, ())
        assert (e.value.code, e.value.msg) == (4, f"invalid CNI_ARGS: unknown args "
                                                  f"{list(expected)}")


@PROFILE
@given(st.text(st.sampled_from("AB=;IgnoreUnknown01truefalse \t\udcff"), max_size=30))
def test_any_cni_args_are_a_dict_or_code_4(raw):
    try:
        args = parse_cni_args(raw, ("A", "B"))
    except CNIError as e:
        assert e.code == 4 and e.msg.startswith("invalid CNI_ARGS: ")
    else:
        assert set(args) <= {"A", "B"}


# --- the JSON layer against json ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                       max_size=4),
    max_leaves=20)


def _same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN and -0.0 told from 0.0 (json keeps both)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) ==
                                                      math.copysign(1, b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _outcome(loads, data) -> tuple[bool, object]:
    try:
        return True, loads(data)
    except (ValueError, RecursionError):  # json raises RecursionError for deep nesting
        return False, None


def _agree(text: str) -> None:
    """jsonio accepts what json accepts, with the same value, and rejects what it rejects
    (always with a ValueError, so the plugins answer code 6)."""
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8, stdin cannot carry it
        return
    ok_json, want = _outcome(json.loads, text)
    try:
        got = jsonio.loads(data)
    except ValueError:
        assert not ok_json, (text, want)
        return
    assert ok_json and _same(got, want), (text, got, want)


spacing = st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", "\t:\r")])


@PROFILE
@given(json_values, spacing, st.booleans(), st.sampled_from(["", " ", "\n\t", "\r\n "]))
def test_jsonio_loads_every_document_as_json_does(value, seps, ascii_only, pad):
    text = pad + json.dumps(value, separators=seps, ensure_ascii=ascii_only) + pad
    _agree(text)


blanks = st.text(st.sampled_from(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000\ufeff"), max_size=3)


@PROFILE
@given(json_values, blanks, blanks)
def test_jsonio_takes_only_json_whitespace_around_a_document(value, before, after):
    """Python's str.strip() would also take \\x0b, \\x85, \\u2028 ...: json does not."""
    _agree(before + json.dumps(value) + after)


@PROFILE
@given(json_values, st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(
    ['', '{', '}', '[', ']', '"', ',', ':', '\\', '0', '-', '.', 'e', 'n', ' ', '\x00', '\x1f',
     '\ufeff', '\u2028', 'NaN', 'Infinity', '\\u', '\\ud800', '1' * 30])), min_size=1,
    max_size=4))
def test_jsonio_rejects_every_broken_document_json_rejects(value, edits):
    """Documents with a few characters replaced or inserted: broken ones mostly."""
    text = json.dumps(value)
    for at, piece in edits:
        at %= len(text) + 1
        text = text[:at] + piece + text[at + (at % 2):]  # odd positions replace, even insert
    _agree(text)


@PROFILE
@given(st.binary(max_size=40))
def test_jsonio_accepts_no_bytes_json_rejects(data):
    """Raw stdin: whatever jsonio accepts, json accepts with the same value. (json also takes
    UTF-16/32 and a UTF-8 BOM; jsonio, like the Go plugins, only UTF-8.)"""
    ok_json, want = _outcome(json.loads, data)
    try:
        got = jsonio.loads(data)
    except ValueError:
        return
    assert ok_json and _same(got, want), (data, got, want)


@PROFILE
@given(json_values)
def test_jsonio_dumps_is_json_dumps(value):
    assert jsonio.dumps(value) == json.dumps(value)
    assert _same(jsonio.loads(jsonio.dumps(value).encode()), value)


@settings(max_examples=3, derandomize=True, deadline=None, database=None)
@given(st.lists(st.one_of(json_values.map(json.dumps), st.text("{}[]\":,0123456789.e-ntu \\",
                                                              max_size=12)),
                min_size=50, max_size=50))
def test_jsonio_agrees_in_a_fresh_interpreter(texts):
    """Where json.decoder was never imported, as in the plugins: a syntax error inside a
    document takes another path through the C scanner there."""
    texts = [t for t in texts if "\0" not in t]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from cni_protocol import jsonio\n"
            "for doc in sys.stdin.buffer.read().split(b'\\0'):\n"
            "    try:\n"
            "        print(repr(jsonio.loads(doc)))\n"
            "    except ValueError:\n"
            "        print('ValueError')\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                         input="\0".join(texts).encode(), capture_output=True, check=True)
    got = out.stdout.decode().splitlines()
    want = []
    for text in texts:
        ok, value = _outcome(json.loads, text)
        want.append(repr(value) if ok else "ValueError")
    assert got == want
