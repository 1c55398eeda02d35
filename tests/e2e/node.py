"""What a runtime's test node has whatever the runtime (containerd, podman): a netns, a scratch
dir, the plugins under test in a dir of its own, the node's /var/lib/cni, and running it.

The plugins sit behind a logging wrapper each (tests/e2e/cni_wrapper.py), so the calls log
shows what ran; `log_calls=False` installs the plugins themselves, for timing them.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import sigterm_as_interrupt

HERE = Path(__file__).resolve().parent


def run(cmd, *, check=True, timeout=60, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


class CniNode:
    """A runtime's node: subclasses add start(), close() and the runtime's own commands."""

    def __init__(self, workdir: Path, plugin_dir: Path, name: str, cni_state: Path,
                 log_calls: bool = True) -> None:
        self.w = Path(workdir)
        self.plugin_dir = plugin_dir
        self.name = name
        self.netns = f"{name}-node"
        self.cgroup = name  # containers go under <our cgroup>/<name>/ in each hierarchy
        self.calls_log = self.w / "cni-calls.log"
        self.cni_state = cni_state  # the node's /var/lib/cni
        self.log_calls = log_calls
        self._made_netns = False

    def install_plugins(self, sources: dict[str, Path], bin_dir: Path) -> None:
        """The plugins of `sources` into bin_dir: wrappers around copies of them in cni-real/,
        or (log_calls=False) the copies themselves."""
        real = self.w / "cni-real"
        bin_dir.mkdir()
        real.mkdir()
        for name, source in sources.items():
            if not self.log_calls:
                shutil.copy2(source, bin_dir / name)
                continue
            shutil.copy2(source, real / name)
            wrapper = bin_dir / name
            wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / 'cni_wrapper.py'} "
                               f"{real / name} {self.calls_log}\n")
            wrapper.chmod(0o755)

    def spawn(self, shadows: dict[str, Path], command: list, log_name: str) -> subprocess.Popen:
        """Make the node's netns and start `command` in it, in a private mount namespace in
        which each host path of `shadows` is the dir of ours it names (node_init.py)."""
        run(["ip", "netns", "add", self.netns])
        self._made_netns = True
        host_ns = " ".join(os.readlink(f"/proc/self/ns/{ns}") for ns in ("mnt", "net"))
        with open(self.w / log_name, "w") as log:
            return subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount",
                 "--propagation", "private", "--", sys.executable, HERE / "node_init.py",
                 host_ns, self.w, *(f"{target}={source}" for target, source in shadows.items()),
                 "--", *command],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def calls(self) -> list[dict]:
        if not self.calls_log.exists():
            return []
        return [json.loads(line) for line in self.calls_log.read_text().splitlines()]

    def leases(self, network: str = "bridge") -> dict[str, str]:
        """host-local's reservations in the node's /var/lib/cni: address -> file content."""
        d = self.cni_state / "networks" / network
        if not d.is_dir():
            return {}
        return {f.name: f.read_bytes().decode() for f in d.iterdir()
                if f.name != "lock" and not f.name.startswith("last_reserved_ip")}

    def cached_results(self) -> list[str]:
        d = self.cni_state / "results"
        return sorted(os.listdir(d)) if d.is_dir() else []

    def in_node(self, *cmd, check=True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.netns, *cmd], check=check)


@contextlib.contextmanager
def running(node: CniNode):
    """node.start(), then node.close() whatever happens, a CI timeout included; the close must
    find nothing it could not remove."""
    with sigterm_as_interrupt():
        try:
            node.start()
            yield node
        finally:
            problems = node.close()
            assert not problems, problems
