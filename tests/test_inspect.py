"""cni-inspect (dist/cni-inspect) against pods made by our plugins and by the Go ones.

Each test builds a node netns (the plugins and cni-inspect run in it through `ip netns exec`),
pod netns, and a "far" netns that the node routes to but that has no route back to the pods, so
only masqueraded pods get replies from it. Every fact cni-inspect reports is checked against
what the test set up, read back with iproute2, iptables and nft; every problem code is produced
by breaking exactly that one thing. Namespaces are named insp<pid>-* and deleted by name.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import ROOT, sigterm_as_interrupt  # noqa: E402

pytestmark = pytest.mark.slow
PREFIX = f"insp{os.getpid()}"
OURS = ROOT / "dist"
GO_DEBIAN = Path("/usr/lib/cni")
GO_UPSTREAM = ROOT.parent / "shared" / "reference-v1.9.1"
LEGACY_MULTI = Path("/usr/sbin/xtables-legacy-multi")
IPTABLES_TOOLS = ("iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore",
                  "ip6tables-restore")
FAR = ("198.51.100.1", "198.51.100.2")  # node and far ends of the link to the "far" netns
_subnets = itertools.count(1)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces"
    for tool in ("ip", "nft", "iptables-legacy-save", "iptables-nft-save", "conntrack"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not LEGACY_MULTI.exists():
        return f"no {LEGACY_MULTI}"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


def run(*cmd, input=None, check=True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], input=input, capture_output=True, text=True,
                          env=env, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def ip_json(ns: str, *args) -> list:
    return json.loads(run("ip", "-n", ns, "-j", *args).stdout or "[]")


@pytest.fixture(scope="session")
def tool(inspect_tool) -> Path:
    return inspect_tool


# --------------------------------------------------------------------------- plugins and backends


@dataclass(frozen=True)
class Plugins:
    name: str
    dir: Path

    def available(self) -> str | None:
        """Why these plugins cannot be used, or None."""
        if self.dir == OURS:
            for app in ("bridge", "host-local"):
                made = run("make", "-q", f"dist/{app}", check=False).returncode == 0
                if not made:
                    run("make", f"dist/{app}")
            return None
        if not (self.dir / "bridge").exists():
            return f"no {self.dir}/bridge (the reference plugins are not here)"
        return None


PLUGINS = {"ours": Plugins("ours", OURS), "go-1.1.1": Plugins("go-1.1.1", GO_DEBIAN),
           "go-1.9.1": Plugins("go-1.9.1", GO_UPSTREAM)}


@dataclass(frozen=True)
class Case:
    """A pod made by some plugins with some masquerade backend, and the bridge-port flags it
    sets: one parameter of the field tests. Adding "our bridge with backend X" is one Case."""
    plugins: str
    backend: str  # where its ipMasq rules land: legacy, iptables-nft, nftables
    conf: dict = field(default_factory=dict)  # extra bridge keys
    iptables: str | None = None  # "legacy": the plugin's `iptables` is xtables-legacy-multi

    @property
    def id(self) -> str:
        extra = "+macspoofchk" if self.conf.get("macspoofchk") else ""
        return f"{self.plugins}-{self.backend}{extra}"


CASES = [
    Case("ours", "legacy", {"hairpinMode": True, "portIsolation": True}, iptables="legacy"),
    Case("ours", "iptables-nft", {"hairpinMode": True}),
    Case("ours", "nftables", {"ipMasqBackend": "nftables"}),
    Case("ours", "iptables-nft", {"macspoofchk": True}),
    Case("go-1.1.1", "iptables-nft", {"hairpinMode": True}),
    Case("go-1.9.1", "iptables-nft", {"portIsolation": True}),
    Case("go-1.9.1", "nftables", {"ipMasqBackend": "nftables"}),
    Case("go-1.9.1", "iptables-nft", {"macspoofchk": True, "hairpinMode": True}),
]


def plugins_for(name: str) -> Plugins:
    plugins = PLUGINS[name]
    reason = plugins.available()
    if reason:
        pytest.skip(reason)
    return plugins


# --------------------------------------------------------------------------- the node


@dataclass
class Pod:
    name: str
    netns: str
    container_id: str
    result: dict
    plugins: Plugins
    conf: dict
    iptables: str | None

    @property
    def ip(self) -> str:
        return self.result["ips"][0]["address"].split("/")[0]

    @property
    def host_veth(self) -> str:
        return self.result["interfaces"][1]["name"]


class Node:
    """A node netns with a bridge network, its conf and store under a tmp dir, and pods."""

    def __init__(self, tmp: Path, plugins: Plugins, conf: dict | None = None, tag: str = "n",
                 network: str | None = None, data_dir: Path | None = None,
                 iptables: str | None = None):
        self.n = next(_subnets)
        self.iptables = iptables
        self.tag = f"{tag}{self.n}"
        self.plugins = plugins
        self.tmp = tmp
        self.subnet = ipaddress.ip_network(f"10.231.{self.n}.0/24")
        self.gateway = str(self.subnet.network_address + 1)
        self.bridge = f"ib{self.n}"
        self.network = network or f"inspnet{self.n}"
        self.data_dir = data_dir or tmp / f"ipam{self.n}"
        self.cache_dir = tmp / f"cache{self.n}"
        self.conf_dir = tmp / f"net{self.n}.d"
        self.conf = {"cniVersion": "1.0.0", "name": self.network, "type": "bridge",
                     "bridge": self.bridge, "isGateway": True, "ipMasq": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.data_dir)},
                     **(conf or {})}
        self.netns: list[str] = []
        self.pods: list[Pod] = []
        self.ns = self.add_netns("node")
        self.far = self.add_netns("far")
        run("ip", "-n", self.ns, "link", "add", "far0", "type", "veth", "peer", "name", "eth0",
            "netns", self.far)
        run("ip", "-n", self.ns, "addr", "add", f"{FAR[0]}/24", "dev", "far0")
        run("ip", "-n", self.ns, "link", "set", "far0", "up")
        run("ip", "-n", self.far, "addr", "add", f"{FAR[1]}/24", "dev", "eth0")
        run("ip", "-n", self.far, "link", "set", "eth0", "up")
        self.conf_dir.mkdir()
        self.write_conf()

    def write_conf(self) -> None:
        self.conf_path.write_text(json.dumps(self.conf))

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / "10-bridge.conf"

    def add_netns(self, name: str) -> str:
        ns = f"{PREFIX}-{self.tag}-{name}"
        run("ip", "netns", "add", ns)
        self.netns.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def path(self, iptables: str | None) -> str:
        """The plugins' PATH: with iptables "legacy", first a dir whose iptables tools are
        xtables-legacy-multi (a plugin that writes where the host's `iptables` does then writes
        legacy rules)."""
        path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        if iptables != "legacy":
            return path
        shims = self.tmp / "iptables-legacy"
        if not shims.exists():
            shims.mkdir()
            for name in IPTABLES_TOOLS:
                (shims / name).symlink_to(LEGACY_MULTI)
        return f"{shims}:{path}"

    def cni(self, plugins: Plugins, verb: str, container_id: str, netns: str, conf: dict,
            ifname: str = "eth0", iptables: str | None = None) -> subprocess.CompletedProcess:
        env = {"PATH": self.path(iptables), "CNI_COMMAND": verb, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": str(plugins.dir)}
        return run("ip", "netns", "exec", self.ns, plugins.dir / "bridge",
                   input=json.dumps(conf), env=env, check=False)

    def add_pod(self, name: str = "pod", plugins: Plugins | None = None,
                iptables: str | None = "node's") -> Pod:
        plugins = plugins or self.plugins
        iptables = self.iptables if iptables == "node's" else iptables
        ns = self.add_netns(name)
        container_id = f"{PREFIX}-{self.tag}-{name}-id"
        proc = self.cni(plugins, "ADD", container_id, f"/run/netns/{ns}", self.conf,
                        iptables=iptables)
        assert proc.returncode == 0, f"ADD by {plugins.name}: {proc.stdout}{proc.stderr}"
        pod = Pod(name, ns, container_id, json.loads(proc.stdout), plugins, self.conf, iptables)
        self.pods.append(pod)
        return pod

    @property
    def opts(self) -> list:
        return ["--conf-dir", self.conf_dir, "--cache-dir", self.cache_dir]

    def inspect(self, tool: Path, *args, check: int | None = 0) -> subprocess.CompletedProcess:
        """cni-inspect in the node, with this node's conf dir and cache dir unless given."""
        given = {"--conf", "--conf-dir", "--cache-dir"} & set(map(str, args))
        opts = [] if given else self.opts
        proc = run("ip", "netns", "exec", self.ns, tool, *map(str, args), *opts, check=False)
        if check is not None:
            assert proc.returncode == check, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
        return proc

    def report(self, tool: Path, *args, command: str = "pod") -> dict:
        return json.loads(self.inspect(tool, command, *args, "--json").stdout)

    def in_ns(self, *cmd, ns: str | None = None, **kw) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", ns or self.ns, *cmd, **kw)

    def write_cache(self, pod: Pod, netns: str, ifname: str = "eth0") -> Path:
        """A cache entry the way libcni writes one after ADD (libcni/api.go cacheAdd)."""
        results = self.cache_dir / "results"
        results.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = results / f"{self.network}-{pod.container_id}-{ifname}"
        path.write_text(json.dumps({
            "kind": "cniCacheV1", "containerId": pod.container_id,
            "config": base64.b64encode(json.dumps(self.conf).encode()).decode(),
            "ifName": ifname, "networkName": self.network, "netns": netns,
            "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAME", pod.name]],
            "capabilityArgs": {}, "result": pod.result}))
        path.chmod(0o600)
        return path

    def close(self) -> None:
        for pod in reversed(self.pods):
            netns = f"/run/netns/{pod.netns}" if os.path.exists(f"/run/netns/{pod.netns}") else ""
            self.cni(pod.plugins, "DEL", pod.container_id, netns, pod.conf,
                     iptables=pod.iptables)
        for ns in reversed(self.netns):
            if os.path.exists(f"/run/netns/{ns}"):
                run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(plugins: Plugins, conf: dict | None = None, **kw) -> Node:
        node = Node(tmp_path, plugins, conf, tag=f"n{len(nodes)}", **kw)
        nodes.append(node)
        return node

    with sigterm_as_interrupt():
        try:
            yield make
        finally:
            for node in nodes:
                node.close()
            left = [ns for node in nodes for ns in node.netns if os.path.exists(f"/run/netns/{ns}")]
            assert not left, f"netns left: {left}"


@pytest.fixture
def ours(make_node):
    """A node with our plugins, pinned to the legacy backend whatever the host's iptables."""
    return lambda **kw: make_node(plugins_for("ours"), iptables="legacy", **kw)


def codes(report: dict) -> set[str]:
    return {p["code"] for p in report["problems"]}


def chain_of(network: str, container_id: str) -> str:
    return "CNI-" + hashlib.sha512((network + container_id).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- every field


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_field_of_a_sound_pod(case, tool, make_node):
    node = make_node(plugins_for(case.plugins), case.conf, iptables=case.iptables)
    pod = node.add_pod()
    node.add_pod("other")  # a second pod on the bridge
    ping = node.in_ns("ping", "-c", "1", "-W", "2", FAR[1], ns=pod.netns, check=False)
    assert ping.returncode == 0, "the far netns answers only masqueraded pods: " + ping.stdout

    r = node.report(tool, pod.container_id)

    assert r["problems"] == [], r["problems"]
    assert (r["network"], r["container_id"], r["ifname"]) == (node.network, pod.container_id,
                                                               "eth0")
    assert r["netns"] == f"/run/netns/{pod.netns}" and r["netns_exists"]
    assert r["found_by"] == "lease" and r["cache_entry"] is None
    assert r["ips"] == [f"{pod.ip}/24"]
    assert r["conf"] == str(node.conf_path)

    eth0 = ip_json(pod.netns, "link", "show", "dev", "eth0")[0]
    assert r["pod"]["interface"] == "eth0"
    assert r["pod"]["mac"] == eth0["address"] == pod.result["interfaces"][2]["mac"]
    assert r["pod"]["ifindex"] == eth0["ifindex"]
    assert r["pod"]["peer_ifindex"] == eth0["link_index"]
    assert r["pod"]["oper_state"] == eth0["operstate"] == "UP"
    assert r["pod"]["addresses"] == [f"{pod.ip}/24"]
    routes = {(x["dst"], x["gateway"], x["dev"]) for x in r["pod"]["routes"]}
    assert ("0.0.0.0/0", node.gateway, "eth0") in routes
    assert (str(node.subnet), None, "eth0") in routes

    veth = ip_json(node.ns, "-d", "link", "show", "dev", pod.host_veth)[0]
    assert r["host_veth"]["name"] == pod.host_veth
    assert r["host_veth"]["ifindex"] == veth["ifindex"] == eth0["link_index"]
    assert r["host_veth"]["master"] == veth["master"] == node.bridge
    assert r["host_veth"]["oper_state"] == "UP"
    port = veth["linkinfo"]["info_slave_data"]
    assert r["host_veth"]["hairpin"] is port["hairpin"] is bool(case.conf.get("hairpinMode"))
    assert r["host_veth"]["isolated"] is port["isolated"] is \
        bool(case.conf.get("portIsolation"))

    bridge_addrs = [f"{a['local']}/{a['prefixlen']}" for a in
                    ip_json(node.ns, "addr", "show", "dev", node.bridge)[0]["addr_info"]
                    if a["scope"] == "global"]
    assert r["bridge"]["name"] == node.bridge and r["bridge"]["exists"]
    assert r["bridge"]["addresses"] == bridge_addrs == [f"{node.gateway}/24"]
    assert r["bridge"]["ports"] == 2

    assert r["node_routes"] == [{"to": pod.ip, "dst": f"{pod.ip}/32", "gateway": None,
                                 "dev": node.bridge, "src": node.gateway}]
    assert r["forwarding"] == {"ipv4": True}
    assert [(n["ip"], n["mac"]) for n in r["neighbours"]] in ([], [(pod.ip, eth0["address"])])

    lease_path = node.data_dir / node.network / pod.ip
    assert r["leases"] == [{"path": str(lease_path), "ip": pod.ip,
                            "container_id": pod.container_id, "ifname": "eth0", "matches": True}]

    (masq,) = r["masquerade"]
    assert masq["backend"] == case.backend
    assert masq["jumped_to"] and masq["masquerades"] and masq["sources"] == [pod.ip]
    if case.backend == "nftables":
        assert masq["chain_or_table"] == "inet cni_plugins_masquerade"
        listed = node.in_ns("nft", "list", "chain", "inet", "cni_plugins_masquerade",
                            "masq_checks").stdout
        assert [x["rule"] for x in masq["rules"]] == \
            [line.strip() for line in listed.splitlines() if f"saddr {pod.ip} " in line]
        assert masq["packets"] is None  # the reference's rules carry no counter
    else:
        chain = chain_of(node.network, pod.container_id)
        assert masq["chain_or_table"] == chain
        save = node.in_ns(f"iptables-{'legacy' if case.backend == 'legacy' else 'nft'}-save",
                          "-c").stdout.splitlines()
        rules = [line for line in save if line.startswith("[") and chain in line]
        assert [f"[{x['packets']}:{x['bytes']}] {x['rule']}" for x in masq["rules"]] == rules
        assert len(rules) == 3 and masq["packets"] == 1  # one masqueraded ping

    if case.conf.get("macspoofchk"):
        spoof = r["macspoofchk"]
        assert spoof["chains"] == [f"cni-br-iface-{pod.container_id}-eth0",
                                   f"cni-br-iface-{pod.container_id}-eth0-mac"]
        assert (spoof["mac"], spoof["iifname"]) == (eth0["address"], pod.host_veth)
    else:
        assert r["macspoofchk"] is None

    (flow,) = [c for c in r["conntrack"] if c["protocol"] == "icmp" and c["dst"] == FAR[1]]
    assert (flow["src"], flow["reply_src"], flow["reply_dst"]) == (pod.ip, FAR[1], FAR[0])
    assert flow["snat"] and flow["snat_to"] == FAR[0]
    assert all(pod.ip in (c["src"], c["dst"], c["reply_dst"]) for c in r["conntrack"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_node_report_of_sound_pods(case, tool, make_node):
    node = make_node(plugins_for(case.plugins), case.conf, iptables=case.iptables)
    pods = [node.add_pod("a"), node.add_pod("b")]
    r = node.report(tool, command="node")
    assert r["problems"] == [], r["problems"]
    (bridge,) = r["bridges"]
    assert bridge["name"] == node.bridge and bridge["addresses"] == [f"{node.gateway}/24"]
    assert sorted(p["name"] for p in bridge["ports"]) == sorted(p.host_veth for p in pods)
    for port in bridge["ports"]:
        pod = next(p for p in pods if p.host_veth == port["name"])
        assert port["pod"] == {"netns": f"/run/netns/{pod.netns}", "ifname": "eth0",
                               "addresses": [f"{pod.ip}/24"]}
        assert port["hairpin"] is bool(case.conf.get("hairpinMode"))
    assert sorted((p["container_id"], p["netns"]) for p in r["pods"]) == \
        sorted((p.container_id, f"/run/netns/{p.netns}") for p in pods)
    assert sorted((x["ip"], x["container_id"], x["pod_alive"]) for x in r["leases"]) == \
        sorted((p.ip, p.container_id, True) for p in pods)
    assert r["backends"] == [case.backend]
    assert sorted((m["container_id"], m["pod_alive"]) for m in r["masquerade"]) == \
        sorted((p.container_id, True) for p in pods)
    assert r["prerequisites"]["data_dirs"][0]["path"] == str(node.data_dir)
    spoofed = sorted(m["chain"] for m in r["macspoofchk"] if m["pod_alive"])
    assert spoofed == (sorted(f"cni-br-iface-{p.container_id}-eth0" for p in pods)
                       if case.conf.get("macspoofchk") else [])


# --------------------------------------------------------------------------- finding the pod


def test_targets_container_id_prefix_netns_and_ip(tool, ours):
    node = ours()
    pod = node.add_pod()
    for target in (pod.container_id, pod.container_id[:-3], pod.netns,
                   f"/run/netns/{pod.netns}", pod.ip):
        r = node.report(tool, target)
        assert (r["container_id"], r["netns"]) == (pod.container_id, f"/run/netns/{pod.netns}"), \
            target
        assert r["problems"] == []


def test_libcni_cache_gives_the_netns_of_a_pod_that_has_no_name(tool, ours, tmp_path):
    """As with `ctr run --cni`: the netns is only /proc/<pid>/ns/net, known from the cache."""
    node = ours()
    pod = node.add_pod()
    holder = subprocess.Popen(["ip", "netns", "exec", pod.netns, "sleep", "300"])
    try:
        proc_ns = f"/proc/{holder.pid}/ns/net"
        for _ in range(100):
            if os.path.exists(proc_ns) and os.stat(proc_ns).st_ino == \
                    os.stat(f"/run/netns/{pod.netns}").st_ino:
                break
            subprocess.run(["sleep", "0.05"])
        entry = node.write_cache(pod, proc_ns)
        run("ip", "netns", "del", pod.netns)  # the name goes, the netns lives on in `sleep`
        node.netns.remove(pod.netns)
        r = node.report(tool, pod.container_id[:12])
        assert (r["found_by"], r["cache_entry"], r["netns"]) == ("cache", str(entry), proc_ns)
        assert r["netns_exists"] and r["problems"] == []
        assert r["pod"]["addresses"] == [f"{pod.ip}/24"]
        assert r["host_veth"]["name"] == pod.host_veth
        by_ip = node.report(tool, pod.ip)
        assert (by_ip["container_id"], by_ip["netns"]) == (pod.container_id, proc_ns)
        by_path = node.report(tool, proc_ns)
        assert (by_path["container_id"], by_path["found_by"]) == (pod.container_id, "netns")
    finally:
        holder.kill()
        holder.wait()
    gone = node.report(tool, pod.container_id)
    assert not gone["netns_exists"] and codes(gone) == {"lease-leaked", "masquerade-leaked"}


def test_netns_given_when_the_cache_has_none(tool, ours):
    node = ours()
    pod = node.add_pod()
    run("ip", "-n", pod.netns, "link", "del", "eth0")  # takes the host veth with it
    r = node.report(tool, pod.container_id, "--netns", f"/run/netns/{pod.netns}")
    assert r["netns"] == f"/run/netns/{pod.netns}" and r["pod"] is None
    assert codes(r) == {"no-interface"}


# --------------------------------------------------------------------------- every problem


def _nomaster(node, pod):
    run("ip", "-n", node.ns, "link", "set", pod.host_veth, "nomaster")


def _delete_master(node, pod):
    run("ip", "-n", node.ns, "link", "del", node.bridge)


def _flush_nat_chain(node, pod):
    node.in_ns("iptables-legacy", "-t", "nat", "-F", chain_of(node.network, pod.container_id))


def _remove_jump(node, pod):
    chain = chain_of(node.network, pod.container_id)
    rule = next(line for line in node.in_ns("iptables-legacy", "-t", "nat", "-S", "POSTROUTING")
                .stdout.splitlines() if line.endswith(f"-j {chain}"))
    node.in_ns("sh", "-c", f"iptables-legacy -t nat -D {rule[3:]}")


def _second_backend(node, pod):
    chain = chain_of(node.network, pod.container_id)
    node.in_ns("iptables-nft-restore", "--noflush", input=(
        f"*nat\n:{chain} - [0:0]\n-A POSTROUTING -s {pod.ip}/32 -j {chain}\n"
        f"-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE\nCOMMIT\n"))


def _remove_lease(node, pod):
    (node.data_dir / node.network / pod.ip).unlink()


def _foreign_lease(node, pod):
    (node.data_dir / node.network / pod.ip).write_bytes(b"someone-else\r\neth0")


def _delete_netns(node, pod):
    run("ip", "netns", "del", pod.netns)


def _forwarding_off(node, pod):
    node.in_ns("sysctl", "-qw", "net.ipv4.ip_forward=0")


def _gateway_address_off(node, pod):
    run("ip", "-n", node.ns, "addr", "del", f"{node.gateway}/24", "dev", node.bridge)


def _node_route_off(node, pod):
    run("ip", "-n", node.ns, "route", "del", str(node.subnet), "dev", node.bridge)


def _default_route_off(node, pod):
    run("ip", "-n", pod.netns, "route", "del", "default")


def _default_route_elsewhere(node, pod):
    run("ip", "-n", pod.netns, "route", "replace", "default", "via",
        str(node.subnet.network_address + 99), "dev", "eth0")


def _veth_to_other_netns(node, pod):
    elsewhere = node.add_netns("elsewhere")
    run("ip", "-n", node.ns, "link", "set", pod.host_veth, "netns", elsewhere)


def _veth_down(node, pod):
    run("ip", "-n", node.ns, "link", "set", pod.host_veth, "down")


def _stale_neighbour(node, pod):
    run("ip", "-n", node.ns, "neigh", "replace", pod.ip, "lladdr", "02:00:00:00:00:01", "dev",
        node.bridge, "nud", "permanent")


BREAKS = [
    (_nomaster, {"veth-not-enslaved"}),
    (_delete_master, {"bridge-missing", "veth-not-enslaved"}),
    (_flush_nat_chain, {"no-masquerade"}),
    (_remove_jump, {"no-masquerade"}),
    (_second_backend, {"masquerade-two-backends"}),
    (_remove_lease, {"no-lease"}),
    (_foreign_lease, {"lease-mismatch"}),
    (_delete_netns, {"lease-leaked", "masquerade-leaked"}),
    (_forwarding_off, {"forwarding-off"}),
    (_gateway_address_off, {"bridge-no-gateway", "no-node-route"}),
    (_node_route_off, {"no-node-route"}),
    (_default_route_off, {"no-default-route"}),
    (_default_route_elsewhere, {"wrong-default-gateway"}),
    (_veth_to_other_netns, {"veth-peer-missing"}),
    (_veth_down, {"veth-down"}),
    (_stale_neighbour, {"stale-neighbour"}),
]


@pytest.mark.parametrize("breaks, expected", BREAKS, ids=[b.__name__[1:] for b, _ in BREAKS])
def test_each_break_is_the_problem_it_causes(breaks, expected, tool, ours):
    node = ours()
    pod = node.add_pod()
    node.write_cache(pod, f"/run/netns/{pod.netns}")  # a sound pod has none: the field tests
    breaks(node, pod)
    r = node.report(tool, pod.container_id)
    assert codes(r) == expected, r["problems"]
    for problem in r["problems"]:
        assert len(problem["message"]) > 40 and "\n" not in problem["message"]


def test_cache_entry_of_a_gone_netns_without_lease(tool, ours):
    node = ours()
    pod = node.add_pod()
    node.write_cache(pod, f"/run/netns/{pod.netns}")
    _delete_netns(node, pod)
    _remove_lease(node, pod)
    r = node.report(tool, pod.container_id)
    assert codes(r) == {"netns-gone", "masquerade-leaked"}
    assert codes(node.report(tool, command="node")) == {"netns-gone", "masquerade-leaked"}


def _macspoof_chain_deleted(node, pod):
    node.in_ns("nft", "delete", "table", "bridge", "nat")


def _macspoof_other_mac(node, pod):
    chain = f"cni-br-iface-{pod.container_id}-eth0-mac"
    comment = f"macspoofchk-{pod.container_id}-eth0"
    node.in_ns("nft", "-f", "-", input=(
        f"flush chain bridge nat {chain}\n"
        f'add rule bridge nat {chain} ether saddr 02:00:00:00:00:09 return comment "{comment}"\n'
        f'add rule bridge nat {chain} drop comment "{comment}"\n'))


@pytest.mark.parametrize("breaks, expected", [
    (_macspoof_chain_deleted, {"no-macspoofchk"}),
    (_macspoof_other_mac, {"macspoofchk-mismatch"}),
    (_delete_netns, {"lease-leaked", "masquerade-leaked", "macspoofchk-leaked"}),
], ids=["chain-deleted", "other-mac", "netns-deleted"])
def test_macspoofchk_problems(breaks, expected, tool, make_node):
    node = make_node(plugins_for("go-1.9.1"), {"macspoofchk": True})
    pod = node.add_pod()
    assert node.report(tool, pod.container_id)["problems"] == []
    breaks(node, pod)
    assert codes(node.report(tool, pod.container_id)) == expected
    if breaks is _delete_netns:
        assert codes(node.report(tool, command="node")) == expected


# --------------------------------------------------------------------------- the node's problems


def test_node_finds_orphans_both_ways(tool, ours):
    node = ours()
    gone, unleased, detached, fine = (node.add_pod(n) for n in ("gone", "unleased", "det", "ok"))
    node.write_cache(gone, f"/run/netns/{gone.netns}")
    _delete_netns(node, gone)
    _remove_lease(node, unleased)
    _nomaster(node, detached)
    r = node.report(tool, command="node")
    by_code = {}
    for p in r["problems"]:
        by_code.setdefault(p["code"], []).append(p["message"])
    assert sorted(by_code) == ["lease-leaked", "masquerade-leaked", "netns-gone", "no-lease",
                               "veth-not-enslaved"]
    assert [gone.ip in m for m in by_code["lease-leaked"]] == [True]
    assert [gone.ip in m for m in by_code["masquerade-leaked"]] == [True]
    assert [unleased.ip in m for m in by_code["no-lease"]] == [True]
    assert [detached.host_veth in m for m in by_code["veth-not-enslaved"]] == [True]
    alive = {x["ip"]: x["pod_alive"] for x in r["leases"]}
    assert alive == {gone.ip: False, detached.ip: True, fine.ip: True}
    node.inspect(tool, "node", "--strict", check=1)


@pytest.fixture
def tmpfs_dir():
    """A dir on tmpfs (/dev/shm), removed after the nodes' pods are deleted (their DEL
    recreates a host-local store dir): request it before the node fixtures."""
    path = Path("/dev/shm") / f"{PREFIX}-ipam"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_node_warns_of_mixed_backends_and_prerequisites(tool, tmpfs_dir, ours):
    """Our bridge (legacy tables) and the Go one (iptables-nft) on one node; a dataDir on
    tmpfs is not warned about (one on disk is: the next test)."""
    go = plugins_for("go-1.1.1")
    node = ours(data_dir=tmpfs_dir)
    node.add_pod("ours")
    node.add_pod("go", plugins=go, iptables=None)
    r = node.report(tool, command="node")
    warnings = {w["code"] for w in r["warnings"]}
    assert r["problems"] == [], r["problems"]
    assert r["backends"] == ["legacy", "iptables-nft"]
    assert "backends-mixed" in warnings
    assert r["prerequisites"]["data_dirs"][0]["fstype"] == "tmpfs"
    assert "data-dir-persistent" not in warnings
    loaded = os.path.isdir("/proc/sys/net/bridge")
    assert r["prerequisites"]["br_netfilter"] is loaded
    assert ("br-netfilter-missing" in warnings) is not loaded
    if loaded:
        assert "bridge-nf-call-iptables-off" not in warnings
        node.in_ns("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
        off = node.report(tool, command="node")
        assert "bridge-nf-call-iptables-off" in {w["code"] for w in off["warnings"]}
        assert off["prerequisites"]["bridge_nf_call_iptables"] is False


def test_data_dir_on_disk_is_warned_about(tool, ours):
    node = ours()
    node.add_pod()
    r = node.report(tool, command="node")
    (warning,) = [w for w in r["warnings"] if w["code"] == "data-dir-persistent"]
    assert str(node.data_dir) in warning["message"]


# ------------------------------------------------------------------- bad input and exit codes


def test_exit_codes(tool, ours, tmp_path):
    node = ours()
    pod = node.add_pod()
    for target in ("no-such-container", "10.231.250.9", "/run/netns/no-such-netns"):
        bad = node.inspect(tool, "pod", target, check=2)
        assert bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "no pod" in bad.stderr or "no such" in bad.stderr, bad.stderr
    missing = node.inspect(tool, "pod", pod.container_id, "--conf", tmp_path / "nope.conf",
                           check=2)
    assert "no network conf" in missing.stderr
    empty = tmp_path / "empty.d"
    empty.mkdir()
    assert "no network conf in" in node.inspect(tool, "pod", pod.container_id, "--conf-dir",
                                                empty, check=2).stderr
    assert "no bridge network conf in" in node.inspect(tool, "node", "--conf-dir", empty,
                                                       check=2).stderr
    loopback = tmp_path / "lo.conf"
    loopback.write_text(json.dumps({"cniVersion": "1.1.0", "name": "lo", "type": "loopback"}))
    not_bridge = node.inspect(tool, "pod", pod.container_id, "--conf", loopback, check=2)
    assert "not a bridge network" in not_bridge.stderr
    assert "no bridge network conf" in node.inspect(tool, "node", "--conf", loopback,
                                                    check=2).stderr
    stranger = node.add_netns("stranger")  # a netns that no conf attached
    assert "not a pod of network" in node.inspect(tool, "pod", stranger, check=2).stderr
    node.inspect(tool, "pod", pod.container_id, "--strict", check=0)
    node.inspect(tool, "node", "--strict", check=0)
    node.write_cache(pod, f"/run/netns/{pod.netns}")
    _remove_lease(node, pod)  # a broken pod is no error, but fails --strict
    text = node.inspect(tool, "pod", pod.container_id, check=0).stdout
    assert "[no-lease]" in text
    assert node.inspect(tool, "pod", pod.container_id, "--strict", check=1).stdout == text
    node.inspect(tool, "node", "--strict", check=1)


def test_ambiguous_prefix(tool, ours):
    node = ours()
    a, b = node.add_pod("a"), node.add_pod("b")
    bad = node.inspect(tool, "pod", f"{PREFIX}-", check=2)
    assert "ambiguous" in bad.stderr and a.container_id in bad.stderr and \
        b.container_id in bad.stderr


def test_explain_shows_the_standard_commands(tool, ours):
    node = ours()
    pod = node.add_pod()
    text = node.inspect(tool, "pod", pod.container_id, "--explain").stdout
    chain = chain_of(node.network, pod.container_id)
    for command in (f"ip -n {pod.netns} -d link show eth0",
                    f"ip netns exec {pod.netns} ethtool -S eth0",
                    f"bridge -d link show dev {pod.host_veth}",
                    f"ip route get {pod.ip}", f"iptables-legacy -t nat -S {chain} -v",
                    f"conntrack -L -s {pod.ip}"):
        assert f"$ {command}" in text or f"; {command}" in text, command
    # and each of them, run, shows what cni-inspect says
    ethtool = node.in_ns("ethtool", "-S", "eth0", ns=pod.netns).stdout
    r = node.report(tool, pod.container_id)
    assert f"peer_ifindex: {r['pod']['peer_ifindex']}" in ethtool
    explained = json.loads(node.inspect(tool, "pod", pod.container_id, "--json",
                                        "--explain").stdout)["explain"]
    assert explained["node_routes"] == f"ip route get {pod.ip}"


# --------------------------------------------------------------------------- containerd


@pytest.fixture(scope="module")
def containerd_node(tmp_path_factory):
    from e2e.containerd import ContainerdNode, ensure_packages
    from e2e.node import running
    from e2e.image import build_busybox_image

    plugins_for("ours")
    ensure_packages()
    work = tmp_path_factory.mktemp("insp-ctd")
    node = ContainerdNode(work / "node", OURS, name=f"{PREFIX}-ctd",
                          confs=[ROOT / "conf" / "10-bridge.conf"])
    with running(node):
        node.import_image(build_busybox_image(work / "busybox.tar"))
        for cid in ("c1", "c2"):
            node.run_container(cid)
        yield node


def test_containerd_pods_found_by_container_id(tool, containerd_node):
    node = containerd_node
    in_node = ["nsenter", "-t", str(node.containerd.pid), "-m", "-n", str(tool)]
    leases = {owner.split("\r\n")[0]: ip for ip, owner in node.leases().items()}
    for cid in ("c1", "c2"):
        r = json.loads(run(*in_node, "pod", f"default-{cid}", "--json").stdout)
        entry = f"/var/lib/cni/results/bridge-default-{cid}-eth0"
        assert (r["found_by"], r["cache_entry"], r["container_id"]) == \
            ("cache", entry, f"default-{cid}")
        assert r["netns"].startswith("/proc/") and r["netns_exists"]
        assert r["ips"] == [f"{leases[f'default-{cid}']}/24"]
        assert r["bridge"]["name"] == "cnio0" and r["host_veth"]["master"] == "cnio0"
        assert r["problems"] == [], r["problems"]
        (masq,) = r["masquerade"]  # where our bridge puts it depends on the host's iptables
        assert masq["chain_or_table"] == chain_of("bridge", f"default-{cid}")
        assert masq["backend"] in ("legacy", "iptables-nft") and masq["jumped_to"]
    ambiguous = run(*in_node, "pod", "default-c", check=False)
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr
    r = json.loads(run(*in_node, "node", "--json").stdout)
    assert sorted(p["container_id"] for p in r["pods"]) == ["default-c1", "default-c2"]
    assert r["problems"] == []


def test_dual_stack_pod(tool, ours):
    node = ours()
    node.conf["ipam"]["ranges"].append([{"subnet": f"fd00:231:{node.n}::/64"}])
    node.conf["ipam"]["routes"].append({"dst": "::/0"})
    node.write_conf()
    pod = node.add_pod()
    ip6 = pod.result["ips"][1]["address"]
    r = node.report(tool, pod.container_id)
    assert r["problems"] == [], r["problems"]
    assert r["ips"] == [f"{pod.ip}/24", ip6] and r["pod"]["addresses"] == r["ips"]
    assert (f"fd00:231:{node.n}::1/64") in r["bridge"]["addresses"]
    assert r["forwarding"] == {"ipv4": True, "ipv6": True}
    assert ("::/0", f"fd00:231:{node.n}::1", "eth0") in \
        {(x["dst"], x["gateway"], x["dev"]) for x in r["pod"]["routes"]}
    assert [x["dev"] for x in r["node_routes"]] == [node.bridge, node.bridge]
    assert sorted((m["backend"], m["family"]) for m in r["masquerade"]) == \
        [("legacy", 4), ("legacy", 6)]
    node.in_ns("sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    run("ip", "-n", pod.netns, "-6", "route", "del", "default")
    r = node.report(tool, pod.container_id)
    assert codes(r) == {"forwarding-off", "no-default-route"}
    assert all("::" in p["message"] or "ipv6" in p["message"] for p in r["problems"])
