"""ipMasq's backends (cni_bridge.masquerade) against the real kernel and the Go reference plugins.

Every test runs the code in network namespaces of its own (``ip netns exec``) and deletes them
afterwards, also on failure: nothing here creates rules, chains or links in the machine's root
namespace. The three backends:

- legacy: the legacy x_tables, through python-iptables (a host whose `iptables` is legacy);
- iptables-nft: the nf_tables-backed iptables tables (Debian 12's `iptables`);
- nftables: table ``inet cni_plugins_masquerade`` (``ipMasqBackend: "nftables"``).

"Byte for byte" means: the Go plugin's ADD in one netns and ours in another, for the same
network, container ID, ifname and addresses, leave the same tables, compared as the host's
tools print them (iptables-save, nft list) *and* as the kernel dumps them over netlink (every
expression and the rules' user data; only handles differ). Both DEL directions are tested:
the Go plugin's DEL of our rules, ours of theirs. Debian's Go 1.1.1 (/usr/lib/cni) has only the
iptables backend; upstream v1.9.1 (../shared/reference-v1.9.1) has both.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cni_bridge.masquerade import naming  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import REFERENCE_DIR as GO_111, UPSTREAM_DIR as GO_191  # noqa: E402

LEGACY_MULTI = Path("/usr/sbin/xtables-legacy-multi")
CHILD_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
BACKENDS = ["legacy", "iptables-nft", "nftables"]
NS_PREFIX = f"masqt{os.getpid()}"
_ns_counter = itertools.count()


def _iptc_parent() -> str | None:
    import importlib.util
    spec = importlib.util.find_spec("iptc")  # located, not imported
    return str(Path(list(spec.submodule_search_locations)[0]).parent) if spec else None


IPTC_PARENT = _iptc_parent()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, nftables)"
    for tool in ("ip", "iptables-legacy-save", "iptables-nft-save", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make deps)"
    if IPTC_PARENT is None:
        return "python-iptables (iptc) not importable by the test interpreter"
    return None


root_only = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
needs_go_111 = pytest.mark.skipif(
    not ((GO_111 / "bridge").exists() and (GO_111 / "host-local").exists()
         and LEGACY_MULTI.exists()),
    reason="Debian's Go plugins (/usr/lib/cni, containernetworking-plugins) or "
           "xtables-legacy-multi missing")
needs_go_191 = pytest.mark.skipif(
    not (GO_191 / "bridge").exists(),
    reason=f"upstream v1.9.1 plugins not found in {GO_191} (../shared is absent outside CI)")


# --------------------------------------------------------------------------- namespaces


def _new_netns() -> str:
    name = f"{NS_PREFIX}-{next(_ns_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def _del_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns():
    name = _new_netns()
    try:
        yield name
    finally:
        _del_netns(name)


@pytest.fixture
def netns_pair():
    """(host ns, container ns) for the Go plugin: its 'host' is our test netns."""
    host, cont = _new_netns(), None
    try:
        cont = _new_netns()
        yield host, cont
    finally:
        if cont:
            _del_netns(cont)
        _del_netns(host)


def _exec(ns: str, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          check=check, **kw)


def _child_env(extra: dict[str, str] | None = None, pythonpath: str | None = None) -> dict:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    env["PYTHONPATH"] = pythonpath if pythonpath is not None else f"{ROOT}:{IPTC_PARENT}"
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- the module, in a netns

_DRIVER = """
import json, sys
from cni_bridge import masquerade as m
op, args = sys.argv[1], json.loads(sys.argv[2])
try:
    if op == "setup":
        backend, net, cid, ifname, cidrs = args
        out = m.setup(backend, m.Attachment(net, cid, ifname), cidrs)
    elif op == "teardown":
        net, cid, ifname, cidrs = args
        out = m.teardown(m.Attachment(net, cid, ifname), cidrs)
    elif op == "missing":
        backend, net, cid, ifname, cidrs = args
        out = m.missing(backend, m.Attachment(net, cid, ifname), cidrs)
    elif op == "gc":
        net, valid = args
        out = m.gc(net, {tuple(v) for v in valid})
    elif op == "choose":
        out = m.choose(args[0])
    print(json.dumps({"ok": out}))
except m.MasqueradeError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def masq(ns: str, op: str, *args, expect_error: bool = False, env: dict | None = None):
    """cni_bridge.masquerade.<op>(*args) in a child inside ns; its result."""
    proc = _exec(ns, CHILD_PYTHON, "-c", _DRIVER, op, json.dumps(args), env=env or _child_env(),
                 check=False)
    assert proc.returncode == 0, f"{op} crashed: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if expect_error:
        assert "error" in out, f"{op} unexpectedly succeeded"
        return out["error"]
    assert "error" not in out, out.get("error")
    return out["ok"]


def setup(ns: str, backend: str, cid: str, cidrs: list[str], net: str = "mynet",
          ifname: str = "eth0") -> None:
    masq(ns, "setup", backend, net, cid, ifname, cidrs)


def teardown(ns: str, cid: str, cidrs: list[str] | None, net: str = "mynet",
             ifname: str = "eth0") -> None:
    masq(ns, "teardown", net, cid, ifname, cidrs)


# --------------------------------------------------------------------------- what the kernel holds


def iptables_save(ns: str, backend: str, family: int = 4) -> list[str]:
    """The nat table of an iptables backend as iptables-save prints it, minus comments."""
    tool = {"legacy": "iptables-legacy-save", "iptables-nft": "iptables-nft-save"}[backend]
    tool = tool if family == 4 else "ip6" + tool[2:]
    out = _exec(ns, tool, "-t", "nat").stdout
    # Chain counters count whatever the netns sent meanwhile: a new bridge resends its IGMPv3
    # report within a second, and once a nat table exists (conntrack runs) that report is
    # counted in OUTPUT and POSTROUTING, at a random moment (issue 10, item 17). The rules are
    # what is compared.
    return [re.sub(r" \[\d+:\d+\]$", " [0:0]", line) for line in out.splitlines()
            if not line.startswith("#")]


def nft_list(ns: str, family: str, table: str) -> list[str]:
    proc = _exec(ns, "nft", "list", "table", family, table, check=False)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def cni_lines(ns: str, backend: str, family: int = 4) -> list[str]:
    """Every trace of ours in one backend: CNI- chains and rules, or nftables masquerade rules."""
    if backend == "nftables":
        return [line for line in nft_list(ns, "inet", naming.NFT_TABLE)
                if line.endswith('"') and " masquerade comment " in line
                and line.startswith("ip6 " if family == 6 else "ip ")]
    return [line for line in iptables_save(ns, backend, family) if "CNI-" in line]


def nothing_left(ns: str) -> None:
    for backend in BACKENDS:
        for family in (4, 6):
            assert cni_lines(ns, backend, family) == [], (backend, family)
    for backend in ("legacy", "iptables-nft"):
        for family in (4, 6):
            assert not [line for line in iptables_save(ns, backend, family)
                        if line.startswith("-A POSTROUTING")], (backend, family)


_KERNEL_DUMP = """
import json, sys
from cni_bridge import nfnetlink as nf
family = {"ip": nf.IPV4, "ip6": nf.IPV6, "inet": nf.INET, "bridge": nf.BRIDGE}[sys.argv[1]]
out = []
with nf.NfTables() as t:
    for chain in t.list_chains(family, sys.argv[2]):
        rules = [[[e.name, {k: v.hex() for k, v in e.attrs.items()}] for e in r.exprs]
                 + [(r.userdata or b"").hex()] for r in t.list_rules(family, sys.argv[2], chain.name)]
        out.append([chain.name, chain.hook, chain.priority, chain.type,
                    (chain.userdata or b"").hex(), rules])
print(json.dumps(sorted(out, key=lambda c: c[0])))
"""


def kernel_dump(ns: str, family: str, table: str) -> list:
    """Every chain of the table with every rule's expressions and user data, as the kernel
    dumps them over netlink (handles left out: they differ by creation order)."""
    proc = _exec(ns, CHILD_PYTHON, "-c", _KERNEL_DUMP, family, table,
                 env=_child_env(pythonpath=str(ROOT)))
    return json.loads(proc.stdout)


def legacy_tables(ns: str, family: int = 4) -> list[str]:
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    return _exec(ns, "cat", f"/proc/net/{name}", check=False).stdout.split()


def nft_tables(ns: str) -> list[str]:
    return [line for line in _exec(ns, "nft", "list", "tables").stdout.splitlines()]


# --------------------------------------------------------------------------- the Go plugins


@pytest.fixture(scope="module")
def legacy_path(tmp_path_factory) -> str:
    """PATH for a plugin whose iptables/ip6tables are the legacy ones: a legacy host."""
    d = tmp_path_factory.mktemp("legacy-bin")
    for tool in ("iptables", "ip6tables"):
        (d / tool).symlink_to(LEGACY_MULTI)
    return f"{d}:/usr/sbin:/usr/bin:/sbin:/bin"


HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the host's own iptables: nf_tables here


def go_bridge(go_dir: Path, command: str, host_ns: str, cont_ns: str, container_id: str,
              conf: dict, path: str = HOST_PATH, netns: str | None = None) -> dict | None:
    env = {"PATH": path, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": f"/run/netns/{cont_ns}" if netns is None else netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": str(go_dir)}
    proc = _exec(host_ns, str(go_dir / "bridge"), input=json.dumps(conf), env=env, check=False)
    assert proc.returncode == 0, f"Go bridge {command} failed: {proc.stdout} {proc.stderr}"
    return json.loads(proc.stdout) if proc.stdout.strip() else None


FAMILIES = {"ipv4": [[{"subnet": "10.22.0.0/24"}]],
            "ipv6": [[{"subnet": "fd00:22::/64"}]],
            "dual": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]]}


def bridge_conf(tmp_path: Path, ranges: list, name: str = "mynet", **keys) -> dict:
    conf = {"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": "cnitest0",
            "isGateway": True, "ipMasq": True,
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": ranges}}
    conf.update(keys)
    return conf


# The reference's backend for each (Go plugin, conf, PATH): where our rules must land too.
REFERENCE_CASES = [
    pytest.param(GO_111, {}, "host", "iptables-nft", marks=needs_go_111, id="1.1.1-host-iptables"),
    pytest.param(GO_111, {}, "legacy", "legacy", marks=needs_go_111, id="1.1.1-legacy-iptables"),
    pytest.param(GO_191, {}, "host", "iptables-nft", marks=needs_go_191, id="1.9.1-unset"),
    pytest.param(GO_191, {"ipMasqBackend": "iptables"}, "host", "iptables-nft",
                 marks=needs_go_191, id="1.9.1-iptables"),
    pytest.param(GO_191, {"ipMasqBackend": "nftables"}, "host", "nftables",
                 marks=needs_go_191, id="1.9.1-nftables"),
]


def snapshot(ns: str, backend: str) -> dict:
    """What a backend holds, as the tools print it and as the kernel dumps it."""
    if backend == "legacy":
        return {"save4": iptables_save(ns, "legacy", 4), "save6": iptables_save(ns, "legacy", 6)}
    if backend == "iptables-nft":
        return {"save4": iptables_save(ns, backend, 4), "save6": iptables_save(ns, backend, 6),
                "kernel4": kernel_dump(ns, "ip", "nat"), "kernel6": kernel_dump(ns, "ip6", "nat")}
    return {"list": nft_list(ns, "inet", naming.NFT_TABLE),
            "kernel": kernel_dump(ns, "inet", naming.NFT_TABLE)}


# --------------------------------------------------------------------------- pure functions (no root)


def test_names_match_the_reference():
    # Values the reference derives for network "mynet", container "abc123" (Go 1.1.1 observed)
    # and the worked example of upstream's nftables unit test.
    assert naming.iptables_chain("mynet", "abc123") == "CNI-70a29d9dc18bc4d652ea5d59"
    assert naming.iptables_comment("mynet", "abc123") == 'name: "mynet" id: "abc123"'
    assert naming.nft_comment("unit-test", "eth0", "one") == \
        b"6fd94d501e58f0aa-287fc69eff0574a2, net: unit-test, if: eth0, id: one"
    long = naming.nft_comment("net", "eth0", "x" * 300)
    assert len(long) == 128 and long.startswith(naming.nft_instance_prefix("net", "eth0", "x" * 300).encode())
    assert naming.macspoof_chain("abc", "eth0") == "cni-br-iface-abc-eth0"


def test_bad_address_is_a_one_line_domain_error():
    from cni_bridge import masquerade

    for bad in ("10.0.0.300/24", "10.0.0.1/33", "nonsense"):
        with pytest.raises(masquerade.MasqueradeError) as info:
            masquerade.setup("nftables", masquerade.Attachment("n", "c", "eth0"), [bad])
        assert str(info.value).startswith("ipMasq: invalid pod address")
        assert "\n" not in str(info.value)


def test_module_import_loads_nothing_heavy():
    code = ("import sys; import cni_bridge.masquerade, cni_bridge.masquerade.iptables_nft, "
            "cni_bridge.masquerade.nftables, cni_bridge.masquerade.legacy; "
            "bad = [m for m in ('iptc', 'ctypes', '_ctypes', 'subprocess', 'hashlib', 'ipaddress', "
            "'re', 'dataclasses', 'typing', 'json') if m in sys.modules]; print(bad)")
    out = subprocess.run([CHILD_PYTHON, "-S", "-c", code], env=_child_env(pythonpath=str(ROOT)),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_choose_follows_the_reference(monkeypatch):
    """Unset: the host's iptables if usable, else nftables; errors name what is missing."""
    from cni_bridge.masquerade import MasqueradeError, selection

    def host(found, legacy=None):
        monkeypatch.setattr(selection, "host_iptables", lambda: found)
        monkeypatch.setattr(selection, "legacy_problem", lambda: legacy)

    host(("/usr/sbin/iptables", "nft"))
    assert [selection.choose(s) for s in (None, "iptables", "nftables")] == \
        ["iptables-nft", "iptables-nft", "nftables"]
    host(("/usr/sbin/iptables", "legacy"))
    assert selection.choose(None) == "legacy"
    host(("/usr/sbin/iptables", "legacy"), legacy="the kernel has no legacy x_tables")
    assert selection.choose(None) == "nftables"  # iptables unusable: nftables
    with pytest.raises(MasqueradeError, match='"iptables" cannot be used: the kernel has no legacy'):
        selection.choose("iptables")
    host(None)
    assert selection.choose(None) == "nftables"
    with pytest.raises(MasqueradeError, match='"iptables" cannot be used: no iptables command'):
        selection.choose("iptables")


@root_only
def test_host_iptables_is_told_by_its_path_and_a_wrapper_is_asked(tmp_path):
    from cni_bridge.masquerade import selection

    env = os.environ.copy()
    try:
        (tmp_path / "legacy").mkdir()
        (tmp_path / "legacy" / "iptables").symlink_to(LEGACY_MULTI)
        wrapper = tmp_path / "wrapped"
        wrapper.mkdir()
        (wrapper / "iptables").write_text('#!/bin/sh\necho "iptables v1.8.9 (legacy)"\n')
        (wrapper / "iptables").chmod(0o755)
        os.environ["PATH"] = str(tmp_path / "legacy")
        assert selection.host_iptables() == (str(tmp_path / "legacy" / "iptables"), "legacy")
        os.environ["PATH"] = str(wrapper)
        assert selection.host_iptables() == (str(wrapper / "iptables"), "legacy")
        os.environ["PATH"] = "/nonexistent"  # no PATH hit: the usual places, Debian's nft one
        assert selection.host_iptables() == ("/usr/sbin/iptables", "nft")
    finally:
        os.environ.clear()
        os.environ.update(env)


# --------------------------------------------------------------------------- every backend


@root_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_setup_is_idempotent_and_teardown_repeatable(netns, backend):
    cidrs = ["10.22.0.2/24", "fd00:22::2/64"]
    setup(netns, backend, "c1", cidrs)
    once = snapshot(netns, backend)
    assert len(cni_lines(netns, backend, 4)) == (1 if backend == "nftables" else 4)
    assert len(cni_lines(netns, backend, 6)) == (1 if backend == "nftables" else 4)
    setup(netns, backend, "c1", cidrs)
    setup(netns, backend, "c1", ["10.22.0.2/24"] + cidrs)
    assert snapshot(netns, backend) == once
    for other in BACKENDS:
        if other != backend:
            assert cni_lines(netns, other, 4) == cni_lines(netns, other, 6) == []
    teardown(netns, "c1", cidrs)
    nothing_left(netns)
    teardown(netns, "c1", cidrs)  # DEL is repeatable
    teardown(netns, "c1", None)


@root_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_teardown_without_addresses_finds_the_rules_by_name(netns, backend):
    """DEL with a vanished netns and no prevResult: nothing but the attachment's names."""
    setup(netns, backend, "c1", ["10.22.0.2/24", "fd00:22::2/64"])
    setup(netns, backend, "keep", ["10.22.0.3/24"])
    teardown(netns, "c1", None)
    assert cni_lines(netns, backend, 6) == []
    left = cni_lines(netns, backend, 4)
    assert left and all("10.22.0.2" not in line for line in left)
    assert len(left) == (1 if backend == "nftables" else 4)


@root_only
def test_teardown_when_nothing_exists_creates_nothing(netns):
    teardown(netns, "ghost", ["10.22.0.2/24", "fd00:22::2/64"])
    teardown(netns, "ghost", None)
    masq(netns, "gc", "mynet", [])
    assert "nat" not in legacy_tables(netns, 4) and "nat" not in legacy_tables(netns, 6)
    assert nft_tables(netns) == []
    for backend in BACKENDS:  # a table with other attachments' rules but none of ours
        setup(netns, backend, "other", ["10.22.0.9/24"])
    teardown(netns, "ghost", ["10.22.0.2/24"])
    teardown(netns, "ghost", None)
    for backend in BACKENDS:
        assert len(cni_lines(netns, backend, 4)) == (1 if backend == "nftables" else 4)


@root_only
@pytest.mark.parametrize("backend", ["legacy", "iptables-nft"])
def test_second_subnet_accept_goes_before_masquerade(netns, backend):
    setup(netns, backend, "c1", ["10.22.0.2/24"])
    setup(netns, backend, "c1", ["10.22.0.2/24", "10.99.0.5/16"])
    chain = naming.iptables_chain("mynet", "c1")
    save = iptables_save(netns, backend)
    rules = [line for line in save if line.startswith(f"-A {chain} ")]
    assert [r.split(" -j ")[-1] for r in rules] == ["ACCEPT", "ACCEPT", "MASQUERADE"]
    assert "-d 10.99.0.0/16" in rules[1]
    assert len([line for line in save if line.startswith("-A POSTROUTING")]) == 2


@root_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_attachments_of_one_container_are_torn_down_one_at_a_time(netns, backend):
    """c1/eth0 and c1/eth1 on one network share the iptables chain (it is named after network
    and container ID, as the reference's): DEL of eth1 must leave eth0's masquerade working."""
    setup(netns, backend, "c1", ["10.22.0.2/24"], ifname="eth0")
    setup(netns, backend, "c1", ["10.22.0.3/24"], ifname="eth1")
    teardown(netns, "c1", ["10.22.0.3/24"], ifname="eth1")
    assert masq(netns, "missing", backend, "mynet", "c1", "eth0", ["10.22.0.2/24"]) == []
    left = "\n".join(cni_lines(netns, backend))
    assert "10.22.0.2" in left and "10.22.0.3" not in left
    teardown(netns, "c1", ["10.22.0.2/24"], ifname="eth0")
    nothing_left(netns)


@root_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_names_each_absent_rule(netns, backend):
    cidrs = ["10.22.0.2/24", "fd00:22::2/64"]
    assert masq(netns, "missing", backend, "mynet", "c1", "eth0", cidrs) != []
    setup(netns, backend, "c1", cidrs)
    assert masq(netns, "missing", backend, "mynet", "c1", "eth0", cidrs) == []
    chain = naming.iptables_chain("mynet", "c1")
    if backend == "nftables":
        handle = [line for line in _exec(netns, "nft", "-a", "list", "chain", "inet",
                                         naming.NFT_TABLE, "masq_checks").stdout.splitlines()
                  if "ip6 saddr" in line][0].rsplit("handle ", 1)[1]
        _exec(netns, "nft", "delete", "rule", "inet", naming.NFT_TABLE, "masq_checks",
              "handle", handle)
        assert masq(netns, "missing", backend, "mynet", "c1", "eth0", cidrs) == \
            [f"nftables inet {naming.NFT_TABLE} masq_checks: ip saddr fd00:22::2 masquerade"]
    else:
        tool = "iptables-legacy" if backend == "legacy" else "iptables-nft"
        jump = [line for line in iptables_save(netns, backend) if line.startswith("-A POSTROUTING")][0]
        _exec(netns, "sh", "-c", f"{tool} -w -t nat {jump.replace('-A ', '-D ', 1)}")
        assert masq(netns, "missing", backend, "mynet", "c1", "eth0", cidrs) == \
            [f"POSTROUTING: -s 10.22.0.2 -j {chain}"]
        _exec(netns, tool, "-w", "-t", "nat", "-F", chain)
        gaps = masq(netns, "missing", backend, "mynet", "c1", "eth0", cidrs)
        assert f"{chain}: -d 10.22.0.0/24 -j ACCEPT" in gaps and f"{chain}: -j MASQUERADE" in gaps


@root_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_gc_keeps_the_valid_and_removes_the_rest_also_with_long_ids(netns, backend):
    """The longest ID ADD accepts (1024 bytes): iptables cuts the comment to 255 bytes (its
    closing quote goes), nftables to 128; GC must find those chains and rules all the same."""
    from cni_protocol.request import MAX_CONTAINER_ID
    long_id = "L" + "x" * (MAX_CONTAINER_ID - 1)
    for cid, cidr in (("a", "10.22.0.2/24"), ("b", "10.22.0.3/24"), ("c", "fd00:22::4/64"),
                      (long_id, "10.22.0.5/24")):
        setup(netns, backend, cid, [cidr])
    setup(netns, backend, "x", ["10.33.0.2/24"], net="othernet")
    if backend != "nftables":
        # A chain of another plugin with our comment format (portmap's CNI-DN-...) is not ours.
        tool = "iptables-legacy" if backend == "legacy" else "iptables-nft"
        dn, comment = "CNI-DN-0123456789abcdef01234", naming.iptables_comment("mynet", "zzz")
        _exec(netns, tool, "-w", "-t", "nat", "-N", dn)
        _exec(netns, tool, "-w", "-t", "nat", "-A", dn, "-j", "RETURN", "-m", "comment",
              "--comment", comment)
    masq(netns, "gc", "mynet", [["a", "eth0"]])
    text = "\n".join(cni_lines(netns, backend, 4) + cni_lines(netns, backend, 6))
    assert "10.22.0.2" in text and "10.33.0.2" in text
    for gone in ("10.22.0.3", "fd00:22::4", "10.22.0.5"):
        assert gone not in text, (gone, text)
    if backend != "nftables":
        assert dn in text
        assert naming.iptables_chain("mynet", long_id) not in text
    masq(netns, "gc", "mynet", [["a", "eth0"]])  # nothing more to do
    assert "10.22.0.2" in "\n".join(cni_lines(netns, backend, 4))


_PARALLEL_CHILD = """
import os, sys, time
from cni_bridge import masquerade as m
backend, i, flag_dir, op = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if backend == "legacy":
    from cni_bridge.masquerade import iptc_loader
    iptc_loader.load_iptc(False)                  # get the slow part out of the way first
open(os.path.join(flag_dir, f"ready-{op}-{i}"), "w").close()
while not os.path.exists(os.path.join(flag_dir, f"go-{op}")):
    time.sleep(0.001)
att = m.Attachment("mynet", f"par{i}", "eth0")
if op == "setup":
    m.setup(backend, att, [f"10.30.{i}.2/24"])
else:
    m.teardown(att, [f"10.30.{i}.2/24"])
"""


def _all_at_once(netns: str, tmp_path: Path, backend: str, op: str, n: int) -> None:
    procs = [subprocess.Popen(["ip", "netns", "exec", netns, CHILD_PYTHON, "-c", _PARALLEL_CHILD,
                               backend, str(i), str(tmp_path), op], env=_child_env(),
                              stderr=subprocess.PIPE) for i in range(n)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob(f"ready-{op}-*"))) < n:
            assert time.monotonic() < deadline, "children did not get ready"
            assert all(p.poll() in (None, 0) for p in procs), "a child died early"
            time.sleep(0.01)
        (tmp_path / f"go-{op}").touch()
        errors = [p.stderr.read().decode() for p in procs if p.wait(timeout=120) != 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert errors == []


@root_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_32_parallel_setups_all_survive_and_32_parallel_teardowns_leave_nothing(
        netns, tmp_path, backend):
    n = 32
    _all_at_once(netns, tmp_path, backend, "setup", n)
    lines = cni_lines(netns, backend)
    for i in range(n):
        if backend == "nftables":
            assert sum(f"ip saddr 10.30.{i}.2 " in line for line in lines) == 1
        else:
            chain = naming.iptables_chain("mynet", f"par{i}")
            assert sum(line.startswith("-A POSTROUTING") and chain in line for line in lines) == 1
            assert sum(line.startswith(f"-A {chain} ") for line in lines) == 2
    if backend == "nftables":  # 32 first ADDs raced to write postrouting's three rules
        assert len([line for line in nft_list(netns, "inet", naming.NFT_TABLE)
                    if line.endswith(("return", "goto masq_checks"))]) == 3
    _all_at_once(netns, tmp_path, backend, "teardown", n)
    nothing_left(netns)


# --------------------------------------------------------------------------- against the Go plugins


@root_only
@pytest.mark.parametrize("families", list(FAMILIES))
@pytest.mark.parametrize("go_dir,keys,iptables,backend", REFERENCE_CASES)
def test_rules_byte_for_byte_as_the_reference_writes_them(netns_pair, netns, tmp_path, legacy_path,
                                                           go_dir, keys, iptables, backend,
                                                           families):
    """The Go plugin's ADD in one netns, ours in another (same IDs and addresses)."""
    host, cont = netns_pair
    path = legacy_path if iptables == "legacy" else HOST_PATH
    conf = bridge_conf(tmp_path, FAMILIES[families], **keys)
    result = go_bridge(go_dir, "ADD", host, cont, "abc123", conf, path)
    cidrs = [ip["address"] for ip in result["ips"]]
    reference = snapshot(host, backend)
    assert cni_lines(host, backend, 4) or cni_lines(host, backend, 6)

    env = _child_env({"PATH": path})
    chosen = masq(netns, "choose", keys.get("ipMasqBackend"), env=env)
    assert chosen == backend  # the same backend the reference picked on this host and conf
    masq(netns, "setup", chosen, "mynet", "abc123", "eth0", cidrs, env=env)
    assert snapshot(netns, backend) == reference
    for other in BACKENDS:
        if other != backend:
            assert cni_lines(netns, other, 4) == cni_lines(netns, other, 6) == [], other


@root_only
@pytest.mark.parametrize("with_addresses", [True, False], ids=["addresses", "no-addresses"])
@pytest.mark.parametrize("go_dir,keys,iptables,backend", REFERENCE_CASES)
def test_our_teardown_removes_the_references_rules(netns_pair, tmp_path, legacy_path, go_dir,
                                                   keys, iptables, backend, with_addresses):
    host, cont = netns_pair
    path = legacy_path if iptables == "legacy" else HOST_PATH
    result = go_bridge(go_dir, "ADD", host, cont, "ctr-go", bridge_conf(tmp_path, FAMILIES["dual"],
                                                                         **keys), path)
    assert cni_lines(host, backend, 4) and cni_lines(host, backend, 6)
    cidrs = [ip["address"] for ip in result["ips"]] if with_addresses else None
    masq(host, "teardown", "mynet", "ctr-go", "eth0", cidrs)
    nothing_left(host)


@root_only
@pytest.mark.parametrize("go_dir,keys,iptables,backend", REFERENCE_CASES)
def test_the_references_del_removes_our_rules(netns_pair, tmp_path, legacy_path, go_dir, keys,
                                              iptables, backend):
    """Our rules for the pod the Go plugin made; its DEL (with the pod's netns) removes them."""
    host, cont = netns_pair
    path = legacy_path if iptables == "legacy" else HOST_PATH
    conf = bridge_conf(tmp_path, FAMILIES["dual"], **keys)
    result = go_bridge(go_dir, "ADD", host, cont, "ctr-swap", conf, path)
    cidrs = [ip["address"] for ip in result["ips"]]
    reference = snapshot(host, backend)
    masq(host, "teardown", "mynet", "ctr-swap", "eth0", cidrs)
    nothing_left(host)
    masq(host, "setup", backend, "mynet", "ctr-swap", "eth0", cidrs,
         env=_child_env({"PATH": path}))
    assert snapshot(host, backend) == reference  # the rules are ours now, the same ones
    go_bridge(go_dir, "DEL", host, cont, "ctr-swap", conf, path)
    nothing_left(host)


# --------------------------------------------------------------------------- legacy specifics


@root_only
def test_legacy_teardown_removes_an_old_cidr_jump(netns):
    """Old plugins jumped with ``-s <cidr>``; teardown must remove that form too."""
    chain, comment = naming.iptables_chain("mynet", "old"), naming.iptables_comment("mynet", "old")
    for args in (["-N", chain],
                 ["-A", chain, "-d", "10.22.0.0/24", "-j", "ACCEPT", "-m", "comment", "--comment", comment],
                 ["-A", "POSTROUTING", "-s", "10.22.0.0/24", "-j", chain, "-m", "comment", "--comment", comment],
                 ["-A", "POSTROUTING", "-s", "10.22.0.7", "-j", chain, "-m", "comment", "--comment", comment]):
        _exec(netns, "iptables-legacy", "-w", "-t", "nat", *args)
    teardown(netns, "old", ["10.22.0.7/24"])
    assert cni_lines(netns, "legacy") == []


@root_only
def test_a_legacy_error_surfaces_as_one_line(netns):
    """A chain still referenced elsewhere cannot be deleted: a clear domain error."""
    setup(netns, "legacy", "busy", ["10.22.0.2/24"])
    chain = naming.iptables_chain("mynet", "busy")
    for args in (["-N", "HOLDER"], ["-A", "HOLDER", "-j", chain], ["-A", "POSTROUTING", "-j", "HOLDER"]):
        _exec(netns, "iptables-legacy", "-w", "-t", "nat", *args)
    msg = masq(netns, "teardown", "mynet", "busy", "eth0", ["10.22.0.2/24"], expect_error=True)
    assert msg.startswith(f"ipMasq: could not delete chain {chain} (iptables-legacy nat): ")
    assert "\n" not in msg and "b'" not in msg


@root_only
def test_a_missing_python_iptables_is_a_domain_error(netns):
    proc = _exec(netns, CHILD_PYTHON, "-c", _DRIVER, "setup",
                 json.dumps(["legacy", "mynet", "c1", "eth0", ["10.22.0.2/24"]]),
                 env=_child_env(pythonpath=str(ROOT)), check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["error"].startswith("ipMasq: python-iptables is not installed")


_LEAK_CHECK = """
import sys
from cni_bridge.masquerade.iptc_loader import load_iptc
load_iptc(False)
assert "iptc.ip6tc" not in sys.modules and "iptc.easy" not in sys.modules, "loaded too much"
assert "distutils" not in sys.modules, "distutils stand-in left behind"
assert "ctypes.util" not in sys.modules, "ctypes.util stand-in left behind"
assert "subprocess" not in sys.modules, "subprocess stand-in left behind"
import subprocess
assert subprocess.run(["true"]).returncode == 0 and hasattr(subprocess, "check_output")
from ctypes.util import find_library
assert find_library("c")
import iptc                                     # the stub package completes itself
assert iptc.Table6 and iptc.easy and iptc.Table is sys.modules["iptc.ip4tc"].Table
load_iptc(True)
print("ok")
"""


@root_only
def test_import_stand_ins_do_not_leak(netns):
    proc = _exec(netns, CHILD_PYTHON, "-c", _LEAK_CHECK, env=_child_env(), check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


_NO_DUP2 = """
import os
from cni_bridge import masquerade as m
def refuse(*args):
    raise AssertionError("fd redirected (python-iptables save/re-parse path)")
os.dup2 = refuse
att, cidrs = m.Attachment("mynet", "c1", "eth0"), ["10.22.0.2/24", "fd00:22::2/64"]
m.setup("legacy", att, cidrs)
m.setup("legacy", att, cidrs)
assert m.missing("legacy", att, cidrs) == []
m.gc("mynet", {("c1", "eth0")})
m.teardown(att, None)
print("ok")
"""


@root_only
def test_stdout_is_never_redirected(netns):
    """fd 1 carries the CNI result: python-iptables' save() trick must never run."""
    proc = _exec(netns, CHILD_PYTHON, "-c", _NO_DUP2, env=_child_env(), check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


_FAILING_COMMIT = """
import errno, os, sys
from cni_bridge import masquerade as m, nfnetlink
def refuse(self, *args):
    raise nfnetlink.NfTablesError(errno.ENOBUFS, args[-1] + ": " + os.strerror(errno.ENOBUFS))
nfnetlink.NfTables.transact = refuse
try:
    m.setup(sys.argv[1], m.Attachment("mynet", "c1", "eth0"), ["10.22.0.2/24"])
except m.MasqueradeError as e:
    print(e)
"""


@root_only
@pytest.mark.parametrize("backend", ["iptables-nft", "nftables"])
def test_a_failed_transaction_says_once_which_backend_and_step(netns, backend):
    proc = _exec(netns, CHILD_PYTHON, "-c", _FAILING_COMMIT, backend, env=_child_env())
    msg = proc.stdout.strip()
    step = (f"set up {naming.iptables_chain('mynet', 'c1')}" if backend == "iptables-nft"
            else "set up rules of c1/eth0")
    assert msg == f"ipMasq: {backend}: {step}: No buffer space available", proc.stderr


_ADD_FAILING_AFTER_MASQUERADE = """
import json, os, subprocess, sys
from cni_bridge import links
from cni_protocol.skel import serve
seen = []
def never_up(nl, index, *args, **kwargs):
    # The last step of ADD, after the rules: keep what the node held then, and fail.
    seen.append(subprocess.run("nft list ruleset; iptables-legacy-save -t nat", shell=True,
                               capture_output=True, text=True).stdout)
    raise links.PortNotUp("bridge port in error state: lower-layer-down")
links.wait_oper_up = never_up
env = json.loads(sys.argv[1])
answer = serve("bridge", "cni_bridge.plugin", env, sys.argv[2].encode())
print(json.dumps({"status": answer.status, "stdout": answer.stdout.decode(), "seen": seen}))
"""


@root_only
@pytest.mark.parametrize("backend", [None, "nftables"], ids=["unset", "nftables"])
def test_a_failed_add_removes_the_rules_it_wrote(netns_pair, zipapp, tmp_path, backend):
    """ADD fails after its masquerade rules are in (the host port never comes up): the undo
    removes them with the veth and the lease; the runtime gets the step's error."""
    node, pod = netns_pair
    conf = {"cniVersion": "1.0.0", "name": "undo", "type": "bridge", "bridge": "brundo0",
            "isGateway": True, "ipMasq": True,
            "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": str(tmp_path)}}
    if backend:
        conf["ipMasqBackend"] = backend
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "undo1", "CNI_NETNS": f"/run/netns/{pod}",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(zipapp("host-local").parent),
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    proc = _exec(node, CHILD_PYTHON, "-c", _ADD_FAILING_AFTER_MASQUERADE, json.dumps(env),
                 json.dumps(conf), env=_child_env())
    out = json.loads(proc.stdout)
    assert out["status"] == 1 and "lower-layer-down" in json.loads(out["stdout"])["msg"], out
    (before,) = out["seen"]
    pod_rules = re.compile(r"10\.66\.0\.2\b|CNI-|undo1")
    assert pod_rules.search(before), f"no rules of the pod when ADD failed:\n{before}"
    after = _exec(node, "sh", "-c", "nft list ruleset; iptables-legacy-save -t nat").stdout
    assert not pod_rules.search(after), after
    assert [p.name for p in (tmp_path / "undo").iterdir()
            if not p.name.startswith(("lock", "last_reserved_ip"))] == []
    assert "veth" not in _exec(node, "ip", "-o", "link", "show", "type", "veth").stdout


_NO_IPTC_WHEN_NOTHING_IS_THERE = """
import sys
from cni_bridge import masquerade as m
m.teardown(m.Attachment("mynet", "ghost", "eth0"), None)
print(sorted(x for x in ("iptc", "ctypes", "subprocess") if x in sys.modules))
"""


@root_only
def test_a_teardown_with_nothing_there_loads_no_iptables_library(netns):
    """The second DEL of every pod: a few netlink queries, no libiptc, no exec."""
    setup(netns, "iptables-nft", "other", ["10.22.0.9/24"])
    proc = _exec(netns, CHILD_PYTHON, "-c", _NO_IPTC_WHEN_NOTHING_IS_THERE, env=_child_env())
    assert proc.stdout.strip() == "[]", proc.stderr


_MANY = """
import json, sys
from cni_bridge import masquerade as m
backend, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    m.setup(backend, m.Attachment("mynet", f"many{i}", "eth0"), [f"10.{40 + i // 250}.{i % 250}.2/16"])
m.gc("mynet", {("many0", "eth0")})
print("ok")
"""


@root_only
@pytest.mark.parametrize("backend", ["iptables-nft", "nftables"])
def test_gc_of_hundreds_of_stale_attachments_is_one_transaction_that_succeeds(netns, backend):
    """A node rebooted with a persistent store: GC removes 300 pods' rules at once (one
    transaction of ~1000 messages: more than a socket buffer's worth of answers)."""
    proc = _exec(netns, CHILD_PYTHON, "-c", _MANY, backend, "300", env=_child_env(), check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    lines = cni_lines(netns, backend)
    assert len(lines) == (1 if backend == "nftables" else 4), lines
    assert all(naming.iptables_chain("mynet", "many0") in line or "10.40.0.2" in line
               for line in lines)


_GENERATION = """
import sys
from cni_bridge import nfnetlink as nf
with nf.NfTables() as t:
    body = t._request((nf.NFNL_SUBSYS_NFTABLES << 8) | 16, nf.NLM_F_ACK,
                      nf._NFGENMSG.pack(0, 0, 0), "get generation")[0]
print(int.from_bytes(dict(nf._iter_attrs(body, nf._NFGENMSG.size))[1], "big"))
"""


def nft_generation(ns: str) -> int:
    """nf_tables' generation in the netns: it changes with every committed transaction."""
    return int(_exec(ns, CHILD_PYTHON, "-c", _GENERATION, env=_child_env(pythonpath=str(ROOT))
                     ).stdout)


@root_only
def test_a_teardown_with_nothing_left_commits_nothing_and_takes_no_lock(netns, tmp_path):
    """The second DEL of every pod: nf_tables' generation stays, the xtables lock held by
    somebody else does not block it, and python-iptables stays unloaded (even with a legacy
    nat table holding other pods' chains)."""
    for backend in BACKENDS:
        setup(netns, backend, "other", ["10.22.0.9/24"])
    generation = nft_generation(netns)
    lock = tmp_path / "xtables.lock"
    holder = subprocess.Popen([CHILD_PYTHON, "-c", "import fcntl, sys, time; "
                               "f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
                               "print('held', flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = _exec(netns, CHILD_PYTHON, "-c", _NO_IPTC_WHEN_NOTHING_IS_THERE,
                     env=_child_env({"XTABLES_LOCKFILE": str(lock)}), timeout=20)
    finally:
        holder.kill()
        holder.wait()
    assert proc.stdout.strip() == "[]", proc.stderr
    assert nft_generation(netns) == generation
