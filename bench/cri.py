#!/usr/bin/env python3
"""Pods through containerd's CRI, the path kubelet uses: our plugins against the Go ones.

Each plugin dir gets a private containerd node (tests/e2e/containerd.py, cri=True, the plugins
without the tests' logging wrapper) with conf/10-bridge.conf. A round starts --pods sandboxes,
--parallel at a time (RunPodSandbox: containerd's CNI ADD), then stops and removes them as
kubelet does (StopPodSandbox: DEL with the netns and prevResult; RemovePodSandbox: the second
DEL, with neither). Rounds alternate between the nodes, A,B,B,A,..., so the machine's drift hits
both alike. Every round must end with no lease, veth or masquerade rule left.

    .venv/bin/python bench/cri.py [--plugin-dir dist] [--compare /usr/lib/cni]
                                  [--pods 30] [--parallel 10] [--rounds 3]

Needs root, containerd and runc (`make deps`), grpcio and protobuf (`make venv`). Everything
lives in netns and dirs of its own, removed at the end, as in the tests.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from e2e import sigterm_as_interrupt  # noqa: E402
from e2e.containerd import CRI_NAMESPACE, PAUSE_IMAGE, ContainerdNode  # noqa: E402
from e2e.cri import CriClient, sandbox_config  # noqa: E402
from e2e.image import build_busybox_image  # noqa: E402


class Side:
    """One plugin dir on its own containerd node, and what its rounds measured (seconds)."""

    def __init__(self, label: str, plugin_dir: Path, work: Path) -> None:
        self.label = label
        self.node = ContainerdNode(work / label, plugin_dir, name=f"cri-bench-{os.getpid()}-{label}",
                                   cri=True, log_calls=False,
                                   confs=[ROOT / "conf" / "10-bridge.conf",
                                          ROOT / "conf" / "99-loopback.conf"])
        self.cri: CriClient | None = None
        self.times: dict[str, list[float]] = {"run": [], "stop": [], "remove": [],
                                              "stop+remove": []}
        self.rates: dict[str, list[float]] = {"up": [], "down": []}

    def start(self, pause_image: Path) -> None:
        self.node.start()
        self.node.import_image(pause_image, CRI_NAMESPACE)
        self.cri = CriClient(self.node.sock)

    def round(self, number: int, pods: int, parallel: int) -> None:
        names = [f"r{number}-pod{i}" for i in range(pods)]
        with ThreadPoolExecutor(parallel) as pool:
            start = time.perf_counter()
            ids = list(pool.map(self._run, names))
            self.rates["up"].append(pods / (time.perf_counter() - start))
            start = time.perf_counter()
            list(pool.map(self._stop_and_remove, ids))
            self.rates["down"].append(pods / (time.perf_counter() - start))
        left = {"leases": self.node.leases(), "veths": self.node.veths(),
                "masquerade": self.node.masquerade_rules([])}
        if any(left.values()):
            sys.exit(f"{self.label}, round {number}: left behind {left}")

    def _run(self, name: str) -> str:
        config = sandbox_config(self.node.cgroup, name, namespace="bench")
        start = time.perf_counter()
        sandbox_id = self.cri.RunPodSandbox(config=config).pod_sandbox_id
        self.times["run"].append(time.perf_counter() - start)
        return sandbox_id

    def _stop_and_remove(self, sandbox_id: str) -> None:
        start = time.perf_counter()
        self.cri.StopPodSandbox(pod_sandbox_id=sandbox_id)
        stopped = time.perf_counter()
        self.cri.RemovePodSandbox(pod_sandbox_id=sandbox_id)
        done = time.perf_counter()
        self.times["stop"].append(stopped - start)
        self.times["remove"].append(done - stopped)
        self.times["stop+remove"].append(done - start)

    def close(self) -> list[str]:
        if self.cri is not None:
            self.cri.close()
        return self.node.close()


def report(a: Side, b: Side, args: argparse.Namespace) -> None:
    print(f"CRI bench: {args.pods} pods, {args.parallel} at a time, {args.rounds} rounds; "
          f"A = {a.node.plugin_dir}, B = {b.node.plugin_dir}")
    print(f"{'':44} {'A':>9} {'B':>9} {'A/B':>6}")
    rows = [(f"{what} p50 (ms)", statistics.median(a.times[key]) * 1e3,
             statistics.median(b.times[key]) * 1e3)
            for what, key in (("RunPodSandbox", "run"), ("StopPodSandbox", "stop"),
                              ("RemovePodSandbox", "remove"),
                              ("StopPodSandbox + RemovePodSandbox", "stop+remove"))]
    rows += [(f"{what} (pods/s, median of rounds)", statistics.median(a.rates[key]),
              statistics.median(b.rates[key]))
             for what, key in (("burst up", "up"), ("teardown", "down"))]
    for label, x, y in rows:
        print(f"{label:44} {x:9.1f} {y:9.1f} {x / y:6.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plugin-dir", type=Path, default=ROOT / "dist")
    p.add_argument("--compare", type=Path, default=Path("/usr/lib/cni"))
    p.add_argument("--pods", type=int, default=30)
    p.add_argument("--parallel", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: creates network namespaces, mounts and cgroups")
    with tempfile.TemporaryDirectory(prefix="cri-bench-") as tmp, sigterm_as_interrupt():
        work = Path(tmp)
        sides = [Side("A", args.plugin_dir.resolve(), work), Side("B", args.compare.resolve(), work)]
        problems: list[str] = []
        try:
            pause = build_busybox_image(work / "pause.tar", PAUSE_IMAGE,
                                        cmd=("/bin/sleep", "2147483647"))
            for side in sides:
                side.start(pause)
            for number in range(args.rounds):
                for side in sides if number % 2 == 0 else reversed(sides):
                    side.round(number, args.pods, args.parallel)
            report(*sides, args)
        finally:
            for side in sides:
                problems += side.close()
        if problems:
            sys.exit(f"cleanup: {problems}")


if __name__ == "__main__":
    main()
