"""A bounded fuzz test of both zipapps: a few hundred calls generated from valid requests
mutated toward the edges, each run as a runtime runs it (`ip netns exec <node> <plugin>`, a
CNI_*-only environment, the conf on stdin) in namespaces made here.

The catalogue covers every CNI_* variable (missing, empty, huge, non-UTF-8; CNI_NETNS naming
a FIFO, a directory, a regular file, the node's own netns), every conf key of both plugins
(REFERENCE.md 1.1 and 1.2) with wrong types and extreme values, IPAM answers of every shape
(from an IPAM plugin of ours that answers what the conf tells it), prevResult shapes, GC
attachment lists, and truncated, invalid and huge stdin. Each entry becomes one case with a
plugin, verb, cniVersion and ipMasq drawn with a fixed seed (CNI_FUZZ_SEED; CNI_FUZZ_CASES adds
random pairs of mutations for a longer local run). An ADD is followed as a runtime follows
it: CHECK and DEL with the same input and its result as prevResult, or DEL when it failed;
DEL, CHECK and GC are tried against an attachment that a valid ADD made first. Every case checks:

- every call ends within CALL_TIMEOUT, forks no more than MAX_PROCS processes and leaves none;
- a non-zero exit prints exactly one spec error object on stdout (cniVersion str, code int
  >= 1, msg str) and the code is not 999 (a bug of ours); no call prints a traceback;
- an exit 0 prints what the verb should: a result for ADD (in the conf's cniVersion), version
  info for VERSION, nothing for DEL, CHECK, GC and STATUS; CHECK and DEL of what an ADD just
  made succeed; GC keeps the leases of the attachments it is told are valid;
- where the spec (or CNI's CONVENTIONS.md) leaves no choice, the fuzzed call ends in what it
  says: code 4 for a bad CNI_* variable, 6 for undecodable stdin, 1 for an unsupported
  version, 7 for a malformed GC list, 8 for the plugin's own netns as CNI_NETNS, success for
  a DEL without a netns;
- a failed ADD leaves nothing behind, and after the case's DEL the node netns (links other
  than the bridges the confs name; a pod's masquerade and macspoofchk rules in the legacy nat
  tables and in nf_tables), the pod netns and the dataDir (lease files) hold nothing of it;
- nothing is written outside the dataDir the conf names: the sandbox's other files, the
  plugins' cwd and the root netns's links are unchanged, and at the end its firewall rules.

The cases run on WORKERS nodes side by side (one per core), all before the first is
reported; each then passes or fails on its own, with a reproducer: the plugin, its
environment and stdin, and what happened.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import sigterm_as_interrupt  # noqa: E402

pytestmark = pytest.mark.slow

IP = shutil.which("ip") or "/usr/sbin/ip"
PRLIMIT = shutil.which("prlimit") or "/usr/bin/prlimit"
SEED = int(os.environ.get("CNI_FUZZ_SEED", "1019"))
EXTRA_CASES = int(os.environ.get("CNI_FUZZ_CASES", "0"))
WORKERS = 2
CALL_TIMEOUT = 4.0         # seconds; a bridge ADD takes ~0.1 s here, 1-2 s with enabledad
MAX_PROCS = 12             # a bridge call is at most itself, host-local and iptables-nft
MEMORY_LIMIT = 512 << 20   # RLIMIT_DATA of every plugin process: an unbounded read fails
                           # fast (not RLIMIT_AS: the Go runtime reserves far more than that)
FILE_LIMIT = 64 << 20      # RLIMIT_FSIZE: no call writes a bigger file
HUGE = 100_000             # bytes of a huge env value (the kernel's limit is 128 KiB)
PREFIX = f"fuzz{os.getpid()}"
NET, BRIDGE = "fuzznet", "fz0"
SUBNET, SUBNET6 = "10.77.0.0/24", "fd77::/64"
DEFAULT_DATA_DIR = Path("/var/lib/cni/networks")
VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}
BOOKKEEPING = ("lock", "last_reserved_ip.")
# The node netns's firewall: every nf_tables table (iptables-nft, nftables, macspoofchk), and
# the legacy nat tables when they exist (dumping one that does not would create it).
FIREWALL_DUMP = "nft list ruleset 2>/dev/null;"
LEGACY_NAT_DUMP = "iptables-legacy-save -t nat; ip6tables-legacy-save -t nat"
# What marks a pod's own rules in them: the iptables chains CNI-<hash> (legacy, iptables-nft),
# the nftables masquerade rules, the macspoofchk chains and rules (REFERENCE.md 7).
ATTACHMENT_RULES = ("CNI-", "masquerade comment", "macspoofchk-", "cni-br-iface-")
BOTH = ("bridge", "host-local")
REJECTED_INPUT = (1, 2, 4, 6, 7)  # a DEL of an input an ADD refused with these refuses it too
OUTSIDE_PATHS = ("/nonexistent",)  # named by mutations, must never come to exist


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, bridges, veths and iptables rules"
    for tool in ("ip", "prlimit", "iptables-legacy-save", "ip6tables-legacy-save"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make deps)"
    return None


if _skip_reason():
    pytestmark = [pytestmark, pytest.mark.skip(reason=_skip_reason())]


# --- what a case is made of -------------------------------------------------------------------

class Ref(NamedTuple):
    """A value known only when the case runs (a sandbox path, the setup ADD's result),
    optionally transformed: Ref("data", lambda p: p + "//", "data//")."""
    name: str
    transform: Callable | None = None
    label: str = ""

    def __repr__(self) -> str:
        return f"<{self.label or self.name}>"


MISSING = object()  # the mutation deletes the key or the variable


class Mutation(NamedTuple):
    label: str        # what the case is about: "CNI_NETNS=<fifo>"
    kind: str         # env | conf | ipam | answer | stdin | prev | gc
    plugins: tuple    # the plugins it is meant for
    verbs: tuple      # the verbs it is tried with, one case each
    apply: Callable   # (env, conf) -> None; for kind stdin: bytes -> bytes
    keeps_attachment: bool = True  # gc: the setup ADD's attachment is still declared valid
    expect: tuple = ()  # where the spec (or CNI's CONVENTIONS.md) leaves no choice: the codes
                        # the fuzzed call may end in, 0 for success
    min_version: str = "0.1.0"  # routes' mtu, table, scope... exist in results from 1.0.0 on


class Case(NamedTuple):
    index: int
    plugin: str
    verb: str
    version: str
    ip_masq: bool
    mutations: tuple

    @property
    def id(self) -> str:
        label = "+".join(m.label for m in self.mutations)
        safe = "".join(c if c.isprintable() and c not in " []" else "_" for c in label)
        return f"{self.index:03d}-{self.plugin}-{self.verb}-{safe[:90]}"

    @property
    def container_id(self) -> str:
        return f"fz{self.index:03d}"

    @property
    def setup_add(self) -> bool:
        """DEL, CHECK and GC are tried against an attachment a valid ADD made first."""
        return self.verb in ("DEL", "CHECK", "GC")


def _set_env(name: str, value) -> Callable:
    def apply(env: dict, conf: dict) -> None:
        if value is MISSING:
            env.pop(name, None)
        else:
            env[name] = value
    return apply


def _set_conf(path: str | tuple, value) -> Callable:
    """Set (or delete, with MISSING) a key; "ipam.ranges" names a nested one, a tuple names
    keys that hold a dot themselves: ("cni.dev/valid-attachments",)."""
    *parents, key = path.split(".") if isinstance(path, str) else path

    def apply(env: dict, conf: dict) -> None:
        target = conf
        for p in parents:
            if not isinstance(target.get(p), dict):
                target[p] = {}
            target = target[p]
        if value is MISSING:
            target.pop(key, None)
        else:
            target[key] = value
    return apply


def _both(*steps: Callable) -> Callable:
    def apply(env: dict, conf: dict) -> None:
        for step in steps:
            step(env, conf)
    return apply


def _show(value) -> str:
    """A short printable form of a mutated value, for the case's id."""
    if value is MISSING:
        return "<missing>"
    if isinstance(value, Ref):
        return repr(value)
    if isinstance(value, bytes):
        text = repr(value)[2:-1]
    else:
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= 56 else f"<{len(text)} chars: {text[:24]}...>"


# --- the catalogue ----------------------------------------------------------------------------

def _mutations(kind: str, key: str, values: list, plugins: tuple, verbs: tuple,
               expect: tuple = ()) -> list:
    setter = _set_env if kind == "env" else _set_conf
    return [Mutation(f"{key}={_show(v)}", kind, plugins, verbs, setter(key, v), expect=expect)
            for v in values]


def _env_mutations() -> list[Mutation]:
    """An ADD case follows the ADD with CHECK and DEL of the same input; DEL, GC and STATUS
    cases try the mutation against an attachment a valid ADD made. `expect` holds what the
    spec's skel rules leave no choice about (code 4: invalid or missing variable)."""
    def env(name: str, values: list, plugins: tuple = BOTH, verbs: tuple = ("ADD",),
            expect: tuple = ()) -> list:
        return _mutations("env", name, values, plugins, verbs, expect)

    node_ns = Ref("node_ns", label="node's own netns")
    gone_ns = Ref("gone_ns", label="deleted netns")
    return [
        *env("CNI_COMMAND", [b"\xff\xfe", b"x" * HUGE, b"add", b"FROB"], expect=(4,)),
        *env("CNI_COMMAND", [MISSING, b"", b"VERSION"], expect=(0,)),
        *env("CNI_CONTAINERID", [MISSING, b"", b"\xff\xfe", b" ", b"-lead", b"a/b",
                                 b"caf\xc3\xa9"], expect=(4,)),
        *env("CNI_CONTAINERID", [b"x" * HUGE, b"c" * 5000, b"  padded  "]),
        *env("CNI_IFNAME", [MISSING, b"", b"\xff\xfe", b"x" * HUGE, b"e" * 16, b"..", b"a:b",
                            b"eth0\t", "é".encode() * 8], expect=(4,)),
        *env("CNI_IFNAME", [b"lo", b"e" * 15, "é".encode() * 7]),
        *env("CNI_NETNS", [MISSING, b""], plugins=("bridge",), expect=(4,)),
        *env("CNI_NETNS", [node_ns], plugins=("bridge",), verbs=("ADD", "DEL"), expect=(8,)),
        *env("CNI_NETNS", [b"\xff\xfe", b"/" + b"n" * HUGE, b"/proc/self/ns/mnt",
                           b"relative/netns", gone_ns,
                           *[Ref(p) for p in ("fifo", "dir", "file", "loop", "dev_null")]],
             plugins=("bridge",)),
        *env("CNI_NETNS", [MISSING, b"", gone_ns], plugins=("bridge",), verbs=("DEL",),
             expect=(0,)),
        *env("CNI_NETNS", [Ref("fifo"), Ref("dir")], plugins=("bridge",), verbs=("DEL",)),
        *env("CNI_NETNS", [MISSING, Ref("fifo")], plugins=("host-local",)),
        *env("CNI_PATH", [MISSING, b""], verbs=("ADD", "GC", "STATUS"), expect=(4,)),
        *env("CNI_PATH", [b"\xff\xfe", b"x" * HUGE, b"/nonexistent", Ref("file"), b"bin-rel",
                          Ref("bin", lambda p: f"/usr/lib/cni:{p}", "Go's dir:bin")]),
        *env("CNI_ARGS", [b"K8S_POD_NAME=p", b"IgnoreUnknown=maybe", b"a", b"=b"], expect=(4,)),
        *env("CNI_ARGS", [b"", b"\xff\xfe", b"x" * HUGE, b"IP=10.77.0.50", b"IP=10.77.0.1",
                          b"IP=10.99.0.5", b"IP=nonsense", b"IP=10.77.0.50,fd77::50",
                          b"IP=10.77.0.50/24", b"MAC=0a:58:0a:4d:00:32",
                          b"MAC=01:00:5e:00:00:01", b"MAC=zz"]),
        Mutation("CNI_NETNS_OVERRIDE=1+CNI_NETNS=<node's own netns>", "env", ("bridge",),
                 ("ADD",), _both(_set_env("CNI_NETNS_OVERRIDE", b"1"),
                                 _set_env("CNI_NETNS", node_ns))),
    ]


def _conf_mutations() -> list[Mutation]:
    """The bridge's keys (REFERENCE.md 1.1) and the keys every conf has."""
    def conf(key: str, values: list, plugins: tuple = ("bridge",), verbs: tuple = ("ADD",),
             expect: tuple = ()):
        return _mutations("conf", key, values, plugins, verbs, expect)

    flags = []
    for key in ("isGateway", "isDefaultGateway", "forceAddress", "ipMasq", "hairpinMode",
                "promiscMode", "preserveDefaultVlan", "enabledad", "portIsolation",
                "disableContainerInterface", "macspoofchk"):
        flags += conf(key, ["true", True] + ([None] if key in ("isGateway", "ipMasq") else []))
    return [
        *conf("cniVersion", [MISSING, "", None, 1.0], plugins=BOTH),
        *conf("cniVersion", ["2.0.0", "1.0.0 "], plugins=BOTH, expect=(1,)),
        *conf("cniVersion", [MISSING, "0.4.0"], plugins=BOTH, verbs=("GC", "STATUS"),
              expect=(1,)),
        *conf("cniVersions", [["9.9.9"], "1.0.0"], plugins=BOTH),
        Mutation("cniVersion=<missing>+cniVersions=[0.4.0,1.1.0]", "conf", BOTH, ("ADD", "GC"),
                 _both(_set_conf("cniVersion", MISSING),
                       _set_conf("cniVersions", ["0.4.0", "1.1.0"]))),
        *conf("name", [MISSING, "", 5, "a b", "n" * 300, "a\u0000b", "a/b"], plugins=BOTH),
        *conf("name", ["a\u0000b"], plugins=BOTH, verbs=("GC",)),
        *conf("type", [5], plugins=BOTH),
        *conf("bridge", [5, "", "lo", "b" * 16, "a/b", "a\u0000b", "\udc80", None]),
        *flags,
        Mutation("hairpinMode+promiscMode", "conf", ("bridge",), ("ADD",),
                 _both(_set_conf("hairpinMode", True), _set_conf("promiscMode", True))),
        *conf("mtu", ["1500", 1500.0, 0, 67, 68, 9000, 65536, 2 ** 40, 1e400, -1]),
        *conf("vlan", [-1, 1, 4095, 2 ** 40, "5"]),
        *conf("vlanTrunk", [{}, [1], [{"id": 0}], [{"id": 5}], [{"minID": 1}],
                            [{"minID": 10, "maxID": 5}], [{"minID": 1, "maxID": 4094}]]),
        *conf("ipMasqBackend", ["", "nftables", 5, "xyz", None]),
        *conf("ipam", [None, [], "x", {}, {"type": ""}, {"type": 5}, {"type": "bridge"},
                       {"type": "../host-local"}, {"type": "nonexistent"},
                       {"type": "host-local"}]),
        *conf("ipam", [{"type": "bridge"}], verbs=("DEL", "GC", "STATUS")),
        *conf("dns", ["x", {"nameservers": "x"}, {"domain": 5},
                      {"nameservers": ["10.77.0.10"], "search": ["a"], "options": ["ndots:5"]}]),
        *conf("runtimeConfig.mac", ["x", 5, "01:00:5e:00:00:01", "0a:58:0a:4d:00:40"]),
        *conf("args.cni.mac", ["x", "0a:58:0a:4d:00:41"]),
        *conf("runtimeConfig", ["x"], plugins=BOTH),
        *conf("args", ["x", {"cni": "x"}], plugins=BOTH),
        *conf("capabilities", [{"ips": True}], plugins=BOTH),
    ]


def _ranges(*sets) -> list:
    return [[r if isinstance(r, dict) else {"subnet": r} for r in s] for s in sets]


def _ipam_mutations() -> list[Mutation]:
    """host-local's keys (REFERENCE.md 1.2), through the bridge or to host-local itself."""
    def ipam(key: str, values: list, verbs: tuple = ("ADD",), plugins: tuple = BOTH,
             min_version: str = "0.1.0") -> list:
        return [m._replace(min_version=min_version)
                for m in _mutations("ipam", key, values, plugins, verbs)]

    def one(**keys) -> list:
        return _ranges([{"subnet": SUBNET, **keys}])

    default_data_dir = [  # in a network of our own: the plugin may write there
        Mutation(f"ipam.dataDir={_show(v)}", "ipam", BOTH, ("ADD", "GC"),
                 _both(_set_conf("ipam.dataDir", v), _set_conf("name", Ref("default_net"))))
        for v in ("", None, MISSING)]
    data_dirs = [5, "data-rel", Ref("data", lambda p: p + "/a\u0000b", "data/a<NUL>b"),
                 Ref("data", lambda p: p + "/\udc80", "data/<lone surrogate>"),
                 Ref("data", lambda p: p + "//", "data//"),
                 Ref("data", lambda p: p + ("/" + "d" * 250) * 20, "data/<5000 chars>"),
                 *[Ref(p) for p in ("fifo", "file", "loop", "dev_null")], "/proc/self"]
    return [
        *ipam("ipam.ranges", [MISSING, None, "x", [], [[]], [[{}]], [["x"]],
                              [[{"subnet": 5}]]]),
        *ipam("ipam.ranges", [_ranges([s]) for s in (
            "10.77.0.0/33", "10.77.0.1/24", "10.77.0.0/32", "10.77.0.0/30", "0.0.0.0/0",
            "::/0", "fd77::/127", "garbage", "::ffff:10.77.0.0/120", "10.77.0.0/-1")]),
        *ipam("ipam.ranges", [_ranges(["0.0.0.0/0"]), _ranges(["::/0"])], verbs=("STATUS",)),
        *ipam("ipam.ranges", [
            one(rangeStart="10.78.0.5"), one(rangeStart="10.77.0.9", rangeEnd="10.77.0.3"),
            one(rangeStart="10.77.0.9", rangeEnd="10.77.0.9"), one(rangeStart=5),
            one(rangeEnd="fd77::9"), one(gateway="10.99.0.1"), one(gateway=5),
            _ranges([SUBNET], ["10.77.0.0/25"]), _ranges([SUBNET, SUBNET6]),
            _ranges(*[[f"10.{i}.0.0/24"] for i in range(100, 110)]),
            _ranges([f"10.{i}.{j}.0/24" for i in range(100, 104) for j in range(250)])]),
        *ipam("ipam.subnet", [SUBNET, 5]),
        *ipam("ipam.routes", ["x", [{}], [{"dst": 5}], [{"dst": "0.0.0.0/0", "gw": 5}],
                              [{"dst": "10.0.0.0/8", "gw": "fd77::1"}],
                              [{"dst": "10.0.0.0/8", "mtu": "x"}],
                              [{"dst": "10.0.0.0/8", "mtu": 2 ** 40}],
                              [{"dst": "10.0.0.0/8", "table": 2 ** 33}],
                              [{"dst": "10.0.0.0/8", "scope": "x"}],
                              [{"dst": "10.0.0.0/8", "advmss": 1e400}],
                              [{"dst": "10.0.0.0/8", "gw": "10.77.0.1", "mtu": 1400,
                                "table": 100, "priority": 10, "scope": 0}],
                              [{"dst": "0.0.0.0/0"}, {"dst": "0.0.0.0/0"}]], plugins=("bridge",),
              min_version="1.0.0"),
        *default_data_dir,
        *ipam("ipam.dataDir", data_dirs),
        *ipam("ipam.dataDir", [Ref("fifo"), Ref("loop"), data_dirs[2]], verbs=("GC", "STATUS")),
        *ipam("ipam.resolvConf", [5, "/nonexistent", Ref("dir"), Ref("fifo"), "/dev/zero",
                                  Ref("resolv"), Ref("resolv_odd"), "a\u0000b", "\udc80"]),
        *ipam("runtimeConfig.ipRanges", ["x", _ranges(["10.78.0.0/24"]), [[]],
                                         _ranges([SUBNET])]),
        *ipam("runtimeConfig.ips", ["x", [5], ["10.77.0.50"], ["10.77.0.1"], ["10.99.0.1"],
                                    ["fd77::50"], ["10.77.0.50", "10.77.0.51"],
                                    [f"10.77.0.{i}" for i in range(2, 200)]]),
        *ipam("args.cni.ips", [["10.77.0.50"], ["nonsense"], ["10.77.0.50/24"]]),
        Mutation("args.cni.ips=[10.77.0.66]+CNI_ARGS=IP=10.77.0.77", "ipam", BOTH, ("ADD",),
                 _both(_set_conf("args.cni.ips", ["10.77.0.66"]),
                       _set_env("CNI_ARGS", b"IgnoreUnknown=1;IP=10.77.0.77")),
                 expect=(0,)),  # CNI's CONVENTIONS.md: args wins, CNI_ARGS IP is ignored
    ]


ECHO_IPAM = """#!/usr/bin/python3 -I
# An IPAM plugin that answers ADD with what the conf says: ipam.raw (as it is) or ipam.result
# (as JSON), and exits with ipam.exit; every other verb succeeds silently.
import json, os, sys
ipam = json.load(sys.stdin)["ipam"]
if os.environ.get("CNI_COMMAND") == "ADD":
    sys.stdout.write(ipam["raw"] if "raw" in ipam else json.dumps(ipam.get("result")))
    sys.exit(ipam.get("exit", 0))
"""


def _answer_mutations() -> list[Mutation]:
    """What the bridge makes of an IPAM answer of every shape (from ECHO_IPAM)."""
    def answer(label: str, result=None, raw: str | None = None, code: int = 0) -> Mutation:
        ipam = {"type": "echo-ipam", "exit": code}
        ipam.update({"raw": raw} if raw is not None else {"result": result})
        return Mutation(f"IPAM answers {label}", "answer", ("bridge",), ("ADD",),
                        _set_conf("ipam", ipam), min_version="1.0.0")

    def ips(*entries, **extra) -> dict:
        return {"cniVersion": "1.0.0", "ips": list(entries), **extra}

    ok = {"address": "10.77.0.5/24", "gateway": "10.77.0.1"}
    return [
        answer("a valid result", ips(ok, routes=[{"dst": "0.0.0.0/0"}])),
        answer("a valid 0.2.0 result", {"cniVersion": "0.2.0", "ip4": {"ip": "10.77.0.5/24"}}),
        answer("address without prefix", ips({"address": "10.77.0.5"})),
        answer("address=5", ips({"address": 5})),
        answer("address=garbage/24", ips({"address": "garbage/24"})),
        answer("gateway=5", ips(dict(ok, gateway=5))),
        answer("gateway of the other family", ips(dict(ok, gateway="fd77::1"))),
        answer("ips='x'", {"cniVersion": "1.0.0", "ips": "x"}),
        answer("ips=[5]", ips(5)), answer("ips=[]", ips()),
        answer("routes='x'", ips(ok, routes="x")),
        answer("route mtu='1400'", ips(ok, routes=[{"dst": "0.0.0.0/0", "mtu": "1400"}])),
        answer("route scope='x'", ips(ok, routes=[{"dst": "0.0.0.0/0", "scope": "x"}])),
        answer("route without dst", ips(ok, routes=[{"gw": "10.77.0.1"}])),
        answer("dns='x'", ips(ok, dns="x")),
        answer("0.2.0 ip4='x'", {"cniVersion": "0.2.0", "ip4": "x"}),
        answer("garbage", raw="garbage"), answer("nothing", raw=""),
        answer("two objects", raw='{"ips": []}{"ips": []}'),
        answer("code=1e400, exit 1", raw='{"code": 1e400, "msg": "x"}', code=1),
        answer("code=0, exit 1", raw='{"code": 0, "msg": "x"}', code=1),
        answer("msg=5, exit 1", raw='{"code": 7, "msg": 5}', code=1),
        answer("garbage, exit 1", raw="garbage", code=1),
        answer("a valid error, exit 7",
               raw='{"cniVersion": "1.0.0", "code": 7, "msg": "no", "details": "d"}', code=7),
    ]


def _stdin_mutations() -> list[Mutation]:
    deep = b"[" * 100_000 + b"]" * 100_000
    edits = [
        ("empty", lambda d: b""), ("null", lambda d: b"null"), ("list", lambda d: b"[]"),
        ("truncated", lambda d: d[:len(d) // 2]), ("trailing-garbage", lambda d: d + b"}x"),
        ("two-objects", lambda d: d + d), ("bom", lambda d: b"\xef\xbb\xbf" + d),
        ("utf16", lambda d: d.decode().encode("utf-16")),
        ("non-utf8", lambda d: d[:-1] + b', "x": "\xff"}'),
        ("NaN", lambda d: d[:-1] + b', "mtu": NaN}'),
        ("deep-nesting", lambda d: d[:-1] + b', "x": ' + deep + b"}"),
        ("huge-16MiB", lambda d: d[:-1] + b', "pad": "' + b"x" * (16 << 20) + b'"}'),
        ("huge-whitespace", lambda d: b" " * (8 << 20) + d),
        ("garbage-4MiB", lambda d: random.Random(7).randbytes(4 << 20)),
    ]
    verbs = {"truncated": ("ADD", "DEL"), "huge-16MiB": ("ADD", "CHECK"), "null": ("ADD", "GC")}
    undecodable = ("empty", "null", "list", "truncated", "trailing-garbage", "two-objects",
                   "utf16", "deep-nesting", "garbage-4MiB")  # code 6
    return [Mutation(f"stdin={label}", "stdin", BOTH, verbs.get(label, ("ADD",)), fn,
                     expect=(6,) if label in undecodable else ())
            for label, fn in edits]


def _prev_mutations() -> list[Mutation]:
    """prevResult shapes for CHECK, and for DEL, which finds the masquerade rules with it."""
    def edit(**changes) -> Callable:
        return lambda prev: {**prev, **changes}

    def first_ip(**changes) -> Callable:
        def transform(prev: dict) -> dict:
            ips = [dict(ip) for ip in prev.get("ips", [])] or [{}]
            ips[0].update(changes)
            return dict(prev, ips=ips)
        return transform

    shapes = [
        ("<real>", None), ("null", lambda p: None), ("'x'", lambda p: "x"), ("{}", lambda p: {}),
        ("ips='x'", edit(ips="x")), ("ips=[1]", edit(ips=[1])), ("ips=[{}]", edit(ips=[{}])),
        ("ips[0].address=5", first_ip(address=5)),
        ("ips[0].address=no-prefix", first_ip(address="10.77.0.2")),
        ("ips[0].gateway=5", first_ip(gateway=5)), ("interfaces='x'", edit(interfaces="x")),
        ("routes='x'", edit(routes="x")), ("routes=[{}]", edit(routes=[{}])),
        ("routes=[{gw:5}]", edit(routes=[{"dst": "0.0.0.0/0", "gw": 5}])),
        ("0.2.0 ip4", lambda p: {"cniVersion": "0.2.0", "ip4": {"ip": "10.77.0.2/24"}}),
        ("0.2.0 ip4='x'", lambda p: {"cniVersion": "0.2.0", "ip4": "x"}),
        ("dns='x'", edit(dns="x")),
    ]
    with_del = ("null", "ips=[1]", "ips[0].address=no-prefix", "routes='x'", "0.2.0 ip4='x'")
    out = [Mutation("prevResult=<missing>", "prev", BOTH, ("CHECK", "DEL"),
                    _set_conf("prevResult", MISSING))]
    for label, transform in shapes:
        out.append(Mutation(f"prevResult={label}", "prev", BOTH,
                            ("CHECK", "DEL") if label in with_del else ("CHECK",),
                            _set_conf("prevResult", Ref("prev", transform, f"prev {label}"))))
    return out


def _gc_mutations() -> list[Mutation]:
    """GC's attachment lists. The protocol core's rule: a list that is missing or holds a
    malformed entry refuses the GC (code 7), since guessing could free a lease in use."""
    key, alias = "cni.dev/valid-attachments", "cni.dev/attachments"
    valid = Ref("attachment")
    no_ifname = Ref("attachment", lambda a: {"containerID": a["containerID"]},
                    "attachment without ifname")
    extra = Ref("attachment", lambda a: dict(a, extra=[1]), "attachment+extra")
    others = [{"containerID": f"other{i}", "ifname": "eth0"} for i in range(10_000)]
    lists = [  # label, value, whether the setup ADD's attachment is declared valid, expect
        ("<missing>", MISSING, False, 7), ("null", None, False, 7), ("'x'", "x", False, 7),
        ("{}", {}, False, 7), ("[]", [], False, 0), ("[valid]", [valid], True, 0),
        ("[valid,garbage]", [valid, "garbage"], True, 7), ("[no-ifname]", [no_ifname], True, 7),
        ("[containerID=5]", [{"containerID": 5, "ifname": "eth0"}], False, 7),
        ("[[valid]]", [[valid]], False, 7), ("[valid,+10000]", [valid] + others, True, 0),
        ("[valid+extra-keys]", [extra], True, 0),
    ]
    out = [Mutation(f"{key}={label}", "gc", BOTH, ("GC",), _set_conf((key,), value), keeps,
                    (code,)) for label, value, keeps, code in lists]
    out.append(Mutation(f"{alias}=[valid] (alias)", "gc", BOTH, ("GC",),
                        _both(_set_conf((key,), MISSING), _set_conf((alias,), [valid])), True,
                        (0,)))
    out.append(Mutation(f"{key}=[valid]+{alias}='x'", "gc", BOTH, ("GC",),
                        _both(_set_conf((key,), [valid]), _set_conf((alias,), "x")), True, (0,)))
    return out


CATALOGUE = (_env_mutations() + _conf_mutations() + _ipam_mutations() + _answer_mutations()
             + _stdin_mutations() + _prev_mutations() + _gc_mutations())


def _version_for(verb: str, minimum: str, rng: random.Random) -> str:
    """Any version the verb and the mutation allow, 1.0.0 (what runtimes send) more often."""
    allowed = [v for v in VERSIONS if v >= max(minimum, MIN_VERSION.get(verb, "0.1.0"))]
    return rng.choice(allowed + ["1.0.0"] * 2 if "1.0.0" in allowed else allowed)


def generate(seed: int, extra: int) -> list[Case]:
    """Every mutation of the catalogue with each of its verbs, then `extra` random pairs of
    mutations; the plugin (where both fit), cniVersion and ipMasq drawn for each."""
    rng = random.Random(seed)
    picks = [((m,), verb) for m in CATALOGUE for verb in m.verbs]
    for _ in range(extra):
        first = rng.choice(CATALOGUE)
        second = rng.choice([m for m in CATALOGUE if m.kind in ("env", "conf", "ipam")
                             and set(m.plugins) & set(first.plugins)])
        picks.append(((first, second), rng.choice(first.verbs)))
    cases = []
    for index, (mutations, verb) in enumerate(picks):
        plugins = sorted(set.intersection(*(set(m.plugins) for m in mutations)))
        minimum = max(m.min_version for m in mutations)
        cases.append(Case(index, rng.choice(plugins), verb, _version_for(verb, minimum, rng),
                          rng.random() < 0.5, mutations))
    return cases


CASES = generate(SEED, EXTRA_CASES)


# --- running a plugin -------------------------------------------------------------------------

class Outcome(NamedTuple):
    rc: int | None    # None: killed by us (hung, or forked without bound)
    stdout: bytes
    stderr: bytes
    trouble: str      # "" or what went wrong with the process itself
    seconds: float


def _group_size(pgid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                count += int(f.read().rsplit(b")", 1)[1].split()[2]) == pgid
        except (OSError, ValueError, IndexError):
            continue
    return count


def _feed(fd: int, data: bytes) -> None:
    """Write a call's stdin and close it; a plugin that exits (or is killed) unread ends it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass
    finally:
        os.close(fd)


def run_plugin(netns: str, plugin: Path, env: dict, stdin: bytes, cwd: Path) -> Outcome:
    """One call in a process group of its own, killed as a group when it outlives
    CALL_TIMEOUT or grows past MAX_PROCS processes (a plugin that runs itself as IPAM).
    prlimit and `ip netns exec` exec rather than fork: the group's leader is the plugin.
    stdin is fed from a thread (Popen.communicate stops feeding after its first timeout)."""
    start = time.monotonic()
    stdin_r, stdin_w = os.pipe()
    proc = subprocess.Popen(
        [PRLIMIT, f"--data={MEMORY_LIMIT}", f"--fsize={FILE_LIMIT}", "--",
         IP, "netns", "exec", netns, str(plugin)],
        env=env, cwd=cwd, stdin=stdin_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    os.close(stdin_r)
    feeder = threading.Thread(target=_feed, args=(stdin_w, stdin), daemon=True)
    feeder.start()
    trouble = ""
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() - start > 0.3 and _group_size(proc.pid) > MAX_PROCS:
            trouble = f"forked more than {MAX_PROCS} processes (killed)"
        elif time.monotonic() - start > CALL_TIMEOUT:
            trouble = f"still running after {CALL_TIMEOUT:.0f} s (killed)"
        if trouble:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            break
    rc = proc.wait()
    feeder.join()
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        pass
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        trouble = trouble or "left processes running after it exited (killed)"
    return Outcome(None if trouble and rc == -signal.SIGKILL else rc, stdout, stderr, trouble,
                   time.monotonic() - start)


def sh(*cmd, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))}: {proc.stdout}{proc.stderr}")
    return proc


# --- the node ---------------------------------------------------------------------------------

class Netns:
    """A named netns with a sleeping process inside: /proc/<its pid>/net shows the netns's
    links and netfilter tables to us without an exec per look."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.holder: subprocess.Popen | None = None
        self.create()

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def create(self) -> None:
        sh(IP, "netns", "add", self.name)
        sh(IP, "-n", self.name, "link", "set", "lo", "up")
        self.holder = subprocess.Popen([IP, "netns", "exec", self.name, "sleep", "infinity"])
        inode = os.stat(self.path).st_ino
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{self.holder.pid}/ns/net").st_ino != inode:  # not in yet
            assert time.monotonic() < deadline, f"{self.holder.args} did not enter {self.name}"
            time.sleep(0.001)

    def delete(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None
        if os.path.exists(self.path):
            sh(IP, "netns", "del", self.name)

    def renew(self) -> None:
        self.delete()
        self.create()

    def links(self) -> list[str]:
        with open(f"/proc/{self.holder.pid}/net/dev") as f:
            return [line.split(":")[0].strip() for line in f.readlines()[2:]]

    def has_nat_table(self) -> bool:
        for name in ("ip_tables_names", "ip6_tables_names"):
            with open(f"/proc/{self.holder.pid}/net/{name}") as f:
                if "nat" in f.read().split():
                    return True
        return False


class Node:
    """A node netns the plugins run in, a pod netns, and a sandbox directory: the dataDir,
    CNI_PATH, the plugins' cwd, and the odd files the mutations point at."""

    def __init__(self, name: str, tmp: Path, plugins: Path) -> None:
        self.netns: list[Netns] = []
        self.node = self._netns(f"{name}-node")
        self.pod = self._netns(f"{name}-pod")
        self.bin, self.cwd, self.data = tmp / "bin", tmp / "cwd", tmp / "data"
        for d in (self.bin, self.cwd / "bin-rel"):
            d.mkdir(parents=True)
            for plugin in ("bridge", "host-local"):
                (d / plugin).symlink_to(plugins / plugin)
        (self.bin / "echo-ipam").write_text(ECHO_IPAM)
        (self.bin / "echo-ipam").chmod(0o755)
        (self.cwd / "relative").mkdir()
        (self.cwd / "relative" / "netns").write_text("not a netns\n")
        self.data.mkdir()
        self.default_net = f"{name}-default"  # a network of its own in the default dataDir
        self.made_dirs = [d for d in (DEFAULT_DATA_DIR.parent, DEFAULT_DATA_DIR)
                          if not d.exists()]  # what those cases may create, to remove after
        fixtures = tmp / "fixtures"
        fixtures.mkdir()
        os.mkfifo(fixtures / "fifo")
        (fixtures / "dir").mkdir()
        (fixtures / "file").write_text("a regular file\n")
        (fixtures / "loop").symlink_to(fixtures / "loop")
        (fixtures / "resolv.conf").write_text(
            "# comment\nnameserver 10.77.0.10\nnameserver fd77::10\nsearch a.example b.example\n"
            "options ndots:5 edns0\ndomain example\n")
        (fixtures / "resolv-odd.conf").write_bytes(
            b"nameserver\nsearch\n\xff\xfe junk\n; nameserver 1.1.1.1\n" + b"options x\n" * 50_000)
        self.refs = {
            "fifo": str(fixtures / "fifo"), "dir": str(fixtures / "dir"),
            "file": str(fixtures / "file"), "loop": str(fixtures / "loop"),
            "dev_null": "/dev/null", "resolv": str(fixtures / "resolv.conf"),
            "resolv_odd": str(fixtures / "resolv-odd.conf"), "bin": str(self.bin),
            "data": str(self.data), "node_ns": self.node.path, "pod_ns": self.pod.path,
            "gone_ns": f"/run/netns/{name}-gone", "default_net": self.default_net,
        }
        self.watched = [fixtures, self.bin, self.cwd / "bin-rel", self.cwd / "relative"]
        self.baseline = self.snapshot()
        self.firewall_used = False  # the last residue() saw nf_tables or legacy nat rules

    def _netns(self, name: str) -> Netns:
        ns = Netns(name)
        self.netns.append(ns)
        return ns

    def teardown(self) -> None:
        for ns in self.netns:
            ns.delete()
        shutil.rmtree(DEFAULT_DATA_DIR / self.default_net, ignore_errors=True)
        for d in reversed(self.made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass  # not empty: someone else's now

    def data_roots(self) -> list[Path]:
        return [self.data, self.cwd / "data-rel", DEFAULT_DATA_DIR / self.default_net]

    def snapshot(self) -> dict:
        """Every entry of the watched sandbox dirs, with what a write would change."""
        out = {}
        for top in self.watched:
            for root, dirs, files in os.walk(top):
                for name in dirs + files:
                    st = os.lstat(os.path.join(root, name))
                    out[os.path.join(root, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
        return out

    def residue(self, bridges: set[str] | None) -> list[str]:
        """What the node, the pod and the dataDirs hold of a case that is over. A bridge (and
        its VLAN interfaces, <bridge>.<vlan>) stays, as in the reference, if a conf of the
        case named it; so do the nftables masquerade table and its shared chains, but no
        line of ATTACHMENT_RULES. bridges=None: a host-local case, which never enters a
        netns."""
        found = []
        if bridges is not None:
            found += [f"node netns: link {name!r}" for name in self.node.links()
                      if name != "lo" and name.split(".")[0] not in bridges]
            found += [f"pod netns: link {name!r}" for name in self.pod.links() if name != "lo"]
            rules = sh(IP, "netns", "exec", self.node.name, "sh", "-c", FIREWALL_DUMP
                       + (LEGACY_NAT_DUMP if self.node.has_nat_table() else "")).stdout
            self.firewall_used = bool(rules.strip())
            found += [f"node netns firewall: {line.strip()}" for line in rules.splitlines()
                      if any(mark in line for mark in ATTACHMENT_RULES)]
        for root in self.data_roots():
            for path in _walk_files(root):
                if not path.name.startswith(BOOKKEEPING):
                    found.append(f"dataDir: {path} = {path.read_bytes()[:60]!r}")
        return found

    def written_outside(self) -> list[str]:
        """Changes to the sandbox outside the dataDirs since the last look; new entries in
        the plugins' cwd are removed once reported, so that the next case starts clean."""
        now = self.snapshot()
        changed = sorted(p for p in set(now) | set(self.baseline)
                         if now.get(p) != self.baseline.get(p))
        self.baseline = now
        extra = sorted(set(os.listdir(self.cwd)) - {"bin-rel", "relative", "data-rel"})
        for entry in extra:
            path = self.cwd / entry
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        made = [p for p in OUTSIDE_PATHS if os.path.lexists(p)]
        return ([f"sandbox changed: {p}" for p in changed]
                + [f"cwd: new entry {e!r}" for e in extra] + [f"created {p}" for p in made])

    def reset(self) -> None:
        """A clean node for the next case: netns with only lo and no firewall (made anew:
        cheaper and surer than deleting what a case left), empty dataDirs."""
        if self.firewall_used:
            self.node.renew()
            self.firewall_used = False
        for ns in (self.node, self.pod):
            if ns.links() != ["lo"] or ns.has_nat_table():
                ns.renew()
        for root in self.data_roots():
            shutil.rmtree(root, ignore_errors=True)
        self.data.mkdir()


def _walk_files(root: Path):
    for dirpath, _, files in os.walk(root):
        for name in files:
            yield Path(dirpath, name)


def root_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))  # our own sysfs: the root netns


def root_rules() -> dict[str, list[str]]:
    """The root netns's firewall, without the counters that traffic changes."""
    out = {}
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save",
                 "ip6tables-nft-save"):
        if shutil.which(tool):
            out[tool] = [line.rsplit(" [", 1)[0] if line.startswith(":") else line
                         for line in sh(tool, check=False).stdout.splitlines()
                         if not line.startswith("#")]
    if shutil.which("nft"):
        out["nft"] = sh("nft", "list", "ruleset", check=False).stdout.splitlines()
    return out


# --- one case ---------------------------------------------------------------------------------

class Call(NamedTuple):
    plugin: str
    env: dict     # bytes: bytes, exactly what the plugin gets
    stdin: bytes

    def reproducer(self) -> str:
        env = " ".join(f"{k.decode()}={_shorten(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {self.plugin} <<< {_shorten(self.stdin, 600)}"

    def with_command(self, verb: bytes) -> Call:
        return self._replace(env={**self.env, b"CNI_COMMAND": verb})


def _shorten(data: bytes, limit: int = 120) -> str:
    text = repr(data)[2:-1]
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...<{len(data)} bytes>...{text[-limit // 4:]}"


def resolve(value, refs: dict):
    """The value with every Ref replaced by what it names now."""
    if isinstance(value, Ref):
        resolved = refs[value.name]
        return value.transform(resolved) if value.transform else resolved
    if isinstance(value, dict):
        return {k: resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


def build_call(case: Case, refs: dict, verb: str, mutated: bool = True) -> Call:
    """The valid request for the case's plugin and verb, then its mutations."""
    env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": case.container_id,
           "CNI_NETNS": Ref("pod_ns"), "CNI_IFNAME": "eth0", "CNI_PATH": Ref("bin")}
    if case.index % 3 == 0:  # what kubelet's runtimes add
        env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=p{case.index}"
    conf = {"cniVersion": case.version, "name": NET, "type": "bridge"}
    if case.plugin == "bridge":
        conf.update(bridge=BRIDGE, isGateway=True, ipMasq=case.ip_masq)
    conf["ipam"] = {"type": "host-local", "dataDir": Ref("data"),
                    "ranges": [[{"subnet": SUBNET}], [{"subnet": SUBNET6}]],
                    "routes": [{"dst": "0.0.0.0/0"}]}
    if verb in ("CHECK", "DEL") and "prev" in refs:
        conf["prevResult"] = Ref("prev")
    if verb == "GC":
        conf["cni.dev/valid-attachments"] = [Ref("attachment")]
    for m in case.mutations if mutated else ():
        if m.kind != "stdin":
            m.apply(env, conf)
    stdin = json.dumps(resolve(conf, refs)).encode()
    for m in case.mutations if mutated else ():
        if m.kind == "stdin":
            stdin = m.apply(stdin)
    env = {k.encode(): v if isinstance(v, bytes) else str(v).encode()
           for k, v in resolve(env, refs).items()}
    return Call(case.plugin, env, stdin)


def _loads(data: bytes):
    """Our JSON reading of stdin or stdout; None where it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def check_output(call: Call, out: Outcome) -> list[str]:
    """The protocol's promises about one call's output."""
    problems = [out.trouble] if out.trouble else []
    stderr = out.stderr.decode(errors="replace")
    if "Traceback (most recent call last)" in stderr:
        problems.append(f"traceback on stderr: {stderr[-600:]}")
    if out.rc is None:
        return problems
    if out.rc < 0:
        return problems + [f"killed by signal {-out.rc}"]
    text = out.stdout.decode(errors="replace")[:300]
    verb = call.env.get(b"CNI_COMMAND", b"").decode(errors="replace")
    answer = _loads(out.stdout)
    if out.rc != 0:
        if not (isinstance(answer, dict) and isinstance(answer.get("cniVersion"), str)
                and type(answer.get("code")) is int and isinstance(answer.get("msg"), str)
                and answer["msg"] and isinstance(answer.get("details", ""), str)):
            problems.append(f"exit {out.rc} without one spec error object on stdout: {text!r}")
        elif answer["code"] == 999:
            problems.append(f"code 999 (internal error): {answer['msg'][:300]}")
        elif answer["code"] < 1:
            problems.append(f"exit {out.rc} with error code {answer['code']}")
        return problems
    if b"CNI_COMMAND" not in call.env or verb not in ("ADD", "VERSION"):
        if out.stdout.strip():  # no CNI_COMMAND: the "about" line goes to stderr
            problems.append(f"{verb or 'no CNI_COMMAND'}: exit 0 but printed {text!r}")
        return problems
    if not (isinstance(answer, dict) and isinstance(answer.get("cniVersion"), str)):
        return problems + [f"{verb} exit 0 without one JSON object on stdout: {text!r}"]
    if verb == "VERSION":
        if not isinstance(answer.get("supportedVersions"), list):
            problems.append(f"VERSION without supportedVersions: {text}")
        return problems
    conf = _loads(call.stdin)
    asked = conf.get("cniVersion") if isinstance(conf, dict) else None
    if asked in VERSIONS and answer["cniVersion"] != asked:
        problems.append(f"ADD of a {asked} conf answered in {answer['cniVersion']}")
    legacy = answer["cniVersion"] in ("0.1.0", "0.2.0")
    if call.plugin == "host-local" and not (answer.get("ip4") or answer.get("ip6") if legacy
                                            else answer.get("ips")):
        problems.append(f"host-local ADD exit 0 without an address: {text}")
    if call.plugin == "bridge" and not legacy and not answer.get("interfaces"):
        problems.append(f"bridge ADD exit 0 without interfaces: {text}")
    return problems


def _error_code(out: Outcome) -> int | None:
    answer = _loads(out.stdout)
    return answer.get("code") if isinstance(answer, dict) else None


def _bridge_names(calls: list[Call]) -> set[str]:
    """The bridges the calls' confs name (cni0 when they name none)."""
    names = set()
    for c in calls:
        conf = _loads(c.stdin)
        name = conf.get("bridge") if isinstance(conf, dict) else None
        names.add(name if isinstance(name, str) else "cni0")
    return names


def _with_prev_result(c: Call, result: dict) -> Call | None:
    """The call with prevResult set, as a runtime sends CHECK and DEL from 0.4.0 on; None
    for older versions, which have no CHECK and no prevResult."""
    if result.get("cniVersion") not in VERSIONS[4:]:
        return None
    conf = _loads(c.stdin)
    conf["prevResult"] = result
    return c._replace(stdin=json.dumps(conf).encode())


def _leases_of(node: Node, container_id: str) -> list[Path]:
    return [p for root in node.data_roots() for p in _walk_files(root)
            if not p.name.startswith(BOOKKEEPING)
            and p.read_bytes().split(b"\r\n")[0].strip() == container_id.encode()]


def run_case(node: Node, case: Case) -> tuple[list[str], list[str]]:
    """(problems, log): every promise the calls broke, and the calls with what they did."""
    problems: list[str] = []
    log: list[str] = []
    refs = dict(node.refs)
    links_before = root_links()

    def call(c: Call, what: str) -> Outcome:
        out = run_plugin(node.node.name, node.bin / c.plugin, c.env, c.stdin, node.cwd)
        log.append(f"{what}: {c.reproducer()}\n    -> rc={out.rc} {out.seconds:.2f}s "
                   f"stdout={_shorten(out.stdout, 300)} stderr={_shorten(out.stderr, 300)}")
        problems.extend(f"{what}: {p}" for p in check_output(c, out))
        return out

    setup = None
    if case.setup_add:
        setup = build_call(case, refs, "ADD", mutated=False)
        out = call(setup, "setup ADD (valid)")
        if out.rc != 0:
            return problems + ["setup ADD (valid) failed"], log
        refs["prev"] = json.loads(out.stdout)
        refs["attachment"] = {"containerID": case.container_id, "ifname": "eth0"}
    fuzzed = build_call(case, refs, case.verb)
    out = call(fuzzed, f"fuzzed {case.verb}")
    expected = case.mutations[0].expect
    if expected and out.rc is not None and (_error_code(out) if out.rc else 0) not in expected:
        wanted = " or ".join("success" if c == 0 else f"code {c}" for c in expected)
        problems.append(f"fuzzed {case.verb}: ended in "
                        f"{f'code {_error_code(out)}' if out.rc else 'success'}, not {wanted}")
    bridges = _bridge_names([fuzzed] + [setup] * bool(setup)) if case.plugin == "bridge" else None
    settled = False  # True when a residue check has seen the case's final state
    if fuzzed.env.get(b"CNI_COMMAND") == b"ADD" and out.rc == 0:
        follow = _with_prev_result(fuzzed, json.loads(out.stdout))
        if follow and call(follow.with_command(b"CHECK"), "CHECK of the fuzzed ADD").rc != 0:
            problems.append("CHECK right after a successful ADD, with its result, failed")
        if call((follow or fuzzed).with_command(b"DEL"), "DEL of the fuzzed ADD").rc != 0:
            problems.append("the DEL of a successful ADD failed")
    elif fuzzed.env.get(b"CNI_COMMAND") == b"ADD":  # a runtime DELs what it tried to ADD
        left = []
        if out.rc is not None and setup is None:
            left = node.residue(bridges)
            problems += [f"failed ADD left {r}" for r in left]
            settled = True
        if out.rc is None or left or _error_code(out) not in REJECTED_INPUT:
            call(fuzzed.with_command(b"DEL"), "DEL of the fuzzed ADD")
            settled = False
    if case.verb == "GC" and out.rc == 0 and case.mutations[0].keeps_attachment \
            and not _leases_of(node, case.container_id):
        problems.append("GC exit 0 released the lease of an attachment it was told is valid")
    if setup is not None:
        call(setup.with_command(b"DEL"), "cleanup DEL (valid)")
    if not settled:
        problems += [f"after DEL: {r}" for r in node.residue(bridges)]
    problems += node.written_outside()
    problems += [f"root netns: new link {name}" for name in sorted(root_links() - links_before)]
    return problems, log


# --- the tests --------------------------------------------------------------------------------

def _run_all(nodes: list[Node], cases: list[Case], stop: threading.Event) -> dict:
    """Each node runs every WORKERS-th case; a case that raises is reported, not fatal."""
    results: dict[int, tuple[list[str], list[str]]] = {}

    def work(node: Node, share: list[Case]) -> None:
        for case in share:
            if stop.is_set():
                return
            try:
                results[case.index] = run_case(node, case)
            except Exception as e:  # a broken case must not hide the others
                results[case.index] = ([f"the case itself failed: {type(e).__name__}: {e}"], [])
            finally:
                node.reset()

    threads = [threading.Thread(target=work, args=(node, cases[i::len(nodes)]))
               for i, node in enumerate(nodes)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        stop.set()
        for t in threads:
            t.join()
    return results


@pytest.fixture(scope="module")
def fuzz_run(request, zipapp, tmp_path_factory):
    """The outcome of every selected case, keyed by index, and the root firewall before."""
    plugins = zipapp("bridge").parent
    zipapp("host-local")
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    rules = root_rules()
    nodes: list[Node] = []
    try:
        for i in range(WORKERS):
            nodes.append(Node(f"{PREFIX}w{i}", tmp_path_factory.mktemp(f"fuzz{i}"), plugins))
        with sigterm_as_interrupt():  # a CI timeout still removes the namespaces
            yield _run_all(nodes, selected, threading.Event()), rules
    finally:
        for node in nodes:
            node.teardown()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fuzz_case(fuzz_run, case: Case):
    problems, log = fuzz_run[0][case.index]
    if problems:
        pytest.fail("\n".join([f"seed {SEED}, case {case.index} ({case.plugin} {case.verb} "
                               f"cniVersion {case.version}, ipMasq {case.ip_masq}):",
                               *problems, "calls:", *log]), pytrace=False)


def test_root_namespace_untouched(fuzz_run):
    """After every case: the root netns's firewall is what it was before the first."""
    assert root_rules() == fuzz_run[1]
