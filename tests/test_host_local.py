"""host-local as a runtime runs it: the built zipapp (dist/host-local, or CNI_TEST_PLUGIN_DIR)
exec'd with an `env -i` style environment (CNI_* only: no PATH, no HOME) and the conf on stdin.

Covered: the result of every cniVersion, VERSION and "about", every error code (JSON on
stdout, non-zero exit, no traceback), the store's bytes (names, contents, modes,
last_reserved_ip.N, the lock), allocation order, requested addresses, DEL, CHECK, GC, STATUS,
resolvConf, path safety; and the hard ones: kill -9 at random instants never leaves an empty or
partial lease, the Go host-local and ours share one dataDir concurrently, 32 parallel first runs
after a fresh extraction, and PYTHON* variables are ignored.

Nothing here needs root or touches the network: host-local never enters CNI_NETNS. As root the
zipapps extract to their default root (/var/cache/cni-python), otherwise to a temp SHIV_ROOT.
The Go reference is /usr/lib/cni/host-local (Debian's containernetworking-plugins, which speaks
cniVersion up to 1.0.0); tests that compare with it skip when it is missing.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import random
import resource
import signal
import socket
import stat
import statistics
import subprocess
import time
from pathlib import Path

import pytest

GO_HOST_LOCAL = Path("/usr/lib/cni/host-local")
NETNS = "/var/run/netns/cni-test-never-opened"
ALL_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
GO_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
V4, V6 = "10.1.2.0/24", "2001:db8:1::/64"
DUAL = [[{"subnet": V4}], [{"subnet": V6}]]
TIMEOUT = 20


# --- running a plugin as a runtime does --------------------------------------------------------

class Out:
    def __init__(self, rc: int, stdout: bytes, stderr: bytes) -> None:
        self.rc, self.stdout, self.stderr = rc, stdout.decode(), stderr.decode()

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"<rc={self.rc} stdout={self.stdout!r} stderr={self.stderr!r}>"


class Plugin:
    def __init__(self, path: Path, base_env: dict) -> None:
        self.path, self.base_env = path, base_env

    def env(self, command: str | None, cid: str, ifname: str, args: str | None,
            env: dict | None) -> dict:
        e = dict(self.base_env)
        if command is not None:
            e.update(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=NETNS,
                     CNI_IFNAME=ifname, CNI_PATH="/opt/cni/bin")
        if args is not None:
            e["CNI_ARGS"] = args
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    def spawn(self, command: str | None, conf: object = None, cid: str = "c1",
              ifname: str = "eth0", args: str | None = None, env: dict | None = None,
              stdin: bytes | None = None, wrapper: tuple[str, ...] = (),
              memory_limit: bool = False) -> subprocess.Popen:
        """Start the plugin with its stdin written and closed, so that many run at once.
        `wrapper` runs it through another command (a read-only mount namespace);
        `memory_limit` makes an unbounded read fail fast instead of taking the machine's
        memory."""
        data = stdin if stdin is not None else json.dumps(conf).encode()
        p = subprocess.Popen([*wrapper, str(self.path)],
                             env=self.env(command, cid, ifname, args, env),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, umask=0o022,
                             preexec_fn=_within_1_gib if memory_limit else None)
        p.stdin.write(data)
        p.stdin.close()
        p.stdin = None  # written and closed: communicate() has nothing to send
        return p

    def run(self, *a, **kw) -> Out:
        return finish(self.spawn(*a, **kw))


def finish(p: subprocess.Popen) -> Out:
    """Its output and exit status; a plugin that hangs is killed and fails the test."""
    try:
        stdout, stderr = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    return Out(p.returncode, stdout, stderr)


def _within_1_gib() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.fixture(scope="module")
def shiv_env(tmp_path_factory) -> dict:
    if os.geteuid() == 0:
        return {}  # the zipapp's own extraction root, as installed
    return {"SHIV_ROOT": str(tmp_path_factory.mktemp("shiv-root"))}


@pytest.fixture(scope="module")
def ours(zipapp, shiv_env) -> Plugin:
    return Plugin(zipapp("host-local"), shiv_env)


@pytest.fixture(scope="module")
def go() -> Plugin:
    if not os.access(GO_HOST_LOCAL, os.X_OK):
        pytest.skip(f"no reference Go host-local at {GO_HOST_LOCAL}: apt-get install "
                    "containernetworking-plugins")
    return Plugin(GO_HOST_LOCAL, {})


def netconf(data_dir: Path, version: str | None = "1.0.0", name: str = "testnet",
            **ipam: object) -> dict:
    """A bridge conf delegating to host-local; runtimeConfig and args go to the top level."""
    top = {k: ipam.pop(k) for k in ("runtimeConfig", "args") if k in ipam}
    if "subnet" not in ipam:
        ipam.setdefault("ranges", [[{"subnet": V4}]])
    conf = {"name": name, "type": "bridge",
            "ipam": {"type": "host-local", "dataDir": str(data_dir), **ipam}, **top}
    if version is not None:
        conf["cniVersion"] = version
    return conf


def ok(out: Out) -> dict | None:
    assert out.rc == 0, out
    assert "Traceback" not in out.stderr, out
    return out.json if out.stdout.strip() else None


def ips(out: Out) -> list[str]:
    return [ip["address"] for ip in ok(out)["ips"]]


def error(out: Out, code: int, msg: str | None = None, version: str = "1.1.0") -> dict:
    """The spec's error object on stdout, a non-zero exit, no traceback."""
    assert out.rc != 0, out
    assert "Traceback" not in out.stderr and "Error" not in out.stderr, out
    err = out.json
    assert set(err) == {"cniVersion", "code", "msg", "details"}, err
    assert (err["code"], err["cniVersion"]) == (code, version), err
    if msg is not None:
        assert err["msg"] == msg, err
    return err


def leases(d: Path) -> dict[str, bytes]:
    """Every file of a network dir but the lock and last_reserved_ip.*: name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())
            if p.name != "lock" and not p.name.startswith("last_reserved_ip.")}


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: b"" if p.name == "lock" else p.read_bytes() for p in sorted(d.iterdir())}


def lease(cid: str, ifname: str = "eth0") -> bytes:
    return f"{cid}\r\n{ifname}".encode()


# --- result shapes -----------------------------------------------------------------------------

RESOLV = ("# generated\nnameserver 10.1.0.10\n; a comment\nnameserver 10.1.0.11\n"
          "search ns.svc.cluster.local svc.cluster.local\noptions ndots:5 attempts:2\n"
          "domain cluster.local\n")
DNS = {"nameservers": ["10.1.0.10", "10.1.0.11"], "domain": "cluster.local",
       "search": ["ns.svc.cluster.local", "svc.cluster.local"],
       "options": ["ndots:5", "attempts:2"]}
ROUTES = [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.2.254"},
          {"dst": "::/0", "gw": "2001:db8:1::1"}]


def full_conf(tmp_path: Path, version: str | None) -> dict:
    tmp_path.mkdir(exist_ok=True)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(RESOLV)
    return netconf(tmp_path / "data", version, ranges=DUAL, routes=ROUTES,
                   resolvConf=str(resolv))


EXPECTED_1X = {"ips": [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"},
                       {"address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"}],
               "routes": ROUTES, "dns": DNS}
EXPECTED = {
    "legacy": {"ip4": {"ip": "10.1.2.2/24", "gateway": "10.1.2.1", "routes": ROUTES[:2]},
               "ip6": {"ip": "2001:db8:1::2/64", "gateway": "2001:db8:1::1",
                       "routes": ROUTES[2:]},
               "dns": DNS},
    "0.3": {"ips": [{"address": "10.1.2.2/24", "gateway": "10.1.2.1", "version": "4"},
                    {"address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1", "version": "6"}],
            "routes": ROUTES, "dns": DNS},
    "1.x": EXPECTED_1X,
}


def shape(version: str) -> str:
    return "legacy" if version < "0.3.0" else "0.3" if version < "1.0.0" else "1.x"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_result_in_every_version(ours, tmp_path, version):
    out = ours.run("ADD", full_conf(tmp_path, version), cid="dummy")
    assert ok(out) == {"cniVersion": version, **EXPECTED[shape(version)]}
    assert out.stderr == ""
    assert leases(tmp_path / "data" / "testnet") == {"10.1.2.2": lease("dummy"),
                                                      "2001:db8:1::2": lease("dummy")}


@pytest.mark.parametrize("version", GO_VERSIONS)
def test_add_result_matches_the_go_reference(ours, go, tmp_path, version):
    results = {}
    for name, plugin in (("go", go), ("ours", ours)):
        conf = full_conf(tmp_path / name, version)
        results[name] = ok(plugin.run("ADD", conf, cid="dummy"))
    assert results["ours"] == results["go"]


def test_cni_versions_list_picks_the_highest_we_speak(ours, tmp_path):
    conf = netconf(tmp_path, version=None)
    conf["cniVersions"] = ["0.3.1", "1.0.0", "0.4.0", "7.0.0"]
    assert ok(ours.run("ADD", conf)) == {
        "cniVersion": "1.0.0", "ips": [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"}]}


def test_conf_without_cni_version_is_0_1_0(ours, tmp_path):
    assert ok(ours.run("ADD", netconf(tmp_path, version=None))) == {
        "cniVersion": "0.1.0", "ip4": {"ip": "10.1.2.2/24", "gateway": "10.1.2.1"}}


# --- VERSION and "about" -----------------------------------------------------------------------

SUPPORTED = {"supportedVersions": ALL_VERSIONS}


def test_version_without_stdin_or_other_env(ours):
    p = subprocess.run([str(ours.path)], env=dict(ours.base_env, CNI_COMMAND="VERSION"),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    assert ok(Out(p.returncode, p.stdout, p.stderr)) == {"cniVersion": "1.1.0", **SUPPORTED}


def test_version_with_stdin_closed(ours):
    p = subprocess.run([str(ours.path)], env=dict(ours.base_env, CNI_COMMAND="VERSION"),
                       preexec_fn=lambda: os.close(0), capture_output=True, timeout=TIMEOUT)
    assert ok(Out(p.returncode, p.stdout, p.stderr)) == {"cniVersion": "1.1.0", **SUPPORTED}


@pytest.mark.parametrize("stdin, version", [
    (b'{"cniVersion": "0.3.1", "name": "n"}', "0.3.1"),
    (b'{"cniVersion": "0.1.0"}', "0.1.0"),
    (b'{"cniVersion": "9.9.9"}', "1.1.0"),
    (b"not json", "1.1.0"),
    (b"", "1.1.0"),
])
def test_version_answers_in_the_request_version(ours, stdin, version):
    out = ours.run(None, env={"CNI_COMMAND": "VERSION"}, stdin=stdin)
    assert ok(out) == {"cniVersion": version, **SUPPORTED}


def test_no_cni_command_prints_about_on_stderr(ours):
    out = ours.run(None, stdin=b"")
    assert (out.rc, out.stdout) == (0, "")
    assert out.stderr.count("\n") == 1 and "host-local" in out.stderr, out
    assert "0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in out.stderr, out


# --- every error code --------------------------------------------------------------------------

def _env_error(env: dict, msg: str) -> tuple:
    return {"env": env}, 4, msg


ERROR_CASES = {
    # 1: incompatible version
    "version-unknown": ({"conf": {"cniVersion": "0.5.0"}}, 1, "incompatible CNI versions"),
    "version-too-new": ({"conf": {"cniVersion": "1.2.0"}}, 1, "incompatible CNI versions"),
    "cniVersions-none-ours": ({"conf": {"cniVersion": None, "cniVersions": ["9.0.0"]}}, 1,
                              "incompatible CNI versions"),
    "check-0.3.1": ({"command": "CHECK", "conf": {"cniVersion": "0.3.1"}}, 1,
                    "config version does not allow CHECK"),
    "gc-1.0.0": ({"command": "GC", "conf": {"cni.dev/valid-attachments": []}}, 1,
                 "config version does not allow GC"),
    "status-1.0.0": ({"command": "STATUS"}, 1, "config version does not allow STATUS"),
    # 4: environment
    "missing-containerid": _env_error({"CNI_CONTAINERID": None},
                                      "required env variables [CNI_CONTAINERID] missing"),
    "missing-ifname": _env_error({"CNI_IFNAME": None},
                                 "required env variables [CNI_IFNAME] missing"),
    "missing-netns": _env_error({"CNI_NETNS": None}, "required env variables [CNI_NETNS] missing"),
    "missing-path-and-id": _env_error({"CNI_PATH": None, "CNI_CONTAINERID": ""},
                                      "required env variables [CNI_CONTAINERID,CNI_PATH] missing"),
    "unknown-command": ({"env": {"CNI_COMMAND": "FROB"}, "version": "1.1.0"}, 4,
                        "unknown CNI_COMMAND: FROB"),  # refused before the conf is read
    "cni-args-not-k-v": _env_error({"CNI_ARGS": "IP=10.1.2.9;garbage"},
                                   "invalid CNI_ARGS: pair 'garbage' is not K=V"),
    "cni-args-unknown-key": _env_error({"CNI_ARGS": "K8S_POD_NAME=p;IP=10.1.2.9"},
                                       "invalid CNI_ARGS: unknown args ['K8S_POD_NAME']"),
    "cni-args-ignore-unknown-0": _env_error({"CNI_ARGS": "IgnoreUnknown=0;FOO=1"},
                                            "invalid CNI_ARGS: unknown args ['FOO']"),
    "cni-args-bad-ip": _env_error({"CNI_ARGS": "IP=10.1.2.300"},
                                  "invalid CNI_ARGS: IP: cannot understand ip '10.1.2.300'"),
    "cni-args-bad-prefix": _env_error({"CNI_ARGS": "IP=10.1.2.9/garbage"},
                                      "invalid CNI_ARGS: IP: cannot understand ip "
                                      "'10.1.2.9/garbage'"),
    "cni-args-prefix-too-long": _env_error({"CNI_ARGS": "IP=10.1.2.9/33"},
                                           "invalid CNI_ARGS: IP: cannot understand ip "
                                           "'10.1.2.9/33'"),
    "containerid-dotdot": _env_error({"CNI_CONTAINERID": "../x"},
                                     "invalid characters in CNI_CONTAINERID"),
    "containerid-dash": _env_error({"CNI_CONTAINERID": "-x"},
                                   "invalid characters in CNI_CONTAINERID"),
    "ifname-slash": _env_error({"CNI_IFNAME": "../eth0"},
                               "invalid CNI_IFNAME: interface name contains / or : or whitespace"),
    "ifname-long": _env_error({"CNI_IFNAME": "x" * 16},
                              "invalid CNI_IFNAME: interface name is longer than 15 bytes"),
    "ifname-dot": _env_error({"CNI_IFNAME": "."}, "invalid CNI_IFNAME: interface name is . or .."),
    "ifname-not-utf8": _env_error({"CNI_IFNAME": "eth\udcff"},  # the byte 0xff in the env
                                  "invalid CNI_IFNAME: interface name is not valid UTF-8"),
    "containerid-too-long": _env_error({"CNI_CONTAINERID": "f" * 100_000},
                                       "invalid CNI_CONTAINERID: longer than 1024 bytes"),
    # 6: undecodable stdin
    "json-truncated": ({"stdin": b'{"cniVersion": "1.0.0",'}, 6,
                       "error decoding network configuration from stdin"),
    "json-not-object": ({"stdin": b'["1.0.0"]'}, 6,
                        "error decoding network configuration from stdin"),
    "json-empty": ({"stdin": b""}, 6, "error decoding network configuration from stdin"),
    "json-binary": ({"stdin": b"\xff\xfe\x00garbage"}, 6,
                    "error decoding network configuration from stdin"),
    "json-syntax": ({"stdin": b'{"cniVersion": "1.0.0" "name": "n"}'}, 6,
                    "error decoding network configuration from stdin"),
    "json-deep": ({"stdin": b'{"a":' * 50000}, 6,
                  "error decoding network configuration from stdin"),
    # 7: invalid config, naming the key
    "host-bits": ({"ipam": {"ranges": [[{"subnet": "10.1.2.3/24"}]]}}, 7,
                  "invalid config: ipam.ranges[0][0].subnet: has host bits set: for a mask of "
                  "length 24 the network address is 10.1.2.0"),
    "overlapping-ranges": ({"ipam": {"ranges": [[{"subnet": V4},
                                                 {"subnet": "10.1.2.128/25"}]]}}, 7,
                           "invalid config: ipam.ranges[0][1]: range 10.1.2.129-10.1.2.254 "
                           "overlaps with ipam.ranges[0][0] (10.1.2.1-10.1.2.254)"),
    "overlapping-sets": ({"ipam": {"ranges": [[{"subnet": V4}], [{"subnet": "10.1.0.0/16"}]]}},
                         7, "invalid config: ipam.ranges[1]: range set overlaps with "
                         "ipam.ranges[0]"),
    "too-small": ({"ipam": {"ranges": [[{"subnet": "10.1.2.0/31"}]]}}, 7,
                  "invalid config: ipam.ranges[0][0].subnet: network 10.1.2.0/31 is too small "
                  "to allocate from"),
    "range-start-outside": ({"ipam": {"ranges": [[{"subnet": V4,
                                                   "rangeStart": "10.1.3.1"}]]}}, 7,
                            "invalid config: ipam.ranges[0][0].rangeStart: 10.1.3.1 is not in "
                            "network 10.1.2.0/24"),
    "legacy-range-end-outside": ({"ipam": {"ranges": None, "subnet": V4,
                                           "rangeEnd": "10.1.9.9"}}, 7,
                                 "invalid config: ipam.rangeEnd: 10.1.9.9 is not in network "
                                 "10.1.2.0/24"),
    "two-v4-in-0.2.0": ({"conf": {"cniVersion": "0.2.0"},
                         "ipam": {"ranges": [[{"subnet": V4}], [{"subnet": "10.1.3.0/24"}]]}}, 7,
                        "invalid config: cniVersion: CNI version 0.2.0 does not support more "
                        "than 1 address per family"),
    "missing-ipam": ({"conf": {"ipam": None}}, 7, "IPAM config missing 'ipam' key"),
    "no-ranges": ({"ipam": {"ranges": None}}, 7, "invalid config: ipam.ranges: no IP ranges "
                  "specified"),
    "runtime-ip-ranges": ({"conf": {"runtimeConfig": {"ipRanges": [[{"subnet": "x"}]]}}}, 7,
                          None),
    "runtime-ips-bad-prefix": ({"conf": {"runtimeConfig": {"ips": ["10.1.2.9/x"]}}}, 7,
                               "invalid config: runtimeConfig.ips: cannot understand ip "
                               "'10.1.2.9/x'"),
    "args-ips-bad-prefix": ({"conf": {"args": {"cni": {"ips": ["2001:db8:1::9/129"]}}}}, 7,
                            "invalid config: args.cni.ips: cannot understand ip "
                            "'2001:db8:1::9/129'"),
    "name-slash": ({"conf": {"name": "a/b"}}, 7, "invalid characters found in network name"),
    "name-dotdot": ({"conf": {"name": ".."}}, 7, "invalid characters found in network name"),
    "name-missing": ({"conf": {"name": None}}, 7, "missing network name"),
    "data-dir-nul": ({"ipam": {"dataDir": "/tmp/x\0y"}}, 7, "invalid config: ipam.dataDir: "
                     "must be a path, it contains a NUL character"),
    "data-dir-surrogate": ({"ipam": {"dataDir": "/tmp/\ud800"}}, 7, "invalid config: "
                           "ipam.dataDir: must be a path, it contains a lone surrogate "
                           "(\\ud800-\\udfff)"),
    "resolv-conf-nul": ({"ipam": {"resolvConf": "/etc/resolv.conf\0"}}, 7, "invalid config: "
                        "ipam.resolvConf: must be a path, it contains a NUL character"),
    "resolv-conf-surrogate": ({"ipam": {"resolvConf": "/etc/\udcff"}}, 7, "invalid config: "
                              "ipam.resolvConf: must be a path, it contains a lone surrogate "
                              "(\\ud800-\\udfff)"),
    "route-without-dst": ({"ipam": {"routes": [{"gw": "10.1.2.1"}]}}, 7,
                          "invalid config: ipam.routes[0].dst: is required (a CIDR)"),
    "route-table-2**32": ({"ipam": {"routes": [{"dst": "0.0.0.0/0", "table": 2**32}]}}, 7,
                          "invalid config: ipam.routes[0].table: must be an integer from 0 to "
                          "4294967295"),
    "route-mtu-2**40": ({"ipam": {"routes": [{"dst": "0.0.0.0/0", "mtu": 2**40}]}}, 7,
                        "invalid config: ipam.routes[0].mtu: must be an integer from 0 to "
                        "4294967295"),
    "route-scope-string": ({"ipam": {"routes": [{"dst": "0.0.0.0/0", "scope": "253"}]}}, 7,
                           "invalid config: ipam.routes[0].scope: must be an integer from 0 to "
                           "255"),
    "route-gw-not-ip": ({"ipam": {"routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2"}]}}, 7,
                        "invalid config: ipam.routes[0].gw: is not an IP address"),
    # 5: I/O
    "resolv-conf-missing": ({"ipam": {"resolvConf": "/nonexistent/resolv.conf"}}, 5,
                            "ipam.resolvConf: cannot read /nonexistent/resolv.conf: No such file "
                            "or directory"),
    "resolv-conf-directory": ({"ipam": {"resolvConf": "/"}}, 5,
                              "ipam.resolvConf: cannot read /: Is a directory"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_codes(ours, tmp_path, case):
    spec, code, msg = ERROR_CASES[case]
    conf = netconf(tmp_path / "data", ranges=DUAL)
    for k, v in spec.get("ipam", {}).items():
        if v is None:
            conf["ipam"].pop(k, None)
        else:
            conf["ipam"][k] = v
    for k, v in spec.get("conf", {}).items():
        if v is None:
            conf.pop(k, None)
        else:
            conf[k] = v
    out = ours.run(spec.get("command", "ADD"), conf, env=spec.get("env"),
                   stdin=spec.get("stdin"))
    version = spec.get("version", conf.get("cniVersion") if "stdin" not in spec else None)
    err = error(out, code, msg, version if version in ALL_VERSIONS else "1.1.0")
    if code == 7 and msg is None:
        assert err["msg"].startswith("invalid config: runtimeConfig.ipRanges[0][0].subnet: ")
    assert out.stderr == ""
    net = tmp_path / "data" / "testnet"
    assert not net.exists() or leases(net) == {}  # no error leaves a lease behind
    assert sorted(os.listdir(tmp_path)) in ([], ["data"])


def test_unusable_data_dir_is_an_io_error(ours, tmp_path):
    (tmp_path / "file").write_text("")
    err = error(ours.run("ADD", netconf(tmp_path / "file")), 5, version="1.0.0")
    assert err["msg"].startswith(f"host-local: cannot use dataDir {tmp_path / 'file'}: "), err


def test_exhausted_range_is_code_100(ours, tmp_path):
    conf = netconf(tmp_path, ranges=[[{"subnet": "10.1.0.0/29"}]])
    assert [ips(ours.run("ADD", conf, cid=f"c{i}")) for i in range(5)] == [
        [f"10.1.0.{i}/29"] for i in range(2, 7)]
    error(ours.run("ADD", conf, cid="c5"), 100,
          "no IP addresses available in range set: 10.1.0.1-10.1.0.6", "1.0.0")
    assert set(leases(tmp_path / "testnet")) == {f"10.1.0.{i}" for i in range(2, 7)}


def test_failure_in_a_later_set_releases_the_earlier_ones(ours, tmp_path):
    conf = netconf(tmp_path, ranges=[[{"subnet": V4}],
                                     [{"subnet": V6, "rangeStart": "2001:db8:1::9",
                                       "rangeEnd": "2001:db8:1::9"}]])
    assert ips(ours.run("ADD", conf, cid="a")) == ["10.1.2.2/24", "2001:db8:1::9/64"]
    error(ours.run("ADD", conf, cid="b"), 100,
          "no IP addresses available in range set: 2001:db8:1::9-2001:db8:1::9", "1.0.0")
    assert leases(tmp_path / "testnet") == {"10.1.2.2": lease("a"), "2001:db8:1::9": lease("a")}


def test_duplicate_add_is_code_100_and_keeps_the_lease(ours, tmp_path):
    conf = netconf(tmp_path)
    ok(ours.run("ADD", conf, cid="a"))
    error(ours.run("ADD", conf, cid="a"), 100,
          "10.1.2.2 has been allocated to a, duplicate allocation is not allowed", "1.0.0")
    assert leases(tmp_path / "testnet") == {"10.1.2.2": lease("a")}


# --- the store's bytes -------------------------------------------------------------------------

def test_store_layout_contents_and_modes(ours, tmp_path):
    data = tmp_path / "data"
    out = ours.run("ADD", netconf(data, ranges=DUAL), cid="dummy")
    assert ips(out) == ["10.1.2.2/24", "2001:db8:1::2/64"]
    net = data / "testnet"
    assert snapshot(net) == {"10.1.2.2": b"dummy\r\neth0", "2001:db8:1::2": b"dummy\r\neth0",
                             "last_reserved_ip.0": b"10.1.2.2",
                             "last_reserved_ip.1": b"2001:db8:1::2", "lock": b""}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in net.iterdir()}
    assert modes == {"10.1.2.2": 0o600, "2001:db8:1::2": 0o600, "last_reserved_ip.0": 0o600,
                     "last_reserved_ip.1": 0o600, "lock": 0o750}
    assert stat.S_IMODE(net.stat().st_mode) == 0o755
    assert stat.S_IMODE(data.stat().st_mode) == 0o755


def test_ipv6_names_are_rfc5952_and_ipv4_mapped_are_ipv4(ours, tmp_path):
    conf = netconf(tmp_path, ranges=[[{"subnet": "2001:0DB8:0001:0000::/64"}],
                                     [{"subnet": V4}]],
                   runtimeConfig={"ips": ["2001:db8:1:0:0:0:0:00a0/64"]})
    out = ours.run("ADD", conf, args="IgnoreUnknown=1;K8S_POD_NAME=p;IP=::ffff:10.1.2.9")
    assert ips(out) == ["2001:db8:1::a0/64", "10.1.2.9/24"]
    assert snapshot(tmp_path / "testnet") == {
        "10.1.2.9": lease("c1"), "2001:db8:1::a0": lease("c1"), "last_reserved_ip.0":
        b"2001:db8:1::a0", "last_reserved_ip.1": b"10.1.2.9", "lock": b""}


def test_last_reserved_index_shifts_with_runtime_ip_ranges_and_legacy_subnet(ours, tmp_path):
    conf = netconf(tmp_path, subnet="10.60.0.0/24", ranges=[[{"subnet": V6}]],
                   runtimeConfig={"ipRanges": [[{"subnet": "10.50.0.0/24"}]]})
    assert ips(ours.run("ADD", conf)) == ["10.50.0.2/24", "10.60.0.2/24", "2001:db8:1::2/64"]
    snap = snapshot(tmp_path / "testnet")
    assert {k: v for k, v in snap.items() if k.startswith("last")} == {
        "last_reserved_ip.0": b"10.50.0.2", "last_reserved_ip.1": b"10.60.0.2",
        "last_reserved_ip.2": b"2001:db8:1::2"}
    conf.pop("runtimeConfig")  # the same network without the runtime's ranges: indexes move
    assert ips(ours.run("ADD", conf, cid="c2")) == ["10.60.0.3/24", "2001:db8:1::3/64"]
    snap = snapshot(tmp_path / "testnet")
    assert (snap["last_reserved_ip.0"], snap["last_reserved_ip.1"]) == (b"10.60.0.3",
                                                                        b"2001:db8:1::3")


def test_lock_file_is_never_unlinked(ours, go, tmp_path):
    conf = netconf(tmp_path, ranges=DUAL)
    ok(ours.run("ADD", conf, cid="a"))
    lock = tmp_path / "testnet" / "lock"
    inode = lock.stat().st_ino
    ok(go.run("ADD", conf, cid="b"))
    ok(ours.run("CHECK", conf, cid="b"))
    ok(ours.run("DEL", conf, cid="a"))
    ok(ours.run("DEL", conf, cid="a"))
    conf11 = dict(conf, cniVersion="1.1.0")
    ok(ours.run("STATUS", conf11))
    ok(ours.run("GC", dict(conf11, **{"cni.dev/valid-attachments": []})))
    assert lock.stat().st_ino == inode
    assert sorted(os.listdir(tmp_path / "testnet")) == ["last_reserved_ip.0",
                                                        "last_reserved_ip.1", "lock"]



def test_an_add_waits_while_another_process_holds_the_lock(ours, tmp_path):
    """The Go plugin serialises on flock(LOCK_EX) of <net>/lock: ours must wait on that same
    lock, not merely keep a file of that name (nothing else here tells the two apart)."""
    conf = netconf(tmp_path)
    net = tmp_path / "testnet"
    net.mkdir()
    fd = os.open(net / "lock", os.O_RDONLY | os.O_CREAT, 0o750)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        p = ours.spawn("ADD", conf)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                p.wait(timeout=2)  # an unlocked ADD takes ~50 ms
            assert leases(net) == {}
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        assert ips(finish(p)) == ["10.1.2.2/24"]
    finally:
        os.close(fd)

# --- allocation order, and the same decisions as the Go reference ------------------------------

def test_round_robin_wrap_and_gateway(ours, tmp_path):
    conf = netconf(tmp_path, ranges=[[{"subnet": "10.1.0.0/29"}]])
    for i in range(5):
        ok(ours.run("ADD", conf, cid=f"c{i}"))  # .2 .. .6
    ok(ours.run("DEL", conf, cid="c2"))  # frees .4
    assert ips(ours.run("ADD", conf, cid="d1")) == ["10.1.0.4/29"]  # wrapped, skipped .1
    ok(ours.run("DEL", conf, cid="c1"))  # .3
    ok(ours.run("DEL", conf, cid="c3"))  # .5
    assert ips(ours.run("ADD", conf, cid="d2")) == ["10.1.0.5/29"]  # after .4, not .3
    assert ips(ours.run("ADD", conf, cid="d3")) == ["10.1.0.3/29"]
    assert (tmp_path / "testnet" / "last_reserved_ip.0").read_bytes() == b"10.1.0.3"


def _scenario(plugin: Plugin, data: Path) -> list:
    """Every way to pick an address, as a list of (rc, result or error code)."""
    base = netconf(data, subnet="10.60.0.0/28", gateway="10.60.0.14",
                   ranges=[[{"subnet": "10.70.0.0/24", "rangeStart": "10.70.0.250"},
                            {"subnet": "10.71.0.0/30"}],
                           [{"subnet": V6, "rangeStart": "2001:db8:1::fffe"}]],
                   runtimeConfig={"ipRanges": [[{"subnet": "10.50.0.0/29"}]]})
    steps = [
        ("ADD", "a", "eth0", None, {}),
        ("ADD", "b", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=b;IP=10.50.0.5", {}),
        ("ADD", "c", "eth0", None, {"args": {"cni": {"ips": ["10.70.0.253", "10.60.0.9"]}}}),
        ("ADD", "d", "eth0", None, {"runtimeConfig": {
            "ipRanges": [[{"subnet": "10.50.0.0/29"}]], "ips": ["2001:db8:1:0:0:1:0:9"]}}),
        ("ADD", "a", "eth1", None, {}),
        ("DEL", "b", "eth0", None, {}),
        ("ADD", "e", "eth0", None, {}),
        ("ADD", "f", "eth0", None, {}),
        ("ADD", "g", "eth0", None, {}),
        ("DEL", "a", "eth0", None, {}),
        ("ADD", "h", "eth0", None, {}),
        ("ADD", "i", "eth0", None, {}),
        ("ADD", "j", "eth0", None, {}),
        ("DEL", "zz", "eth0", None, {}),
    ]
    got = []
    for command, cid, ifname, args, extra in steps:
        out = plugin.run(command, dict(base, **extra), cid=cid, ifname=ifname, args=args)
        body = out.json if out.stdout.strip() else None
        if out.rc == 0 and body:
            body.pop("dns", None)  # Go prints "dns": {} when there is none
        got.append((command, cid, out.rc == 0, body if out.rc == 0 else None))
    return got


def test_same_decisions_and_bytes_as_the_go_reference(ours, go, tmp_path):
    expected = _scenario(go, tmp_path / "go")
    assert _scenario(ours, tmp_path / "ours") == expected
    assert [ok for _, _, ok, _ in expected].count(False) >= 1  # the scenario exhausts a set
    assert snapshot(tmp_path / "ours" / "testnet") == snapshot(tmp_path / "go" / "testnet")


# --- requested addresses -----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["cni_args", "cni_args_prefix", "args", "runtime_config"])
def test_requested_ip(ours, tmp_path, how):
    conf, args = netconf(tmp_path, ranges=DUAL), None
    if how == "cni_args":
        args = "IP=10.1.2.50"
    elif how == "cni_args_prefix":
        args = "IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;IP=10.1.2.50/24"
    elif how == "args":
        conf["args"] = {"cni": {"ips": ["10.1.2.50"]}}
    else:
        conf["runtimeConfig"] = {"ips": ["10.1.2.50/24"]}
    assert ips(ours.run("ADD", conf, args=args)) == ["10.1.2.50/24", "2001:db8:1::2/64"]
    assert (tmp_path / "testnet" / "last_reserved_ip.0").read_bytes() == b"10.1.2.50"
    err = error(ours.run("ADD", conf, cid="c2", args=args), 100, version="1.0.0")
    assert err["msg"] == ("requested IP address 10.1.2.50 is not available in range set "
                          "10.1.2.1-10.1.2.254")
    assert leases(tmp_path / "testnet") == {"10.1.2.50": lease("c1"),
                                            "2001:db8:1::2": lease("c1")}


def test_requested_ips_of_both_families(ours, tmp_path):
    conf = netconf(tmp_path, ranges=DUAL, runtimeConfig={"ips": ["2001:db8:1::80", "10.1.2.80"]})
    assert ips(ours.run("ADD", conf)) == ["10.1.2.80/24", "2001:db8:1::80/64"]


def test_the_same_ip_requested_from_every_source_is_one_request(ours, tmp_path):
    """One address asked for from several sources is one request (Debian's Go 1.1.1 fails)."""
    conf = netconf(tmp_path, args={"cni": {"ips": ["10.1.2.9"]}},
                   runtimeConfig={"ips": ["10.1.2.9/24"]})
    assert ips(ours.run("ADD", conf, args="IP=10.1.2.9")) == ["10.1.2.9/24"]
    assert leases(tmp_path / "testnet") == {"10.1.2.9": lease("c1")}


@pytest.mark.parametrize("gw", [None, ""])
def test_a_route_with_a_null_or_empty_gateway_has_none(ours, go, tmp_path, gw):
    conf = netconf(tmp_path, routes=[{"dst": "0.0.0.0/0", "gw": gw}])
    assert ok(ours.run("ADD", conf))["routes"] == [{"dst": "0.0.0.0/0"}]
    assert ok(go.run("ADD", conf, cid="go"))["routes"] == [{"dst": "0.0.0.0/0"}]


def test_requested_gateway_is_refused(ours, tmp_path):
    error(ours.run("ADD", netconf(tmp_path), args="IP=10.1.2.1"), 100,
          "requested ip 10.1.2.1 is subnet's gateway", "1.0.0")
    assert leases(tmp_path / "testnet") == {}


def test_args_cni_ips_replace_the_cni_args_ip(ours, tmp_path):
    """CONVENTIONS.md: with `args` carrying the equivalent of a CNI_ARGS key (ips for IP), the
    plugin ignores the CNI_ARGS field. Both used to be requested: IP= took the set's slot."""
    conf = netconf(tmp_path, args={"cni": {"ips": ["10.1.2.66"]}})
    assert ips(ours.run("ADD", conf, args="IP=10.1.2.77")) == ["10.1.2.66/24"]
    assert leases(tmp_path / "testnet") == {"10.1.2.66": lease("c1")}


def test_a_second_requested_ip_of_one_set_is_named_as_such(ours, tmp_path):
    """runtimeConfig.ips and args.cni.ips still combine, as in the reference: two addresses of
    one set cannot both be had, and the message says so (not "no range set contains")."""
    conf = netconf(tmp_path, ranges=DUAL, args={"cni": {"ips": ["10.1.2.66"]}},
                   runtimeConfig={"ips": ["10.1.2.77", "192.168.0.1"]})
    error(ours.run("ADD", conf), 100,
          "failed to allocate all requested IPs: no range set contains 192.168.0.1; 10.1.2.77 "
          "is a second address requested from range set ipam.ranges[0] (10.1.2.1-10.1.2.254), "
          "which gives one", "1.0.0")
    assert leases(tmp_path / "testnet") == {}


def test_leftover_requested_ip_fails_and_releases_everything(ours, tmp_path):
    conf = netconf(tmp_path, ranges=DUAL, runtimeConfig={"ips": ["10.1.2.90", "192.168.0.1"]})
    error(ours.run("ADD", conf), 100,
          "failed to allocate all requested IPs: no range set contains 192.168.0.1", "1.0.0")
    assert leases(tmp_path / "testnet") == {}
    del conf["runtimeConfig"]
    assert ips(ours.run("ADD", conf)) == ["10.1.2.91/24", "2001:db8:1::3/64"]  # round robin


# --- DEL, CHECK --------------------------------------------------------------------------------

def test_del_is_idempotent(ours, tmp_path):
    conf = netconf(tmp_path, ranges=DUAL)
    ok(ours.run("ADD", conf, cid="a"))
    ok(ours.run("ADD", conf, cid="b"))
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.2/24"}]}
    for _ in range(2):  # as libcni sends it: the cached result, maybe without a netns
        out = ours.run("DEL", dict(conf, prevResult=prev), cid="a", env={"CNI_NETNS": None})
        assert (out.rc, out.stdout, out.stderr) == (0, "", "")
    assert leases(tmp_path / "testnet") == {"10.1.2.3": lease("b"), "2001:db8:1::3": lease("b")}
    ok(ours.run("DEL", dict(conf, cniVersion="0.2.0"), cid="b"))
    assert leases(tmp_path / "testnet") == {}


def test_del_of_an_unknown_container_changes_nothing(ours, tmp_path):
    conf = netconf(tmp_path)
    ok(ours.run("ADD", conf, cid="a"))
    before = snapshot(tmp_path / "testnet")
    assert ok(ours.run("DEL", conf, cid="nobody")) is None
    assert ok(ours.run("DEL", conf, cid="a", ifname="eth1")) is None
    assert snapshot(tmp_path / "testnet") == before
    assert ok(ours.run("DEL", netconf(tmp_path / "fresh"), cid="a")) is None


def test_del_releases_only_that_interface(ours, tmp_path):
    conf = netconf(tmp_path)
    ok(ours.run("ADD", conf, cid="a", ifname="eth0"))
    ok(ours.run("ADD", conf, cid="a", ifname="net1"))
    ok(ours.run("DEL", conf, cid="a", ifname="net1"))
    assert leases(tmp_path / "testnet") == {"10.1.2.2": lease("a")}


def test_legacy_id_only_leases(ours, tmp_path):
    conf = netconf(tmp_path)
    net = tmp_path / "testnet"
    net.mkdir()
    (net / "10.1.2.40").write_bytes(b"legacy1")  # plugins < 0.8 stored no ifname
    (net / "10.1.2.41").write_bytes(b"legacy2\n")
    ok(ours.run("CHECK", conf, cid="legacy1"))
    error(ours.run("ADD", conf, cid="legacy1"), 100, "10.1.2.40 has been allocated to legacy1, "
          "duplicate allocation is not allowed", "1.0.0")
    ok(ours.run("DEL", conf, cid="legacy1"))
    ok(ours.run("DEL", conf, cid="legacy2"))
    assert leases(net) == {}


def test_check(ours, tmp_path):
    conf = netconf(tmp_path, ranges=DUAL)
    ok(ours.run("ADD", conf, cid="a"))
    out = ours.run("CHECK", dict(conf, prevResult=ok(ours.run("ADD", conf, cid="b"))), cid="b")
    assert (out.rc, out.stdout, out.stderr) == (0, "", "")
    error(ours.run("CHECK", conf, cid="c9"), 101,
          "host-local: Failed to find address added by container c9", "1.0.0")
    error(ours.run("CHECK", conf, cid="a", ifname="eth1"), 101, version="1.0.0")


@pytest.mark.parametrize("leftover", [b"", b"someone-else\r\neth0"], ids=["empty", "another's"])
def test_del_removes_a_crashed_reservations_temp_file_and_no_lease(ours, tmp_path, leftover):
    """An ADD killed between creating the temp file and writing it leaves it empty, which no
    attachment's content matches; under the lock any temp file is a crash's, and a lease
    already linked from it (another name of the same file) stays."""
    conf = netconf(tmp_path)
    net = tmp_path / "testnet"
    ok(ours.run("ADD", conf, cid="keep"))
    (net / ".reserving.tmp").write_bytes(leftover)
    os.link(net / ".reserving.tmp", net / "10.1.2.50")
    ok(ours.run("DEL", conf, cid="gone"))
    assert not (net / ".reserving.tmp").exists()
    assert leases(net) == {"10.1.2.2": lease("keep"), "10.1.2.50": leftover}


# --- GC and STATUS (spec 1.1.0) ----------------------------------------------------------------

@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_releases_what_the_runtime_does_not_know(ours, tmp_path, key):
    conf = netconf(tmp_path, version="1.1.0", ranges=DUAL)
    net = tmp_path / "testnet"
    for cid, ifname in (("a", "eth0"), ("b", "eth0"), ("c", "eth0"), ("c", "eth1")):
        ok(ours.run("ADD", conf, cid=cid, ifname=ifname))
    (net / "10.1.2.100").write_bytes(b"d")  # id-only legacy files
    (net / "10.1.2.101").write_bytes(b"e")
    (net / ".reserving.tmp").write_bytes(b"f\r\neth0")  # a crash leftover
    strangers = {"notes.txt": b"x", "README": b"", "010.1.2.9": b"z", "2001:DB8:1::9": b"z",
                 ".reserving.99999": b"f\r\neth0", "10.1.2.9.bak": b"e"}
    for name, data in strangers.items():  # not named as the store names leases: never released
        (net / name).write_bytes(data)
    bookkeeping = {k: v for k, v in snapshot(net).items() if k not in leases(net)}
    inode = (net / "lock").stat().st_ino
    valid = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "c", "ifname": "eth1"},
             {"containerID": "d", "ifname": "eth0"}, {"containerID": "x", "ifname": "eth0"}]
    out = ours.run("GC", dict(conf, **{key: valid}))
    assert (out.rc, out.stdout, out.stderr) == (0, "", "")
    assert leases(net) == {"10.1.2.2": lease("a"), "2001:db8:1::2": lease("a"),
                           "10.1.2.5": lease("c", "eth1"), "2001:db8:1::5": lease("c", "eth1"),
                           "10.1.2.100": b"d", **strangers}
    assert {k: v for k, v in snapshot(net).items() if k not in leases(net)} == bookkeeping
    assert (net / "lock").stat().st_ino == inode


def test_gc_with_an_empty_list_releases_everything(ours, tmp_path):
    conf = netconf(tmp_path, version="1.1.0", ranges=DUAL)
    for cid in "abc":
        ok(ours.run("ADD", conf, cid=cid))
    (tmp_path / "testnet" / "10.1.2.77").write_bytes(b"old")
    ok(ours.run("GC", dict(conf, **{"cni.dev/valid-attachments": []})))
    assert snapshot(tmp_path / "testnet") == {
        "last_reserved_ip.0": b"10.1.2.4", "last_reserved_ip.1": b"2001:db8:1::4", "lock": b""}


def test_gc_without_the_attachment_list_releases_nothing(ours, tmp_path):
    conf = netconf(tmp_path, version="1.1.0")
    ok(ours.run("ADD", conf))
    error(ours.run("GC", conf), 7, "GC needs cni.dev/valid-attachments", "1.1.0")
    assert leases(tmp_path / "testnet") == {"10.1.2.2": lease("c1")}


@pytest.mark.parametrize("entry", [
    {"containerID": ["c1"], "ifname": "eth0"},
    {"containerID": "c1"},  # without ifname: taken as "", it released c1/eth0's lease
])
def test_gc_with_a_malformed_attachment_releases_nothing(ours, tmp_path, entry):
    conf = netconf(tmp_path, version="1.1.0")
    ok(ours.run("ADD", conf))
    ok(ours.run("ADD", conf, cid="c2"))
    bad = {"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}, entry]}
    err = error(ours.run("GC", dict(conf, **bad)), 7, "invalid cni.dev/valid-attachments[1]: "
                "an attachment needs a string containerID and ifname", "1.1.0")
    assert err["details"] == f"cni.dev/valid-attachments[1]={entry!r}"
    assert leases(tmp_path / "testnet") == {"10.1.2.2": lease("c1"), "10.1.2.3": lease("c2")}


def test_status(ours, go, tmp_path):
    conf = netconf(tmp_path, version="1.1.0",
                   ranges=[[{"subnet": "10.1.0.0/29"}],
                           [{"subnet": V6, "rangeEnd": "2001:db8:1::6"}]])
    out = ours.run("STATUS", conf, env={"CNI_CONTAINERID": None, "CNI_IFNAME": None,
                                         "CNI_NETNS": None})
    assert (out.rc, out.stdout, out.stderr) == (0, "", "")
    for i in range(4):
        ok(ours.run("ADD", conf, cid=f"c{i}"))
    ok(ours.run("STATUS", conf))
    ok(go.run("ADD", dict(conf, cniVersion="1.0.0"), cid="go"))  # the last v4 and v6 address
    error(ours.run("STATUS", conf), 50, "host-local: no IP addresses available in range set "
          "10.1.0.1-10.1.0.6 (ipam.ranges[0])")
    ok(ours.run("DEL", conf, cid="c0"))
    ok(ours.run("STATUS", conf))
    v6only = netconf(tmp_path, version="1.1.0",
                     ranges=[[{"subnet": "10.1.1.0/24"}],
                             [{"subnet": V6, "rangeEnd": "2001:db8:1::6"}]])
    ok(ours.run("STATUS", v6only))
    assert ips(ours.run("ADD", v6only, cid="c0")) == ["10.1.1.2/24", "2001:db8:1::2/64"]
    error(ours.run("STATUS", v6only), 50, "host-local: no IP addresses available in range set "
          "2001:db8:1::1-2001:db8:1::6 (ipam.ranges[1])")


def test_status_names_the_path_of_an_unusable_store(ours, tmp_path):
    conf = netconf(tmp_path, version="1.1.0")
    (tmp_path / "testnet").write_text("not a directory")
    error(ours.run("STATUS", conf), 50, f"host-local: dataDir {tmp_path} is not usable: "
          f"{tmp_path}/testnet: File exists")


# --- what a runtime, an admin or an attacker may have left in the way --------------------------

def test_a_container_id_longer_than_the_maximum_is_refused_by_add_only(ours, tmp_path):
    """A lease was read with one 4 KB read: with a longer ID, ADD succeeded, CHECK failed and
    DEL left the lease behind. Now ADD refuses what it could not read back."""
    conf = netconf(tmp_path)
    net = tmp_path / "testnet"
    too_long, longest = "f" * 100_000, "f" * 1024
    error(ours.run("ADD", conf, cid=too_long), 4,
          "invalid CNI_CONTAINERID: longer than 1024 bytes", "1.0.0")
    assert not net.exists() or leases(net) == {}
    ok(ours.run("ADD", conf, cid=longest))
    ok(ours.run("CHECK", conf, cid=longest))
    error(ours.run("ADD", conf, cid=longest), 100, version="1.0.0")  # the duplicate is seen
    ok(ours.run("DEL", conf, cid=too_long))  # finds nothing, changes nothing
    error(ours.run("CHECK", conf, cid=too_long), 101, version="1.0.0")
    assert leases(net) == {"10.1.2.2": lease(longest)}
    ok(ours.run("DEL", conf, cid=longest))
    assert leases(net) == {}


def test_gc_keeps_a_go_lease_whose_id_is_longer_than_ours_can_be(ours, go, tmp_path):
    """Cut at 4 KB, the Go plugin's lease of a valid 5000-byte ID looked like an id-only file
    of another container, and GC released an address in use. Too long to be ours, it stays."""
    conf = netconf(tmp_path)
    cid = "g" * 5000
    ok(go.run("ADD", conf, cid=cid))
    valid = {"cni.dev/valid-attachments": [{"containerID": cid, "ifname": "eth0"}]}
    ok(ours.run("GC", dict(conf, cniVersion="1.1.0", **valid)))
    assert leases(tmp_path / "testnet") == {"10.1.2.2": lease(cid)}
    ok(go.run("DEL", conf, cid=cid))
    assert leases(tmp_path / "testnet") == {}


def _plant_odd_entries(net: Path) -> None:
    """A FIFO, a socket, a directory and a symlink loop named .2 to .5 of 10.1.2.0/29; a loop
    and a FIFO under other names. Each used to fail a verb with code 999, or hang it."""
    net.mkdir(parents=True)
    os.mkfifo(net / "10.1.2.2")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(net / "10.1.2.3"))
    sock.close()
    (net / "10.1.2.4").mkdir()
    os.symlink("10.1.2.5", net / "10.1.2.5")
    os.symlink("loop", net / "loop")
    os.mkfifo(net / "fifo")


def test_odd_entries_in_the_store_dir_stop_no_verb(ours, tmp_path):
    conf = netconf(tmp_path, version="1.1.0", ranges=[[{"subnet": "10.1.2.0/29"}]])
    net = tmp_path / "testnet"
    _plant_odd_entries(net)
    odd = sorted(os.listdir(net))
    assert ips(ours.run("ADD", conf, cid="a")) == ["10.1.2.6/29"]  # .2-.5 are in the way
    ok(ours.run("CHECK", conf, cid="a"))
    error(ours.run("STATUS", conf), 50, "host-local: no IP addresses available in range set "
          "10.1.2.1-10.1.2.6 (ipam.ranges[0])")  # nothing an ADD could take
    error(ours.run("ADD", conf, cid="b"), 100, version="1.1.0")
    ok(ours.run("GC", dict(conf, **{"cni.dev/valid-attachments": []})))
    assert sorted(os.listdir(net)) == sorted(odd + ["last_reserved_ip.0", "lock"])
    ok(ours.run("ADD", conf, cid="a"))
    ok(ours.run("DEL", conf, cid="a"))
    assert sorted(os.listdir(net)) == sorted(odd + ["last_reserved_ip.0", "lock"])


@pytest.mark.parametrize("name", ["lock", "last_reserved_ip.0"])
def test_a_planted_symlink_is_refused_and_its_target_untouched(ours, tmp_path, name):
    """Followed, a symlinked last_reserved_ip.0 made every ADD overwrite its target (the Go
    plugin follows both too)."""
    data = tmp_path / "data"
    net = data / "testnet"
    net.mkdir(parents=True)
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    os.symlink(target, net / name)
    conf = netconf(data)
    msg = (f"host-local: cannot use dataDir {data}: {net / name}: is a symbolic link, refusing "
           "to follow it")
    error(ours.run("ADD", conf), 5, msg, "1.0.0")
    assert target.read_bytes() == b"precious"
    assert leases(net) == {}
    if name == "lock":
        error(ours.run("DEL", conf), 5, msg, "1.0.0")
        error(ours.run("CHECK", conf), 5, msg, "1.0.0")


def test_a_lock_that_is_a_fifo_is_refused_without_blocking(ours, tmp_path):
    net = tmp_path / "testnet"
    net.mkdir()
    os.mkfifo(net / "lock")
    error(ours.run("ADD", netconf(tmp_path)), 5, f"host-local: cannot use dataDir {tmp_path}: "
          f"{net / 'lock'}: is not a regular file", "1.0.0")
    assert leases(net) == {}


@pytest.mark.parametrize("where", ["resolvConf", "last_reserved_ip.0"])
@pytest.mark.parametrize("kind", ["/dev/zero", "2 GiB sparse file"])
def test_reads_are_bounded(ours, tmp_path, where, kind):
    """resolvConf: /dev/zero, or a last_reserved_ip.0 leading to it, grew until memory ran out
    (run here within 1 GiB of address space, so that a regression fails instead)."""
    big = Path("/dev/zero")
    if kind != "/dev/zero":
        big = tmp_path / "big"
        with open(big, "wb") as f:
            f.truncate(2 << 30)  # holes: no disk used
    net = tmp_path / "data" / "testnet"
    net.mkdir(parents=True)
    conf = netconf(tmp_path / "data")
    if where == "resolvConf":
        conf["ipam"]["resolvConf"] = str(big)
        error(ours.run("ADD", conf, memory_limit=True), 5, f"ipam.resolvConf: cannot read {big}: "
              "larger than 65536 bytes, not a resolv.conf", "1.0.0")
    elif kind == "/dev/zero":
        os.symlink(big, net / where)
        error(ours.run("ADD", conf, memory_limit=True), 5, f"host-local: cannot use dataDir "
              f"{tmp_path / 'data'}: {net / where}: is a symbolic link, refusing to follow it",
              "1.0.0")
    else:
        os.link(big, net / where)  # a regular file: no hint, the search starts at rangeStart
        assert ips(ours.run("ADD", conf, memory_limit=True)) == ["10.1.2.2/24"]
        assert (net / where).read_bytes() == b"10.1.2.2"
        return
    assert leases(net) == {}


def test_a_resolv_conf_that_is_a_fifo_does_not_block(ours, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    out = ours.run("ADD", netconf(tmp_path, resolvConf=str(tmp_path / "fifo")))
    assert ok(out) == {"cniVersion": "1.0.0",
                       "ips": [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"}]}


def _read_only(path: Path) -> tuple[str, ...]:
    """A wrapper that runs the plugin with `path` mounted read-only, in a mount namespace of its
    own (root); as another user, the caller makes it unwritable instead."""
    if os.geteuid() != 0:
        return ()
    return ("/usr/bin/unshare", "--mount", "--propagation", "private", "/usr/bin/sh", "-c",
            '/usr/bin/mount -o bind,ro "$0" "$0" && exec "$1"', str(path))


def test_a_read_only_data_dir_is_an_io_error_naming_the_path(ours, tmp_path):
    conf = netconf(tmp_path)
    net = tmp_path / "testnet"
    ok(ours.run("ADD", conf, cid="a"))
    before = snapshot(net)
    wrapper = _read_only(net)
    if not wrapper:
        net.chmod(0o555)
    try:
        err = error(ours.run("ADD", conf, cid="b", wrapper=wrapper), 5, version="1.0.0")
        assert err["msg"].startswith(f"host-local: cannot use dataDir {tmp_path}: "
                                     f"{net / '.reserving.tmp'}: "), err
        assert err["msg"].endswith(("Read-only file system", "Permission denied")), err
        err = error(ours.run("DEL", conf, cid="a", wrapper=wrapper), 5, version="1.0.0")
        assert err["msg"].startswith(f"host-local: cannot use dataDir {tmp_path}: "
                                     f"{net / '10.1.2.2'}: "), err
        ok(ours.run("DEL", conf, cid="nobody", wrapper=wrapper))  # nothing to release
    finally:
        net.chmod(0o755)
    assert snapshot(net) == before
    ok(ours.run("DEL", conf, cid="a"))
    assert leases(net) == {}


# --- resolvConf and path safety ----------------------------------------------------------------

def test_resolv_conf_into_dns(ours, go, tmp_path):
    (tmp_path / "resolv.conf").write_text(RESOLV)
    conf = netconf(tmp_path, resolvConf=str(tmp_path / "resolv.conf"))
    assert ok(ours.run("ADD", conf))["dns"] == DNS
    assert ok(go.run("ADD", conf, cid="go"))["dns"] == DNS
    assert ok(ours.run("ADD", dict(conf, cniVersion="0.2.0"), cid="old"))["dns"] == DNS


@pytest.mark.parametrize("where, value", [
    ("name", "a/b"), ("name", ".."), ("name", "../../escape"), ("name", "."),
    ("CNI_CONTAINERID", "../../escape"), ("CNI_CONTAINERID", "/abs"),
    ("CNI_IFNAME", "../../escape"), ("CNI_IFNAME", ".."),
])
def test_nothing_is_written_outside_the_data_dir(ours, tmp_path, where, value):
    sandbox = tmp_path / "sandbox"
    data = sandbox / "a" / "data"
    conf = netconf(data)
    env = None
    if where == "name":
        conf["name"] = value
    else:
        env = {where: value}
    for command in ("ADD", "DEL", "CHECK"):
        out = ours.run(command, conf, env=env)
        error(out, 7 if where == "name" else 4, version="1.0.0")
    assert not sandbox.exists()


# --- the hard ones -----------------------------------------------------------------------------

def _check_leases(net: Path, started: set[str]) -> None:
    """Every file named as an IP holds `<id>\\r\\n<ifname>` of a container that was started."""
    if not net.exists():
        return
    for p in net.iterdir():
        if p.name == "lock" or p.name.startswith("last_reserved_ip."):
            continue
        try:
            ipaddress.ip_address(p.name)
        except ValueError:
            assert p.name.startswith(".reserving."), p.name  # a temp name, never an IP
            continue
        content = p.read_bytes()
        assert content in {lease(cid) for cid in started}, (p.name, content)


def test_kill_9_never_leaves_an_empty_or_partial_lease(ours, tmp_path):
    conf = netconf(tmp_path, ranges=[[{"subnet": "10.1.0.0/16"}], [{"subnet": V6}]])
    net = tmp_path / "testnet"
    durations = []
    for i in range(3):
        t = time.monotonic()
        ok(ours.run("ADD", conf, cid=f"warm{i}"))
        durations.append(time.monotonic() - t)
    span = statistics.median(durations) * 1.2  # kill anywhere in a whole run
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    started = {f"warm{i}" for i in range(3)}
    outcomes = {"killed": 0, "finished": 0}
    for batch in range(25):
        procs = []
        for j in range(3):  # a few at once: some die holding the lock
            cid = f"k{batch}-{j}"
            started.add(cid)
            procs.append((rng.uniform(0, span), ours.spawn("ADD", conf, cid=cid)))
        t0 = time.monotonic()
        for at, p in sorted(procs, key=lambda x: x[0]):
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            p.send_signal(signal.SIGKILL)
        for _, p in procs:
            out = finish(p)
            outcomes["killed" if out.rc == -signal.SIGKILL else "finished"] += 1
            assert out.rc in (0, -signal.SIGKILL), (seed, out)
        _check_leases(net, started)
    assert outcomes["killed"] > 0, outcomes
    # Nobody holds the lock now; every killed container can be released and the net reused.
    assert ips(ours.run("ADD", conf, cid="after"))
    for cid in started | {"after"}:
        ok(ours.run("DEL", conf, cid=cid))
    assert leases(net) == {}, seed


def test_go_and_python_share_one_data_dir_concurrently(ours, go, tmp_path):
    conf = netconf(tmp_path, ranges=DUAL)
    net = tmp_path / "testnet"
    owner = {}
    procs = []
    for i in range(20):
        for tag, plugin in (("go", go), ("py", ours)):
            cid = f"{tag}-{i}"
            owner[cid] = tag
            procs.append((cid, plugin.spawn("ADD", conf, cid=cid)))
    results = {cid: ips(finish(p)) for cid, p in procs}
    v4 = [r[0] for r in results.values()]
    v6 = [r[1] for r in results.values()]
    assert len(set(v4)) == len(set(v6)) == 40, results
    by_file = leases(net)
    assert len(by_file) == 80
    for cid, (a4, a6) in results.items():
        assert by_file[a4.split("/")[0]] == lease(cid)
        assert by_file[a6.split("/")[0]] == lease(cid)
    assert sorted(by_file.values()) == sorted(lease(cid) for cid in results for _ in "46")
    # Each plugin CHECKs the other's leases, then releases them, all at once.
    other = {"go": ours, "py": go}
    checks = [(cid, other[tag].spawn("CHECK", conf, cid=cid)) for cid, tag in owner.items()]
    for cid, p in checks:
        assert ok(finish(p)) is None, cid
    dels = [(cid, other[tag].spawn("DEL", conf, cid=cid)) for cid, tag in owner.items()]
    for cid, p in dels:
        assert ok(finish(p)) is None, cid
    assert sorted(os.listdir(net)) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    error(ours.run("CHECK", conf, cid="go-0"), 101, version="1.0.0")
    assert go.run("CHECK", conf, cid="py-0").rc != 0


def test_go_and_python_alternate_round_robin(ours, go, tmp_path):
    conf = netconf(tmp_path)
    got = [ips((go if i % 2 else ours).run("ADD", conf, cid=f"c{i}"))[0] for i in range(4)]
    assert got == ["10.1.2.2/24", "10.1.2.3/24", "10.1.2.4/24", "10.1.2.5/24"]
    ok(go.run("DEL", conf, cid="c0"))
    assert ips(ours.run("ADD", conf, cid="c4")) == ["10.1.2.6/24"]
    assert ips(go.run("ADD", conf, cid="c5")) == ["10.1.2.7/24"]


def test_32_parallel_first_runs_after_a_fresh_extraction(ours, tmp_path):
    root = tmp_path / "shiv"  # does not exist yet: every run starts cold
    conf = netconf(tmp_path / "data")
    procs = [ours.spawn("ADD", conf, cid=f"first{i}", env={"SHIV_ROOT": str(root)})
             for i in range(32)]
    outs = [finish(p) for p in procs]
    addresses = [ips(out)[0] for out in outs]
    assert len(set(addresses)) == 32
    assert all(out.stderr == "" for out in outs), [o.stderr for o in outs if o.stderr][:1]
    extracted = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    assert len(extracted) == 1 and extracted[0].startswith("host-local_"), extracted
    assert (root / extracted[0] / "site-packages" / "host_local_ipam").is_dir()
    warm = ours.run("ADD", conf, cid="warm", env={"SHIV_ROOT": str(root)})
    assert ips(warm) == ["10.1.2.34/24"]


def test_a_first_run_that_cannot_extract_is_a_cni_error(ours, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = ours.run("ADD", netconf(tmp_path / "data"), env={"SHIV_ROOT": str(blocker / "root")})
    assert out.rc == 1 and "Traceback" not in out.stderr, out
    err = out.json
    assert err["code"] == 5 and err["msg"].startswith("cannot extract the plugin's Python "
                                                      "packages: [Errno 20] Not a directory")
    assert not (tmp_path / "data").exists()


def test_a_first_run_on_a_full_disk_leaves_no_half_extraction(ours, tmp_path):
    """ENOSPC midway: the CNI error, and shiv's temp dir goes (it would keep the disk full)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs")
    root = tmp_path / "full"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)], check=True)
    try:
        out = ours.run("ADD", netconf(tmp_path / "data"), env={"SHIV_ROOT": str(root)})
        assert out.rc == 1 and "Traceback" not in out.stderr, out
        assert out.json["code"] == 5 and "No space left on device" in out.json["msg"], out.json
        assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_runs_with_env_i_and_ignores_python_variables(ours, tmp_path):
    poison = tmp_path / "poison"
    poison.mkdir()
    for module in ("json", "ipaddress", "host_local_ipam", "cni_protocol", "_bootstrap"):
        (poison / f"{module}.py").write_text("raise SystemExit('PYTHONPATH was honoured')\n")
    (poison / "startup.py").write_text("raise SystemExit('PYTHONSTARTUP was honoured')\n")
    conf = netconf(tmp_path / "data")
    out = ours.run("ADD", conf, env={"PYTHONPATH": str(poison), "PYTHONHOME": "/nonexistent",
                                     "PYTHONDONTWRITEBYTECODE": "1",
                                     "PYTHONSTARTUP": str(poison / "startup.py"),
                                     "PYTHONWARNINGS": "error"})
    assert ips(out) == ["10.1.2.2/24"] and out.stderr == ""
    # literally `env -i`: no PATH, no HOME, nothing but what the runtime sets
    args = ["/usr/bin/env", "-i", *[f"{k}={v}" for k, v in ours.base_env.items()],
            "CNI_COMMAND=ADD", "CNI_CONTAINERID=envi", f"CNI_NETNS={NETNS}", "CNI_IFNAME=eth0",
            "CNI_PATH=/opt/cni/bin", str(ours.path)]
    p = subprocess.run(args, input=json.dumps(conf).encode(), capture_output=True,
                       timeout=TIMEOUT)
    assert ips(Out(p.returncode, p.stdout, p.stderr)) == ["10.1.2.3/24"]
