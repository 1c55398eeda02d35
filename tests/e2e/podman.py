"""A private podman "node" whose CNI backend runs the plugins under test.

Rootful podman 4.3 (Debian 12) with network_backend "cni" is a libcni client: it writes a
conflist per network and runs it in the podman process for each container. Every podman call
here is `nsenter -t HOLDER -m -n podman ...`, HOLDER being a `sleep` that tests/e2e/node_init.py
started in the node's netns (NAME-node) and in a private mount namespace. So the bridge, veths
and netfilter rules exist only in the node netns, podman's overlay, shm and netns mounts only
in that mount namespace, and the conmon that podman leaves running per container stays in both.
(`ip netns exec` would give each call a mount namespace of its own, so one call's netns and
rootfs mounts would be invisible to the next, and it remounts /sys without the cgroup mounts.)

Where podman writes, and how it is moved under the work dir W:
- --root, --runroot and --tmpdir; a storage.conf (CONTAINERS_STORAGE_CONF), HOME and TMPDIR.
- A containers.conf of our own (CONTAINERS_CONF, which podman also hands to conmon and so to
  the `podman container cleanup` conmon runs when a container exits): see CONTAINERS_CONF.
- Fixed paths that no option moves, bind mounts of dirs under W in the mount namespace
  (SHADOWED): libcni's cache dir /var/lib/cni (containers/common builds its libcni without a
  cache dir, so the results/ cache lands in libcni's default), which is also host-local's default
  dataDir (podman's conflists set none); /run/netns, where rootful podman pins each container's
  netns; /var/lib/containers, for the blob info cache that `podman load` writes whatever --root
  says; /var/tmp, where `podman load` unpacks its oci-archive probe, ignoring TMPDIR.

close() removes every process, namespace, cgroup and file this made, whatever state the test
left it in, and reports what showed up or changed on the host.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import REFERENCE_DIR
from .containerd import remove_cgroups
from .node import CniNode, run

IMAGE = "localhost/e2e/busybox:latest"
PACKAGES = ("podman", "runc", "busybox-static")
# host path -> the dir under W that stands in for it in podman's mount namespace
SHADOWED = {"/var/lib/cni": "var-lib-cni", "/var/lib/containers": "var-lib-containers",
            "/var/tmp": "var-tmp", "/run/netns": "run-netns"}
# What a podman with default settings writes (or Debian's package ships): must not change.
HOST_PATHS = ("/etc/cni", "/etc/cni/net.d", "/etc/containers", "/etc/containers/networks",
              "/var/lib/cni", "/var/lib/containers", "/run/containers", "/run/libpod",
              "/run/runc", "/dev/shm/libpod_lock", "/opt/cni")

# - cni_plugin_dirs: the logging wrappers of the plugins under test first, then Debian's Go
#   plugins for portmap, firewall and tuning.
# - lock_type "file": locks under --tmpdir instead of the SHM segment /dev/shm/libpod_lock.
# - cgroups "no-conmon": conmon stays in our cgroup instead of <cgroup parent>/conmon, which
#   podman makes at the root of every hierarchy even for a relative parent.
# - runc through W/bin/runc (`runc --root W/runc`): runc's state would go to /run/runc, and
#   podman's --runtime-flag does not reach the cleanup command conmon runs.
# - default_ulimits: podman's defaults for root (the maximum) are above this VM's hard limits,
#   which runc cannot raise without CAP_SYS_RESOURCE.
CONTAINERS_CONF = """\
[containers]
cgroups = "no-conmon"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
network_config_dir = "{w}/net.d"
cni_plugin_dirs = ["{w}/cni-bin", "{reference}"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
lock_type = "file"
runtime = "runc"

[engine.runtimes]
runc = ["{w}/bin/runc"]
"""
# containers/storage wants both roots in the file (the same as --root and --runroot).
STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{w}/root"
runroot = "{w}/runroot"
"""


def _host_state() -> dict[str, list[str] | bool]:
    """Each of HOST_PATHS: its listing if a dir, else whether it exists."""
    return {p: sorted(os.listdir(p)) if os.path.isdir(p) else os.path.lexists(p)
            for p in HOST_PATHS}


class PodmanNode(CniNode):
    def __init__(self, workdir: Path, plugin_dir: Path, name: str):
        super().__init__(workdir, plugin_dir, name, Path(workdir) / SHADOWED["/var/lib/cni"])
        self.conf_dir = self.w / "net.d"
        self.holder: subprocess.Popen | None = None
        self._holder_mnt_ns = ""
        self._host_state = _host_state()
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.w / "home"),
                    "TMPDIR": str(self.w / "tmp"),
                    "CONTAINERS_CONF": str(self.w / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(self.w / "storage.conf")}
        self.global_args = ["--root", self.w / "root", "--runroot", self.w / "runroot",
                            "--tmpdir", self.w / "libpod-tmp"]

    # -- start ---------------------------------------------------------------------------------

    def _write_configs(self) -> None:
        runc = shutil.which("runc")
        if runc is None:
            raise AssertionError("no runc on PATH (apt-get install runc)")
        (self.w / "bin").mkdir()
        wrapper = self.w / "bin" / "runc"
        wrapper.write_text(f'#!/bin/sh\nexec {runc} --root {self.w / "runc"} "$@"\n')
        wrapper.chmod(0o755)
        (self.w / "containers.conf").write_text(
            CONTAINERS_CONF.format(w=self.w, reference=REFERENCE_DIR))
        (self.w / "storage.conf").write_text(STORAGE_CONF.format(w=self.w))

    def start(self) -> None:
        for d in ("net.d", "home", "tmp", *SHADOWED.values()):
            (self.w / d).mkdir(parents=True)
        self.install_plugins({name: self.plugin_dir / name for name in ("bridge", "host-local")},
                             self.w / "cni-bin")  # podman's first plugin dir
        self._write_configs()
        self.holder = self.spawn({target: self.w / source for target, source in SHADOWED.items()},
                                 ["sleep", "infinity"], "holder.log")
        deadline = time.monotonic() + 30
        while Path(f"/proc/{self.holder.pid}/comm").read_text().strip() != "sleep":
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the namespace holder did not come up:\n"
                                     + (self.w / "holder.log").read_text())
            time.sleep(0.02)
        node_ns = os.stat(f"/run/netns/{self.netns}").st_ino
        holder_ns = os.stat(f"/proc/{self.holder.pid}/ns/net").st_ino
        assert holder_ns == node_ns != os.stat("/proc/self/ns/net").st_ino, \
            "podman would not run in the node netns"
        mnt_ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        assert mnt_ns != os.readlink("/proc/self/ns/mnt"), "the holder shares our mount ns"
        self._holder_mnt_ns = mnt_ns  # close() kills every process in it

    # -- podman --------------------------------------------------------------------------------

    def podman(self, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        """podman in the holder's mount and network namespaces, once start() has checked them
        (an unreaped holder keeps its PID, so nsenter cannot join anything else)."""
        if not self._holder_mnt_ns or self.holder.poll() is not None:
            raise AssertionError("no namespace holder in the node netns: not running podman")
        return run(["nsenter", "-t", self.holder.pid, "-m", "-n", "--", "podman",
                    *self.global_args, *args], check=check, timeout=timeout, env=self.env)

    def create_network(self, name: str, subnet: str) -> dict:
        """`podman network create`; returns the conflist podman wrote."""
        self.podman("network", "create", "--subnet", subnet, name)
        return json.loads((self.conf_dir / f"{name}.conflist").read_text())

    def load_image(self, tarball: Path) -> None:
        self.podman("load", "--input", tarball)

    def run_container(self, name: str, network: str, *cmd: str,
                      podman_args: tuple[str, ...] = ()) -> dict:
        """`podman run -d` in our cgroup; returns `podman inspect` of the running container."""
        self.podman("run", "--detach", "--name", name, "--network", network,
                    "--cgroup-parent", self.cgroup, *podman_args, IMAGE, *cmd)
        return self.inspect(name)

    def inspect(self, name: str) -> dict:
        return json.loads(self.podman("inspect", name).stdout)[0]

    def exec(self, name: str, *cmd, check=False, timeout=30) -> subprocess.CompletedProcess:
        return self.podman("exec", name, *cmd, check=check, timeout=timeout)

    # -- what the node holds -------------------------------------------------------------------

    def netfilter(self) -> dict[str, str]:
        """All tables of both iptables backends, and the whole nftables ruleset, of the node."""
        tables = {"iptables-legacy": self.in_node("iptables-legacy-save").stdout,
                  "iptables-nft": self.in_node("iptables-nft-save").stdout}
        if shutil.which("nft"):
            tables["nft"] = self.in_node("nft", "list", "ruleset").stdout
        return tables

    def links(self, kind: str | None = None) -> list[str]:
        cmd = ["ip", "-n", self.netns, "-j", "link", "show", *(["type", kind] if kind else [])]
        return [link["ifname"] for link in json.loads(run(cmd).stdout or "[]")]

    # -- teardown ------------------------------------------------------------------------------

    def _our_processes(self) -> list[int]:
        """Processes in the holder's mount namespace (conmon, podman's cleanup command, the
        holder) or naming the work dir, other than this one."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                in_ns = os.readlink(entry / "ns" / "mnt") == self._holder_mnt_ns
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if in_ns or str(self.w).encode() in cmdline:
                pids.append(int(entry.name))
        return pids

    def _kill_our_processes(self) -> list[str]:
        """SIGKILL each of them until none is left: then the mount namespace, and with it every
        mount podman made, is gone."""
        deadline = time.monotonic() + 10
        while pids := self._our_processes():
            if time.monotonic() > deadline:
                return [f"processes still running: {pids}"]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.holder:
                self.holder.poll()  # reap it
            time.sleep(0.05)
        return []

    def close(self) -> list[str]:
        """Remove everything; returns what could not be removed or changed on the host."""
        problems = []
        if self._holder_mnt_ns and self.holder.poll() is None:
            # podman's own teardown first: CNI DEL, unmounts, runc delete
            try:
                removed = self.podman("rm", "--force", "--all", "--time", "0", check=False)
                if removed.returncode:
                    problems.append(f"podman rm --all: {removed.stderr.strip()}")
            except subprocess.TimeoutExpired:
                problems.append("podman rm --all timed out")
        if self._holder_mnt_ns:
            problems += self._kill_our_processes()
        elif self.holder and self.holder.poll() is None:  # it never finished node_init
            self.holder.kill()
            self.holder.wait()
        problems += remove_cgroups(self.cgroup)
        if self._made_netns and os.path.exists(f"/run/netns/{self.netns}"):
            run(["ip", "netns", "del", self.netns], check=False)
        ours = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(f"{self.w}/")]
        for mountpoint in sorted(ours, key=len, reverse=True):
            problems.append(f"{mountpoint} was mounted in the host's mount namespace")
            run(["umount", "--lazy", mountpoint], check=False)
        shutil.rmtree(self.w, ignore_errors=True)
        if self.w.exists():
            problems.append(f"could not remove {self.w}")
        after = _host_state()
        problems += [f"{path} changed on the host: {self._host_state[path]} -> {after[path]}"
                     for path in HOST_PATHS if after[path] != self._host_state[path]]
        root_links = run(["ip", "-o", "link", "show"]).stdout
        if "cni-podman" in root_links:
            problems.append("a cni-podman bridge appeared in the root netns")
        return problems
