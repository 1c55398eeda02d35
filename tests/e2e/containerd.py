"""A private containerd "node" whose CNI plugins are the ones under test (facts: CONTAINERD.md).

containerd runs in its own netns (NAME-node) and in a private mount namespace in which
/etc/cni/net.d, /opt/cni/bin, /var/lib/cni and /run/containerd are bind mounts of dirs under
the work dir (tests/e2e/node_init.py). Every ctr call joins both namespaces: `ctr run --cni`
runs libcni inside the ctr process, which reads the fixed /etc/cni/net.d and /opt/cni/bin, and
ctr puts its stdio fifos under /run/containerd. With cri=True the CRI plugin is on instead:
containerd itself then runs libcni, in the node netns, with the same conf and plugin dirs, and
makes each pod's netns under its state dir, in its own mount namespace.

/opt/cni/bin holds a logging wrapper per plugin (tests/e2e/cni_wrapper.py) around a copy of the
plugin under test, so the calls log shows what ran. close() removes every process, namespace,
cgroup and file this made, whatever state the test left it in.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import REFERENCE_DIR
from .node import CniNode, run

IMAGE = "localhost/e2e/busybox:latest"
PAUSE_IMAGE = "localhost/e2e/pause:latest"
CRI_NAMESPACE = "k8s.io"  # where the CRI plugin looks for images
SHADOWED = ("/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/run/containerd")
PACKAGES = ("containerd", "runc", "busybox-static")

CONFIG = """\
version = 2
root = "{w}/root"
state = "{w}/state"
{disabled}
[grpc]
  address = "{w}/containerd.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{w}/opt"
"""
# The CRI plugin: no CAP_SYS_RESOURCE here (the sandbox's oom_score_adj -998 would kill runc),
# pod netns under the state dir rather than /run/netns, the node's conf and plugin dirs.
CRI_CONFIG = """\
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{pause}"
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{w}/cni-bin"
      conf_dir = "{w}/net.d"
"""


def ensure_packages(packages=PACKAGES) -> None:
    """apt-get install what is missing; apt-get update only if the install fails without it."""
    missing = [p for p in packages
               if subprocess.run(["dpkg-query", "-W", "-f", "${Status}", p], capture_output=True,
                                 text=True).stdout != "install ok installed"]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)


def cgroup_dirs(name: str, pid: int | str = "self") -> list[Path]:
    """Where `name`, relative to the cgroups of `pid`, lands in every mounted hierarchy."""
    mounts = []  # (mount point, mount root, super options) of each cgroup mount
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _, options = tail.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            root, point = fields.split()[3:5]
            mounts.append((point, root, fstype, set(options.split(","))))
    dirs = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for point, root, fstype, options in mounts:
            v2 = fstype == "cgroup2" and not controllers
            if v2 or (controllers and set(controllers.split(",")) <= options):
                rel = path[len(root):] if root != "/" and path.startswith(root) else path
                dirs.append(Path(point + rel.rstrip("/")) / name)
    return dirs


def remove_cgroups(name: str) -> list[str]:
    """Kill what is left in the cgroups `name` (containers whose shim or conmon died), then rmdir
    them; returns the ones that could not be removed."""
    problems = []
    for top in cgroup_dirs(name):
        if not top.is_dir():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for d in dirs:
            for pid in (d / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for d in dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                problems.append(f"could not remove cgroup {d}")
    return problems


class ContainerdNode(CniNode):
    def __init__(self, workdir: Path, plugin_dir: Path, confs: list[Path], name: str,
                 cri: bool = False, log_calls: bool = True):
        """log_calls=False: the plugins themselves in /opt/cni/bin, without the logging wrapper
        (a Python process per call), for timing them (bench/cri.py)."""
        super().__init__(workdir, plugin_dir, name, Path(workdir) / "var-lib-cni", log_calls)
        self.confs = confs
        self.cri = cri
        self.sock = self.w / "containerd.sock"
        self.containerd: subprocess.Popen | None = None
        self.runs: dict[str, subprocess.Popen] = {}
        self._exec_ids = 0
        self._host_paths = {p: os.path.lexists(p) for p in SHADOWED}

    # -- start ---------------------------------------------------------------------------------

    def _install_plugins(self) -> None:
        """The plugins into cni-bin/, the node's /opt/cni/bin. The CRI plugin also runs
        loopback for every pod: the plugin dir's if it has one (the Go reference dirs do), else
        Debian's; the project has none of its own."""
        sources = {name: self.plugin_dir / name for name in ("bridge", "host-local")}
        if self.cri:
            loopback = self.plugin_dir / "loopback"
            sources["loopback"] = loopback if loopback.exists() else REFERENCE_DIR / "loopback"
        self.install_plugins(sources, self.w / "cni-bin")

    def start(self) -> None:
        for d in ("net.d", "var-lib-cni", "run-containerd"):
            (self.w / d).mkdir(parents=True)
        for conf in self.confs:
            shutil.copy(conf, self.w / "net.d" / conf.name)
        self._install_plugins()
        config = self.w / "containerd.toml"
        disabled = "" if self.cri else 'disabled_plugins = ["io.containerd.grpc.v1.cri"]'
        config.write_text(CONFIG.format(w=self.w, disabled=disabled)
                          + (CRI_CONFIG.format(w=self.w, pause=PAUSE_IMAGE) if self.cri else ""))
        sources = (self.w / "net.d", self.w / "cni-bin", self.cni_state,
                   self.w / "run-containerd")
        self.containerd = self.spawn(dict(zip(SHADOWED, sources, strict=True)),
                                     ["containerd", "--config", config], "containerd.log")
        deadline = time.monotonic() + 30
        while not (self.sock.exists() and
                   self.ctr("version", check=False, timeout=5).returncode == 0):
            if self.containerd.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("containerd did not come up:\n" + self.log_tail())
            time.sleep(0.1)

    def log_tail(self, name="containerd.log", lines=30) -> str:
        path = self.w / name
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    # -- ctr -----------------------------------------------------------------------------------

    def ctr_cmd(self, *args) -> list[str]:
        """ctr in containerd's mount and network namespaces."""
        return ["nsenter", "-t", str(self.containerd.pid), "-m", "-n",
                "ctr", "--connect-timeout", "2s", "-a", str(self.sock), *map(str, args)]

    def ctr(self, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        return run(self.ctr_cmd(*args), check=check, timeout=timeout)

    def import_image(self, tarball: Path, namespace: str = "default") -> None:
        self.ctr("-n", namespace, "images", "import", tarball)

    def unmount(self, path: str | Path) -> None:
        """Unmount in containerd's mount namespace, where the CRI plugin pins each pod's netns."""
        run(["nsenter", "-t", str(self.containerd.pid), "-m", "umount", path])

    def tasks(self) -> dict[str, str]:
        lines = self.ctr("task", "ls").stdout.splitlines()[1:]
        return {f[0]: f[2] for f in (line.split() for line in lines) if len(f) >= 3}

    def run_container(self, cid: str, timeout: float = 60) -> None:
        """`ctr run --cni --rm` in the foreground (only that path sends DEL), until RUNNING."""
        with open(self.w / f"ctr-run-{cid}.log", "w") as log:
            self.runs[cid] = subprocess.Popen(
                self.ctr_cmd("run", "--cni", "--rm", "--cgroup", f"{self.cgroup}/{cid}",
                             IMAGE, cid, "sleep", "600"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.tasks().get(cid) != "RUNNING":
            if self.runs[cid].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"container {cid} did not start:\n"
                                     + self.log_tail(f"ctr-run-{cid}.log"))
            time.sleep(0.05)

    def exec(self, cid: str, *cmd, check=False, timeout=30) -> subprocess.CompletedProcess:
        self._exec_ids += 1
        return self.ctr("task", "exec", "--exec-id", f"e2e-{self._exec_ids}", cid, *cmd,
                        check=check, timeout=timeout)

    def stop_container(self, cid: str, timeout: float = 30) -> int:
        """Kill the task; the foreground ctr then sends DEL and removes the container."""
        self.ctr("task", "kill", "-s", "SIGKILL", cid)
        return self.runs[cid].wait(timeout=timeout)

    # -- what the node holds -------------------------------------------------------------------

    def nat_tables(self) -> dict[str, str]:
        """The node's nat table in both iptables backends, and its whole nftables ruleset."""
        tables = {"iptables-legacy": self.in_node("iptables-legacy-save", "-t", "nat").stdout,
                  "iptables-nft": self.in_node("iptables-nft-save", "-t", "nat").stdout}
        if shutil.which("nft"):
            tables["nft"] = self.in_node("nft", "list", "ruleset").stdout
        return tables

    def masquerade_rules(self, ips: list[str]) -> dict[str, list[str]]:
        """Per backend, the nat lines naming a CNI- chain or one of `ips`; backends with none
        are left out, so {} means no masquerading left anywhere."""
        mentions = re.compile("|".join(["CNI-", *(rf"\b{re.escape(ip)}\b" for ip in ips)]))
        found = {backend: [line for line in rules.splitlines() if mentions.search(line)]
                 for backend, rules in self.nat_tables().items()}
        return {backend: lines for backend, lines in found.items() if lines}

    def veths(self) -> list[str]:
        links = json.loads(run(["ip", "-n", self.netns, "-j", "link", "show", "type", "veth"])
                           .stdout or "[]")
        return [link["ifname"] for link in links]

    # -- teardown ------------------------------------------------------------------------------

    def _our_shims(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"containerd-shim" in cmdline[0] and str(self.sock).encode() in cmdline:
                pids.append(int(entry.name))
        return pids

    def close(self) -> list[str]:
        """Remove everything; returns what could not be removed or showed up on the host."""
        problems = []
        for cid, proc in self.runs.items():
            if proc.poll() is None:
                try:
                    self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False, timeout=10)
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.containerd:
            shims = self._our_shims()
            self.containerd.terminate()
            try:
                self.containerd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.containerd.kill()
                self.containerd.wait()
            for pid in shims + self._our_shims():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        problems += remove_cgroups(self.cgroup)
        if self._made_netns and os.path.exists(f"/run/netns/{self.netns}"):
            run(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.w, ignore_errors=True)
        if self.w.exists():
            problems.append(f"could not remove {self.w}")
        for path, existed in self._host_paths.items():
            if os.path.lexists(path) != existed:
                problems.append(f"{path} appeared on the host")
        if "cnio0" in run(["ip", "-o", "link", "show"]).stdout:
            problems.append("cnio0 appeared in the root netns")
        return problems
