"""Kernel-facing layer of the bridge plugin, checked against the real kernel.

Every test works in network namespaces it creates itself ("node" plays the
host, "pod" the container) and deletes them by exact name afterwards. Code under
test runs in a child process started with `ip netns exec <node>`, so a bug can
never touch the machine's own namespace; results are checked with iproute2 and
sysfs, not with the code under test.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"
ENV = {"PYTHONPATH": REPO, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}

IFA_F_TENTATIVE, IFA_F_PERMANENT = 0x40, 0x80  # linux/if_addr.h

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")

# Prepended to every snippet run inside a namespace. Parameters arrive as JSON in
# argv[1] (P); results go back as JSON on stdout via out().
PRELUDE = """
import json, os, sys
from cni_bridge import addrs, links, netlink, netns
from cni_bridge.netlink import AF_INET, AF_INET6, Netlink
P = json.loads(sys.argv[1])
def out(value):
    print(json.dumps(value))
def link_info(link):
    return None if link is None else {name: getattr(link, name) for name in link.__slots__}
def addr_info(a):
    return {"index": a.index, "family": a.family, "address": a.address, "prefixlen": a.prefixlen, "flags": a.flags}
def route_info(r):
    return {name: getattr(r, name) for name in r.__slots__}
def error_info(e):
    return {"type": type(e).__name__, "errno": getattr(e, "errno", None), "msg": str(e),
            "is_oserror": isinstance(e, OSError), "is_netlink_error": isinstance(e, netlink.NetlinkError)}
"""


# -- namespaces and helpers ------------------------------------------------------------


@pytest.fixture
def make_netns():
    """Create uniquely named namespaces; delete exactly those at teardown, even on failure."""
    created = []

    def make(role: str) -> str:
        name = f"cnitest-{role}-{os.getpid()}-{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        created.append(name)
        return name

    yield make
    for name in created:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def node(make_netns) -> str:
    return make_netns("node")


@pytest.fixture
def pod(make_netns) -> str:
    return make_netns("pod")


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def run_in(ns: str, code: str, **params):
    """Run a snippet with `ip netns exec ns` and return what it out()-ed."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, PYTHON, "-c", PRELUDE + textwrap.dedent(code), json.dumps(params)],
        env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"snippet failed:\n{proc.stderr}"
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def ip_json(ns: str, *args: str):
    output = sh("ip", "-n", ns, "-j", *args)
    return json.loads(output) if output.strip() else []


def kernel_link(ns: str, name: str) -> dict:
    return ip_json(ns, "-d", "link", "show", "dev", name)[0]


def link_names(ns: str) -> set:
    return {link["ifname"] for link in ip_json(ns, "link", "show")}


def read_in(ns: str, path: str) -> str:
    """Read /proc/sys or /sys inside ns (ip netns exec remounts /sys for it)."""
    return sh("ip", "netns", "exec", ns, "cat", path).strip()


def ip_ok(ns: str, *args: str) -> bool:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True).returncode == 0


# -- imports ---------------------------------------------------------------------------


def test_import_pulls_in_only_cheap_modules():
    code = (f"import sys; sys.path.insert(0, {REPO!r}); before = set(sys.modules); "
            "import cni_bridge.netlink, cni_bridge.netns, cni_bridge.links, cni_bridge.addrs; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = set(subprocess.run([PYTHON, "-I", "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert {"cni_bridge.netlink", "cni_bridge.netns", "cni_bridge.links", "cni_bridge.addrs"} <= loaded
    expensive = {"socket", "enum", "re", "ctypes", "dataclasses", "typing", "ipaddress", "subprocess",
                 "json", "contextlib", "threading", "pyroute2"}
    assert not loaded & expensive


# -- bridge ----------------------------------------------------------------------------


@root_only
def test_ensure_bridge_creates_then_reuses(node):
    result = run_in(node, """
        nl = Netlink()
        first = links.ensure_bridge(nl, "cni0", mtu=1400)
        second = links.ensure_bridge(nl, "cni0", mtu=9000)
        try:
            nl.create_bridge("cni0")
            raw = None
        except Exception as e:
            raw = error_info(e)
        out({"first": link_info(first), "second": link_info(second), "raw_create_again": raw})
    """)
    kernel = kernel_link(node, "cni0")
    assert kernel["linkinfo"]["info_kind"] == "bridge"
    assert kernel["mtu"] == 1400  # mtu applies on creation only, like the reference
    assert "UP" in kernel["flags"]
    assert read_in(node, "/proc/sys/net/ipv6/conf/cni0/accept_ra") == "0"
    for seen in (result["first"], result["second"]):
        assert seen["index"] == kernel["ifindex"]
        assert seen["kind"] == "bridge"
        assert seen["mac"] == kernel["address"]
        assert seen["vlan_filtering"] is False
    assert result["raw_create_again"]["type"] == "AlreadyExists"
    assert result["raw_create_again"]["errno"] == 17
    assert result["raw_create_again"]["is_oserror"]


@root_only
def test_ensure_bridge_sets_promisc(node):
    result = run_in(node, """
        out(link_info(links.ensure_bridge(Netlink(), "cni0", promisc=True)))
    """)
    assert "PROMISC" in kernel_link(node, "cni0")["flags"]
    assert result["promisc"] is True


@root_only
def test_ensure_bridge_rejects_a_non_bridge_of_that_name(node):
    sh("ip", "-n", node, "link", "add", "cni0", "type", "veth", "peer", "name", "cni0peer")
    result = run_in(node, """
        try:
            links.ensure_bridge(Netlink(), "cni0")
            out(None)
        except links.LinkError as e:
            out(error_info(e))
    """)
    assert result["type"] == "LinkNotBridge"
    assert result["msg"] == '"cni0" already exists but is not a bridge'
    kernel = kernel_link(node, "cni0")
    assert kernel["linkinfo"]["info_kind"] == "veth"
    assert "UP" not in kernel["flags"]  # left alone


@root_only
def test_32_parallel_processes_ensure_the_same_bridge(node):
    start_at = time.time() + 1.5  # all processes hit create_bridge at about the same moment
    code = PRELUDE + textwrap.dedent("""
        import time
        time.sleep(max(0.0, P["start_at"] - time.time()))
        out(links.ensure_bridge(Netlink(), "cni0").index)
    """)
    procs = [subprocess.Popen(["ip", "netns", "exec", node, PYTHON, "-c", code, json.dumps({"start_at": start_at})],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(32)]
    results = [proc.communicate(timeout=60) + (proc.returncode,) for proc in procs]
    failures = [stderr for _stdout, stderr, rc in results if rc != 0]
    assert not failures, failures[0]
    indexes = {json.loads(stdout) for stdout, _stderr, _rc in results}
    bridges = ip_json(node, "link", "show", "type", "bridge")
    assert [b["ifname"] for b in bridges] == ["cni0"]
    assert indexes == {bridges[0]["ifindex"]}


# -- veth ------------------------------------------------------------------------------

SETUP_VETH = """
    nl = Netlink()
    bridge = links.ensure_bridge(nl, "cni0")
    host, pod = links.setup_veth(nl, P["pod"], "eth0", P.get("mtu"), P.get("mac"), bridge.index,
                                 hairpin=P.get("hairpin", False), isolated=P.get("isolated", False))
    out({"host": link_info(host), "pod": link_info(pod), "bridge": link_info(bridge)})
"""


@root_only
def test_setup_veth_creates_pair_across_namespaces(node, pod):
    result = run_in(node, SETUP_VETH, pod=netns_path(pod), mtu=1400, mac="0a:58:0a:f4:00:05", hairpin=True)
    host, pod_side = result["host"], result["pod"]
    assert re.fullmatch(r"veth[0-9a-f]{8}", host["name"])

    kernel_pod = kernel_link(pod, "eth0")
    assert kernel_pod["linkinfo"]["info_kind"] == "veth"
    assert kernel_pod["mtu"] == 1400
    assert kernel_pod["address"] == "0a:58:0a:f4:00:05"
    kernel_host = kernel_link(node, host["name"])
    assert kernel_host["master"] == "cni0"
    assert kernel_host["mtu"] == 1400
    assert "UP" in kernel_host["flags"]
    # each end points at the other's ifindex, in the other namespace
    assert kernel_host["link_index"] == kernel_pod["ifindex"]
    assert kernel_pod["link_index"] == kernel_host["ifindex"]
    assert "eth0" not in link_names(node) and host["name"] not in link_names(pod)

    assert host["index"] == kernel_host["ifindex"] and pod_side["index"] == kernel_pod["ifindex"]
    assert host["link_index"] == kernel_pod["ifindex"] and host["link_netnsid"] is not None
    assert pod_side["link_index"] == kernel_host["ifindex"]
    assert host["master"] == result["bridge"]["index"]
    assert pod_side["mac"] == "0a:58:0a:f4:00:05" and pod_side["mtu"] == 1400 and pod_side["kind"] == "veth"
    assert host["mac"] == kernel_host["address"]

    brport = f"/sys/class/net/{host['name']}/brport"
    assert read_in(node, f"{brport}/hairpin_mode") == "1"
    assert read_in(node, f"{brport}/isolated") == "0"
    assert read_in(node, f"/proc/sys/net/ipv6/conf/{host['name']}/accept_ra") == "0"


@root_only
def test_bridge_port_flags_isolated_and_toggling(node, pod):
    result = run_in(node, SETUP_VETH, pod=netns_path(pod), isolated=True)
    veth = result["host"]["name"]
    brport = f"/sys/class/net/{veth}/brport"
    assert read_in(node, f"{brport}/isolated") == "1"
    assert read_in(node, f"{brport}/hairpin_mode") == "0"

    run_in(node, "Netlink().set_bridge_port(P['index'], hairpin=True, isolated=False)", index=result["host"]["index"])
    assert read_in(node, f"{brport}/isolated") == "0"
    assert read_in(node, f"{brport}/hairpin_mode") == "1"

    run_in(node, "Netlink().set_bridge_port(P['index'], isolated=True)", index=result["host"]["index"])
    assert read_in(node, f"{brport}/isolated") == "1"
    assert read_in(node, f"{brport}/hairpin_mode") == "1"  # None leaves hairpin alone


@root_only
def test_setup_veth_refuses_existing_ifname(node, pod):
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    result = run_in(node, """
        nl = Netlink()
        bridge = links.ensure_bridge(nl, "cni0")
        try:
            links.setup_veth(nl, P["pod"], "eth0", None, None, bridge.index)
            out(None)
        except links.LinkError as e:
            out(error_info(e))
    """, pod=netns_path(pod))
    assert result["type"] == "VethNameTaken"
    assert result["msg"] == "container veth name provided (eth0) already exists"
    assert ip_json(node, "link", "show", "type", "veth") == []
    assert kernel_link(pod, "eth0")["link"] == "other0"  # untouched


@root_only
def test_setup_veth_draws_a_new_host_name_on_clash(node, pod):
    sh("ip", "-n", node, "link", "add", "vethdeadbeef", "type", "veth", "peer", "name", "clash0")
    result = run_in(node, """
        draws = iter([bytes.fromhex("deadbeef"), bytes.fromhex("00c0ffee")])
        links.posix.urandom = lambda n: next(draws)
        nl = Netlink()
        bridge = links.ensure_bridge(nl, "cni0")
        host, pod = links.setup_veth(nl, P["pod"], "eth0", None, None, bridge.index)
        out(host.name)
    """, pod=netns_path(pod))
    assert result == "veth00c0ffee"
    assert kernel_link(node, "veth00c0ffee")["master"] == "cni0"
    assert "master" not in kernel_link(node, "vethdeadbeef")  # the pre-existing one is untouched


@root_only
def test_setup_veth_removes_the_pair_when_plugging_fails(node, pod):
    result = run_in(node, """
        try:
            links.setup_veth(Netlink(), P["pod"], "eth0", None, None, 424242)  # no such bridge
            out(None)
        except netlink.NetlinkError as e:
            out(error_info(e))
    """, pod=netns_path(pod))
    assert result is not None and result["is_netlink_error"]
    assert "eth0" not in link_names(pod)
    assert ip_json(node, "link", "show", "type", "veth") == []


@root_only
@pytest.mark.parametrize("lost", ["create_veth", "get_link"])
def test_setup_veth_removes_the_pair_when_a_request_fails_after_the_kernel_made_it(node, pod, lost):
    """The kernel creates the pair, then the answer is lost (ENOBUFS on the socket, as
    `strace -e inject=recvfrom:error=ENOBUFS` gives it): the creation's own ACK, or the
    next request's (reading the pod end back). The failed ADD must not leave the pair."""
    result = run_in(node, """
        import errno
        real_create, real_get = Netlink.create_veth, Netlink.get_link
        made = []
        def create_veth(self, *args, **kwargs):
            real_create(self, *args, **kwargs)
            made.append(True)
            if P["lost"] == "create_veth":
                raise OSError(errno.ENOBUFS, "No buffer space available")
        def get_link(self, name_or_index):
            if P["lost"] == "get_link" and made and name_or_index == "eth0":
                made.clear()
                raise OSError(errno.ENOBUFS, "No buffer space available")
            return real_get(self, name_or_index)
        Netlink.create_veth, Netlink.get_link = create_veth, get_link
        try:
            links.setup_veth(Netlink(), P["pod"], "eth0", None, None, 0)
            out(None)
        except OSError as e:
            out(error_info(e))
    """, pod=netns_path(pod), lost=lost)
    assert result is not None and result["errno"] == 105, result
    assert "eth0" not in link_names(pod)
    assert ip_json(node, "link", "show", "type", "veth") == []


@root_only
@pytest.mark.parametrize("call,errno_,code", [("send", 105, 102), ("recv", 105, 102),
                                             ("recv", 11, 11)])
def test_a_failing_socket_is_a_netlink_error_naming_the_request(node, call, errno_, code):
    """send() or recv() of the socket itself failing (ENOBUFS when our receive buffer
    overflowed, EAGAIN) is the request's NetlinkError, as the kernel's own refusals are: the
    runtime learns which step failed (code 102), and EAGAIN stays worth a retry (code 11),
    not a bare 'No buffer space available' of code 5."""
    result = run_in(node, """
        from cni_bridge import nfnetlink
        from cni_bridge.plugin import _as_cni_error
        class Failing:
            def __init__(self, sock):
                self.sock = sock
            def __getattr__(self, name):
                if name == P["call"]:
                    def fail(*args):
                        raise OSError(P["errno"], os.strerror(P["errno"]))
                    return fail
                return getattr(self.sock, name)
        answers = []
        for make, step in ((Netlink, lambda s: s.get_link("lo")),
                           (nfnetlink.NfTables, lambda s: s.has_table(nfnetlink.INET, "x"))):
            sock = make()
            sock._sock = Failing(sock._sock)
            try:
                step(sock)
                answers.append(None)
            except OSError as e:
                answers.append(dict(error_info(e), code=_as_cni_error(e).code,
                                    cni_msg=_as_cni_error(e).msg))
        out(answers)
    """, call=call, errno=errno_)
    for answer in result:
        assert answer is not None and answer["is_netlink_error"], answer
        assert answer["errno"] == errno_ and answer["code"] == code, answer
        assert os.strerror(errno_) in answer["cni_msg"] and ": " in answer["msg"], answer
    assert "get link lo" in result[0]["msg"], result


@root_only
@pytest.mark.parametrize("deleted", ["bridge before the ADD ends", "host veth once plugged"])
def test_a_link_deleted_by_another_process_during_add_is_code_102_and_rolled_back(node, pod,
                                                                                 deleted):
    """Another process deletes the bridge (or the host veth) while an ADD uses it: the ADD
    reads the link again for its MAC and finds none. That is the environment's doing, code 102
    naming the link, and the ADD is undone; it was code 999, AttributeError on None."""
    result = run_in(node, """
        from cni_protocol.skel import serve
        real_wait, real_set = links.wait_oper_up, Netlink.set_link
        def wait_oper_up(nl, index, *args, **kwargs):
            link = real_wait(nl, index, *args, **kwargs)
            if P["deleted"].startswith("bridge"):
                nl.delete_link(nl.get_link("cnitbr0").index)
            return link
        def set_link(self, index, **kwargs):
            real_set(self, index, **kwargs)
            if P["deleted"].startswith("host") and kwargs.get("master"):
                self.delete_link(index)
        links.wait_oper_up, Netlink.set_link = wait_oper_up, set_link
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": P["pod"],
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
        conf = {"cniVersion": "1.0.0", "name": "n", "type": "bridge", "bridge": "cnitbr0"}
        answer = serve("bridge", "cni_bridge.plugin", env, json.dumps(conf).encode())
        out({"status": answer.status, "stdout": answer.stdout.decode()})
    """, pod=netns_path(pod), deleted=deleted)
    assert result["status"] == 1, result
    error = json.loads(result["stdout"])
    assert error["code"] == 102 and "disappeared" in error["msg"], error
    assert ("cnitbr0" if deleted.startswith("bridge") else "host veth veth") in error["msg"]
    assert "eth0" not in link_names(pod)
    assert ip_json(node, "link", "show", "type", "veth") == []


@root_only
def test_wait_oper_up(node, pod):
    result = run_in(node, SETUP_VETH, pod=netns_path(pod))
    index, veth = result["host"]["index"], result["host"]["name"]
    wait = """
        try:
            out(link_info(links.wait_oper_up(Netlink(), P["index"], **P["kwargs"])))
        except links.LinkError as e:
            out(error_info(e))
    """
    # The pod end is down, so the host end has no carrier. Which non-up state the
    # kernel reports (DOWN or LOWERLAYERDOWN) depends on its version; it settles
    # asynchronously, within linkwatch's one-second batching.
    time.sleep(1.2)
    settled = kernel_link(node, veth)["operstate"]
    assert settled in ("DOWN", "LOWERLAYERDOWN")
    down = run_in(node, wait, index=index, kwargs={"delays_ms": [0, 20, 20]})
    assert down["type"] == "PortNotUp"
    spelled = {"DOWN": "down", "LOWERLAYERDOWN": "lower-layer-down"}[settled]  # the reference's spelling
    assert down["msg"] == f"bridge port in error state: {spelled}"

    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    up = run_in(node, wait, index=index, kwargs={})  # the reference's schedule, up to 2.55 s
    assert up["operstate"] == "up"
    assert kernel_link(node, veth)["operstate"] == "UP"


@root_only
def test_del_pod_link_returns_global_addresses_and_is_idempotent(node, pod):
    result = run_in(node, SETUP_VETH, pod=netns_path(pod))
    sh("ip", "-n", pod, "addr", "add", "10.30.0.5/24", "dev", "eth0")
    sh("ip", "-n", pod, "addr", "add", "2001:db8:30::5/64", "dev", "eth0", "nodad")
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    deadline = time.time() + 5  # the link-local address appears once the carrier is up
    while not any(a.get("scope") == "link" for a in ip_json(pod, "addr", "show", "dev", "eth0")[0]["addr_info"]):
        assert time.time() < deadline, "no IPv6 link-local address appeared"
        time.sleep(0.05)

    delete = """
        out([addr_info(a) for a in links.del_pod_link(P["pod"], "eth0")])
    """
    removed = run_in(node, delete, pod=netns_path(pod))
    assert sorted((a["address"], a["prefixlen"]) for a in removed) == [("10.30.0.5", 24), ("2001:db8:30::5", 64)]
    assert "eth0" not in link_names(pod)
    assert result["host"]["name"] not in link_names(node)  # the peer went with it

    assert run_in(node, delete, pod=netns_path(pod)) == []
    sh("ip", "netns", "del", pod)
    assert run_in(node, delete, pod=netns_path(pod)) == []


# -- VLANs -----------------------------------------------------------------------------


def _kernel_has(node: str, *ip_link_add: str) -> bool:
    """Ask iproute2 whether this kernel can create such a link (probe deleted again)."""
    if not ip_ok(node, "link", "add", *ip_link_add):
        return False
    sh("ip", "-n", node, "link", "del", ip_link_add[0])
    return True


@root_only
def test_bridge_vlans(node, pod):
    result = run_in(node, """
        nl = Netlink()
        try:
            bridge = links.ensure_bridge(nl, "cni0", vlan_filtering=True)
        except netlink.NetlinkError as e:
            out({"bridge_error": error_info(e)})
            raise SystemExit
        host, _pod = links.setup_veth(nl, P["pod"], "eth0", None, None, bridge.index)
        links.configure_port_vlans(nl, host.index, vlan=100)
        nl.bridge_vlan_add(host.index, 200, vid_end=210)
        out({"bridge": link_info(bridge), "host": link_info(host)})
    """, pod=netns_path(pod))

    if not _kernel_has(node, "vfprobe", "type", "bridge", "vlan_filtering", "1"):
        # No CONFIG_BRIDGE_VLAN_FILTERING: the bridge driver itself must have refused
        # our IFLA_BR_VLAN_FILTERING, exactly as it refuses iproute2's.
        assert result["bridge_error"]["errno"] == 95
        sh("ip", "-n", node, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", node, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        sh("ip", "-n", node, "link", "set", "p0", "master", "br0")
        assert subprocess.run(["bridge", "-n", node, "vlan", "add", "dev", "p0", "vid", "10"],
                              capture_output=True).returncode != 0
        refused = run_in(node, """
            nl = Netlink()
            port = nl.get_link("p0").index
            errors = []
            for call in (lambda: nl.bridge_vlan_add(port, 10, pvid=True, untagged=True),
                         lambda: nl.set_bridge_vlan_filtering(nl.get_link("br0").index, True)):
                try:
                    call()
                    errors.append(None)
                except netlink.NetlinkError as e:
                    errors.append(error_info(e))
            out(errors)
        """)
        assert [e and e["errno"] for e in refused] == [95, 95]
        pytest.skip("kernel without CONFIG_BRIDGE_VLAN_FILTERING: only the refusal path was checked")

    assert ip_json(node, "-d", "link", "show", "dev", "cni0")[0]["linkinfo"]["info_data"]["vlan_filtering"] == 1
    assert result["bridge"]["vlan_filtering"] is True
    veth = result["host"]["name"]
    ports = {p["ifname"]: p["vlans"] for p in json.loads(sh("bridge", "-n", node, "-j", "vlan", "show"))}
    vlans = ports[veth]
    access = [v for v in vlans if v["vlan"] == 100]
    assert access and {"PVID", "Egress Untagged"} <= set(access[0]["flags"])
    assert not any(v["vlan"] == 1 for v in vlans)  # default VLAN removed
    trunk = {vid for v in vlans for vid in range(v["vlan"], v.get("vlanEnd", v["vlan"]) + 1) if v["vlan"] >= 200}
    assert trunk == set(range(200, 211))

    run_in(node, "Netlink().bridge_vlan_del(P['index'], 200, vid_end=210)", index=result["host"]["index"])
    ports = {p["ifname"]: p["vlans"] for p in json.loads(sh("bridge", "-n", node, "-j", "vlan", "show"))}
    assert not any(v["vlan"] >= 200 for v in ports[veth])


@root_only
def test_ensure_vlan_gateway_creates_an_access_port(node):
    result = run_in(node, """
        nl = Netlink()
        try:
            bridge = links.ensure_bridge(nl, "cni0", vlan_filtering=P["filtering"])
            first = links.ensure_vlan_gateway(nl, bridge, 100)
            second = links.ensure_vlan_gateway(nl, bridge, 100)
            out({"first": link_info(first), "second": link_info(second)})
        except netlink.NetlinkError as e:
            out({"error": error_info(e)})
    """, filtering=_kernel_has(node, "vfprobe", "type", "bridge", "vlan_filtering", "1"))
    if "error" in result:
        # No VLAN filtering in this kernel: the VLAN step is refused and the
        # half-built gateway pair must not be left behind for the next ADD to reuse.
        assert result["error"]["errno"] == 95
        assert ip_json(node, "link", "show", "type", "veth") == []
        pytest.skip("kernel without CONFIG_BRIDGE_VLAN_FILTERING: only the refusal and cleanup were checked")
    gateway = kernel_link(node, "cni0.100")
    assert gateway["linkinfo"]["info_kind"] == "veth" and "UP" in gateway["flags"]
    assert result["first"]["index"] == result["second"]["index"] == gateway["ifindex"]
    port = gateway["link"]
    assert kernel_link(node, port)["master"] == "cni0"
    ports = {p["ifname"]: p["vlans"] for p in json.loads(sh("bridge", "-n", node, "-j", "vlan", "show"))}
    assert [(v["vlan"], set(v["flags"])) for v in ports[port]] == [(100, {"PVID", "Egress Untagged"})]
    assert len(ip_json(node, "link", "show", "type", "veth")) == 2  # one pair, not two


@root_only
def test_ensure_vlan_gateway_reuses_an_existing_one(node):
    sh("ip", "-n", node, "link", "add", "cni0", "type", "bridge")
    sh("ip", "-n", node, "link", "add", "cni0.100", "type", "veth", "peer", "name", "gwport")
    result = run_in(node, """
        nl = Netlink()
        out(link_info(links.ensure_vlan_gateway(nl, nl.get_link("cni0"), 100)))
    """)
    assert result["name"] == "cni0.100" and result["index"] == kernel_link(node, "cni0.100")["ifindex"]
    assert "UP" in kernel_link(node, "cni0.100")["flags"]
    assert len(ip_json(node, "link", "show", "type", "veth")) == 2  # nothing new created


WAIT_SETTLED = """
    import time
    nl = links.netlink_in(P["pod"])
    index = nl.get_link(P["ifname"]).index
    def tentative():
        return [a.address for a in nl.list_addrs(index=index, family=AF_INET6) if a.flags & netlink.IFA_F_TENTATIVE]
    before = tentative()
    started = time.monotonic()
    try:
        links.wait_addresses_settled(nl, index, timeout=P["timeout"])
        error = None
    except links.LinkError as e:
        error = error_info(e)
    out({"before": before, "after": tentative(), "elapsed": time.monotonic() - started, "error": error})
"""


@root_only
def test_wait_addresses_settled(node, pod):
    result = run_in(node, SETUP_VETH, pod=netns_path(pod))
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    sh("ip", "-n", pod, "addr", "add", "2001:db8:40::5/64", "dev", "eth0")  # DAD on: ~1 s tentative
    settled = run_in(node, WAIT_SETTLED, pod=netns_path(pod), ifname="eth0", timeout=5)
    assert settled["error"] is None
    assert "2001:db8:40::5" in settled["before"] and settled["after"] == []
    assert not any(a.get("tentative") for a in ip_json(pod, "addr", "show", "dev", "eth0")[0]["addr_info"])

    # Without carrier DAD never runs: the wait must give up after its timeout.
    sh("ip", "-n", node, "link", "set", result["host"]["name"], "down")
    sh("ip", "-n", pod, "addr", "add", "2001:db8:41::5/64", "dev", "eth0")
    stuck = run_in(node, WAIT_SETTLED, pod=netns_path(pod), ifname="eth0", timeout=0.3)
    assert stuck["error"]["msg"] == "link eth0 still has tentative addresses after 0.3 seconds"
    assert stuck["elapsed"] >= 0.3

    # An administratively down link never finishes DAD either: nothing to wait for.
    sh("ip", "-n", pod, "link", "set", "eth0", "down")
    down = run_in(node, WAIT_SETTLED, pod=netns_path(pod), ifname="eth0", timeout=5)
    assert down["error"] is None and down["elapsed"] < 0.5


@root_only
def test_wait_addresses_settled_reports_duplicate_address(node, pod):
    # d1 (node) already owns the address, so DAD on d0 (pod) fails.
    sh("ip", "-n", node, "link", "add", "d1", "type", "veth", "peer", "name", "d0", "netns", pod)
    sh("ip", "-n", node, "addr", "add", "2001:db8:50::5/64", "dev", "d1", "nodad")
    sh("ip", "-n", node, "link", "set", "d1", "up")
    sh("ip", "-n", pod, "link", "set", "d0", "up")
    sh("ip", "-n", pod, "addr", "add", "2001:db8:50::5/64", "dev", "d0")
    result = run_in(node, WAIT_SETTLED, pod=netns_path(pod), ifname="d0", timeout=5)
    assert result["error"]["msg"] == "link d0 has address 2001:db8:50::5 in DADFAILED state"
    assert ip_json(pod, "addr", "show", "dev", "d0")[0]["addr_info"][0].get("dadfailed")


# -- links: lookup and settings ----------------------------------------------------------


@root_only
def test_get_link_and_set_link(node, pod):
    sh("ip", "-n", node, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
    result = run_in(node, """
        nl = Netlink()
        a = nl.get_link("a0")
        by_index = nl.get_link(a.index)
        nl.set_link(a.index, up=True, mtu=1280, mac="02:00:00:00:00:aa")
        after = nl.get_link("a0")
        out({"a": link_info(a), "same": link_info(by_index) == link_info(a),
             "missing_name": link_info(nl.get_link("nope0")), "missing_index": link_info(nl.get_link(424242)),
             "after": link_info(after)})
    """)
    kernel_a, kernel_b = kernel_link(node, "a0"), kernel_link(node, "b0")
    assert result["same"] is True
    assert result["missing_name"] is None and result["missing_index"] is None
    a = result["a"]
    assert (a["index"], a["kind"], a["link_index"], a["link_netnsid"]) == (kernel_a["ifindex"], "veth", kernel_b["ifindex"], None)
    assert a["master"] is None and a["flags"] & 1 == 0 and a["operstate"] == "down"
    assert kernel_a["mtu"] == 1280 and kernel_a["address"] == "02:00:00:00:00:aa" and "UP" in kernel_a["flags"]
    after = result["after"]
    assert (after["mtu"], after["mac"], after["flags"] & 1) == (1280, "02:00:00:00:00:aa", 1)

    run_in(node, """
        nl = Netlink()
        fd = os.open(P["pod"], os.O_RDONLY)
        nl.set_link(nl.get_link("b0").index, netns_fd=fd, mtu=1280)
    """, pod=netns_path(pod))
    assert "b0" not in link_names(node)
    assert kernel_link(pod, "b0")["mtu"] == 1280


@root_only
def test_delete_link(node):
    sh("ip", "-n", node, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
    result = run_in(node, """
        nl = Netlink()
        index = nl.get_link("a0").index
        nl.delete_link(index)
        try:
            nl.delete_link(index)
            out(None)
        except netlink.NetlinkError as e:
            out(error_info(e))
    """)
    assert link_names(node) == {"lo"}
    assert result["type"] == "NotFound" and result["errno"] == 19


# -- addresses ---------------------------------------------------------------------------


@root_only
def test_addresses_add_list_delete(node):
    sh("ip", "-n", node, "link", "add", "br-a", "type", "bridge")
    added = run_in(node, """
        nl = Netlink()
        index = nl.get_link("br-a").index
        nl.add_addr(index, "10.1.2.3", 24)
        nl.add_addr(index, "2001:db8::5", 64)
        try:
            nl.add_addr(index, "10.1.2.3", 24)
            again = None
        except netlink.NetlinkError as e:
            again = error_info(e)
        out({"index": index, "again": again,
             "all": [addr_info(a) for a in nl.list_addrs(index=index)],
             "v4": [addr_info(a) for a in nl.list_addrs(index=index, family=AF_INET)],
             "other_links": [addr_info(a) for a in nl.list_addrs() if a.index != index]})
    """)
    assert added["again"]["type"] == "AlreadyExists" and added["again"]["errno"] == 17
    kernel = {(a["local"], a["prefixlen"]): a for a in ip_json(node, "addr", "show", "dev", "br-a")[0]["addr_info"]}
    assert kernel[("10.1.2.3", 24)]["broadcast"] == "10.1.2.255"
    assert ("2001:db8::5", 64) in kernel
    ours = {(a["address"], a["prefixlen"]): a for a in added["all"]}
    assert set(ours) == set(kernel)
    for key, a in ours.items():
        assert a["index"] == added["index"]
        assert a["family"] == (10 if ":" in key[0] else 2)
        assert bool(a["flags"] & IFA_F_TENTATIVE) == bool(kernel[key].get("tentative"))
        assert a["flags"] & IFA_F_PERMANENT
    assert [(a["address"], a["prefixlen"]) for a in added["v4"]] == [("10.1.2.3", 24)]
    assert added["other_links"] == []  # lo has no addresses while down

    deleted = run_in(node, """
        nl = Netlink()
        results = []
        for address, prefixlen in (("10.1.2.3", 24), ("2001:db8::5", 64)):
            nl.del_addr(P["index"], address, prefixlen)
            try:
                nl.del_addr(P["index"], address, prefixlen)
                results.append(None)
            except netlink.NetlinkError as e:
                results.append(error_info(e))
        try:
            nl.add_addr(424242, "10.9.9.9", 24)
            results.append(None)
        except netlink.NetlinkError as e:
            results.append(error_info(e))
        out(results)
    """, index=added["index"])
    assert [(r["type"], r["errno"]) for r in deleted] == [("NotFound", 99), ("NotFound", 99), ("NotFound", 19)]
    assert not [a for a in ip_json(node, "addr", "show", "dev", "br-a")[0]["addr_info"] if a["scope"] == "global"]


# -- routes ------------------------------------------------------------------------------


def add_uplink_r0(node: str) -> None:
    """A veth r0 (peer r1), up, with 10.9.0.1/24 and 2001:db8:9::1/64: gateways to route via."""
    for cmd in (["link", "add", "r0", "type", "veth", "peer", "name", "r1"],
                ["addr", "add", "10.9.0.1/24", "dev", "r0"],
                ["addr", "add", "2001:db8:9::1/64", "dev", "r0", "nodad"],
                ["link", "set", "r1", "up"], ["link", "set", "r0", "up"]):
        sh("ip", "-n", node, *cmd)


@root_only
def test_routes_add_and_list(node):
    add_uplink_r0(node)
    added = run_in(node, """
        nl = Netlink()
        oif = nl.get_link("r0").index
        nl.add_route("10.20.0.0", 16, gw="10.9.0.254")
        nl.add_route("10.21.0.0", 16, oif=oif, mtu=1300, advmss=1200, priority=50)
        nl.add_route("10.22.0.0", 16, gw="10.9.0.254", table=100)
        nl.add_route("0.0.0.0", 0, gw="10.9.0.254")
        nl.add_route("2001:db8:20::", 48, gw="2001:db8:9::fe")
        try:
            nl.add_route("10.20.0.0", 16, gw="10.9.0.254")
            again = None
        except netlink.NetlinkError as e:
            again = error_info(e)
        out({"oif": oif, "again": again,
             "v4": [route_info(r) for r in nl.list_routes(AF_INET)],
             "t100": [route_info(r) for r in nl.list_routes(AF_INET, table=100)],
             "v6": [route_info(r) for r in nl.list_routes(AF_INET6)]})
    """)
    assert added["again"]["type"] == "AlreadyExists" and added["again"]["errno"] == 17

    kernel_v4 = {r["dst"]: r for r in ip_json(node, "-d", "route", "show", "table", "main")}
    assert kernel_v4["10.20.0.0/16"]["gateway"] == "10.9.0.254" and kernel_v4["10.20.0.0/16"]["protocol"] == "boot"
    assert kernel_v4["default"]["gateway"] == "10.9.0.254"
    r21 = kernel_v4["10.21.0.0/16"]
    assert r21["scope"] == "link" and r21["metric"] == 50
    assert {k: v for m in r21["metrics"] for k, v in m.items()} == {"mtu": 1300, "advmss": 1200}
    assert [r["dst"] for r in ip_json(node, "route", "show", "table", "100")] == ["10.22.0.0/16"]
    kernel_v6 = {r["dst"]: r for r in ip_json(node, "-6", "route", "show")}
    assert kernel_v6["2001:db8:20::/48"]["gateway"] == "2001:db8:9::fe"

    ours = {(r["dst"], r["prefixlen"]): r for r in added["v4"]}
    assert set(ours) == {("10.9.0.0", 24), ("10.20.0.0", 16), ("10.21.0.0", 16), ("0.0.0.0", 0)}
    assert ours[("10.20.0.0", 16)]["gw"] == "10.9.0.254" and ours[("10.20.0.0", 16)]["scope"] == 0
    assert ours[("0.0.0.0", 0)]["gw"] == "10.9.0.254"
    r = ours[("10.21.0.0", 16)]
    assert (r["gw"], r["oif"], r["scope"], r["priority"], r["mtu"], r["advmss"], r["table"]) == \
        (None, added["oif"], 253, 50, 1300, 1200, 254)
    assert [(r["dst"], r["gw"], r["table"]) for r in added["t100"]] == [("10.22.0.0", "10.9.0.254", 100)]
    v6 = {(r["dst"], r["prefixlen"]): r for r in added["v6"]}
    assert v6[("2001:db8:20::", 48)]["gw"] == "2001:db8:9::fe"


@root_only
def test_a_route_via_a_second_gateway_goes_beside_the_first(node):
    """As the reference adds routes (no NLM_F_EXCL): IPv4 keeps two routes, IPv6 makes them
    one multipath route, whose paths list_routes reports; an identical route is AlreadyExists."""
    add_uplink_r0(node)
    listed = run_in(node, """
        nl = Netlink()
        for dst, prefixlen, gws in (("10.20.0.0", 16, ("10.9.0.253", "10.9.0.254")),
                                    ("2001:db8:20::", 48, ("2001:db8:9::fd", "2001:db8:9::fe"))):
            for gw in gws:
                nl.add_route(dst, prefixlen, gw=gw)
        try:
            nl.add_route("10.20.0.0", 16, gw="10.9.0.254")
            again = None
        except netlink.NetlinkError as e:
            again = error_info(e)
        oif = nl.get_link("r0").index
        out({"oif": oif, "again": again,
             "v4": [r.nexthops for r in nl.list_routes(AF_INET) if r.dst == "10.20.0.0"],
             "v6": [r.nexthops for r in nl.list_routes(AF_INET6) if r.dst == "2001:db8:20::"]})
    """)
    assert listed["again"]["type"] == "AlreadyExists"
    oif = listed["oif"]
    assert sorted(listed["v4"]) == [[["10.9.0.253", oif]], [["10.9.0.254", oif]]]
    assert listed["v6"] == [[["2001:db8:9::fd", oif], ["2001:db8:9::fe", oif]]]
    kernel_v6 = [r for r in ip_json(node, "-6", "route", "show") if r["dst"] == "2001:db8:20::/48"]
    assert [n["gateway"] for n in kernel_v6[0]["nexthops"]] == ["2001:db8:9::fd", "2001:db8:9::fe"]



# -- gateway address and forwarding --------------------------------------------------------


@root_only
def test_ensure_gateway_addr_force_address_semantics(node):
    ensure = """
        nl = Netlink()
        bridge = links.ensure_bridge(nl, "cni0")
        try:
            for gw, prefixlen, force in P["calls"]:
                addrs.ensure_gateway_addr(nl, bridge.index, gw, prefixlen, force)
            out(None)
        except addrs.AddressConflict as e:
            out(error_info(e))
    """

    def global_addrs():
        info = ip_json(node, "addr", "show", "dev", "cni0")[0]["addr_info"]
        return sorted(f"{a['local']}/{a['prefixlen']}" for a in info if a["scope"] == "global")

    assert run_in(node, ensure, calls=[["10.1.0.1", 24, False], ["10.1.0.1", 24, False]]) is None
    assert global_addrs() == ["10.1.0.1/24"]
    # the MAC was set explicitly (NET_ADDR_SET), so it no longer follows the ports
    assert read_in(node, "/sys/class/net/cni0/addr_assign_type") == "3"

    conflict = run_in(node, ensure, calls=[["10.2.0.1", 24, False]])
    assert conflict["msg"] == '"cni0" already has an IP address different from 10.2.0.1/24'
    assert global_addrs() == ["10.1.0.1/24"]

    assert run_in(node, ensure, calls=[["10.2.0.1", 24, True]]) is None
    assert global_addrs() == ["10.2.0.1/24"]

    # IPv6: non-overlapping subnets coexist, an overlapping one conflicts
    assert run_in(node, ensure, calls=[["2001:db8:1::1", 64, False], ["2001:db8:2::1", 64, False]]) is None
    assert global_addrs() == ["10.2.0.1/24", "2001:db8:1::1/64", "2001:db8:2::1/64"]
    conflict = run_in(node, ensure, calls=[["2001:db8:1::2", 64, False]])
    assert conflict["msg"] == '"cni0" already has an IP address different from 2001:db8:1::2/64'
    assert run_in(node, ensure, calls=[["2001:db8:1::2", 64, True]]) is None
    assert global_addrs() == ["10.2.0.1/24", "2001:db8:1::2/64", "2001:db8:2::1/64"]


@root_only
def test_ensure_addr_and_ensure_route_tolerate_existing(node):
    sh("ip", "-n", node, "link", "add", "br-x", "type", "bridge")
    sh("ip", "-n", node, "link", "set", "br-x", "up")
    run_in(node, """
        nl = Netlink()
        index = nl.get_link("br-x").index
        for _ in range(2):
            addrs.ensure_addr(nl, index, "10.5.0.1", 24)
            addrs.ensure_route(nl, "10.6.0.0", 16, gw="10.5.0.9")
    """)
    assert [a["local"] for a in ip_json(node, "addr", "show", "dev", "br-x")[0]["addr_info"] if a["family"] == "inet"] == ["10.5.0.1"]
    assert [r["dst"] for r in ip_json(node, "route", "show", "10.6.0.0/16")] == ["10.6.0.0/16"]


@root_only
def test_enable_forwarding_is_per_namespace(node, pod):
    assert read_in(node, "/proc/sys/net/ipv4/ip_forward") == "0"
    run_in(node, """
        addrs.enable_forwarding(AF_INET)
        addrs.enable_forwarding(AF_INET6)
        addrs.enable_forwarding(AF_INET)  # already on: no write
    """)
    assert read_in(node, "/proc/sys/net/ipv4/ip_forward") == "1"
    assert read_in(node, "/proc/sys/net/ipv6/conf/all/forwarding") == "1"
    assert read_in(pod, "/proc/sys/net/ipv4/ip_forward") == "0"


# -- netns.enter -------------------------------------------------------------------------


@root_only
def test_netns_enter_switches_and_restores(node, pod):
    result = run_in(node, """
        def current():
            return os.stat("/proc/thread-self/ns/net").st_ino
        before = current()
        with netns.enter(P["pod"]):
            inside = current()
            nl = Netlink()
            links.write_sysctl("net/ipv4/ip_forward", "1")
        after = current()
        nl.create_bridge("probe0")  # the socket stays in the namespace it was opened in
        try:
            with netns.enter(P["pod"]):
                raise KeyError("boom")
        except KeyError:
            pass
        after_exception = current()
        errors = []
        for path in (P["missing"], "/etc/hostname"):
            try:
                with netns.enter(path):
                    errors.append(None)
            except netns.NetnsError as e:
                errors.append(error_info(e))
        out({"before": before, "inside": inside, "after": after, "after_exception": after_exception,
             "after_errors": current(), "errors": errors, "pod_ino": os.stat(P["pod"]).st_ino})
    """, pod=netns_path(pod), missing=netns_path(f"cnitest-missing-{secrets.token_hex(4)}"))
    assert result["inside"] == result["pod_ino"] != result["before"]
    assert result["after"] == result["after_exception"] == result["after_errors"] == result["before"]
    missing, not_netns = result["errors"]
    assert missing["type"] == "NetnsNotFound" and missing["errno"] == 2 and missing["is_oserror"]
    assert not_netns["type"] == "NotANetns" and not_netns["errno"] == 22
    assert "probe0" in link_names(pod) and "probe0" not in link_names(node)
    assert read_in(pod, "/proc/sys/net/ipv4/ip_forward") == "1"
    assert read_in(node, "/proc/sys/net/ipv4/ip_forward") == "0"
