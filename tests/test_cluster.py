"""The two-node cluster of "Kubernetes The Hard Way", built by the plugins under test.

Asserts what the walk-through shows: cross-node pod traffic is routed by both nodes (ttl 62),
ipMasq decides whether the sending node translates the pod's address, and the pod's veth,
routes and gateway are wired to cnio0. The cluster is tools/cluster.py, the README's demo.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import (ROOT, load_cluster_tool, plugins_under_test,  # noqa: E402
                 sigterm_as_interrupt)

pytestmark = pytest.mark.slow
kthw = load_cluster_tool()
NODE0, NODE1 = kthw.NODES


def build(zipapp, tmp_path_factory, ip_masq: bool):
    """Yield a one-pod-per-node cluster; tear it down and check that no netns is left."""
    plugins = plugins_under_test(zipapp)
    prefix = f"kthw-t{os.getpid()}-{'masq' if ip_masq else 'plain'}"
    cluster = kthw.Cluster(plugins, tmp_path_factory.mktemp("kthw"), prefix=prefix,
                           ip_masq=ip_masq, pods_per_node=1, log=lambda msg: None)
    with sigterm_as_interrupt():
        try:
            cluster.up()
            yield cluster
        finally:
            cluster.down()
            left = [ns for ns in cluster.state["netns"] if kthw.netns_exists(ns)]
            assert not left, f"netns left behind: {left}"


@pytest.fixture(scope="module")
def masq(zipapp, tmp_path_factory):
    yield from build(zipapp, tmp_path_factory, ip_masq=True)


@pytest.fixture(scope="module")
def plain(zipapp, tmp_path_factory):
    yield from build(zipapp, tmp_path_factory, ip_masq=False)


def pods(cluster):
    return cluster.pods_of(NODE0)[0], cluster.pods_of(NODE1)[0]


def flow_from(cluster, pod, dst):
    """The conntrack flow on the pod's node of a ping from the pod to dst."""
    node = next(n for n in kthw.NODES if n.name == pod["node"])
    flows = [f for f in cluster.conntrack(node) if f[0] == (cluster.pod_ip(pod), dst)]
    assert flows, f"no conntrack entry {cluster.pod_ip(pod)} -> {dst} on {node.name}"
    return flows[0]


def test_pods_get_addresses_from_their_nodes_pod_cidr(masq):
    for node in kthw.NODES:
        (pod,) = masq.pods_of(node)
        assert ipaddress.ip_address(masq.pod_ip(pod)) in ipaddress.ip_network(node.pod_cidr)


def test_cross_node_ping_is_routed_by_both_nodes(masq):
    a, b = pods(masq)
    assert masq.ping(a, masq.pod_ip(b)) == 62
    assert masq.ping(b, masq.pod_ip(a)) == 62


def test_ip_masq_translates_pod_address_to_node_address(masq):
    a, b = pods(masq)
    assert masq.ping(a, masq.pod_ip(b)) == 62
    _, reply = flow_from(masq, a, masq.pod_ip(b))
    assert reply == (masq.pod_ip(b), NODE0.ip)


def test_without_ip_masq_pods_talk_without_nat(plain):
    a, b = pods(plain)
    assert plain.ping(a, plain.pod_ip(b)) == 62
    _, reply = flow_from(plain, a, plain.pod_ip(b))
    assert reply == (plain.pod_ip(b), plain.pod_ip(a))


def test_only_masqueraded_pods_reach_a_host_without_pod_routes(masq, plain):
    assert masq.ping(pods(masq)[0], kthw.JUMPBOX.ip) == 63
    assert plain.ping(pods(plain)[0], kthw.JUMPBOX.ip) is None


def test_pod_eth0_peer_is_a_host_veth_on_cnio0(masq):
    for node in kthw.NODES:
        (pod,) = masq.pods_of(node)
        veth = masq.host_veth(pod)
        assert veth.get("link_type") == "ether" and veth.get("master") == "cnio0", veth
        assert veth["link_index"] == veth["pod_ifindex"], "the host veth's peer is not eth0"
        assert veth["ifname"] in masq.bridge_ports(node)


def test_pod_default_route_goes_via_the_bridge_gateway(masq):
    for node in kthw.NODES:
        (pod,) = masq.pods_of(node)
        gateway = masq.bridge_addr(node).split("/")[0]
        routes = kthw.ip_json(pod["netns"], "route", "show", "default")
        assert [(r["gateway"], r["dev"]) for r in routes] == [(gateway, "eth0")]
        assert pod["result"]["ips"][0]["gateway"] == gateway


def test_node_route_to_its_pod_cidr_goes_through_cnio0(masq):
    for node in kthw.NODES:
        routes = kthw.ip_json(masq.ns(node.name), "route", "show", node.pod_cidr)
        assert [r["dev"] for r in routes] == ["cnio0"]


def test_demo_keep_show_and_clean(zipapp, inspect_tool, tmp_path):
    """The README's demo, as a user runs it: the walk through cni-inspect, a lost pod found and
    freed by GC; a kept cluster is shown again, then cleaned."""
    plugins = plugins_under_test(zipapp)
    prefix = f"kthw-t{os.getpid()}-demo"
    tool = [sys.executable, str(ROOT / "tools" / "cluster.py")]
    opts = ["--workdir", str(tmp_path / "demo")]
    try:
        demo = subprocess.run([*tool, "demo", "--keep", "--prefix", prefix,
                               "--plugin-dir", str(plugins), "--inspect", str(inspect_tool),
                               *opts], capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stderr
        walk, injected = demo.stdout.split("==== injected on node-0")
        for screen in ("==== node-0", "==== node-1", "peer ifindex", "master cnio0", "ttl=62",
                       "ethtool -S eth0",
                       "source NATed to 10.240.0.20", "source NATed to 10.240.0.21"):
            assert screen in walk, screen
        assert walk.count("problems: none") == walk.count("problems:") == 4, "a sound cluster"
        found, freed = injected.split("\nGC (cniVersion 1.1.0) with")
        assert "[lease-leaked]" in found and "[masquerade-leaked]" in found
        assert "GC bridge" in freed and "exit 0" in freed
        assert "problems: none" in freed and "NO POD" not in freed
        assert os.path.exists(f"/run/netns/{prefix}-node-0-pod-2")
        show = subprocess.run([*tool, "show", *opts], capture_output=True, text=True, timeout=120)
        assert show.returncode == 0 and "==== node-1" in show.stdout, show.stderr
    finally:
        clean = subprocess.run([*tool, "clean", *opts], capture_output=True, text=True,
                               timeout=300)
    assert clean.returncode == 0, clean.stderr
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}-")]
