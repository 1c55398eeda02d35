"""Range, range-set and `ipam` validation: defaults, set order (and so last_reserved_ip.N),
requested addresses, and code 7 errors that name the offending key."""
from __future__ import annotations

import pytest

from cni_protocol.errors import CNIError
from cni_protocol.request import Request
from host_local_ipam.config import DEFAULT_DATA_DIR, IPAMConfig
from host_local_ipam.plugin import KNOWN_ARGS
from cni_protocol.ip import fmt
from host_local_ipam.ranges import Range, RangeSet

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def request(ipam: object, version: str = "1.0.0", cni_args: str = "", **top: object) -> Request:
    conf = {"cniVersion": version, "name": "net1", "type": "bridge", "ipam": ipam, **top}
    return Request("ADD", dict(ENV, CNI_ARGS=cni_args), b"", conf, version, KNOWN_ARGS)


def config(ipam: object, **kw: object) -> IPAMConfig:
    return IPAMConfig(request(ipam, **kw))


def config_error(ipam: object, **kw: object) -> str:
    with pytest.raises(CNIError) as e:
        config(ipam, **kw)
    assert e.value.code == 7, e.value.msg
    return e.value.msg


def one_range(**entry: object) -> dict:
    return {"type": "host-local", "ranges": [[entry]]}


def bounds(r: Range) -> tuple[str, str, str]:
    return fmt(r.family, r.start), fmt(r.family, r.end), fmt(r.family, r.gateway)


# --- defaults ------------------------------------------------------------------------------

def test_ipv4_defaults():
    r = config(one_range(subnet="10.1.2.0/24")).range_sets[0].ranges[0]
    assert (r.family, r.subnet, r.prefixlen) == (4, "10.1.2.0/24", 24)
    assert bounds(r) == ("10.1.2.1", "10.1.2.254", "10.1.2.1")


def test_ipv6_defaults_end_at_the_last_address():
    r = config(one_range(subnet="2001:db8:1::/64")).range_sets[0].ranges[0]
    assert bounds(r) == ("2001:db8:1::1", "2001:db8:1:0:ffff:ffff:ffff:ffff", "2001:db8:1::1")


def test_explicit_bounds_and_gateway():
    r = config(one_range(subnet="10.1.2.0/24", rangeStart="10.1.2.10", rangeEnd="10.1.2.20",
                         gateway="10.1.2.254")).range_sets[0].ranges[0]
    assert bounds(r) == ("10.1.2.10", "10.1.2.20", "10.1.2.254")


def test_smallest_allocatable_subnets():
    assert bounds(Range({"subnet": "10.1.2.4/30"}, "k")) == ("10.1.2.5", "10.1.2.6", "10.1.2.5")
    assert RangeSet([{"subnet": "10.1.2.4/30"}], "k").size() == 1
    assert bounds(Range({"subnet": "2001:db8::/126"}, "k")) == ("2001:db8::1", "2001:db8::3",
                                                                "2001:db8::1")


def test_ipv4_mapped_subnet_is_ipv4():
    r = Range({"subnet": "::ffff:10.1.2.0/120"}, "k")
    assert (r.family, r.subnet) == (4, "10.1.2.0/24")
    assert bounds(r) == ("10.1.2.1", "10.1.2.254", "10.1.2.1")




def test_data_dir_routes_and_resolv_conf():
    routes = [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.2.254"}]
    c = config({"type": "host-local", "subnet": "10.1.2.0/24", "routes": routes,
                "resolvConf": "/etc/resolv.conf"})
    assert (c.data_dir, c.routes, c.resolv_conf) == (DEFAULT_DATA_DIR, routes, "/etc/resolv.conf")
    assert DEFAULT_DATA_DIR == "/var/lib/cni/networks"
    assert config(one_range(subnet="10.1.2.0/24") | {"dataDir": "/run/x"}).data_dir == "/run/x"


# --- the order of range sets is the N of last_reserved_ip.N ----------------------------------

def test_set_order_runtime_ip_ranges_then_legacy_then_ranges():
    c = config({"type": "host-local", "subnet": "10.2.0.0/24", "rangeStart": "10.2.0.100",
                "gateway": "10.2.0.254", "ranges": [[{"subnet": "10.3.0.0/24"}],
                                                    [{"subnet": "2001:db8::/64"}]]},
               runtimeConfig={"ipRanges": [[{"subnet": "10.1.0.0/24"}]]})
    assert [s.label for s in c.range_sets] == ["runtimeConfig.ipRanges[0]", "ipam.subnet",
                                               "ipam.ranges[0]", "ipam.ranges[1]"]
    assert [str(s) for s in c.range_sets] == ["10.1.0.1-10.1.0.254", "10.2.0.100-10.2.0.254",
                                              "10.3.0.1-10.3.0.254",
                                              "2001:db8::1-2001:db8::ffff:ffff:ffff:ffff"]
    assert bounds(c.range_sets[1].ranges[0]) == ("10.2.0.100", "10.2.0.254", "10.2.0.254")


def test_more_than_one_address_per_family_needs_0_3_0():
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}],
                                             [{"subnet": "10.2.0.0/24"}]]}
    for version in ("0.1.0", "0.2.0"):
        assert config_error(ipam, version=version) == (
            f"invalid config: cniVersion: CNI version {version} does not support more than 1 "
            "address per family")
    assert len(config(ipam, version="0.3.0").range_sets) == 2
    dual = {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}],
                                             [{"subnet": "2001:db8::/64"}]]}
    assert len(config(dual, version="0.2.0").range_sets) == 2


# --- code 7, naming the key --------------------------------------------------------------------

@pytest.mark.parametrize("entry, msg", [
    ({"subnet": "10.1.2.1/24"}, "invalid config: ipam.ranges[0][0].subnet: has host bits set: "
     "for a mask of length 24 the network address is 10.1.2.0"),
    ({"subnet": "2001:db8::1/64"}, "invalid config: ipam.ranges[0][0].subnet: has host bits "
     "set: for a mask of length 64 the network address is 2001:db8::"),
    ({"subnet": "::ffff:10.1.2.5/120"}, "invalid config: ipam.ranges[0][0].subnet: has host bits "
     "set: for a mask of length 24 the network address is 10.1.2.0"),
    ({"subnet": "10.1.2.0/31"}, "invalid config: ipam.ranges[0][0].subnet: network 10.1.2.0/31 "
     "is too small to allocate from"),
    ({"subnet": "10.1.2.1/32"}, "invalid config: ipam.ranges[0][0].subnet: network 10.1.2.1/32 "
     "is too small to allocate from"),
    ({"subnet": "2001:db8::/127"}, "invalid config: ipam.ranges[0][0].subnet: network "
     "2001:db8::/127 is too small to allocate from"),
    ({"subnet": "2001:db8::/128"}, "invalid config: ipam.ranges[0][0].subnet: network "
     "2001:db8::/128 is too small to allocate from"),
    ({"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.5"}, "invalid config: "
     "ipam.ranges[0][0].rangeStart: 10.1.3.5 is not in network 10.1.2.0/24"),
    ({"subnet": "10.1.2.0/24", "rangeEnd": "10.1.1.5"}, "invalid config: "
     "ipam.ranges[0][0].rangeEnd: 10.1.1.5 is not in network 10.1.2.0/24"),
    ({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.50", "rangeEnd": "10.1.2.40"},
     "invalid config: ipam.ranges[0][0].rangeStart: 10.1.2.50 is after rangeEnd 10.1.2.40"),
    ({"subnet": "10.1.2.0/24", "rangeStart": "nope"}, "invalid config: "
     "ipam.ranges[0][0].rangeStart: is not an IP address"),
    ({"subnet": "10.1.2.0/24", "gateway": "2001:db8::1"}, "invalid config: "
     "ipam.ranges[0][0].gateway: is not of the subnet's address family"),
    ({"rangeStart": "10.1.2.5"}, "invalid config: ipam.ranges[0][0].subnet: is required (a CIDR "
     "such as 10.200.0.0/24)"),
])
def test_range_errors_name_the_key(entry, msg):
    assert config_error(one_range(**entry)) == msg


def test_subnet_that_is_not_a_cidr():
    assert config_error(one_range(subnet="10.1.2.0/33")).startswith(
        "invalid config: ipam.ranges[0][0].subnet: is not a CIDR")
    assert config_error(one_range(subnet=24)).startswith(
        "invalid config: ipam.ranges[0][0].subnet: is required")


def test_legacy_range_errors_name_the_top_level_key():
    assert config_error({"type": "host-local", "subnet": "10.1.2.3/24"}).startswith(
        "invalid config: ipam.subnet: has host bits set")
    assert config_error({"type": "host-local", "subnet": "10.1.2.0/24",
                         "rangeStart": "10.1.3.1"}) == (
        "invalid config: ipam.rangeStart: 10.1.3.1 is not in network 10.1.2.0/24")


def test_overlapping_ranges_in_a_set():
    assert config_error({"type": "host-local", "ranges": [[
        {"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.128/25"}]]}) == (
        "invalid config: ipam.ranges[0][1]: range 10.1.2.129-10.1.2.254 overlaps with "
        "ipam.ranges[0][0] (10.1.2.1-10.1.2.254)")


def test_disjoint_ranges_of_one_subnet_are_fine():
    c = config({"type": "host-local", "ranges": [[
        {"subnet": "10.1.2.0/24", "rangeEnd": "10.1.2.100"},
        {"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.101"}]]})
    assert str(c.range_sets[0]) == "10.1.2.1-10.1.2.100,10.1.2.101-10.1.2.254"


def test_overlapping_range_sets():
    assert config_error({"type": "host-local", "ranges": [
        [{"subnet": "10.1.0.0/16"}], [{"subnet": "10.1.2.0/24"}]]}) == (
        "invalid config: ipam.ranges[1]: range set overlaps with ipam.ranges[0]")
    assert config_error({"type": "host-local", "subnet": "10.1.2.0/24"},
                        runtimeConfig={"ipRanges": [[{"subnet": "10.1.0.0/16"}]]}) == (
        "invalid config: ipam.subnet: range set overlaps with runtimeConfig.ipRanges[0]")


def test_mixed_families_in_one_set():
    assert config_error({"type": "host-local", "ranges": [[
        {"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]]}) == (
        "invalid config: ipam.ranges[0][1].subnet: mixes address families in one set")


@pytest.mark.parametrize("ipam, msg", [
    ({"type": "host-local"}, "invalid config: ipam.ranges: no IP ranges specified"),
    ({"type": "host-local", "ranges": []}, "invalid config: ipam.ranges: no IP ranges specified"),
    ({"type": "host-local", "ranges": [[]]}, "invalid config: ipam.ranges[0]: a range set must "
     "be a non-empty list of ranges"),
    ({"type": "host-local", "ranges": [{"subnet": "10.1.2.0/24"}]}, "invalid config: "
     "ipam.ranges[0]: a range set must be a non-empty list of ranges"),
    ({"type": "host-local", "ranges": "10.1.2.0/24"}, "invalid config: ipam.ranges: must be a "
     "list of range sets"),
    ({"type": "host-local", "ranges": [["10.1.2.0/24"]]}, "invalid config: "
     "ipam.ranges[0][0].subnet: is required (a CIDR such as 10.200.0.0/24)"),
    ({"type": "host-local", "subnet": "10.1.2.0/24", "dataDir": 5}, "invalid config: "
     "ipam.dataDir: must be a string"),
    ({"type": "host-local", "subnet": "10.1.2.0/24", "resolvConf": ["x"]}, "invalid config: "
     "ipam.resolvConf: must be a string"),
    ({"type": "host-local", "subnet": "10.1.2.0/24", "routes": {"dst": "0.0.0.0/0"}},
     "invalid config: ipam.routes: must be a list of {dst, gw}"),
    ({"type": "host-local", "subnet": "10.1.2.0/24", "routes": [{"gw": "10.1.2.1"}]},
     "invalid config: ipam.routes[0].dst: is required (a CIDR)"),
    ({"type": "host-local", "subnet": "10.1.2.0/24", "routes": [{"dst": "default"}]},
     "invalid config: ipam.routes[0].dst: is not a CIDR"),
    ({"type": "host-local", "subnet": "10.1.2.0/24", "routes": [{"dst": "0/0", "gw": 1}]},
     "invalid config: ipam.routes[0].dst: is not a CIDR"),
    ({"type": "host-local", "subnet": "10.1.2.0/24", "routes": ["0.0.0.0/0"]},
     "invalid config: ipam.routes[0]: must be an object {dst, gw, ...}"),
])
def test_ipam_errors_name_the_key(ipam, msg):
    assert config_error(ipam) == msg


# --- routes: the spec's route type -------------------------------------------------------------

U32 = 2**32 - 1


@pytest.mark.parametrize("route", [
    {"dst": "0.0.0.0/0"},
    {"dst": "10.9.0.0/16", "gw": "10.1.2.254"},
    {"dst": "10.9.0.1/16"},  # host bits are kept, as the reference's types.IPNet does
    {"dst": "::/0", "gw": "2001:db8::1", "mtu": 1400, "advmss": 1360, "priority": 10,
     "table": U32, "scope": 0},
    {"dst": "10.9.0.0/16", "mtu": 0, "table": 0, "scope": 255},
])
def test_valid_routes_are_copied(route):
    c = config({"type": "host-local", "subnet": "10.1.2.0/24", "routes": [route]})
    assert c.routes == [route]


@pytest.mark.parametrize("route, key, msg", [
    ({"dst": "10.9.0.0/16", "gw": "10.1.2"}, "gw", "is not an IP address"),
    ({"dst": "10.9.0.0/16", "gw": ["10.1.2.1"]}, "gw", "is not an IP address"),
    ({"dst": "10.9.0.0/33"}, "dst", "is not a CIDR"),
    ({"dst": "10.9.0.0/\u0662\u0664"}, "dst", "is not a CIDR"),  # Arabic-Indic 24
    ({"dst": 5}, "dst", "is required (a CIDR)"),
    ({"dst": "0.0.0.0/0", "table": 2**32}, "table", f"must be an integer from 0 to {U32}"),
    ({"dst": "0.0.0.0/0", "table": -1}, "table", f"must be an integer from 0 to {U32}"),
    ({"dst": "0.0.0.0/0", "mtu": 2**40}, "mtu", f"must be an integer from 0 to {U32}"),
    ({"dst": "0.0.0.0/0", "mtu": "1500"}, "mtu", f"must be an integer from 0 to {U32}"),
    ({"dst": "0.0.0.0/0", "mtu": 1500.0}, "mtu", f"must be an integer from 0 to {U32}"),
    ({"dst": "0.0.0.0/0", "advmss": True}, "advmss", f"must be an integer from 0 to {U32}"),
    ({"dst": "0.0.0.0/0", "priority": -5}, "priority", f"must be an integer from 0 to {U32}"),
    ({"dst": "0.0.0.0/0", "scope": 256}, "scope", "must be an integer from 0 to 255"),
    ({"dst": "0.0.0.0/0", "scope": "link"}, "scope", "must be an integer from 0 to 255"),
])
def test_bad_route_fields_are_code_7_naming_the_key(route, key, msg):
    ipam = {"type": "host-local", "subnet": "10.1.2.0/24",
            "routes": [{"dst": "0.0.0.0/0"}, route]}
    assert config_error(ipam) == f"invalid config: ipam.routes[1].{key}: {msg}"


# --- dataDir and resolvConf are paths -------------------------------------------------------

@pytest.mark.parametrize("key", ["dataDir", "resolvConf"])
@pytest.mark.parametrize("value, problem", [
    ("/var/lib/cni\0/x", "must be a path, it contains a NUL character"),
    ("/var/lib/\ud800cni", "must be a path, it contains a lone surrogate (\\ud800-\\udfff)"),
    ("/var/lib/\udcffcni", "must be a path, it contains a lone surrogate (\\ud800-\\udfff)"),
])
def test_paths_with_nul_or_lone_surrogate_are_code_7(key, value, problem):
    ipam = {"type": "host-local", "subnet": "10.1.2.0/24", key: value}
    assert config_error(ipam) == f"invalid config: ipam.{key}: {problem}"


@pytest.mark.parametrize("ipam", [None, "host-local", ["x"]])
def test_missing_ipam(ipam):
    with pytest.raises(CNIError) as e:
        IPAMConfig(request(ipam))
    assert (e.value.code, e.value.msg) == (7, "IPAM config missing 'ipam' key")


def test_runtime_ip_ranges_must_be_a_list():
    assert config_error({"type": "host-local", "subnet": "10.1.2.0/24"},
                        runtimeConfig={"ipRanges": {"subnet": "10.1.0.0/16"}}) == (
        "invalid config: runtimeConfig.ipRanges: must be a list of range sets")


# --- requested addresses -------------------------------------------------------------------

def test_requested_ips_in_order_cni_args_runtime_config():
    c = config({"type": "host-local", "subnet": "10.1.2.0/24"},
               cni_args="IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.2.9/24,::ffff:10.1.2.8",
               runtimeConfig={"ips": ["10.1.2.6/24"]})
    assert c.requested == [(4, 0x0A010209), (4, 0x0A010208), (4, 0x0A010206)]


@pytest.mark.parametrize("ips, expected", [
    (["2001:db8::7"], [(6, 0x20010DB8 << 96 | 7), (4, 0x0A010206)]),
    ([], [(4, 0x0A010206)]),  # the runtime said "no address of my choosing": IP= is not used
])
def test_args_cni_ips_replace_cni_args_ip_and_combine_with_runtime_config(ips, expected):
    """CONVENTIONS.md: args carries the equivalent of CNI_ARGS IP, so IP= is ignored."""
    c = config({"type": "host-local", "subnet": "10.1.2.0/24"},
               cni_args="IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.2.9",
               args={"cni": {"ips": ips}}, runtimeConfig={"ips": ["10.1.2.6/24"]})
    assert c.requested == expected


def test_null_args_cni_ips_is_absent():
    c = config({"type": "host-local", "subnet": "10.1.2.0/24"}, cni_args="IP=10.1.2.9",
               args={"cni": {"ips": None}})
    assert c.requested == [(4, 0x0A010209)]


def test_no_requested_ips():
    c = config({"type": "host-local", "subnet": "10.1.2.0/24"}, cni_args="IP=",
               args={"cni": {}}, runtimeConfig={"ips": []})
    assert c.requested == []


def test_unparsable_ip_in_cni_args_is_an_env_error():
    with pytest.raises(CNIError) as e:
        config({"type": "host-local", "subnet": "10.1.2.0/24"}, cni_args="IP=10.1.2.300")
    assert e.value.code == 4
    assert "CNI_ARGS" in e.value.msg and "10.1.2.300" in e.value.msg


@pytest.mark.parametrize("top, key", [
    ({"args": {"cni": {"ips": ["nope"]}}}, "args.cni.ips"),
    ({"args": {"cni": {"ips": [["10.1.2.9"]]}}}, "args.cni.ips"),
    ({"args": {"cni": {"ips": "10.1.2.9"}}}, "args.cni.ips"),
    ({"runtimeConfig": {"ips": ["10.1.2.9", 7]}}, "runtimeConfig.ips"),
    ({"runtimeConfig": {"ips": "10.1.2.9"}}, "runtimeConfig.ips"),
])
def test_bad_requested_ips_in_the_conf_name_the_key(top, key):
    msg = config_error({"type": "host-local", "subnet": "10.1.2.0/24"}, **top)
    assert msg.startswith(f"invalid config: {key}: ")
