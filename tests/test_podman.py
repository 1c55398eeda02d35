"""podman's CNI backend as the libcni client of the plugins under test.

`podman network create` (network_backend "cni") writes a conflist: bridge with host-local, then
Debian's Go portmap, firewall and tuning, cniVersion 0.4.0. podman runs it with libcni in its
own process for each `podman run`, and `podman rm` sends DEL with the container's netns path
and the cached prevResult. The node (tests/e2e/podman.py) keeps all of podman's state in the
work dir and all of its network in the node netns; a client netns on the node's uplink reaches
a published port through portmap's DNAT.
"""
from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import plugins_under_test  # noqa: E402
from e2e.containerd import ensure_packages, run  # noqa: E402
from e2e.image import build_busybox_image  # noqa: E402
from e2e.node import running  # noqa: E402
from e2e.podman import PACKAGES, PodmanNode  # noqa: E402

pytestmark = pytest.mark.slow
NETWORK = "e2enet"
SUBNET = ipaddress.ip_network("10.87.7.0/24")  # outside podman's default network, 10.88.0.0/16
GATEWAY = "10.87.7.1"
UPLINK = "eth0"  # the veth between the node and the client netns
NODE_IP, CLIENT_IP = "10.240.0.20", "10.240.0.30"
HOST_PORT, SERVER_PORT = 8080, 80
GREETING = "hello from c2"
CONTAINERS = ("c1", "c2")
# Chains of one attachment: the bridge's ipMasq chain, portmap's DNAT and SNAT chains.
ATTACHMENT_CHAIN = re.compile(r"\bCNI-(?:DN-|SN-)?[0-9a-f]{20,}\b")


@pytest.fixture(scope="module")
def node(zipapp, tmp_path_factory):
    plugins = plugins_under_test(zipapp)
    try:
        ensure_packages(PACKAGES)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot install {' '.join(PACKAGES)}: {e.cmd} exited {e.returncode}")
    work = tmp_path_factory.mktemp("podman")
    tag = f"podman-e2e-{os.getpid()}"
    # podman refuses a runroot of more than 50 characters: pytest's tmp paths are longer.
    node = PodmanNode(Path(tempfile.mkdtemp(prefix=f"{tag}-", dir="/tmp")), plugins, name=tag)
    with running(node):
        node.load_image(build_busybox_image(work / "busybox.tar"))
        yield node


@pytest.fixture(scope="module")
def client(node):
    """A netns whose UPLINK (CLIENT_IP) is wired to the node's UPLINK (NODE_IP)."""
    name = f"{node.name}-client"
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "-n", node.netns, "link", "add", UPLINK, "type", "veth",
             "peer", "name", UPLINK, "netns", name])
        for ns, ip in ((node.netns, NODE_IP), (name, CLIENT_IP)):
            run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", UPLINK])
            run(["ip", "-n", ns, "link", "set", UPLINK, "up"])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def network(node):
    """The conflist that `podman network create` wrote."""
    return node.create_network(NETWORK, str(SUBNET))


@pytest.fixture(scope="module")
def containers(node, network):
    """`podman inspect` of each running container: c1 sleeps, c2 serves GREETING on a port
    published on the node."""
    return {"c1": node.run_container("c1", NETWORK, "sleep", "600"),
            "c2": node.run_container("c2", NETWORK, "nc", "-ll", "-p", str(SERVER_PORT),
                                     "-e", "echo", GREETING,
                                     podman_args=("--publish", f"{HOST_PORT}:{SERVER_PORT}"))}


@pytest.fixture(scope="module")
def removed(node, containers):
    """`podman rm -f` of both containers, then `podman network rm`; returns the node's
    netfilter tables as they were while the containers ran."""
    running = node.netfilter()
    node.podman("rm", "--force", "--time", "0", *containers)
    node.podman("network", "rm", NETWORK)
    return running


def ip_of(container: dict) -> str:
    return container["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]


def calls(node, plugin, command, container):
    return [c for c in node.calls() if Path(c["plugin"]).name == plugin
            and c["env"].get("CNI_COMMAND") == command
            and c["env"].get("CNI_CONTAINERID") == container["Id"]]


def test_network_create_writes_a_conflist_of_our_bridge_and_host_local(network):
    assert [p["type"] for p in network["plugins"]] == ["bridge", "portmap", "firewall", "tuning"]
    assert network["cniVersion"] in ("0.4.0", "1.0.0"), network
    ipam = network["plugins"][0]["ipam"]
    assert ipam["type"] == "host-local"
    assert [r["subnet"] for r in ipam["ranges"][0]] == [str(SUBNET)]
    # No dataDir: the leases go to the default /var/lib/cni/networks, the node's shadow of it.
    assert "dataDir" not in ipam


def test_containers_get_addresses_from_our_host_local(node, network, containers):
    leases = node.leases(NETWORK)
    assert len(leases) == len(CONTAINERS), leases
    for name, container in containers.items():
        ip = ip_of(container)
        assert ipaddress.ip_address(ip) in SUBNET
        assert leases.get(ip) == f"{container['Id']}\r\neth0", f"{name}: leases {leases}"
        for plugin in ("bridge", "host-local"):
            (add,) = calls(node, plugin, "ADD", container)
            assert add["rc"] == 0, add["stdout"] + add["stderr"]
            assert add["plugin"].startswith(str(node.w)), "not the plugin under test"
            assert add["stdin"]["cniVersion"] == network["cniVersion"]
            assert add["env"]["CNI_NETNS"] == container["NetworkSettings"]["SandboxKey"]
        eth0 = node.exec(name, "ip", "-4", "addr", "show", "dev", "eth0", check=True).stdout
        assert re.search(rf"inet {re.escape(ip)}/24\b", eth0), eth0


def test_containers_ping_each_other_and_the_gateway(node, containers):
    for name, peer in (("c1", "c2"), ("c2", "c1")):
        for dst in (ip_of(containers[peer]), GATEWAY):
            ping = node.exec(name, "ping", "-c", "1", "-W", "3", dst)
            assert ping.returncode == 0, f"{name} -> {dst}: {ping.stdout}{ping.stderr}"


def test_published_port_reaches_the_container_from_another_netns(node, client, containers):
    reply = run(["ip", "netns", "exec", client, sys.executable, "-c",
                 "import socket; s = socket.create_connection"
                 f"(('{NODE_IP}', {HOST_PORT}), timeout=5); print(s.recv(100).decode())"],
                timeout=30).stdout
    assert GREETING in reply, reply


def test_rm_sends_del_with_the_netns_and_frees_lease_veth_and_bridge(node, network, containers,
                                                                     removed):
    for name, container in containers.items():
        bridge_dels = calls(node, "bridge", "DEL", container)
        assert bridge_dels, f"{name}: no DEL reached the bridge"
        assert bridge_dels[0]["env"]["CNI_NETNS"] == container["NetworkSettings"]["SandboxKey"]
        for call in bridge_dels + calls(node, "host-local", "DEL", container):
            assert call["rc"] == 0, call["stdout"] + call["stderr"]
            assert call["stdin"]["cniVersion"] == network["cniVersion"]
            assert "prevResult" in call["stdin"], f"{name}: DEL without the cached result"
    assert node.leases(NETWORK) == {}
    assert node.cached_results() == []
    assert [veth for veth in node.links("veth") if veth != UPLINK] == []
    assert node.links("bridge") == [], "podman network rm leaves the bridge"
    assert not (node.conf_dir / f"{NETWORK}.conflist").exists()


def test_rm_leaves_no_netfilter_rule_of_the_containers(node, containers, removed):
    ips = [ip_of(c) for c in containers.values()]
    for ip in ips:
        assert any(f"-s {ip}/32" in rules for rules in removed.values()), \
            f"no masquerade rule for {ip} while running: {removed}"
    mentions = re.compile("|".join([ATTACHMENT_CHAIN.pattern,
                                    *(rf"\b{re.escape(ip)}\b" for ip in ips),
                                    *(c["Id"] for c in containers.values())]))
    leftovers = {backend: [line for line in rules.splitlines() if mentions.search(line)]
                 for backend, rules in node.netfilter().items()}
    assert not {backend: lines for backend, lines in leftovers.items() if lines}


def test_podman_sends_only_version_add_and_del(node, removed):
    """libcni validates each network with VERSION when podman loads it; no CHECK, GC or
    STATUS ever comes."""
    bridge = [c for c in node.calls() if Path(c["plugin"]).name == "bridge"]
    assert {c["env"]["CNI_COMMAND"] for c in bridge} == {"VERSION", "ADD", "DEL"}
    failed = [c for c in node.calls() if c["rc"] != 0]
    assert not failed, failed
