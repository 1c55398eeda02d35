"""macspoofchk through the bridge plugin, with real frames, and against upstream v1.9.1.

A pod whose MAC is changed after ADD can no longer reach the gateway (its frames are dropped
where they enter the bridge); a pod that keeps its MAC can. The rules are the reference's, byte
for byte; the reference's DEL removes ours and ours the reference's (also with an empty
CNI_NETNS, which the reference skips); CHECK and GC look at them; a failed ADD leaves none.
The nodes and pods are the namespaces of test_bridge's Node, deleted by name afterwards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import UPSTREAM_DIR  # noqa: E402
from test_bridge import (BR, GATEWAY, NET, Node, in_ns, node, ours, ping,  # noqa: E402,F401
                         pod_ip, sh)

pytestmark = pytest.mark.slow
GO_191 = UPSTREAM_DIR / "bridge"
needs_v191 = pytest.mark.skipif(not GO_191.exists(), reason=f"upstream v1.9.1 plugins not found "
                                f"in {UPSTREAM_DIR} (../shared is absent outside CI)")
POD_MAC = "0a:58:0a:16:00:63"


def conf(node: Node, **keys) -> dict:
    return node.conf(isGateway=True, macspoofchk=True, **keys)


def bridge_nat(node: Node, *, veths: dict[str, str] | None = None) -> list[str]:
    """`nft list table bridge nat`, with host veth names (random) replaced by stable ones."""
    out = in_ns(node.ns, "nft", "list", "table", "bridge", "nat", check=False).stdout
    for name, stable in (veths or {}).items():
        out = out.replace(name, stable)
    return [line.strip() for line in out.splitlines() if line.strip()]


def chains(node: Node) -> list[str]:
    return [line.split()[1] for line in bridge_nat(node) if line.startswith("chain cni-br-iface-")]


def test_a_pod_that_changes_its_mac_no_longer_reaches_the_gateway(node):
    a, b = node.pod(), node.pod()
    ra, rb = node.add(conf(node), a), node.add(conf(node), b)
    assert ping(a, GATEWAY) and ping(b, GATEWAY) and ping(a, pod_ip(rb))
    original = node.link("eth0", a)["address"]
    sh("ip", "-n", a, "link", "set", "eth0", "address", "0a:58:0a:16:00:99")
    assert not ping(a, GATEWAY, count=2, wait=1)
    assert not ping(a, pod_ip(rb), count=1, wait=1)
    assert ping(b, GATEWAY)  # the pod that kept its MAC is not affected
    sh("ip", "-n", a, "link", "set", "eth0", "address", original)
    assert ping(a, GATEWAY, count=3)  # it was the check, nothing else
    for pod, result in ((a, ra), (b, rb)):
        node.cni("CHECK", conf(node), pod, prev=result).ok()
        node.cni("DEL", conf(node), pod, prev=result).ok()
    node.assert_no_trace(a, b)
    assert chains(node) == []


def test_the_chains_are_named_and_commented_as_the_reference_names_them(node):
    pod = node.pod()
    result = node.add(conf(node), pod, args=f"IgnoreUnknown=1;MAC={POD_MAC}")
    veth = result["interfaces"][1]["name"]
    ref = f"{pod}-eth0"
    assert bridge_nat(node) == [
        "table bridge nat {",
        "chain PREROUTING {",
        "type filter hook prerouting priority dstnat; policy accept;",
        f'iifname "{veth}" jump cni-br-iface-{ref} comment "macspoofchk-{ref}"',
        "}",
        f"chain cni-br-iface-{ref} {{",
        f'jump cni-br-iface-{ref}-mac comment "macspoofchk-{ref}"',
        "}",
        f"chain cni-br-iface-{ref}-mac {{",
        f'ether saddr {POD_MAC} return comment "macspoofchk-{ref}"',
        f'drop comment "macspoofchk-{ref}"',
        "}",
        "}"]


@pytest.mark.parametrize("netns", ["pod netns", "empty CNI_NETNS", "deleted netns"])
def test_del_removes_the_chains_also_without_the_pods_netns(node, netns):
    pod, other = node.pod(), node.pod()
    result = node.add(conf(node), pod)
    node.add(conf(node), other)
    if netns == "pod netns":
        node.cni("DEL", conf(node), pod, prev=result).ok()
    elif netns == "empty CNI_NETNS":
        node.cni("DEL", conf(node), pod, netns="").ok()
    else:
        sh("ip", "netns", "del", pod)
        node.cni("DEL", conf(node), pod).ok()
    assert chains(node) == [f"cni-br-iface-{other}-eth0", f"cni-br-iface-{other}-eth0-mac"]
    node.cni("DEL", conf(node), pod, netns="").ok()  # and again: nothing left to do


def test_check_fails_when_the_check_is_gone(node):
    pod = node.pod()
    result = node.add(conf(node), pod)
    node.cni("CHECK", conf(node), pod, prev=result).ok()
    in_ns(node.ns, "nft", "flush", "chain", "bridge", "nat", f"cni-br-iface-{pod}-eth0-mac")
    err = node.cni("CHECK", conf(node), pod, prev=result).error
    assert err["code"] == 103 and "macspoofchk" in err["msg"] and "drop" in err["msg"], err


def test_a_failed_add_leaves_no_check_behind(node):
    """The range holds one address: the second ADD fails in IPAM, after macspoofchk."""
    tiny = [[{"subnet": "10.22.0.0/30"}]]  # .1 is the gateway, .2 the only lease
    first = node.pod()
    node.add(conf(node, ranges=tiny), first)
    pod = node.pod()
    err = node.cni("ADD", conf(node, ranges=tiny), pod).error
    assert err["code"] == 100, err
    assert chains(node) == [f"cni-br-iface-{first}-eth0", f"cni-br-iface-{first}-eth0-mac"]


def test_gc_removes_the_checks_of_attachments_that_are_gone(node):
    keep, stale = node.pod(), node.pod()
    node.add(conf(node), keep)
    node.add(conf(node), stale)
    other_net = node.pod()  # another network's live pod on another bridge: not ours to collect
    node.add(dict(conf(node), name="othernet", bridge="brt1"), other_net)
    gc = dict(conf(node), cniVersion="1.1.0",
              **{"cni.dev/valid-attachments": [{"containerID": keep, "ifname": "eth0"}]})
    node.cni("GC", gc).ok()
    assert sorted(chains(node)) == sorted(f"cni-br-iface-{p}-eth0{s}" for p in (keep, other_net)
                                          for s in ("", "-mac"))
    assert ping(keep, GATEWAY)


def _go(node: Node) -> dict:
    return {"plugin": GO_191, "cni_path": UPSTREAM_DIR}


@needs_v191
def test_rules_byte_for_byte_as_upstream_writes_them(node, tmp_path):
    pod = node.pod()
    result = node.add(conf(node), pod, args=f"IgnoreUnknown=1;MAC={POD_MAC}", cid="ctr")
    ours = bridge_nat(node, veths={result["interfaces"][1]["name"]: "VETH"})
    (tmp_path / "twin").mkdir()
    twin = Node(tmp_path / "twin", node.ours)
    try:
        twin_pod = twin.pod()
        go = twin.add(conf(twin), twin_pod, args=f"IgnoreUnknown=1;MAC={POD_MAC}", cid="ctr", **_go(twin))
        assert bridge_nat(twin, veths={go["interfaces"][1]["name"]: "VETH"}) == ours
    finally:
        twin.teardown()


@needs_v191
def test_upstreams_del_removes_ours_and_ours_removes_upstreams(node):
    for adder, deleter in (("ours", "go"), ("go", "ours")):
        pod = node.pod()
        by = _go(node) if adder == "go" else {}
        result = node.add(conf(node), pod, **by)
        assert len(chains(node)) == 2
        if deleter == "go":  # upstream removes it only when it gets the pod's netns
            node.cni("DEL", conf(node), pod, prev=result, **_go(node)).ok()
        else:
            node.cni("DEL", conf(node), pod, netns="").ok()
        assert chains(node) == [], (adder, deleter)
        assert not [line for line in bridge_nat(node) if "macspoofchk-" in line]


def test_an_id_too_long_for_the_chain_names_is_refused_before_anything(node):
    pod = node.pod()
    err = node.cni("ADD", conf(node), pod, cid="c" * 240).error
    assert err["code"] == 4 and "CNI_CONTAINERID" in err["msg"] and "255" in err["msg"], err
    node.assert_no_trace(pod)
    assert node.link(BR) is None


_MANY_CHECKS = """
from cni_bridge import macspoofchk, nfnetlink as nf
with nf.NfTables() as nft:
    for i in range(300):
        macspoofchk.setup(nft, f"c{i}", "eth0", f"veth{i:08x}", "0a:58:0a:16:00:63")
    macspoofchk.gc(nft, {("c0", "eth0")}, lambda veth: True)
print("ok")
"""


def test_gc_of_hundreds_of_checks_is_one_transaction_that_succeeds(node):
    """~1500 messages in one transaction: more answers than a socket buffer holds."""
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    proc = in_ns(node.ns, "/usr/bin/python3", "-c", _MANY_CHECKS, env=env, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert chains(node) == ["cni-br-iface-c0-eth0", "cni-br-iface-c0-eth0-mac"]
