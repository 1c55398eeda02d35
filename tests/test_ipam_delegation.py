"""The bridge's IPAM delegation, run as a runtime runs it (the node netns, pods, CNI_PATH and
dataDir of test_bridge.py's Node; everything read back from the kernel and the lease files).

- Our host-local of the bridge's own build runs in the bridge's process; any other host-local
  (another build of ours, a wrapper script, the Go one) is exec'd. Both ways answer the same
  bytes and exit codes for every verb and result version, success or error. Which one ran is
  proven by copies of our zipapp whose start line records each exec before running it: the
  copy with this build's first line is never exec'd, the one with another build id always is.
- kill -9 at any instant of an ADD (one process now holds the bridge's and host-local's half),
  then DEL: nothing is left.
- host-local elsewhere in CNI_PATH, alone in it, or absent.
- A delegation loop (ipam.type naming a bridge) is refused at once instead of recursing.
- What an IPAM plugin answers is checked: an ADD result we cannot use is released and reported
  naming the field, an error object without a usable code is code 6; the same shapes in
  CHECK's prevResult are code 6 naming the field, and DEL still cleans up.
- An ADD whose answer cannot be written (stdout closed, broken pipe) is undone, for both
  plugins, and no traceback.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bridge import (ALL_VERSIONS, BR, GO_BRIDGE, GO_HOST_LOCAL, IP, NET, TIMEOUT,  # noqa: E402
                         Node, Out, _skip_reason, needs_go, node, ours, sh)  # noqa: F401

pytestmark = [pytest.mark.slow] + ([pytest.mark.skip(reason=_skip_reason())]
                                   if _skip_reason() else [])

ONE_ADDRESS = [[{"subnet": "10.22.0.0/30"}]]  # .1 is the gateway: room for one pod
OTHER_BUILD = "0" * 32


# --- plugins that tell whether they ran ----------------------------------------------------------

def zipapp_copy(src: Path, dst: Path, log: Path, build: str | None = None) -> Path:
    """A copy of our zipapp `src` whose start line first appends its CNI_COMMAND to `log`;
    with `build`, its first line names that build instead of ours."""
    line1, line2, archive = src.read_bytes().split(b"\n", 2)
    if build is not None:
        line1 = line1.rsplit(b" ", 1)[0] + b" " + build.encode()
    record = (f"import posix; _fd = posix.open({str(log)!r}, posix.O_WRONLY | posix.O_APPEND "
              "| posix.O_CREAT, 0o644); posix.write(_fd, posix.environ.get(b'CNI_COMMAND', "
              "b'?') + b'\\n'); posix.close(_fd); ").encode()
    dst.write_bytes(line1 + b"\n#" + record + line2[1:] + b"\n" + archive)
    dst.chmod(0o755)
    return dst


def wrapper_script(dst: Path, target: Path, log: Path) -> Path:
    dst.write_text(f'#!/bin/sh\necho "$CNI_COMMAND" >> {log}\nexec {target} "$@"\n')
    dst.chmod(0o755)
    return dst


def execs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def cni_path(node: Node, name: str, **plugins: Path) -> Path:
    """A CNI_PATH dir: the given plugins as files (copies, scripts) or symlinks (ours)."""
    d = node.tmp / name
    d.mkdir()
    for plugin, target in plugins.items():
        if target.parent == d:
            continue  # made in place already
        (d / plugin).symlink_to(target)
    return d


def recording_host_local(node: Node, name: str, build: str | None = None) -> tuple[Path, Path]:
    """(CNI_PATH dir with our bridge and a recording host-local, its log)."""
    d = node.tmp / name
    d.mkdir()
    (d / "bridge").symlink_to(node.ours / "bridge")
    log = node.tmp / f"{name}.log"
    zipapp_copy(node.ours / "host-local", d / "host-local", log, build)
    return d, log


# --- in-process and exec'd: the same answers --------------------------------------------------

def _normalized(out: Out) -> tuple[int, str]:
    """Exit code and stdout, with what differs from one ADD to the next (the random host veth
    name, MACs) replaced."""
    if out.rc != 0 or not out.stdout.strip():
        return out.rc, out.stdout
    result = json.loads(out.stdout)
    for i, interface in enumerate(result.get("interfaces", [])):
        interface["mac"] = "<mac>"
        if i == 1:
            interface["name"] = "<host veth>"
    return out.rc, json.dumps(result)


def _verbs_of_a_version(node: Node, version: str, path: Path, pods: list[str]) -> list:
    """Every verb, succeeding and failing in host-local and in the bridge, in one version."""
    conf = node.conf(version, isGateway=True, ranges=ONE_ADDRESS)
    answers = []

    def call(verb, pod=None, conf=conf, **kw):
        out = node.cni(verb, conf, pod, cni_path=path, **kw)
        answers.append((verb, *_normalized(out)))
        return out

    result = call("ADD", pods[0]).result
    call("ADD", pods[1])  # the range is full: host-local's error, after the bridge's veth
    call("ADD", pods[1], conf=node.conf(version, ranges=[[{"subnet": "10.22.0.1/30"}]]))
    call("ADD", pods[1], args="IgnoreUnknown=1;IP=10.22.0.2")  # taken
    if version >= "0.4.0":
        call("CHECK", pods[0], prev=result)
        call("CHECK", pods[0], prev=result, cid="no-lease")  # host-local's CHECK fails
    if version >= "1.1.0":
        call("STATUS")  # code 50: the one address is leased
        call("GC", conf=dict(conf, **{"cni.dev/valid-attachments": [
            {"containerID": pods[0], "ifname": "eth0"}]}))
    call("DEL", pods[0], prev=result)
    call("DEL", pods[0], prev=result)
    if version >= "1.1.0":
        call("STATUS")
    node.assert_no_trace(*pods)
    return answers


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_in_process_and_execd_host_local_answer_the_same(node, version):
    in_process, in_process_log = recording_host_local(node, "in-process")
    execd, execd_log = recording_host_local(node, "execd", build=OTHER_BUILD)
    pods = [node.pod(), node.pod()]
    answers = {}
    for label, path in (("in-process", in_process), ("exec'd", execd)):
        answers[label] = _verbs_of_a_version(node, version, path, pods)
        sh(IP, "-n", node.ns, "link", "del", BR)
        sh("rm", "-rf", node.data_dir)
    assert answers["in-process"] == answers["exec'd"]
    assert [a[1] for a in answers["exec'd"]].count(0) >= 3  # successes and failures both
    assert execs(in_process_log) == []
    assert set(execs(execd_log)) == {a[0] for a in answers["exec'd"]}


def test_which_host_local_runs_in_process(node):
    """Only a file starting with this build's first line of host-local runs in-process: a
    symlink to it does; another build of ours, a wrapper script of ours and the Go plugin are
    exec'd."""
    conf = node.conf(isGateway=True)
    log = node.tmp / "wrapper.log"
    same, same_log = recording_host_local(node, "same-build")
    other, other_log = recording_host_local(node, "other-build", build="f" * 32)
    symlink_dir = cni_path(node, "symlink", bridge=node.ours / "bridge",
                           **{"host-local": same / "host-local"})
    script_dir = cni_path(node, "script", bridge=node.ours / "bridge")
    wrapper_script(script_dir / "host-local", node.ours / "host-local", log)
    for path, expected_log, execd in ((same, same_log, False), (symlink_dir, same_log, False),
                                      (other, other_log, True), (script_dir, log, True)):
        pod = node.pod()
        result = node.add(conf, pod, cni_path=path)
        node.cni("CHECK", conf, pod, prev=result, cni_path=path).ok()
        node.cni("DEL", conf, pod, prev=result, cni_path=path).ok()
        node.assert_no_trace(pod)
        assert execs(expected_log) == (["ADD", "CHECK", "DEL"] if execd else []), path


@needs_go
def test_our_bridge_execs_the_go_host_local_beside_it(node):
    path = cni_path(node, "go-ipam", bridge=node.ours / "bridge",
                    **{"host-local": GO_HOST_LOCAL})
    conf = node.conf(isGateway=True)
    pod = node.pod()
    result = node.add(conf, pod, cni_path=path)
    assert node.leases() == {"10.22.0.2": f"{pod}\r\neth0"}
    node.cni("CHECK", conf, pod, prev=result, cni_path=path).ok()
    node.cni("DEL", conf, pod, prev=result, cni_path=path).ok()
    node.assert_no_trace(pod)


@pytest.mark.parametrize("where", ["elsewhere in CNI_PATH", "alone in CNI_PATH", "absent"])
def test_host_local_elsewhere_alone_or_absent(node, where):
    """The spec's lookup decides, not where the bridge is: the first host-local in CNI_PATH."""
    bridge_only = cni_path(node, "bridge-only", bridge=node.ours / "bridge")
    ipam_dir = node.tmp / "ipam-only"
    ipam_dir.mkdir()
    log = node.tmp / "ipam.log"
    zipapp_copy(node.ours / "host-local", ipam_dir / "host-local", log)
    path = {"elsewhere in CNI_PATH": f"{node.tmp / 'empty'}:{bridge_only}:{ipam_dir}",
            "alone in CNI_PATH": str(ipam_dir), "absent": str(bridge_only)}[where]
    (node.tmp / "empty").mkdir()
    conf = node.conf(isGateway=True)
    pod = node.pod()
    if where == "absent":
        err = node.cni("ADD", conf, pod, cni_path=path).error
        assert err["code"] == 7 and err["msg"] == "failed to find IPAM plugin 'host-local' " \
            "in CNI_PATH", err
    else:
        result = node.add(conf, pod, cni_path=path)
        assert node.leases() == {"10.22.0.2": f"{pod}\r\neth0"}
        node.cni("DEL", conf, pod, prev=result, cni_path=path).ok()
        assert execs(log) == []  # found, and it is this build's: run in-process
    node.assert_no_trace(pod)


# --- kill -9 ------------------------------------------------------------------------------------

def test_kill_9_at_any_instant_of_an_add_then_del_leaves_nothing(node):
    conf = node.conf(isGateway=True, ipMasq=True)
    durations = []
    for _ in range(3):
        pod = node.pod()
        start = time.monotonic()
        node.add(conf, pod)
        durations.append(time.monotonic() - start)
        node.cni("DEL", conf, pod).ok()
    span = statistics.median(durations) * 1.3
    outcomes = {"killed": 0, "finished": 0}
    for i in range(16):
        pod = node.pod()
        proc = node.start("ADD", conf, pod)
        time.sleep(span * i / 16)
        proc.send_signal(signal.SIGKILL)
        out = node.finish(proc)
        assert out.rc in (0, -signal.SIGKILL), out
        outcomes["killed" if out.rc < 0 else "finished"] += 1
        node.cni("DEL", conf, pod).ok()
        node.assert_no_trace(pod)
    assert outcomes["killed"] >= 4, outcomes


# --- delegation loops ---------------------------------------------------------------------------

def _run_bounded(node: Node, argv: list, conf: dict, pod: str, path: Path) -> Out:
    """Run in a process group of its own; a recursing plugin is killed with its group."""
    proc = subprocess.Popen([IP, "netns", "exec", node.ns, *map(str, argv)],
                            env=node.env("ADD", pod, cni_path=path),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(json.dumps(conf), timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the bridge recursed until killed: ipam.type names a bridge")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return Out(proc.returncode, stdout, stderr)


@pytest.mark.parametrize("outer", ["our bridge", "a wrapper script", "the Go bridge"])
def test_ipam_type_naming_a_bridge_is_refused_not_recursed(node, outer):
    path = cni_path(node, "loop", bridge=node.ours / "bridge")
    conf = node.conf(isGateway=True)
    conf["ipam"]["type"] = "bridge"
    argv = [path / "bridge"]
    if outer == "a wrapper script":
        conf["ipam"]["type"] = "loop"
        wrapper_script(path / "loop", path / "bridge", node.tmp / "loop.log")
    elif outer == "the Go bridge":
        if not os.access(GO_BRIDGE, os.X_OK):
            pytest.skip(f"no Go bridge at {GO_BRIDGE}")
        argv = [GO_BRIDGE]
    pod = node.pod()
    out = _run_bounded(node, argv, conf, pod, path)
    err = out.error
    assert err["code"] == 7 and "delegation loop" in err["msg"], err
    if outer == "the Go bridge":
        assert node.leases() == {}  # its veth stays: the Go bridge keeps it on an IPAM error
    else:
        node.assert_no_trace(pod)


# --- what IPAM answers ---------------------------------------------------------------------------

MANGLER = '''#!/usr/bin/python3
"""An IPAM plugin: our host-local, whose ADD answer is replaced."""
import json, os, subprocess, sys
stdin = sys.stdin.buffer.read()
error = {error!r}
if os.environ["CNI_COMMAND"] == "ADD" and error is not None:
    sys.stdout.write(error)
    sys.exit(1)
p = subprocess.run([{target!r}], input=stdin, stdout=subprocess.PIPE)
out = p.stdout
if os.environ["CNI_COMMAND"] == "ADD" and p.returncode == 0:
    result = json.loads(out)
    {mangle}
    out = result if isinstance(result, bytes) else json.dumps(result).encode()
sys.stdout.buffer.write(out)
sys.exit(p.returncode)
'''


def mangling_ipam(node: Node, mangle: str = "pass", error: str | None = None) -> Path:
    path = cni_path(node, "mangled", bridge=node.ours / "bridge")
    script = path / "host-local"
    script.write_text(MANGLER.format(target=str(node.ours / "host-local"), mangle=mangle,
                                     error=error))
    script.chmod(0o755)
    return path


@pytest.mark.parametrize("mangle,named", [
    ("result = b'this is not JSON'", "not a JSON result"),
    ("result = b''", "not a JSON result"),
    ("result = [result]", "result: is not an object"),
    ("result['ips'][0]['address'] = '10.22.0.2'", "ips[0].address: '10.22.0.2' is not an "
                                                  "address with its prefix length"),
    ("result['ips'][0]['gateway'] = 5", "ips[0].gateway: is not a string"),
    ("result['ips'][0]['gateway'] = 'fd00::1'", "ips[0].gateway: 'fd00::1' is not an IPv4"),
    ("result['routes'] = {'dst': '0.0.0.0/0'}", "routes: is not a list"),
    ("result['routes'] = [{'dst': '10.9.0.0/16', 'mtu': '1500'}]", "routes[0].mtu: '1500' is "
                                                                   "not an integer"),
    ("result['routes'] = [{'dst': '10.9.0.0/16', 'scope': 'link'}]", "routes[0].scope"),
    ("result['routes'] = [{'gw': '10.22.0.1'}]", "routes[0].dst: is required"),
    ("result['routes'] = [{'dst': '10.9.0.0/16', 'table': 2**32}]",
     "routes[0].table: 4294967296 is not between 0 and 4294967295"),
    ("result['routes'] = [{'dst': '10.9.0.0/16', 'mtu': 2**40}]", "routes[0].mtu"),
    ("result['dns'] = 'cluster.local'", "dns: is not an object"),
], ids=lambda v: v if len(v) < 40 else None)
def test_an_unusable_ipam_result_is_released_and_names_the_field(node, mangle, named):
    path = mangling_ipam(node, mangle)
    pod = node.pod()
    err = node.cni("ADD", node.conf(isGateway=True, ipMasq=True), pod, cni_path=path).error
    assert err["code"] == 6 and err["msg"].startswith(
        "IPAM plugin host-local returned an invalid result: ") and named in err["msg"], err
    assert (node.data_dir / NET / "last_reserved_ip.0").exists()  # the IPAM ADD did run
    node.assert_no_trace(pod)


@pytest.mark.parametrize("error,named", [
    ('{"cniVersion": "1.0.0", "code": 1e400, "msg": "x"}', "code inf is not an integer"),
    ('{"cniVersion": "1.0.0", "code": 0, "msg": "x"}', "code 0 is not an integer from 1"),
    ('{"cniVersion": "1.0.0", "code": "7", "msg": "x"}', "code '7' is not an integer"),
    ('{"cniVersion": "1.0.0", "code": 7, "msg": ["x"]}', "msg and details must be strings"),
    ('', "without an error object on stdout"),
    ('Traceback (most recent call last):', "without an error object on stdout: Traceback"),
])
def test_an_ipam_error_without_a_usable_code_is_code_6(node, error, named):
    path = mangling_ipam(node, error=error)
    pod = node.pod()
    err = node.cni("ADD", node.conf(isGateway=True), pod, cni_path=path).error
    assert err["code"] == 6 and err["msg"].startswith(
        "IPAM plugin host-local ADD failed (exit 1)") and named in err["msg"], err
    node.assert_no_trace(pod)


def test_an_ipam_error_object_is_passed_through(node):
    error = '{"cniVersion": "1.0.0", "code": 11, "msg": "try later", "details": "busy"}'
    pod = node.pod()
    out = node.cni("ADD", node.conf(isGateway=True), pod, cni_path=mangling_ipam(node, error=error))
    assert out.rc == 1 and json.loads(out.stdout) == json.loads(error)
    node.assert_no_trace(pod)


@pytest.mark.parametrize("mangle,named", [
    (lambda p: p["ips"][0].update(address="10.22.0.2"), "ips[0].address"),
    (lambda p: p.update(routes="0.0.0.0/0"), "routes: is not a list"),
    (lambda p: p.update(routes=[{"dst": "0.0.0.0/0", "table": 2**32}]), "routes[0].table"),
    (lambda p: p.update(routes=[{"dst": "0.0.0.0/0", "mtu": "9000"}]), "routes[0].mtu"),
    (lambda p: p.update(routes=[{"gw": "10.22.0.1"}]), "routes[0].dst"),
    (lambda p: p["interfaces"][0].update(mac=5), "interfaces[0].mac"),
    (lambda p: p["ips"][0].update(gateway=["10.22.0.1"]), "ips[0].gateway"),
], ids=["no-prefix", "routes-not-a-list", "table", "mtu", "no-dst", "mac", "gateway"])
def test_a_malformed_prev_result_is_code_6_for_check_and_del_still_cleans_up(node, mangle,
                                                                            named):
    conf = node.conf(isDefaultGateway=True, ipMasq=True)
    pod = node.pod()
    prev = node.add(conf, pod)
    mangle(prev)
    err = node.cni("CHECK", conf, pod, prev=prev).error
    assert err["code"] == 6 and err["msg"].startswith("could not decode prevResult: ") \
        and named in err["msg"], err
    node.cni("DEL", conf, pod, prev=prev).ok()
    node.assert_no_trace(pod)


# --- an answer that cannot be delivered ---------------------------------------------------------

def _add_without_a_reader(node: Node, plugin: Path, conf: dict, pod: str, how: str) -> Out:
    """ADD with stdout closed, or a pipe whose reader is gone (EPIPE)."""
    argv = [IP, "netns", "exec", node.ns]
    if how == "stdout closed":
        argv += ["/bin/sh", "-c", 'exec "$0" >&-', str(plugin)]
    else:
        argv += [str(plugin)]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        p = subprocess.run(argv, env=node.env("ADD", pod), input=json.dumps(conf).encode(),
                           stdout=write_end, stderr=subprocess.PIPE, timeout=TIMEOUT)
    finally:
        os.close(write_end)
    return Out(p.returncode, "", p.stderr.decode())


@pytest.mark.parametrize("how", ["stdout closed", "broken pipe"])
@pytest.mark.parametrize("plugin", ["bridge", "host-local"])
def test_an_add_whose_answer_cannot_be_written_is_undone(node, plugin, how):
    conf = node.conf(isGateway=True, ipMasq=True)
    if plugin == "host-local":
        conf = dict(conf, type="host-local")
    pod = node.pod()
    out = _add_without_a_reader(node, node.bin / plugin, conf, pod, how)
    assert out.rc == 1 and f"{plugin}: ADD undone: its result could not be written" \
        in out.stderr, out
    assert (node.data_dir / NET / "last_reserved_ip.0").exists()  # the ADD did run
    node.assert_no_trace(pod)
    node.add(conf, pod)  # and the attachment can be made again
