"""result.parse: a result of any version checked where it enters (an IPAM plugin's answer, a
prevResult), every refusal naming the field; what it accepts is what emit produced."""
from __future__ import annotations

import copy

import pytest

from cni_protocol.errors import CNIError
from cni_protocol.result import InvalidResult, emit, parse, upgrade
from cni_protocol.version import SUPPORTED_VERSIONS

RESULT = {
    "interfaces": [{"name": "cni0", "mac": "0a:58:0a:16:00:01"},
                   {"name": "eth0", "mac": "0a:58:0a:16:00:02", "sandbox": "/run/netns/p",
                    "mtu": 1500}],
    "ips": [{"address": "10.22.0.2/24", "gateway": "10.22.0.1", "interface": 1},
            {"address": "fd00:22::2/64", "gateway": "fd00:22::1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1", "mtu": 1400, "advmss": 1360,
                "priority": 10, "table": 2**32 - 1, "scope": 0},
               {"dst": "::/0"}],
    "dns": {"nameservers": ["10.32.0.10"], "domain": "cluster.local", "search": ["a.b"],
            "options": ["ndots:5"]},
}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_parse_accepts_what_emit_produces(version):
    assert parse(emit(RESULT, version)) == RESULT


def test_parse_of_a_legacy_result_keeps_address_gateway_and_routes():
    legacy = {"cniVersion": "0.2.0",
              "ip4": {"ip": "10.22.0.2/24", "gateway": "10.22.0.1",
                      "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}]},
              "ip6": {"ip": "fd00:22::2/64"}}
    assert parse(legacy) == {"ips": [{"address": "10.22.0.2/24", "gateway": "10.22.0.1"},
                                     {"address": "fd00:22::2/64"}],
                             "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}]}


def test_an_empty_gateway_is_no_gateway():
    assert parse({"ips": [{"address": "10.22.0.2/24", "gateway": ""}],
                  "routes": [{"dst": "10.9.0.0/16", "gw": ""}]}) == {
        "ips": [{"address": "10.22.0.2/24"}], "routes": [{"dst": "10.9.0.0/16", "gw": ""}]}


def _with(path: str, value):
    """RESULT (1.0.0) with one field replaced: path like 'routes.0.mtu'."""
    result = copy.deepcopy(emit(RESULT, "1.0.0"))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = result
    for part in parents:
        target = target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return result


@pytest.mark.parametrize("path,value,named", [
    ("ips.0.address", "10.22.0.2", "ips[0].address: '10.22.0.2' is not an address with its "
                                   "prefix length"),
    ("ips.0.address", KeyError, "ips[0].address: is required"),
    ("ips.0.address", 10, "ips[0].address: is required"),
    ("ips.0.gateway", 5, "ips[0].gateway: is not a string"),
    ("ips.0.gateway", "10.22.0", "ips[0].gateway: '10.22.0' is not an IP address"),
    ("ips.1.gateway", "10.22.0.1", "ips[1].gateway: '10.22.0.1' is not an IPv6 address"),
    ("ips.0.interface", -1, "ips[0].interface: -1 is not between 0 and 4294967295"),
    ("ips.0", "10.22.0.2/24", "ips[0]: is not an object"),
    ("ips", {"address": "10.22.0.2/24"}, "ips: is not a list"),
    ("routes", "0.0.0.0/0", "routes: is not a list"),
    ("routes.0.dst", KeyError, "routes[0].dst: is required"),
    ("routes.0.dst", "default", "routes[0].dst: 'default' is not a CIDR"),
    ("routes.0.gw", "fd00::1", "routes[0].gw: 'fd00::1' is not an IPv4 address"),
    ("routes.0.mtu", "1500", "routes[0].mtu: '1500' is not an integer"),
    ("routes.0.mtu", 2**40, "routes[0].mtu: 1099511627776 is not between 0 and 4294967295"),
    ("routes.0.mtu", True, "routes[0].mtu: True is not an integer"),
    ("routes.0.advmss", 1.5, "routes[0].advmss: 1.5 is not an integer"),
    ("routes.0.priority", -1, "routes[0].priority: -1 is not between"),
    ("routes.0.table", 2**32, "routes[0].table: 4294967296 is not between 0 and 4294967295"),
    ("routes.0.scope", "link", "routes[0].scope: 'link' is not an integer"),
    ("routes.0.scope", 256, "routes[0].scope: 256 is not between 0 and 255"),
    ("interfaces.0.mac", 5, "interfaces[0].mac: is not a string"),
    ("interfaces.1.sandbox", ["/run/netns/p"], "interfaces[1].sandbox: is not a string"),
    ("interfaces.1.mtu", "1500", "interfaces[1].mtu: '1500' is not an integer"),
    ("interfaces", {}, "interfaces: is not a list"),
    ("dns", "cluster.local", "dns: is not an object"),
    ("dns.nameservers", "10.32.0.10", "dns.nameservers: is not a list"),
    ("dns.search", [1], "dns.search: is not a list of strings"),
    ("dns.domain", ["cluster.local"], "dns.domain: is not a string"),
])
def test_parse_names_the_field_it_refuses(path, value, named):
    with pytest.raises(InvalidResult) as e:
        parse(_with(path, value))
    assert str(e.value).startswith(named), str(e.value)


@pytest.mark.parametrize("legacy,named", [
    ({"ip4": {"ip": "10.22.0.2"}}, "ip4.ip: '10.22.0.2' is not an address"),
    ({"ip4": {"gateway": "10.22.0.1"}}, "ip4.ip: is required"),
    ({"ip6": {"ip": "fd00::2/64", "gateway": "10.22.0.1"}}, "ip6.gateway: '10.22.0.1' is not "
                                                            "an IPv6 address"),
    ({"ip4": {"ip": "10.22.0.2/24", "routes": {"dst": "0.0.0.0/0"}}}, "ip4.routes: is not a list"),
    ({"ip4": {"ip": "10.22.0.2/24", "routes": [{"gw": "10.22.0.1"}]}}, "ip4.routes[0].dst"),
    ({"ip4": "10.22.0.2/24"}, "ip4: is not an object"),
])
def test_parse_names_the_field_of_a_legacy_result(legacy, named):
    with pytest.raises(InvalidResult) as e:
        parse({"cniVersion": "0.2.0", **legacy})
    assert str(e.value).startswith(named), str(e.value)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_upgrade_is_parse_with_code_6_for_a_prev_result(version):
    assert upgrade(emit({"ips": RESULT["ips"][:1], "routes": RESULT["routes"][:1]}, version))
    with pytest.raises(CNIError) as e:
        upgrade(_with("routes.0.table", 2**32))
    assert e.value.code == 6
    assert e.value.msg == ("could not decode prevResult: routes[0].table: 4294967296 is not "
                           "between 0 and 4294967295")
