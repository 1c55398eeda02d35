"""Our bridge first in a chain with the reference Go portmap, driven as libcni drives a list.

conf/20-bridge-portmap.conflist: ADD runs bridge then portmap, which gets the bridge's result as
prevResult and the port mapping as runtimeConfig (it declares the portMappings capability). A
client in another namespace reaches the pod through the node's host port. DEL runs portmap then
bridge, each with the cached result, and must leave no rule, lease or veth of the pod.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import (REFERENCE_DIR, ROOT, load_cluster_tool, plugins_under_test,  # noqa: E402
                 sigterm_as_interrupt)

pytestmark = pytest.mark.slow
kthw = load_cluster_tool()
NODE_IP, CLIENT_IP = "10.240.0.20", "10.240.0.30"
HOST_PORT, POD_PORT = 8080, 80
SERVER = f"""
import socket
s = socket.socket()
s.bind(("0.0.0.0", {POD_PORT}))
s.listen()
print("listening", flush=True)
conn, peer = s.accept()
conn.sendall(f"hello from the pod, you are {{peer[0]}}".encode())
"""


@pytest.fixture
def chain(zipapp, tmp_path):
    """Namespaces node, pod and client (client -- node on 10.240.0.0/24), and the plugin dir."""
    plugins = plugins_under_test(zipapp)
    if not os.access(REFERENCE_DIR / "portmap", os.X_OK):
        pytest.skip(f"no Go portmap in {REFERENCE_DIR} (containernetworking-plugins)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, source in (("bridge", plugins), ("host-local", plugins), ("portmap", REFERENCE_DIR)):
        (bin_dir / name).symlink_to(source / name)
    prefix = f"cni-chain-{os.getpid()}"
    names = {role: f"{prefix}-{role}" for role in ("node", "pod", "client")}
    made = []
    with sigterm_as_interrupt():
        try:
            for ns in names.values():
                kthw.run("ip", "netns", "add", ns)
                made.append(ns)
                kthw.run("ip", "-n", ns, "link", "set", "lo", "up")
            node, client = names["node"], names["client"]
            kthw.run("ip", "-n", node, "link", "add", "eth0", "type", "veth",
                     "peer", "name", "eth0", "netns", client)
            for ns, ip in ((node, NODE_IP), (client, CLIENT_IP)):
                kthw.run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
                kthw.run("ip", "-n", ns, "link", "set", "eth0", "up")
            yield names, bin_dir
        finally:
            for ns in reversed(made):
                kthw.run("ip", "netns", "del", ns, check=False)


def test_bridge_then_portmap_publishes_a_port_and_del_cleans_up(chain, tmp_path):
    names, bin_dir = chain
    conflist = json.loads((ROOT / "conf" / "20-bridge-portmap.conflist").read_text())
    conflist["plugins"][0]["ipam"]["dataDir"] = str(tmp_path / "ipam")
    cid = names["pod"]
    invoke = dict(plugin_dir=bin_dir, runtime_ns=names["node"], container_id=cid,
                  netns=f"/run/netns/{names['pod']}", cni_args="IgnoreUnknown=1",
                  runtime_config={"portMappings": [
                      {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}]})
    result = None
    try:
        result = kthw.invoke_list("ADD", conflist, **invoke)
        pod_ip = result["ips"][0]["address"].split("/")[0]
        assert result["interfaces"][0]["name"] == "cnio0", result
        server = subprocess.Popen(["ip", "netns", "exec", names["pod"], sys.executable, "-c",
                                   SERVER], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "listening"
            reply = kthw.in_ns(names["client"], sys.executable, "-c",
                               "import socket; s = socket.create_connection"
                               f"(('{NODE_IP}', {HOST_PORT}), timeout=5); print(s.recv(100))",
                               timeout=30).stdout
        finally:
            server.kill()
            server.wait()
        assert f"hello from the pod, you are {CLIENT_IP}" in reply, reply
    finally:
        kthw.invoke_list("DEL", conflist, cached_result=result, **invoke)

    for tool in ("iptables-legacy-save", "iptables-nft-save"):
        rules = kthw.in_ns(names["node"], tool, "-t", "nat").stdout
        leftovers = [line for line in rules.splitlines() if pod_ip in line or cid in line]
        assert not leftovers, f"{tool} after DEL: {leftovers}"
    assert not kthw.ip_json(names["node"], "link", "show", "master", "cnio0")
    leases = [f.name for f in (tmp_path / "ipam" / conflist["name"]).iterdir()
              if f.name != "lock" and not f.name.startswith("last_reserved_ip")]
    assert not leases
