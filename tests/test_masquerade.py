"""ipMasq (cni_bridge.masquerade) against the real kernel and the Go reference plugin.

Every test that touches iptables runs the code in a network namespace of its own
(``ip netns exec``) and deletes that namespace afterwards, also on failure: nothing
here may create rules, chains or links in the machine's root namespace. The Go
plugin is pointed at the legacy backend by a PATH dir whose ``iptables`` and
``ip6tables`` are xtables-legacy-multi, because libiptc only drives legacy tables.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cni_bridge.masquerade import MasqueradeError, chain_comment, chain_name  # noqa: E402

GO_BRIDGE = Path("/usr/lib/cni/bridge")
LEGACY_MULTI = Path("/usr/sbin/xtables-legacy-multi")
CHILD_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
_IPTC_SPEC = importlib.util.find_spec("iptc")  # located, not imported
IPTC_PARENT = (
    str(Path(list(_IPTC_SPEC.submodule_search_locations)[0]).parent) if _IPTC_SPEC else None
)
NS_PREFIX = f"masqt{os.getpid()}"
_ns_counter = itertools.count()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables-legacy-save", "ip6tables-legacy-save", "iptables-legacy"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if IPTC_PARENT is None:
        return "python-iptables (iptc) not importable by the test interpreter"
    return None


root_only = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
needs_go = pytest.mark.skipif(
    not (GO_BRIDGE.exists() and LEGACY_MULTI.exists() and (GO_BRIDGE.parent / "host-local").exists()),
    reason="Go reference plugins (/usr/lib/cni) or xtables-legacy-multi missing",
)


# --------------------------------------------------------------------------- namespaces


def _new_netns() -> str:
    name = f"{NS_PREFIX}-{next(_ns_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def _del_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns():
    """A fresh network namespace, deleted by exact name afterwards."""
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


def _child_env(extra: dict[str, str] | None = None, pythonpath: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath if pythonpath is not None else f"{ROOT}:{IPTC_PARENT}"
    env.update(extra or {})
    return env


_DRIVER = """
import json, sys
from cni_bridge import masquerade as m
op, args = sys.argv[1], json.loads(sys.argv[2])
try:
    result = getattr(m, op)(*args)
    print(json.dumps({"ok": result}))
except m.MasqueradeError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def masq(ns: str, op: str, *args, expect_error: bool = False):
    """Run cni_bridge.masquerade.<op>(*args) in a child inside ns; return its result."""
    proc = _exec(ns, CHILD_PYTHON, "-c", _DRIVER, op, json.dumps(args), env=_child_env(), check=False)
    assert proc.returncode == 0, f"{op} crashed: {proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if expect_error:
        assert "error" in out, f"{op} unexpectedly succeeded"
        return out["error"]
    assert "error" not in out, out.get("error")
    return out["ok"]


def nat_save(ns: str, family: int = 4) -> list[str]:
    """The legacy nat table as iptables-save prints it, minus the timestamp comments."""
    tool = "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"
    out = _exec(ns, tool, "-t", "nat").stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


def cni_lines(ns: str, family: int = 4) -> list[str]:
    return [line for line in nat_save(ns, family) if "CNI-" in line]


def legacy_tables(ns: str, family: int = 4) -> list[str]:
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    return _exec(ns, "cat", f"/proc/net/{name}", check=False).stdout.split()


# --------------------------------------------------------------------------- Go reference plugin


@pytest.fixture(scope="module")
def legacy_path(tmp_path_factory) -> str:
    """PATH for the Go plugin with iptables/ip6tables = the legacy backend."""
    d = tmp_path_factory.mktemp("legacy-bin")
    for tool in ("iptables", "ip6tables"):
        (d / tool).symlink_to(LEGACY_MULTI)
    return f"{d}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"


def go_bridge(command: str, host_ns: str, cont_ns: str, container_id: str, conf: dict,
              legacy_path: str) -> dict | None:
    env = dict(os.environ, PATH=legacy_path, CNI_COMMAND=command, CNI_CONTAINERID=container_id,
               CNI_NETNS=f"/run/netns/{cont_ns}", CNI_IFNAME="eth0", CNI_PATH=str(GO_BRIDGE.parent))
    proc = _exec(host_ns, str(GO_BRIDGE), input=json.dumps(conf), env=env, check=False)
    assert proc.returncode == 0, f"Go bridge {command} failed: {proc.stdout} {proc.stderr}"
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def bridge_conf(tmp_path: Path, name: str = "mynet", dual: bool = True) -> dict:
    ranges = [[{"subnet": "10.22.0.0/24"}]]
    if dual:
        ranges.append([{"subnet": "fd00:22::/64"}])
    return {"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": "cnitest0",
            "isGateway": True, "ipMasq": True,
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": ranges}}


# --------------------------------------------------------------------------- pure functions (no root)


def test_chain_name_and_comment_match_reference():
    # Value observed from /usr/lib/cni/bridge for network "mynet", container "abc123".
    assert chain_name("mynet", "abc123") == "CNI-70a29d9dc18bc4d652ea5d59"
    assert chain_comment("mynet", "abc123") == 'name: "mynet" id: "abc123"'


def test_bad_address_is_a_one_line_domain_error():
    from cni_bridge.masquerade import _by_family

    for bad in ("10.0.0.300/24", "10.0.0.1/33", ("fd00::1", "x"), "nonsense"):
        with pytest.raises(MasqueradeError) as info:
            _by_family([bad])
        assert str(info.value).startswith("ipMasq: invalid container address")
        assert "\n" not in str(info.value)


def test_address_forms_are_equivalent():
    from cni_bridge.masquerade import _by_family

    expected = {4: [("10.22.0.2/32", "10.22.0.0/24")], 6: [("fd00:22::2/128", "fd00:22::/64")]}
    assert _by_family(["10.22.0.2/24", "fd00:22::2/64"]) == expected
    assert _by_family([("10.22.0.2", 24), ("fd00:22::2", 64)]) == expected
    import ipaddress

    assert _by_family([ipaddress.ip_interface("10.22.0.2/24"),
                       ipaddress.ip_interface("fd00:22::2/64")]) == expected


def test_module_import_loads_nothing_heavy():
    code = ("import sys; import cni_bridge.masquerade; "
            "bad = [m for m in ('iptc', 'ctypes', 'subprocess', 'hashlib', 'ipaddress', 're', "
            "'dataclasses', 'typing') if m in sys.modules]; print(bad)")
    out = subprocess.run([CHILD_PYTHON, "-c", code], env=_child_env(pythonpath=str(ROOT)),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- kernel tests


@root_only
@needs_go
def test_rules_identical_to_reference(netns_pair, netns, tmp_path, legacy_path):
    """Go ADD in one netns, ours in another, same net/container/IPs: same nat tables."""
    host, cont = netns_pair
    result = go_bridge("ADD", host, cont, "abc123", bridge_conf(tmp_path), legacy_path)
    ips = [ip["address"] for ip in result["ips"]]
    assert sorted(ips) == ["10.22.0.2/24", "fd00:22::2/64"]
    go4, go6 = nat_save(host, 4), nat_save(host, 6)
    assert any("MASQUERADE" in line for line in go4) and any("MASQUERADE" in line for line in go6)

    masq(netns, "setup_masquerade", "mynet", "abc123", ips)
    assert nat_save(netns, 4) == go4
    assert nat_save(netns, 6) == go6


@root_only
def test_setup_is_idempotent(netns):
    ips = ["10.22.0.2/24", "fd00:22::2/64"]
    masq(netns, "setup_masquerade", "mynet", "c1", ips)
    once4, once6 = nat_save(netns, 4), nat_save(netns, 6)
    assert len(cni_lines(netns, 4)) == 4  # chain header, jump, ACCEPT, MASQUERADE
    masq(netns, "setup_masquerade", "mynet", "c1", ips)
    masq(netns, "setup_masquerade", "mynet", "c1", [["10.22.0.2", 24], ["fd00:22::2", 64]])
    assert nat_save(netns, 4) == once4
    assert nat_save(netns, 6) == once6


@root_only
def test_second_subnet_accept_goes_before_masquerade(netns):
    masq(netns, "setup_masquerade", "mynet", "c1", ["10.22.0.2/24"])
    masq(netns, "setup_masquerade", "mynet", "c1", ["10.22.0.2/24", "10.99.0.5/16"])
    chain = chain_name("mynet", "c1")
    rules = [line for line in nat_save(netns) if line.startswith(f"-A {chain} ")]
    assert [r.split(" -j ")[-1] for r in rules] == ["ACCEPT", "ACCEPT", "MASQUERADE"]
    assert "-d 10.99.0.0/16" in rules[1]
    jumps = [line for line in nat_save(netns) if line.startswith("-A POSTROUTING")]
    assert len(jumps) == 2


@root_only
def test_teardown_with_ips(netns):
    ips = ["10.22.0.2/24", "fd00:22::2/64"]
    masq(netns, "setup_masquerade", "mynet", "c1", ips)
    masq(netns, "setup_masquerade", "mynet", "keep", ["10.22.0.3/24"])
    masq(netns, "teardown_masquerade", "mynet", "c1", ips)
    assert cni_lines(netns, 6) == []
    left = cni_lines(netns, 4)
    assert left and all(chain_name("mynet", "keep") in line for line in left)
    masq(netns, "teardown_masquerade", "mynet", "c1", ips)  # DEL is repeatable


@root_only
def test_teardown_without_ips(netns):
    """DEL with a vanished netns and no prevResult: found by jump target, both families."""
    masq(netns, "setup_masquerade", "mynet", "c1", ["10.22.0.2/24", "fd00:22::2/64"])
    masq(netns, "teardown_masquerade", "mynet", "c1")
    masq(netns, "teardown_masquerade", "mynet", "c1", [])
    assert cni_lines(netns, 4) == [] and cni_lines(netns, 6) == []
    assert [line for line in nat_save(netns) if line.startswith("-A")] == []


@root_only
def test_teardown_removes_legacy_cidr_jump(netns):
    """Old plugins jumped with ``-s <cidr>``; teardown must remove that form too."""
    chain, comment = chain_name("mynet", "old"), chain_comment("mynet", "old")
    for args in (["-N", chain],
                 ["-A", chain, "-d", "10.22.0.0/24", "-j", "ACCEPT", "-m", "comment", "--comment", comment],
                 ["-A", "POSTROUTING", "-s", "10.22.0.0/24", "-j", chain, "-m", "comment", "--comment", comment],
                 ["-A", "POSTROUTING", "-s", "10.22.0.7", "-j", chain, "-m", "comment", "--comment", comment]):
        _exec(netns, "iptables-legacy", "-w", "-t", "nat", *args)
    masq(netns, "teardown_masquerade", "mynet", "old", ["10.22.0.7/24"])
    assert cni_lines(netns) == []


@root_only
def test_teardown_when_nothing_exists(netns):
    masq(netns, "teardown_masquerade", "mynet", "ghost", ["10.22.0.2/24", "fd00:22::2/64"])
    masq(netns, "teardown_masquerade", "mynet", "ghost")
    masq(netns, "gc_masquerade", "mynet", [])
    # and it did not create legacy tables as a side effect
    assert "nat" not in legacy_tables(netns, 4) and "nat" not in legacy_tables(netns, 6)
    # nat table present but no chain of ours
    masq(netns, "setup_masquerade", "mynet", "other", ["10.22.0.9/24"])
    masq(netns, "teardown_masquerade", "mynet", "ghost", ["10.22.0.2/24"])
    masq(netns, "teardown_masquerade", "mynet", "ghost")
    assert len(cni_lines(netns)) == 4


@root_only
@needs_go
def test_our_teardown_removes_go_rules(netns_pair, tmp_path, legacy_path):
    host, cont = netns_pair
    conf = bridge_conf(tmp_path)
    go_bridge("ADD", host, cont, "ctr-go", conf, legacy_path)
    assert cni_lines(host, 4) and cni_lines(host, 6)
    masq(host, "teardown_masquerade", "mynet", "ctr-go")  # no ips: as DEL without prevResult
    assert cni_lines(host, 4) == [] and cni_lines(host, 6) == []
    assert [line for line in nat_save(host, 4) + nat_save(host, 6) if line.startswith("-A")] == []
    # (No Go DEL afterwards: Go 1.1.1 fails its DEL when the chain is already gone --
    # `iptables -D ... -j CNI-x` exits 2 "Couldn't load target", not "does not exist".)


@root_only
@needs_go
def test_go_del_removes_our_rules(netns_pair, tmp_path, legacy_path):
    host, cont = netns_pair
    conf = bridge_conf(tmp_path)
    result = go_bridge("ADD", host, cont, "ctr-swap", conf, legacy_path)
    ips = [ip["address"] for ip in result["ips"]]
    go4, go6 = nat_save(host, 4), nat_save(host, 6)
    masq(host, "teardown_masquerade", "mynet", "ctr-swap", ips)
    assert cni_lines(host, 4) == []
    masq(host, "setup_masquerade", "mynet", "ctr-swap", ips)  # now the rules are ours
    assert (nat_save(host, 4), nat_save(host, 6)) == (go4, go6)
    go_bridge("DEL", host, cont, "ctr-swap", conf, legacy_path)
    assert cni_lines(host, 4) == [] and cni_lines(host, 6) == []
    assert [line for line in nat_save(host, 4) + nat_save(host, 6) if line.startswith("-A")] == []


@root_only
def test_gc_keeps_valid_and_removes_the_rest(netns):
    for cid, ip in (("a", "10.22.0.2/24"), ("b", "10.22.0.3/24"), ("c", "fd00:22::4/64")):
        masq(netns, "setup_masquerade", "mynet", cid, [ip])
    masq(netns, "setup_masquerade", "othernet", "x", ["10.33.0.2/24"])
    # A chain of another plugin with our comment format (portmap's CNI-DN-...) is not ours.
    dn, comment = "CNI-DN-0123456789abcdef01234", chain_comment("mynet", "zzz")
    _exec(netns, "iptables-legacy", "-w", "-t", "nat", "-N", dn)
    _exec(netns, "iptables-legacy", "-w", "-t", "nat", "-A", dn, "-j", "RETURN", "-m", "comment",
          "--comment", comment)

    removed = masq(netns, "gc_masquerade", "mynet", ["a"])
    assert sorted(removed) == sorted([chain_name("mynet", "b"), chain_name("mynet", "c")])
    text4, text6 = "\n".join(nat_save(netns, 4)), "\n".join(nat_save(netns, 6))
    assert chain_name("mynet", "a") in text4 and chain_name("othernet", "x") in text4 and dn in text4
    assert chain_name("mynet", "b") not in text4
    assert "CNI-" not in text6 and "-A POSTROUTING" not in text6
    jumps = [line for line in nat_save(netns, 4) if line.startswith("-A POSTROUTING")]
    assert len(jumps) == 2
    assert masq(netns, "gc_masquerade", "mynet", ["a"]) == []


_PARALLEL_CHILD = """
import os, sys, time
from cni_bridge import masquerade as m
i, flag_dir = int(sys.argv[1]), sys.argv[2]
m.load_iptc(False)                           # get the slow part out of the way first
open(os.path.join(flag_dir, f"ready-{i}"), "w").close()
while not os.path.exists(os.path.join(flag_dir, "go")):
    time.sleep(0.001)
m.setup_masquerade("mynet", f"par{i}", [f"10.30.{i}.2/24"])
"""


@root_only
def test_parallel_setups_all_survive(netns, tmp_path):
    """32 processes commit whole-table replacements at once; the flock keeps every one."""
    n = 32
    procs = [subprocess.Popen(["ip", "netns", "exec", netns, CHILD_PYTHON, "-c", _PARALLEL_CHILD,
                               str(i), str(tmp_path)], env=_child_env(), stderr=subprocess.PIPE)
             for i in range(n)]
    try:
        deadline = time.monotonic() + 120
        while sum(1 for p in tmp_path.glob("ready-*")) < n:
            assert time.monotonic() < deadline, "children did not get ready"
            assert all(p.poll() in (None, 0) for p in procs), "a child died early"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        errors = [p.stderr.read().decode() for p in procs if p.wait(timeout=120) != 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert errors == []
    save = nat_save(netns)
    for i in range(n):
        chain = chain_name("mynet", f"par{i}")
        assert f":{chain} - [0:0]" in save
        assert sum(1 for line in save if line.startswith("-A POSTROUTING") and chain in line) == 1
        assert sum(1 for line in save if line.startswith(f"-A {chain} ")) == 2


@root_only
def test_error_surfaces_as_one_line(netns):
    """A chain still referenced elsewhere cannot be deleted: clear domain error."""
    masq(netns, "setup_masquerade", "mynet", "busy", ["10.22.0.2/24"])
    chain = chain_name("mynet", "busy")
    for args in (["-N", "HOLDER"], ["-A", "HOLDER", "-j", chain], ["-A", "POSTROUTING", "-j", "HOLDER"]):
        _exec(netns, "iptables-legacy", "-w", "-t", "nat", *args)
    msg = masq(netns, "teardown_masquerade", "mynet", "busy", expect_error=True)
    assert msg.startswith(f"ipMasq: could not delete chain {chain} (iptables nat): ")
    assert "\n" not in msg and "b'" not in msg


@root_only
def test_missing_python_iptables_is_a_domain_error(netns):
    proc = _exec(netns, CHILD_PYTHON, "-c", _DRIVER, "setup_masquerade",
                 json.dumps(["mynet", "c1", ["10.22.0.2/24"]]),
                 env=_child_env(pythonpath=str(ROOT)), check=False)
    assert proc.returncode == 0, proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err.startswith("ipMasq: python-iptables is not installed")


_LEAK_CHECK = """
import sys
from cni_bridge import masquerade as m
m.load_iptc(False)
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
m.load_iptc(True)
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
ips = ["10.22.0.2/24", "fd00:22::2/64"]
m.setup_masquerade("mynet", "c1", ips)
m.setup_masquerade("mynet", "c1", ips)
m.gc_masquerade("mynet", ["c1"])
m.teardown_masquerade("mynet", "c1")
print("ok")
"""


@root_only
def test_stdout_is_never_redirected(netns):
    """fd 1 carries the CNI result: python-iptables' save() trick must never run."""
    proc = _exec(netns, CHILD_PYTHON, "-c", _NO_DUP2, env=_child_env(), check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
