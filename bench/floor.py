#!/usr/bin/python3
"""The interpreter's floor against the Go plugins' whole call: CPU per process, interleaved.

The second DEL of every pod (no netns, no prevResult, nothing left) is the cheapest real call
a plugin gets. This runs it, and VERSION, as one process each, A,B,C,... in turn so that the
machine's drift hits every variant alike, and prints the medians of CPU (user + sys of the
whole process tree) and wall time:

    python3 bench/floor.py [--plugin-dir dist] [--compare /usr/lib/cni ...] [--runs 200]

On a 2-core machine under a 16-way load, throughput is CPU: a Python call cannot cost less than
`/usr/bin/python3 -I -S -c pass`, printed first. The plugins run in a network namespace of
this tool's own (`floor-bench-<pid>`, deleted by name at the end); their dataDir is a temp dir.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference-v1.9.1")
CONTAINER_ID = "f" * 64


def conf(data_dir: str) -> bytes:
    """cnibench's conf: Kubernetes The Hard Way's bridge with ipMasq and host-local."""
    return json.dumps({
        "cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cnio0",
        "isGateway": True, "ipMasq": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.200.0.0/16"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data_dir},
    }).encode()


def run_once(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, float]:
    """(CPU ms, wall ms) of one process and the children it reaped."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, input=stdin, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[:300]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu * 1e3, wall * 1e3


def variants(dirs: list[str], data_dir: str) -> list[tuple[str, list[str], dict, bytes]]:
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_CONTAINERID": CONTAINER_ID,
            "CNI_IFNAME": "eth0", "CNI_NETNS": ""}
    rows = [("interpreter floor (python3 -I -S -c pass)",
             ["/usr/bin/python3", "-I", "-S", "-c", "pass"], base, b"")]
    for d in dirs:
        env = dict(base, CNI_PATH=d)
        bridge = os.path.join(d, "bridge")
        rows.append((f"{d}: VERSION", [bridge], dict(env, CNI_COMMAND="VERSION"), b""))
        rows.append((f"{d}: DEL, no netns, nothing left", [bridge], dict(env, CNI_COMMAND="DEL"),
                     conf(data_dir)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plugin-dir", default=os.path.join(ROOT, "dist"))
    p.add_argument("--compare", action="append",
                   help="a directory of Go plugins (default: /usr/lib/cni and ../shared's v1.9.1)")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--_inside", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    compare = a.compare or [d for d in ("/usr/lib/cni", REFERENCE) if os.path.isdir(d)]
    dirs = [os.path.abspath(a.plugin_dir), *compare]
    if not a._inside:
        netns = f"floor-bench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            argv = [sys.executable, os.path.abspath(__file__), "--_inside", "--runs", str(a.runs),
                    "--plugin-dir", dirs[0], *sum((["--compare", d] for d in dirs[1:]), [])]
            sys.exit(subprocess.run(["ip", "netns", "exec", netns, *argv]).returncode)
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)
    with tempfile.TemporaryDirectory(prefix="floor-bench-") as data_dir:
        rows = variants(dirs, data_dir)
        samples: list[list[tuple[float, float]]] = [[] for _ in rows]
        for _ in range(a.runs):
            for i, (_, argv, env, stdin) in enumerate(rows):
                samples[i].append(run_once(argv, env, stdin))
    print(f"{'medians of ' + str(a.runs) + ' interleaved runs':<60} {'cpu ms':>8} {'wall ms':>8}")
    for (label, *_), runs in zip(rows, samples):
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{label:<60} {cpu:8.2f} {wall:8.2f}")


if __name__ == "__main__":
    main()
