"""The bridge plugin as a runtime runs it: the built zipapp (dist/bridge) exec'd with
`ip netns exec <node> <plugin>`, a clean environment (CNI_* only), the conf on stdin, and
CNI_PATH a temp dir holding the IPAM plugin. Every assertion reads the real kernel (`ip -j`,
/sys, /proc/sys, iptables-legacy-save, iptables-nft-save, nft and conntrack inside the node
netns), the host-local lease files, and pings.

Each test gets a node netns of its own (the "host" the plugin runs in) and pod netns made on
demand, all named brtest-<pid>-<n>-<role> and deleted by exact name when the test ends, also
on failure. Nothing here touches the root netns' network.

Covered: every key of REFERENCE.md 1.1 (vlan/vlanTrunk/preserveDefaultVlan only as far as the
kernel allows: without CONFIG_BRIDGE_VLAN_FILTERING the ADD must fail cleanly); the result of
every cniVersion; ADD/CHECK/DEL/VERSION/STATUS/GC and their failures; pod-to-pod and gateway
pings; ipMasq proven by traffic to an "external host" netns (conntrack shows the SNAT), in every
masquerade backend; rollback
of a failure after IPAM ADD; interop with the Go reference plugins in /usr/lib/cni both ways;
32 parallel ADDs on a fresh node, then 32 parallel DELs.
Not here (see their own files): the masquerade backends byte for byte against the Go plugins
and macspoofchk with real frames (test_masquerade.py, test_macspoofchk.py), chaining
with portmap (test_chain.py), the two-node cluster (test_cluster.py), host-local
(test_host_local.py).
"""
from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import REFERENCE_DIR, load_cluster_tool, sigterm_as_interrupt  # noqa: E402

pytestmark = pytest.mark.slow

IP = shutil.which("ip") or "/usr/sbin/ip"
LEGACY_MULTI = Path("/usr/sbin/xtables-legacy-multi")
GO_BRIDGE, GO_HOST_LOCAL = REFERENCE_DIR / "bridge", REFERENCE_DIR / "host-local"
PREFIX = f"brtest-{os.getpid()}"
_seq = itertools.count()

NET, BR = "brnet", "brt0"
SUBNET, GATEWAY = "10.22.0.0/24", "10.22.0.1"
SUBNET6 = "fd00:22::/64"
ALL_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
EXT_NODE_IP, EXT_IP = "192.168.77.1", "192.168.77.2"  # the node's uplink and the external host
TIMEOUT = 60


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, bridges, veths and iptables rules"
    for tool in ("ip", "iptables-legacy-save", "ip6tables-legacy-save", "conntrack", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make deps)"
    return None


if _skip_reason():
    pytestmark = [pytestmark, pytest.mark.skip(reason=_skip_reason())]

needs_go = pytest.mark.skipif(
    not all(os.access(p, os.X_OK) for p in (GO_BRIDGE, GO_HOST_LOCAL, LEGACY_MULTI)),
    reason=f"Go reference plugins ({REFERENCE_DIR}) or {LEGACY_MULTI} missing")


# --- commands ----------------------------------------------------------------------------------

def sh(*cmd, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", TIMEOUT)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc


def in_ns(ns: str, *cmd, **kw) -> subprocess.CompletedProcess:
    return sh(IP, "netns", "exec", ns, *cmd, **kw)


def ipj(ns: str, *args) -> list:
    return json.loads(sh(IP, "-n", ns, "-j", *args).stdout or "[]")


def chain_name(cid: str, net: str = NET) -> str:
    return "CNI-" + hashlib.sha512((net + cid).encode()).hexdigest()[:24]


def ping(ns: str, dst: str, count: int = 1, wait: int = 2) -> bool:
    return in_ns(ns, "ping", "-n", "-c", count, "-i", "0.2", "-W", wait, dst,
                 check=False).returncode == 0


def eventually(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class Out:
    """What a plugin run left: exit status, stdout, stderr."""

    def __init__(self, rc: int, stdout: str, stderr: str) -> None:
        self.rc, self.stdout, self.stderr = rc, stdout, stderr
        assert "Traceback" not in stderr, self

    @property
    def result(self) -> dict:
        assert self.rc == 0, self
        return json.loads(self.stdout)

    def ok(self) -> None:
        """Success with nothing on stdout (DEL, CHECK, STATUS, GC)."""
        assert self.rc == 0 and not self.stdout.strip(), self

    @property
    def error(self) -> dict:
        assert self.rc != 0, self
        err = json.loads(self.stdout)
        assert isinstance(err.get("code"), int) and err.get("msg"), err
        return err

    def __repr__(self) -> str:
        return f"<rc={self.rc} stdout={self.stdout!r} stderr={self.stderr!r}>"


# --- the node ----------------------------------------------------------------------------------

class Node:
    """A node netns where the plugins run, the pods' netns, CNI_PATH and the IPAM dataDir."""

    def __init__(self, tmp: Path, ours: Path) -> None:
        self.tmp, self.ours = tmp, ours
        self.made: list[str] = []
        try:
            self.ns = self.netns("node")
            sh(IP, "-n", self.ns, "link", "set", "lo", "up")
        except BaseException:
            self.teardown()
            raise
        self.data_dir = tmp / "ipam"
        self.bin = self.plugin_dir("bin", bridge=ours / "bridge",
                                   **{"host-local": ours / "host-local"})

    def netns(self, role: str) -> str:
        name = f"{PREFIX}-{next(_seq)}-{role}"
        sh(IP, "netns", "add", name)
        self.made.append(name)
        return name

    def pod(self) -> str:
        return self.netns("pod")

    def plugin_dir(self, name: str, **plugins: Path) -> Path:
        d = self.tmp / name
        d.mkdir()
        for plugin, target in plugins.items():
            (d / plugin).symlink_to(target)
        return d

    def teardown(self) -> None:
        for ns in reversed(self.made):
            if os.path.exists(f"/run/netns/{ns}"):
                sh(IP, "netns", "del", ns, check=False)

    # invoking plugins

    def conf(self, version: str = "1.0.0", *, ipam: bool = True, ranges=None, **keys) -> dict:
        conf = {"cniVersion": version, "name": NET, "type": "bridge", "bridge": BR}
        if ipam:
            conf["ipam"] = {"type": "host-local", "dataDir": str(self.data_dir),
                            "ranges": ranges or [[{"subnet": SUBNET}]]}
        conf.update(keys)
        return {k: v for k, v in conf.items() if v is not None}

    def env(self, verb: str, pod: str | None, *, cid: str | None = None, ifname: str = "eth0",
            netns: str | None = None, args: str | None = None, cni_path: Path | None = None,
            iptables: str = "host") -> dict:
        """`iptables`: "host" runs the plugin with the host's `iptables` (nf_tables here),
        "legacy" with a PATH whose `iptables` is iptables-legacy (a legacy host)."""
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid or pod or "none",
               "CNI_NETNS": f"/run/netns/{pod}" if netns is None else netns,
               "CNI_IFNAME": ifname, "CNI_PATH": str(cni_path or self.bin),
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        if iptables == "legacy":
            env["PATH"] = f"{self.legacy_path()}:{env['PATH']}"
        if args is not None:
            env["CNI_ARGS"] = args
        return env

    def legacy_path(self) -> Path:
        d = self.tmp / "legacy-bin"
        if not d.exists():
            d.mkdir()
            for tool in ("iptables", "ip6tables"):
                (d / tool).symlink_to(LEGACY_MULTI)
        return d

    def start(self, verb: str, conf: dict | None, pod: str | None = None, *,
              plugin: Path | None = None, prev: dict | None = None, **env) -> subprocess.Popen:
        if prev is not None:
            conf = dict(conf, prevResult=prev)
        plugin = plugin or self.bin / "bridge"
        proc = subprocess.Popen([IP, "netns", "exec", self.ns, str(plugin)],
                                env=self.env(verb, pod, **env),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdin.write("" if conf is None else json.dumps(conf))
        proc.stdin.close()
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen) -> Out:
        try:
            stdout, stderr = proc.stdout.read(), proc.stderr.read()
            return Out(proc.wait(timeout=TIMEOUT), stdout, stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def cni(self, verb: str, conf: dict | None, pod: str | None = None, **kw) -> Out:
        return self.finish(self.start(verb, conf, pod, **kw))

    def add(self, conf: dict, pod: str, **kw) -> dict:
        return self.cni("ADD", conf, pod, **kw).result

    # reading the kernel and the store

    def link(self, name: str, ns: str | None = None) -> dict | None:
        links = [link for link in ipj(ns or self.ns, "-d", "link", "show")
                 if link["ifname"] == name]
        return links[0] if links else None

    def veths(self) -> list[dict]:
        return ipj(self.ns, "-d", "link", "show", "type", "veth")

    def addrs(self, name: str, ns: str | None = None, family: str = "inet") -> list[str]:
        (link,) = ipj(ns or self.ns, "addr", "show", "dev", name)
        return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                if a["family"] == family]

    def routes(self, ns: str, *args) -> list[dict]:
        return ipj(ns, "route", "show", *args)

    def read(self, path: str, ns: str | None = None) -> str:
        """A /sys or /proc/sys file as seen from inside ns (ip netns exec remounts /sys)."""
        return in_ns(ns or self.ns, "cat", path).stdout.strip()

    def exists(self, path: str, ns: str | None = None) -> bool:
        return in_ns(ns or self.ns, "test", "-e", path, check=False).returncode == 0

    def nat(self, family: int = 4, backend: str = "iptables-nft") -> list[str]:
        """The nat table of an iptables backend as iptables-save prints it."""
        tool = {"legacy": "iptables-legacy-save", "iptables-nft": "iptables-nft-save"}[backend]
        tool = tool if family == 4 else "ip6" + tool[2:]
        return [line for line in in_ns(self.ns, tool, "-t", "nat").stdout.splitlines()
                if line[:1] in (":", "-")]

    def masq_rules(self) -> list[str]:
        """The rules of the nftables backend's masq_checks chain, as `nft list` prints them."""
        out = in_ns(self.ns, "nft", "list", "chain", "inet", "cni_plugins_masquerade",
                    "masq_checks", check=False).stdout
        return [line.strip() for line in out.splitlines() if " masquerade comment " in line]

    def macspoof_rules(self) -> list[str]:
        out = in_ns(self.ns, "nft", "list", "table", "bridge", "nat", check=False).stdout
        return [line.strip() for line in out.splitlines() if "macspoofchk-" in line
                or "chain cni-br-iface-" in line]

    def cni_rules(self, family: int = 4, backend: str | None = None) -> list[str]:
        """CNI chains and rules in one backend, or (None) in all three at once."""
        if backend == "nftables":
            return [r for r in self.masq_rules() if (" ip6 " in f" {r}") == (family == 6)]
        if backend is not None:
            return [line for line in self.nat(family, backend) if "CNI-" in line]
        return (self.cni_rules(family, "legacy") + self.cni_rules(family, "iptables-nft")
                + self.cni_rules(family, "nftables"))

    def leases(self, net: str = NET) -> dict[str, str]:
        d = self.data_dir / net
        if not d.is_dir():
            return {}
        return {f.name: f.read_bytes().decode() for f in d.iterdir()
                if f.name != "lock" and not f.name.startswith("last_reserved_ip")}

    def pod_links(self, pod: str) -> list[str]:
        return [link["ifname"] for link in ipj(pod, "link", "show")]

    def host_veth(self, result: dict) -> dict:
        return self.link(result["interfaces"][1]["name"])

    def assert_no_trace(self, *pods: str) -> None:
        """What a failed ADD or a DEL must leave: no veth, lease or masquerade rule."""
        assert eventually(lambda: not self.veths()), self.veths()
        assert self.leases() == {}
        assert self.cni_rules(4) == [] and self.cni_rules(6) == []
        for backend in ("legacy", "iptables-nft"):
            assert [line for line in self.nat(4, backend) if line.startswith("-A POSTROUTING")] == []
        assert self.macspoof_rules() == []
        for pod in pods:
            if os.path.exists(f"/run/netns/{pod}"):
                assert self.pod_links(pod) == ["lo"]


@pytest.fixture(scope="session")
def ours(zipapp) -> Path:
    if _skip_reason():
        pytest.skip(_skip_reason())
    zipapp("host-local")
    return zipapp("bridge").parent


@pytest.fixture
def node(ours, tmp_path):
    with sigterm_as_interrupt():
        n = Node(tmp_path, ours)
        try:
            yield n
        finally:
            n.teardown()
            left = [ns for ns in n.made if os.path.exists(f"/run/netns/{ns}")]
            assert not left, f"netns left behind: {left}"


def pod_ip(result: dict, family: int = 4) -> str:
    for ip in result["ips"]:
        if ipaddress.ip_interface(ip["address"]).version == family:
            return ip["address"].split("/")[0]
    raise AssertionError(f"no IPv{family} address in {result}")


# (id, conf keys, the plugin's iptables, where the rules land) for each masquerade backend
BACKENDS = [pytest.param({}, "host", "iptables-nft", id="unset"),
            pytest.param({}, "legacy", "legacy", id="legacy-host"),
            pytest.param({"ipMasqBackend": "nftables"}, "host", "nftables", id="nftables")]


def masq_lines(node: "Node", backend: str, *needles: str) -> list[str]:
    """The backend's masquerade rules that mention any of `needles` (addresses, chains)."""
    lines = node.cni_rules(4, backend) + node.cni_rules(6, backend)
    return [line for line in lines if any(n in line for n in needles)]


# --- config keys -------------------------------------------------------------------------------

def test_default_bridge_is_cni0(node):
    pod = node.pod()
    conf = node.conf()
    del conf["bridge"]
    result = node.add(conf, pod)
    bridge = node.link("cni0")
    assert bridge and bridge["linkinfo"]["info_kind"] == "bridge" and "UP" in bridge["flags"]
    assert result["interfaces"][0]["name"] == "cni0"
    assert node.host_veth(result)["master"] == "cni0"
    for link in ("cni0", result["interfaces"][1]["name"]):
        assert node.read(f"/proc/sys/net/ipv6/conf/{link}/accept_ra") == "0"


def test_a_non_bridge_link_with_the_bridge_name_is_an_error(node):
    for kind in (["dummy"], ["ifb"], ["vxlan", "id", "42", "dstport", "4789"]):
        if sh(IP, "-n", node.ns, "link", "add", BR, "type", *kind, check=False).returncode == 0:
            break
    else:
        pytest.skip("this kernel has none of the dummy, ifb and vxlan link types")
    pod = node.pod()
    err = node.cni("ADD", node.conf(isGateway=True, ipMasq=True), pod).error
    assert err["code"] in (102, 7) and "not a bridge" in err["msg"], err
    assert node.link(BR)["linkinfo"]["info_kind"] == kind[0]
    node.assert_no_trace(pod)


def test_is_gateway_puts_the_gateway_on_the_bridge_and_enables_forwarding(node):
    assert node.read("/proc/sys/net/ipv4/ip_forward") == "0"  # a new netns starts with it off
    pod = node.pod()
    result = node.add(node.conf(isGateway=True), pod)
    assert node.addrs(BR) == [f"{GATEWAY}/24"]
    assert node.read("/proc/sys/net/ipv4/ip_forward") == "1"
    assert result["ips"] == [{"address": "10.22.0.2/24", "gateway": GATEWAY, "interface": 2}]
    assert node.routes(pod, "default") == []  # isGateway alone adds no default route


def test_without_is_gateway_the_bridge_has_no_address_and_forwarding_stays_off(node):
    pod = node.pod()
    node.add(node.conf(), pod)
    assert node.addrs(BR) == []
    assert node.read("/proc/sys/net/ipv4/ip_forward") == "0"


def test_is_default_gateway_adds_the_default_route_in_the_pod(node):
    pod = node.pod()
    result = node.add(node.conf(isDefaultGateway=True), pod)
    assert [(r["dst"], r["gateway"], r["dev"]) for r in node.routes(pod, "default")] \
        == [("default", GATEWAY, "eth0")]
    assert {"dst": "0.0.0.0/0", "gw": GATEWAY} in result["routes"]
    assert node.addrs(BR) == [f"{GATEWAY}/24"]  # it implies isGateway
    assert node.read("/proc/sys/net/ipv4/ip_forward") == "1"


def test_force_address_replaces_a_conflicting_bridge_address(node):
    sh(IP, "-n", node.ns, "link", "add", BR, "type", "bridge")
    sh(IP, "-n", node.ns, "addr", "add", "10.99.0.1/24", "dev", BR)
    pod = node.pod()
    err = node.cni("ADD", node.conf(isGateway=True), pod).error
    assert err["code"] == 102 and "already has an IP address different from" in err["msg"]
    assert node.addrs(BR) == ["10.99.0.1/24"]
    node.add(node.conf(isGateway=True, forceAddress=True), pod)
    assert node.addrs(BR) == [f"{GATEWAY}/24"]


def test_the_gateway_pins_the_bridge_mac_also_after_its_ports_all_left(node):
    """A bridge that lost its last port reads MAC 00:00:00:00:00:00; the reference then fails
    "could not set bridge's mac" (plugins #620). Ours pins the MAC the bridge has with our port."""
    first = node.pod()
    node.cni("DEL", node.conf(), first, prev=node.add(node.conf(), first)).ok()
    assert node.link(BR)["address"] == "00:00:00:00:00:00"
    pod = node.pod()
    result = node.add(node.conf(isGateway=True), pod)
    mac = node.link(BR)["address"]
    assert mac != "00:00:00:00:00:00" and result["interfaces"][0]["mac"] == mac
    assert node.addrs(BR) == [f"{GATEWAY}/24"]
    node.cni("DEL", node.conf(isGateway=True), pod, prev=result).ok()
    assert node.link(BR)["address"] == mac  # pinned: no longer follows its ports


@pytest.mark.parametrize("iptables", ["host", "legacy"])
def test_ip_masq_chain_and_rules_where_the_hosts_iptables_puts_them(node, iptables):
    """Unset ipMasqBackend: the backend of the `iptables` on PATH (nf_tables on Debian 12, or
    legacy on a host whose iptables is iptables-legacy), and nothing in the other one."""
    pod = node.pod()
    result = node.add(node.conf(isGateway=True, ipMasq=True,
                                ranges=[[{"subnet": SUBNET}], [{"subnet": SUBNET6}]]), pod,
                      iptables=iptables)
    backend, other = ("iptables-nft", "legacy") if iptables == "host" else ("legacy", "iptables-nft")
    chain = chain_name(pod)
    assert re.fullmatch(r"CNI-[0-9a-f]{24}", chain)
    comment = f'-m comment --comment "name: \\"{NET}\\" id: \\"{pod}\\""'
    assert node.cni_rules(4, backend) == [
        f":{chain} - [0:0]",
        f"-A POSTROUTING -s {pod_ip(result)}/32 {comment} -j {chain}",
        f"-A {chain} -d {SUBNET} {comment} -j ACCEPT",
        f"-A {chain} ! -d 224.0.0.0/4 {comment} -j MASQUERADE"]
    assert node.cni_rules(6, backend) == [
        f":{chain} - [0:0]",
        f"-A POSTROUTING -s {pod_ip(result, 6)}/128 {comment} -j {chain}",
        f"-A {chain} -d {SUBNET6} {comment} -j ACCEPT",
        f"-A {chain} ! -d ff00::/8 {comment} -j MASQUERADE"]
    assert node.cni_rules(4, other) == node.cni_rules(6, other) == []
    assert node.cni_rules(4, "nftables") == node.cni_rules(6, "nftables") == []
    assert node.nat(4, backend).count(f"-A POSTROUTING -s {pod_ip(result)}/32 {comment} -j {chain}") == 1


def test_ip_masq_with_the_nftables_backend(node):
    pod = node.pod()
    result = node.add(node.conf(isGateway=True, ipMasq=True, ipMasqBackend="nftables",
                                ranges=[[{"subnet": SUBNET}], [{"subnet": SUBNET6}]]), pod)
    h_net = hashlib.sha512(NET.encode()).hexdigest()[:16]
    h_att = hashlib.sha512(f"eth0:{pod}".encode()).hexdigest()[:16]
    comment = f'comment "{h_net}-{h_att}, net: {NET}, if: eth0, id: {pod}"'
    assert node.masq_rules() == [
        f"ip saddr {pod_ip(result)} ip daddr != {SUBNET} masquerade {comment}",
        f"ip6 saddr {pod_ip(result, 6)} ip6 daddr != {SUBNET6} masquerade {comment}"]
    assert node.cni_rules(4, "iptables-nft") == node.cni_rules(4, "legacy") == []
    node.cni("CHECK", node.conf(isGateway=True, ipMasq=True, ipMasqBackend="nftables",
                                ranges=[[{"subnet": SUBNET}], [{"subnet": SUBNET6}]]),
             pod, prev=result).ok()


def test_mtu_on_the_new_bridge_and_both_veth_ends(node):
    pod = node.pod()
    result = node.add(node.conf(mtu=1400), pod)
    assert node.link(BR)["mtu"] == 1400
    assert node.host_veth(result)["mtu"] == 1400
    assert node.link("eth0", pod)["mtu"] == 1400


@pytest.mark.parametrize("key,flag", [("hairpinMode", "hairpin_mode"),
                                      ("portIsolation", "isolated")])
def test_bridge_port_flag_on_the_host_port(node, key, flag):
    r_plain = node.add(node.conf(), node.pod())
    r_flagged = node.add(node.conf(**{key: True}), node.pod())
    brport = "/sys/class/net/{}/brport/" + flag
    assert node.read(brport.format(r_plain["interfaces"][1]["name"])) == "0"
    assert node.read(brport.format(r_flagged["interfaces"][1]["name"])) == "1"


def test_promisc_mode_on_the_bridge(node):
    pod = node.pod()
    node.add(node.conf(), pod)
    assert "PROMISC" not in node.link(BR)["flags"]
    node.add(node.conf(promiscMode=True), node.pod())
    assert "PROMISC" in node.link(BR)["flags"]


def test_promisc_mode_and_hairpin_mode_are_exclusive(node):
    pod = node.pod()
    err = node.cni("ADD", node.conf(promiscMode=True, hairpinMode=True), pod).error
    assert err["code"] == 7 and "hairpin" in err["msg"].lower(), err
    assert node.link(BR) is None
    node.assert_no_trace(pod)


def _kernel_has_bridge_vlan_filtering(node) -> bool:
    sh(IP, "-n", node.ns, "link", "add", "brprobe", "type", "bridge")
    try:
        return node.exists("/sys/class/net/brprobe/bridge/vlan_filtering")
    finally:
        sh(IP, "-n", node.ns, "link", "del", "brprobe")


@pytest.mark.parametrize("keys", [
    {"vlan": 10},
    {"vlan": 10, "preserveDefaultVlan": True},
    {"vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 202}]},
], ids=["vlan", "vlan+preserveDefaultVlan", "vlanTrunk"])
def test_vlan_keys(node, keys):
    pod = node.pod()
    if _kernel_has_bridge_vlan_filtering(node):
        result = node.add(node.conf(**keys), pod)
        assert node.read(f"/sys/class/net/{BR}/bridge/vlan_filtering") == "1"
        veth = result["interfaces"][1]["name"]
        (port,) = json.loads(in_ns(node.ns, "bridge", "-j", "vlan", "show", "dev", veth).stdout)
        vids = {vid: v.get("flags", []) for v in port["vlans"]
                for vid in range(v["vlan"], v.get("vlanEnd", v["vlan"]) + 1)}
        if "vlan" in keys:
            assert {"PVID", "Egress Untagged"} <= set(vids[10]), vids
        else:
            assert {101, 200, 201, 202} <= set(vids), vids
        assert (1 in vids) == bool(keys.get("preserveDefaultVlan")), vids
        return
    # This kernel lacks CONFIG_BRIDGE_VLAN_FILTERING: the ADD must fail cleanly, saying why,
    # when it creates the bridge and when it finds one without VLAN filtering.
    for bridge_exists in (False, True):
        if bridge_exists:
            sh(IP, "-n", node.ns, "link", "add", BR, "type", "bridge")
        err = node.cni("ADD", node.conf(isGateway=True, ipMasq=True, **keys), pod).error
        assert err["code"] == 102, err
        assert "CONFIG_BRIDGE_VLAN_FILTERING" in err["msg"] and "vlan" in err["msg"], err
        node.assert_no_trace(pod)
    assert not node.exists(f"/sys/class/net/{BR}/bridge/vlan_filtering")


def test_enabledad(node):
    plain, dad = node.pod(), node.pod()
    node.add(node.conf(), plain)
    node.add(node.conf(enabledad=True), dad)
    assert node.read("/proc/sys/net/ipv6/conf/eth0/accept_dad", plain) == "0"
    assert node.read("/proc/sys/net/ipv6/conf/eth0/accept_dad", dad) == "1"
    assert node.read("/proc/sys/net/ipv6/conf/eth0/enhanced_dad", dad) == "1"
    for pod in (plain, dad):
        assert node.read("/proc/sys/net/ipv4/conf/eth0/arp_notify", pod) == "1"


MAC_ARGS, MAC_CONF, MAC_RT = "0a:58:0a:16:00:aa", "0a:58:0a:16:00:bb", "0a:58:0a:16:00:cc"


@pytest.mark.parametrize("cni_args,args,runtime,expected", [
    (MAC_ARGS, None, None, MAC_ARGS),
    (None, MAC_CONF, None, MAC_CONF),
    (None, None, MAC_RT, MAC_RT),
    (MAC_ARGS, MAC_CONF, None, MAC_CONF),
    (MAC_ARGS, MAC_CONF, MAC_RT, MAC_RT),
], ids=["CNI_ARGS", "args", "runtimeConfig", "args>CNI_ARGS", "runtimeConfig>all"])
def test_mac_request_and_precedence(node, cni_args, args, runtime, expected):
    pod = node.pod()
    conf = node.conf(args={"cni": {"mac": args}} if args else None,
                     runtimeConfig={"mac": runtime} if runtime else None)
    cni_env = "IgnoreUnknown=1;K8S_POD_NAME=web" + (f";MAC={cni_args}" if cni_args else "")
    result = node.add(conf, pod, args=cni_env)
    assert node.link("eth0", pod)["address"] == expected
    assert result["interfaces"][2]["mac"] == expected


def test_a_mac_with_dashes_is_read_as_go_reads_it(node):
    pod = node.pod()
    node.add(node.conf(runtimeConfig={"mac": "0A-58-0A-16-00-DD"}), pod)
    assert node.link("eth0", pod)["address"] == "0a:58:0a:16:00:dd"


@pytest.mark.parametrize("keys", [{"promiscMode": True, "hairpinMode": True},
                                  {"runtimeConfig": {"mac": "zz"}}], ids=["promisc+hairpin", "bad-mac"])
def test_del_of_a_conf_that_add_refuses_succeeds(node, keys):
    """After a failed ADD the runtime sends DEL with the same conf: it must not fail too."""
    pod = node.pod()
    conf = node.conf(isGateway=True, ipMasq=True, **keys)
    assert node.cni("ADD", conf, pod).error["code"] == 7
    node.cni("DEL", conf, pod).ok()
    node.cni("DEL", conf, pod, netns="").ok()
    node.assert_no_trace(pod)


def test_dns_in_the_conf_overrides_what_ipam_returns(node, tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch ipam.example\n")
    conf = node.conf()
    conf["ipam"]["resolvConf"] = str(resolv)
    from_ipam = node.add(conf, node.pod())
    assert from_ipam["dns"] == {"nameservers": ["192.0.2.53"], "search": ["ipam.example"]}
    dns = {"nameservers": ["10.32.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]}
    assert node.add(dict(conf, dns=dns), node.pod())["dns"] == dns
    # As the reference's dnsConfSet: a list given, even empty, replaces IPAM's; null, an empty
    # domain or no field at all leaves IPAM's.
    assert "dns" not in node.add(dict(conf, dns={"nameservers": []}), node.pod())
    assert node.add(dict(conf, dns={"search": []}), node.pod()).get("dns") is None
    assert node.add(dict(conf, dns={"nameservers": [], "domain": "d.example"}), node.pod())["dns"] \
        == {"domain": "d.example"}
    for kept in ({}, {"domain": ""}, {"search": None}):
        assert node.add(dict(conf, dns=kept), node.pod())["dns"] == from_ipam["dns"], kept


@pytest.mark.parametrize("ipam", [None, {}], ids=["no-ipam", "empty-ipam"])
def test_without_ipam_the_pod_gets_l2_only(node, ipam):
    pod = node.pod()
    conf = node.conf(ipam=False, ipMasq=True, isGateway=True)
    if ipam is not None:
        conf["ipam"] = ipam
    result = node.add(conf, pod)
    assert "ips" not in result and "routes" not in result
    assert [i["name"] for i in result["interfaces"]] == \
        [BR, result["interfaces"][1]["name"], "eth0"]
    eth0 = node.link("eth0", pod)
    assert "UP" in eth0["flags"] and eth0["operstate"] == "UP"
    assert node.addrs("eth0", pod) == []
    assert [a for a in node.addrs("eth0", pod, "inet6") if not a.startswith("fe80:")] == []
    assert node.addrs(BR) == [] and node.cni_rules() == []
    assert node.host_veth(result)["master"] == BR
    node.cni("DEL", conf, pod).ok()
    node.assert_no_trace(pod)


def test_disable_container_interface_leaves_the_pod_veth_down(node):
    pod = node.pod()
    result = node.add(node.conf(ipam=False, disableContainerInterface=True), pod)
    assert "UP" not in node.link("eth0", pod)["flags"]
    host = node.host_veth(result)
    assert host["master"] == BR and "UP" in host["flags"] and "LOWER_UP" not in host["flags"]


def test_disable_container_interface_with_ipam_is_a_config_error(node):
    pod = node.pod()
    err = node.cni("ADD", node.conf(disableContainerInterface=True), pod).error
    assert err["code"] == 7 and "disableContainerInterface" in err["msg"], err
    assert node.link(BR) is None
    node.assert_no_trace(pod)


@pytest.mark.parametrize("value", ["", "iptable", "NFTABLES", 5, True])
def test_an_unknown_ip_masq_backend_is_refused_before_anything_is_made(node, value):
    """The reference fails only after its IPAM ADD (then releases the lease); we refuse first."""
    pod = node.pod()
    conf = node.conf(isGateway=True, ipMasq=True, ipMasqBackend=value)
    err = node.cni("ADD", conf, pod).error
    assert err["code"] == 7 and "ipMasqBackend" in err["msg"], err
    assert node.link(BR) is None and not (node.data_dir / NET).exists()
    node.assert_no_trace(pod)
    if isinstance(value, str):  # DEL of such a conf still works (it must clean up) ...
        node.cni("DEL", conf, pod).ok()
    else:  # ... but a value of the wrong type is undecodable for every verb, as in the reference
        assert node.cni("DEL", conf, pod).error["code"] == 7


def test_ip_masq_backend_is_read_only_with_ip_masq(node):
    pod = node.pod()
    conf = node.conf(isGateway=True, ipMasqBackend="bogus")
    result = node.add(conf, pod)
    assert node.cni_rules() == []
    node.cni("DEL", conf, pod, prev=result).ok()
    result = node.add(node.conf(isGateway=True, ipMasq=True, ipMasqBackend=None), pod)
    assert node.cni_rules(4, "iptables-nft")  # null is unset


# --- verbs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_result_shape_for_every_version(node, version):
    pod = node.pod()
    result = node.add(node.conf(version, isDefaultGateway=True), pod)
    assert result["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert set(result) <= {"cniVersion", "ip4", "dns"}, result
        assert result["ip4"]["ip"] == "10.22.0.2/24"
        assert result["ip4"]["gateway"] == GATEWAY
        assert result["ip4"]["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
        return
    assert set(result) <= {"cniVersion", "interfaces", "ips", "routes", "dns"}, result
    ip = {"address": "10.22.0.2/24", "gateway": GATEWAY, "interface": 2}
    if version in ("0.3.0", "0.3.1", "0.4.0"):
        ip["version"] = "4"
    assert result["ips"] == [ip]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    bridge, host, eth0 = result["interfaces"]
    assert set(bridge) == {"name", "mac"} and set(host) == {"name", "mac"}
    assert bridge == {"name": BR, "mac": node.link(BR)["address"]}
    veth = node.link(host["name"])
    assert re.fullmatch(r"veth[0-9a-f]{8}", host["name"])
    assert host["mac"] == veth["address"] and veth["master"] == BR
    assert eth0 == {"name": "eth0", "mac": node.link("eth0", pod)["address"],
                    "sandbox": f"/run/netns/{pod}"}
    assert veth["link_index"] == node.link("eth0", pod)["ifindex"]  # the pair's peers
    assert node.addrs("eth0", pod) == ["10.22.0.2/24"]


def test_add_of_an_existing_ifname_fails_and_keeps_the_first_attachment(node):
    pod = node.pod()
    conf = node.conf(isGateway=True, ipMasq=True)
    first = node.add(conf, pod, cid="first")
    before = (node.leases(), node.cni_rules(), [v["ifname"] for v in node.veths()])
    for cid in ("second", "first"):  # another container ID, and the same one again
        err = node.cni("ADD", conf, pod, cid=cid).error
        assert "already exists" in err["msg"] or "duplicate" in err["msg"], err
        assert (node.leases(), node.cni_rules(), [v["ifname"] for v in node.veths()]) == before
    assert node.addrs("eth0", pod) == [first["ips"][0]["address"]]
    assert node.leases() == {"10.22.0.2": "first\r\neth0"}


def test_routes_to_one_destination_via_two_gateways_are_both_added_and_checked(node):
    """As the reference adds them: IPv4 keeps two routes, IPv6 one multipath route with both
    gateways; CHECK finds each route of the result in either form."""
    pod = node.pod()
    routes = [{"dst": "10.50.0.0/16", "gw": "10.22.0.253"}, {"dst": "10.50.0.0/16", "gw": "10.22.0.254"},
              {"dst": "fd50::/48", "gw": "fd00:22::fd"}, {"dst": "fd50::/48", "gw": "fd00:22::fe"}]
    conf = node.conf(ranges=[[{"subnet": SUBNET}], [{"subnet": SUBNET6}]])
    conf["ipam"]["routes"] = routes
    result = node.add(conf, pod)
    assert result["routes"] == routes
    assert sorted(r["gateway"] for r in node.routes(pod, "10.50.0.0/16")) == ["10.22.0.253", "10.22.0.254"]
    (v6,) = ipj(pod, "-6", "route", "show", "fd50::/48")
    assert sorted(n["gateway"] for n in v6["nexthops"]) == ["fd00:22::fd", "fd00:22::fe"]
    node.cni("CHECK", conf, pod, prev=result).ok()
    sh(IP, "-n", pod, "-6", "route", "del", "fd50::/48")
    sh(IP, "-n", pod, "-6", "route", "add", "fd50::/48", "via", "fd00:22::fd")
    err = node.cni("CHECK", conf, pod, prev=result).error
    assert "fd50::/48 via fd00:22::fe" in err["msg"], err


def test_check(node):
    pod = node.pod()
    conf = node.conf(isDefaultGateway=True)
    result = node.add(conf, pod)
    node.cni("CHECK", conf, pod, prev=result).ok()
    for version in ("0.4.0", "1.1.0"):
        node.cni("CHECK", dict(conf, cniVersion=version), pod, prev=result).ok()

    err = node.cni("CHECK", conf, pod).error
    assert err["code"] == 7 and "prevResult" in err["msg"], err
    err = node.cni("CHECK", dict(conf, cniVersion="0.3.1"), pod, prev=result).error
    assert err["code"] == 1, err

    sh(IP, "-n", pod, "route", "del", "default")
    err = node.cni("CHECK", conf, pod, prev=result).error
    assert "route" in err["msg"], err
    sh(IP, "-n", pod, "route", "add", "default", "via", GATEWAY)
    node.cni("CHECK", conf, pod, prev=result).ok()

    sh(IP, "-n", pod, "addr", "del", result["ips"][0]["address"], "dev", "eth0")
    err = node.cni("CHECK", conf, pod, prev=result).error
    assert result["ips"][0]["address"] in err["msg"], err


def test_check_fails_when_the_lease_or_the_host_veth_is_gone(node):
    pod = node.pod()
    conf = node.conf(isGateway=True)
    result = node.add(conf, pod)
    (node.data_dir / NET / "10.22.0.2").rename(node.data_dir / "moved-away")
    err = node.cni("CHECK", conf, pod, prev=result).error  # IPAM CHECK runs first
    assert "10.22.0.2" in err["msg"] or pod in err["msg"], err
    (node.data_dir / "moved-away").rename(node.data_dir / NET / "10.22.0.2")
    node.cni("CHECK", conf, pod, prev=result).ok()
    sh(IP, "-n", node.ns, "link", "set", result["interfaces"][1]["name"], "nomaster")
    err = node.cni("CHECK", conf, pod, prev=result).error
    assert "veth" in err["msg"], err


def test_del_twice_succeeds_and_leaves_nothing(node):
    pod = node.pod()
    conf = node.conf(isGateway=True, ipMasq=True)
    result = node.add(conf, pod)
    assert node.leases() and node.cni_rules() and node.veths()
    node.cni("DEL", conf, pod, prev=result).ok()
    node.assert_no_trace(pod)
    node.cni("DEL", conf, pod, prev=result).ok()
    node.cni("DEL", conf, pod).ok()
    node.assert_no_trace(pod)
    assert node.addrs(BR) == [f"{GATEWAY}/24"]  # the bridge stays, as the reference's


@pytest.mark.parametrize("with_prev", [True, False], ids=["prevResult", "no-prevResult"])
@pytest.mark.parametrize("netns", ["deleted", "empty"])
def test_del_without_the_pod_netns_still_releases_everything(node, netns, with_prev):
    pod = node.pod()
    conf = node.conf(isGateway=True, ipMasq=True,
                     ranges=[[{"subnet": SUBNET}], [{"subnet": SUBNET6}]])
    result = node.add(conf, pod)
    assert len(node.leases()) == 2 and node.cni_rules(4) and node.cni_rules(6)
    prev = result if with_prev else None
    if netns == "deleted":
        sh(IP, "netns", "del", pod)
        node.cni("DEL", conf, pod, prev=prev).ok()
        node.cni("DEL", conf, pod, prev=prev).ok()
    else:
        node.cni("DEL", conf, pod, prev=prev, netns="").ok()
        node.cni("DEL", conf, pod, prev=prev, netns="").ok()
        sh(IP, "netns", "del", pod)  # what the runtime does next
    node.assert_no_trace()


def test_a_del_whose_masquerade_teardown_fails_still_removes_the_mac_check_and_the_lease(node):
    """Each step of DEL runs; the first error is reported (and the runtime's retry of the DEL
    then finds only what failed)."""
    conf = node.conf(isGateway=True, ipMasq=True, macspoofchk=True)
    pod = node.pod()
    result = node.add(conf, pod, iptables="legacy")
    chain = chain_name(pod)
    for args in (["-N", "HOLDER"], ["-A", "HOLDER", "-j", chain]):  # the chain is in use
        in_ns(node.ns, "iptables-legacy", "-w", "-t", "nat", *args)
    err = node.cni("DEL", conf, pod, prev=result, iptables="legacy").error
    assert err["code"] == 102 and chain in err["msg"], err
    assert node.macspoof_rules() == [] and node.leases() == {}
    in_ns(node.ns, "iptables-legacy", "-w", "-t", "nat", "-F", "HOLDER")
    node.cni("DEL", conf, pod, prev=result, iptables="legacy").ok()
    in_ns(node.ns, "iptables-legacy", "-w", "-t", "nat", "-X", "HOLDER")
    node.assert_no_trace(pod)


@pytest.mark.parametrize("verb", ["ADD", "CHECK", "DEL"])
def test_cni_netns_naming_the_plugins_own_netns_is_refused_before_anything(node, verb):
    """As libcni's skel: code 8 unless CNI_NETNS_OVERRIDE is 1 or true. An ADD there would put
    the pod's end of the veth and its addresses into the node itself."""
    pod = node.pod()
    conf = node.conf(isGateway=True, ipMasq=True)
    result = node.add(conf, pod)
    before = (node.leases(), node.cni_rules(), [v["ifname"] for v in node.veths()],
              node.pod_links(pod))
    own = f"/run/netns/{node.ns}"
    err = node.cni(verb, conf, pod, netns=own, prev=result if verb == "CHECK" else None).error
    assert err["code"] == 8 and "should not be the same" in err["msg"], err
    assert (node.leases(), node.cni_rules(), [v["ifname"] for v in node.veths()],
            node.pod_links(pod)) == before
    env = node.env(verb, pod, netns=own)
    env["CNI_NETNS_OVERRIDE"] = "true"
    proc = subprocess.run([IP, "netns", "exec", node.ns, str(node.bin / "bridge")], env=env,
                          input=json.dumps(dict(conf, prevResult=result)), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert '"code": 8' not in proc.stdout, proc.stdout  # overridden: some other answer
    node.cni("DEL", conf, pod, prev=result).ok()


def test_del_keeps_the_lease_when_the_pod_interface_cannot_be_deleted(node, tmp_path):
    """The lease goes only after the pod's interface, as in the reference: otherwise the
    address could be handed out while the pod still holds it."""
    pod = node.pod()
    conf = node.conf(isGateway=True)
    node.add(conf, pod)
    not_a_netns = tmp_path / "not-a-netns"
    not_a_netns.write_text("")
    fifo, loop, sock = tmp_path / "fifo", tmp_path / "loop", tmp_path / "sock"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    import socket
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    for path in (not_a_netns, fifo, tmp_path, loop, sock):  # a FIFO must not block us either
        err = node.cni("DEL", conf, pod, netns=str(path)).error
        assert err["code"] == 4 and "not a network namespace" in err["msg"], err
        assert len(node.leases()) == 1
    node.cni("DEL", conf, pod).ok()
    node.assert_no_trace(pod)


def test_version(node):
    proc = subprocess.run([IP, "netns", "exec", node.ns, str(node.bin / "bridge")],
                          env={"CNI_COMMAND": "VERSION"}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == ALL_VERSIONS
    out = node.cni("VERSION", {"cniVersion": "0.4.0"}).result
    assert out == {"cniVersion": "0.4.0", "supportedVersions": ALL_VERSIONS}
    about = subprocess.run([IP, "netns", "exec", node.ns, str(node.bin / "bridge")], env={},
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert about.returncode == 0 and about.stdout == "" and "1.1.0" in about.stderr


def test_status_is_delegated_to_host_local(node):
    conf = node.conf("1.1.0", ranges=[[{"subnet": "10.22.0.0/30"}]])  # room for one pod
    node.cni("STATUS", conf).ok()
    node.add(conf, node.pod())
    err = node.cni("STATUS", conf).error
    assert err["code"] == 50, err
    err = node.cni("STATUS", node.conf("1.0.0")).error
    assert err["code"] == 1, err
    node.cni("STATUS", node.conf("1.1.0", ipam=False)).ok()  # nothing to delegate to


@pytest.mark.parametrize("keys,iptables,backend", BACKENDS)
def test_gc_removes_the_leases_and_rules_of_stale_attachments(node, keys, iptables, backend):
    conf = node.conf("1.1.0", isGateway=True, ipMasq=True, **keys)
    pods = [node.pod() for _ in range(3)]
    results = {pod: node.add(conf, pod, iptables=iptables) for pod in pods}
    keep, *stale = pods
    other, other_pod = dict(conf, name="othernet"), node.pod()  # not ours to collect
    other_ip = pod_ip(node.add(other, other_pod, iptables=iptables))
    valid = [{"containerID": keep, "ifname": "eth0"}]
    node.cni("GC", dict(conf, **{"cni.dev/valid-attachments": valid}), iptables=iptables).ok()
    assert node.leases() == {pod_ip(results[keep]): f"{keep}\r\neth0"}
    assert masq_lines(node, backend, pod_ip(results[keep]) + " ", pod_ip(results[keep]) + "/")
    for pod in stale:
        assert masq_lines(node, backend, pod_ip(results[pod]) + " ", pod_ip(results[pod]) + "/",
                          chain_name(pod)) == []
    assert len(node.leases("othernet")) == 1
    # GC again is a no-op, and GC without the list is refused
    node.cni("GC", dict(conf, **{"cni.dev/valid-attachments": valid}), iptables=iptables).ok()
    assert node.leases() == {pod_ip(results[keep]): f"{keep}\r\neth0"}
    assert node.cni("GC", conf).error["code"] == 7
    # libcni's alias, with no attachment left valid: everything of this network goes
    node.cni("GC", dict(conf, **{"cni.dev/attachments": []}), iptables=iptables).ok()
    assert node.leases() == {} and len(node.leases("othernet")) == 1
    left = node.cni_rules(4, backend)
    assert left and all(other_ip in line or chain_name(other_pod, "othernet") in line
                        for line in left), left


@needs_go
def test_gc_also_removes_stale_chains_the_go_bridge_put_in_the_nft_backend(node):
    """The Go bridge added these with the host's (nft) iptables; our GC collects the stale one."""
    conf = node.conf("1.0.0", isGateway=True, ipMasq=True)
    keep, stale = node.pod(), node.pod()
    for pod in (keep, stale):
        node.add(conf, pod, plugin=GO_BRIDGE)
    other = node.pod()  # another network's chain, same comment format: not ours to collect
    node.add(dict(conf, name="othernet"), other, plugin=GO_BRIDGE)
    gc = dict(conf, cniVersion="1.1.0",
              **{"cni.dev/valid-attachments": [{"containerID": keep, "ifname": "eth0"}]})
    node.cni("GC", gc).ok()
    text = "\n".join(node.cni_rules(4, "iptables-nft"))
    assert chain_name(keep) in text and chain_name(other, "othernet") in text
    assert chain_name(stale) not in text
    assert not any(line.startswith("-A POSTROUTING") and chain_name(stale) in line
                   for line in node.cni_rules(4, "iptables-nft"))


# --- connectivity ------------------------------------------------------------------------------

def test_pods_ping_each_other_and_the_gateway(node):
    conf = node.conf(isDefaultGateway=True)
    a, b = node.pod(), node.pod()
    ip_a, ip_b = pod_ip(node.add(conf, a)), pod_ip(node.add(conf, b))
    assert ping(a, ip_b) and ping(b, ip_a)
    assert ping(a, GATEWAY) and ping(b, GATEWAY)
    assert ping(node.ns, ip_a)


def _external_host(node) -> str:
    """A netns behind the node's uplink (node 192.168.77.1 -- ext 192.168.77.2), with no
    route to the pod subnet: only masqueraded pod traffic can get an answer."""
    ext = node.netns("ext")
    sh(IP, "-n", node.ns, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0",
       "netns", ext)
    for ns, dev, ip in ((node.ns, "uplink", EXT_NODE_IP), (ext, "eth0", EXT_IP)):
        sh(IP, "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh(IP, "-n", ns, "link", "set", dev, "up")
    return ext


def _icmp_flows(node) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    return load_cluster_tool().icmp_flows(node.ns)


UDP_SERVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
s.settimeout(10)
print("ready", flush=True)
print(s.recvfrom(100)[1][0], flush=True)
"""
UDP_CLIENT = "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)" \
             ".sendto(b'hi', (sys.argv[1], 9999))"


def _source_seen_by(ext: str, pod: str) -> str:
    """The source address of a datagram from the pod as the external host receives it."""
    server = subprocess.Popen([IP, "netns", "exec", ext, sys.executable, "-c", UDP_SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        in_ns(pod, sys.executable, "-c", UDP_CLIENT, EXT_IP)
        return server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("backend", ["unset", "legacy", "nftables"])
def test_ip_masq_snats_pod_traffic_to_the_node_address(node, backend):
    ext = _external_host(node)
    pod = node.pod()
    keys = {"ipMasqBackend": "nftables"} if backend == "nftables" else {}
    ip = pod_ip(node.add(node.conf(isDefaultGateway=True, ipMasq=True, **keys), pod,
                         iptables="legacy" if backend == "legacy" else "host"))
    assert node.cni_rules(4, {"unset": "iptables-nft"}.get(backend, backend))
    assert ping(pod, EXT_IP, count=2)  # answered although the host has no route to the pods
    flows = [f for f in _icmp_flows(node) if f[0] == (ip, EXT_IP)]
    assert flows and flows[0][1] == (EXT_IP, EXT_NODE_IP), _icmp_flows(node)
    assert _source_seen_by(ext, pod) == EXT_NODE_IP


def test_without_ip_masq_pod_traffic_keeps_its_address(node):
    ext = _external_host(node)
    pod = node.pod()
    ip = pod_ip(node.add(node.conf(isDefaultGateway=True), pod))
    assert node.cni_rules() == []
    # Conntrack only runs in a netns once a rule needs it (ipMasq's MASQUERADE does): add one
    # that only looks, so that the flow shows up.
    in_ns(node.ns, "iptables-legacy", "-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate",
          "NEW,ESTABLISHED", "-j", "ACCEPT")
    # The external host cannot answer a pod address it has no route to.
    assert not ping(pod, EXT_IP, wait=1)
    assert _source_seen_by(ext, pod) == ip
    sh(IP, "-n", ext, "route", "add", SUBNET, "via", EXT_NODE_IP)
    assert ping(pod, EXT_IP, count=2)
    flows = [f for f in _icmp_flows(node) if f[0] == (ip, EXT_IP)]
    assert flows and all(f[1] == (EXT_IP, ip) for f in flows), _icmp_flows(node)


# --- rollback ----------------------------------------------------------------------------------

def test_a_failure_after_ipam_add_leaves_nothing(node):
    """The bridge holds another IPv4 address: the gateway step fails after IPAM ADD."""
    sh(IP, "-n", node.ns, "link", "add", BR, "type", "bridge")
    sh(IP, "-n", node.ns, "addr", "add", "10.99.0.1/24", "dev", BR)
    pods = [node.pod() for _ in range(2)]
    for pod in pods:
        err = node.cni("ADD", node.conf(isGateway=True, ipMasq=True), pod).error
        assert err["code"] == 102 and "already has an IP address different from" in err["msg"]
    assert (node.data_dir / NET / "last_reserved_ip.0").exists()  # IPAM ADD did run
    node.assert_no_trace(*pods)
    assert node.link(BR, ) and node.addrs(BR) == ["10.99.0.1/24"]


def test_a_missing_ipam_plugin_is_an_error_and_leaves_nothing(node):
    pod = node.pod()
    bridge_only = node.plugin_dir("bridge-only", bridge=node.ours / "bridge")
    err = node.cni("ADD", node.conf(isGateway=True), pod, cni_path=bridge_only).error
    assert err["code"] == 7 and "host-local" in err["msg"], err
    node.assert_no_trace(pod)


# --- interop with the Go reference plugins -----------------------------------------------------

@needs_go
@pytest.mark.parametrize("pair", ["our bridge, Go host-local", "Go bridge, our host-local"])
def test_a_mixed_pair_adds_pings_checks_and_deletes(node, pair):
    if pair.startswith("our"):
        how = {"cni_path": node.plugin_dir("mixed", bridge=node.ours / "bridge",
                                           **{"host-local": GO_HOST_LOCAL})}
    else:
        how = {"plugin": GO_BRIDGE}
    conf = node.conf(isDefaultGateway=True, ipMasq=True)
    a, b = node.pod(), node.pod()
    ra, rb = (node.add(conf, pod, **how) for pod in (a, b))
    assert node.leases() == {"10.22.0.2": f"{a}\r\neth0", "10.22.0.3": f"{b}\r\neth0"}
    assert ping(a, pod_ip(rb))
    for pod, result in ((a, ra), (b, rb)):
        node.cni("CHECK", conf, pod, prev=result, **how).ok()
        node.cni("DEL", conf, pod, prev=result, **how).ok()
    node.assert_no_trace(a, b)


@needs_go
@pytest.mark.parametrize("iptables", ["host", "legacy"])
def test_the_go_bridge_deletes_what_ours_added(node, iptables):
    """Both on the host's iptables (nf_tables here), or both on a legacy host."""
    conf = node.conf(isGateway=True, ipMasq=True,
                     ranges=[[{"subnet": SUBNET}], [{"subnet": SUBNET6}]])
    pod = node.pod()
    result = node.add(conf, pod, iptables=iptables)
    node.cni("CHECK", conf, pod, prev=result, plugin=GO_BRIDGE, iptables=iptables).ok()
    node.cni("DEL", conf, pod, prev=result, plugin=GO_BRIDGE, iptables=iptables).ok()
    node.assert_no_trace(pod)


@needs_go
@pytest.mark.parametrize("iptables", ["host", "legacy"])
@pytest.mark.parametrize("how", ["with prevResult", "empty CNI_NETNS, no prevResult"])
def test_ours_deletes_what_the_go_bridge_added(node, iptables, how):
    """Also after switching plugins on a running node: our DEL finds the Go plugin's chain
    wherever its `iptables` put it, with or without the pod's netns."""
    conf = node.conf(isGateway=True, ipMasq=True,
                     ranges=[[{"subnet": SUBNET}], [{"subnet": SUBNET6}]])
    pod = node.pod()
    result = node.add(conf, pod, plugin=GO_BRIDGE, iptables=iptables)
    backend = "iptables-nft" if iptables == "host" else "legacy"
    assert node.cni_rules(4, backend) and node.cni_rules(6, backend)
    if how == "with prevResult":
        node.cni("CHECK", conf, pod, prev=result, iptables=iptables).ok()
        node.cni("DEL", conf, pod, prev=result).ok()
    else:
        node.cni("DEL", conf, pod, netns="").ok()
        sh(IP, "netns", "del", pod)
    node.assert_no_trace(pod)


# --- concurrency -------------------------------------------------------------------------------

@pytest.mark.parametrize("keys,iptables,backend", BACKENDS)
def test_32_parallel_adds_on_a_fresh_node_then_32_parallel_dels(node, keys, iptables, backend):
    n = 32
    conf = node.conf(isDefaultGateway=True, ipMasq=True, **keys)
    pods = [node.pod() for _ in range(n)]
    assert node.link(BR) is None
    outs = [node.finish(p) for p in [node.start("ADD", conf, pod, iptables=iptables)
                                     for pod in pods]]
    results = [out.result for out in outs]
    ips = [pod_ip(r) for r in results]
    assert len(set(ips)) == n
    assert sorted(node.leases()) == sorted(ips)
    assert node.addrs(BR) == [f"{GATEWAY}/24"]
    assert sorted(v["ifname"] for v in node.veths()) == \
        sorted(r["interfaces"][1]["name"] for r in results)
    assert all(v["master"] == BR for v in node.veths())
    rules = node.cni_rules(4, backend)
    for pod, ip in zip(pods, ips):
        if backend == "nftables":
            assert sum(1 for line in rules if line.startswith(f"ip saddr {ip} ")) == 1
            continue
        chain = chain_name(pod)
        assert f":{chain} - [0:0]" in rules
        assert sum(1 for line in rules if line.startswith(f"-A POSTROUTING -s {ip}/32 ")
                   and line.endswith(f"-j {chain}")) == 1
        assert sum(1 for line in rules if line.startswith(f"-A {chain} ")) == 2
    for pod in pods[:4]:
        assert ping(pod, GATEWAY)

    outs = [node.finish(p) for p in [node.start("DEL", conf, pod, prev=r, iptables=iptables)
                                     for pod, r in zip(pods, results)]]
    for out in outs:
        out.ok()
    node.assert_no_trace(*pods)


@pytest.mark.parametrize("keys,iptables,backend", BACKENDS)
def test_kill_9_during_add_then_del_leaves_nothing(node, keys, iptables, backend):
    """A runtime's timeout kills the plugin at any instant; the DEL it sends next cleans up."""
    conf = node.conf(isDefaultGateway=True, ipMasq=True, macspoofchk=True, **keys)
    for delay_ms in (0, 3, 6, 10, 15, 20, 30, 45, 70, 100):
        pod = node.pod()
        proc = node.start("ADD", conf, pod, iptables=iptables)
        time.sleep(delay_ms / 1000)
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        node.cni("DEL", conf, pod, iptables=iptables).ok()
        node.assert_no_trace(pod)


@pytest.mark.parametrize("keys,iptables,backend", BACKENDS)
def test_check_fails_when_the_masquerade_rules_are_gone(node, keys, iptables, backend):
    """The spec: CHECK fails when resources the plugin created (firewall rules) are missing."""
    conf = node.conf(isGateway=True, ipMasq=True, **keys)
    pod = node.pod()
    result = node.add(conf, pod, iptables=iptables)
    node.cni("CHECK", conf, pod, prev=result, iptables=iptables).ok()
    if backend == "nftables":
        in_ns(node.ns, "nft", "flush", "chain", "inet", "cni_plugins_masquerade", "masq_checks")
    else:
        tool = "iptables-legacy" if backend == "legacy" else "iptables-nft"
        in_ns(node.ns, tool, "-w", "-t", "nat", "-F", chain_name(pod))
    err = node.cni("CHECK", conf, pod, prev=result, iptables=iptables).error
    assert err["code"] == 103 and "ipMasq" in err["msg"] and backend in err["msg"], err


@pytest.mark.parametrize("how", ["DEL with netns", "DEL without netns or prevResult", "GC"])
@pytest.mark.parametrize("keys,iptables,backend", BACKENDS)
def test_removing_one_of_two_attachments_keeps_the_others_masquerade(node, keys, iptables,
                                                                     backend, how):
    """A container with eth0 and eth1 on one network: the iptables chain is named after the
    network and the container ID, so both attachments share it; removing eth1 (by its DEL, also
    one that names no netns and carries no prevResult, or by GC) must not take eth0's
    masquerade with it (the Go plugins flush the shared chain, then fail "busy")."""
    ext = _external_host(node)
    conf = node.conf("1.1.0", isDefaultGateway=True, ipMasq=True, **keys)
    pod = node.pod()
    r0 = node.add(conf, pod, cid="c1", ifname="eth0", iptables=iptables)
    r1 = node.add(dict(conf, isDefaultGateway=False, isGateway=True), pod, cid="c1",
                  ifname="eth1", iptables=iptables)
    assert masq_lines(node, backend, pod_ip(r1) + " ", pod_ip(r1) + "/")
    if how == "DEL with netns":
        node.cni("DEL", conf, pod, cid="c1", ifname="eth1", prev=r1, iptables=iptables).ok()
    elif how == "GC":
        valid = [{"containerID": "c1", "ifname": "eth0"}]
        node.cni("GC", dict(conf, **{"cni.dev/valid-attachments": valid}), iptables=iptables).ok()
        sh(IP, "-n", pod, "link", "del", "eth1")  # what the runtime removes itself
    else:
        node.cni("DEL", conf, pod, cid="c1", ifname="eth1", netns="", iptables=iptables).ok()
        sh(IP, "-n", pod, "link", "del", "eth1")
    assert node.leases() == {pod_ip(r0): "c1\r\neth0"}
    # gone by this removal itself: the repeated DEL below would hide a GC or DEL that left them
    assert masq_lines(node, backend, pod_ip(r1) + " ", pod_ip(r1) + "/") == []
    # and again, as RemovePodSandbox sends it: no netns, no prevResult, no lease left for eth1
    node.cni("DEL", conf, pod, cid="c1", ifname="eth1", netns="", iptables=iptables).ok()
    node.cni("CHECK", conf, pod, cid="c1", ifname="eth0", prev=r0, iptables=iptables).ok()
    assert masq_lines(node, backend, pod_ip(r1) + " ", pod_ip(r1) + "/") == []
    assert ping(pod, EXT_IP, count=2)  # still masqueraded: the external host cannot route pods
    assert _source_seen_by(ext, pod) == EXT_NODE_IP
    node.cni("DEL", conf, pod, cid="c1", ifname="eth0", prev=r0, iptables=iptables).ok()
    sh(IP, "-n", node.ns, "link", "del", "uplink")  # the external host's: not a pod's
    node.assert_no_trace(pod)
