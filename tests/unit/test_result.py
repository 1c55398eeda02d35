"""Result conversion: the 1.x shape a plugin builds, emitted in every cniVersion, and any
version's prevResult upgraded back to the 1.x shape."""
from __future__ import annotations

import copy

import pytest

from cni_protocol.errors import CNIError
from cni_protocol.result import emit, upgrade
from cni_protocol.version import SUPPORTED_VERSIONS

DNS = {"nameservers": ["10.1.0.10"], "domain": "cluster.local", "search": ["a.b"],
       "options": ["ndots:5"]}
RESULT = {
    "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1"},
            {"address": "2001:db8::3/64", "gateway": "2001:db8::1"}],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.2.254"},
               {"dst": "::/0", "gw": "2001:db8::1"}],
    "dns": DNS,
}
IPS_WITH_VERSION = [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "version": "4"},
                    {"address": "2001:db8::3/64", "gateway": "2001:db8::1", "version": "6"}]
LEGACY = {
    "ip4": {"ip": "10.1.2.3/24", "gateway": "10.1.2.1",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.2.254"}]},
    "ip6": {"ip": "2001:db8::3/64", "gateway": "2001:db8::1",
            "routes": [{"dst": "::/0", "gw": "2001:db8::1"}]},
    "dns": DNS,
}


def test_supported_versions():
    assert SUPPORTED_VERSIONS == ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_emit_legacy(version):
    assert emit(RESULT, version) == {"cniVersion": version, **LEGACY}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_emit_with_ip_version(version):
    assert emit(RESULT, version) == {"cniVersion": version, "ips": IPS_WITH_VERSION,
                                     "routes": RESULT["routes"], "dns": DNS}


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_emit_1x(version):
    assert emit(RESULT, version) == {"cniVersion": version, **RESULT}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_emit_does_not_modify_its_input(version):
    before = copy.deepcopy(RESULT)
    emit(RESULT, version)
    assert RESULT == before


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_emit_leaves_out_empty_parts(version):
    assert emit({"ips": [], "routes": [], "dns": {}}, version) == {"cniVersion": version}


def test_emit_legacy_single_family_without_gateway():
    out = emit({"ips": [{"address": "10.1.2.3/24"}], "routes": [{"dst": "::/0"}]}, "0.2.0")
    assert out == {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.2.3/24"}}  # no ip6 for the route


def test_emit_1x_keeps_interfaces_and_interface_indexes():
    result = {"interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
              "ips": [{"address": "10.1.2.3/24", "interface": 0}]}
    assert emit(result, "1.0.0") == {"cniVersion": "1.0.0", **result}
    assert emit(result, "0.4.0")["ips"] == [{"address": "10.1.2.3/24", "interface": 0,
                                             "version": "4"}]


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
@pytest.mark.parametrize("family, addresses", [
    ("4", ["10.1.2.3/24", "10.2.0.3/24"]),
    ("6", ["2001:db8::3/64", "10.1.2.3/24", "2001:db8:1::3/64"]),
])
def test_emit_legacy_refuses_two_addresses_of_a_family(version, family, addresses):
    with pytest.raises(CNIError) as e:
        emit({"ips": [{"address": a} for a in addresses]}, version)
    assert e.value.code == 1
    assert e.value.msg == (f"cannot convert result to version {version}: more than one "
                           f"IPv{family} address")


# --- prevResult upgrade ----------------------------------------------------------------------

@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_upgrade_inverts_emit(version):
    assert upgrade(emit(RESULT, version)) == RESULT


def test_upgrade_legacy_one_family():
    assert upgrade({"cniVersion": "0.2.0", "ip6": {"ip": "2001:db8::3/64"}}) == {
        "ips": [{"address": "2001:db8::3/64"}], "routes": []}


def test_upgrade_0_4_0_keeps_interfaces_and_drops_version():
    prev = {"cniVersion": "0.4.0",
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.1.2.3/24", "gateway": "10.1.2.1",
                     "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}]}
    assert upgrade(prev) == {"interfaces": prev["interfaces"],
                             "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1",
                                      "interface": 1}],
                             "routes": [{"dst": "0.0.0.0/0"}]}


def test_upgrade_1x_is_the_same_result():
    assert upgrade({"cniVersion": "1.1.0", **RESULT}) == RESULT
    assert upgrade({"cniVersion": "1.0.0"}) == {}


@pytest.mark.parametrize("prev", [
    None, "x", [1],
    {"ip4": {"gateway": "10.1.2.1"}},      # no "ip"
    {"ip4": "10.1.2.3/24"},                # not an object
    {"ip4": {"ip": "10.1.2.3/24", "routes": "0.0.0.0/0"}},
    {"ips": "10.1.2.3/24"},
    {"ips": ["10.1.2.3/24"]},
])
def test_upgrade_rejects_malformed_prev_result_as_a_decode_error(prev):
    with pytest.raises(CNIError) as e:
        upgrade(prev)
    assert e.value.code == 6
    assert e.value.msg.startswith("could not decode prevResult")
