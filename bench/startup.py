#!/usr/bin/python3
"""Where a plugin process's start-up goes: the interpreter's floor, each zipapp's VERSION, and
the modules each verb imports, with their cost.

One process per call: the bridge runs a host-local of its own build in-process
(cni_bridge/ipam.py), so a bridge ADD, CHECK or DEL imports host-local's modules too, and our
modules come from the zipapp's one file of compiled code (cni_protocol/fastimport.py), as in
the zipapp. Costs are CPU time of whole processes (median and minimum over --runs) and, per
verb, the imports as `python3 -X importtime` reports them (cumulative, one run) and their
wall time as one block (median over --runs, without importtime's own overhead).

    python3 bench/startup.py [--plugin-dir dist] [--runs 30] [--top 14]

Needs the zipapps extracted once (run each of them, or `make install`). Touches no network.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

PYTHON = "/usr/bin/python3"
# What each verb imports in one process; _ctypes is setns(2) (cni_bridge/netns.py), loaded
# when a verb first enters the pod's namespace.
VERB_MODULES = {
    "bridge ADD, DEL (host-local in-process)": (
        "bridge", "cni_protocol.skel, cni_protocol.request, cni_protocol.result, "
                  "cni_bridge.plugin, cni_bridge.attach, cni_build, host_local_ipam.plugin, "
                  "_ctypes"),
    "bridge CHECK (host-local in-process)": (
        "bridge", "cni_protocol.skel, cni_protocol.request, cni_protocol.result, "
                  "cni_bridge.plugin, cni_bridge.check, cni_build, host_local_ipam.plugin, "
                  "_ctypes"),
    "host-local ADD (exec'd, by another bridge)": (
        "host-local", "cni_protocol.skel, cni_protocol.request, cni_protocol.result, "
                      "host_local_ipam.plugin"),
}


def cpu_ms(argv: list[str], env: dict, runs: int) -> tuple[float, float]:
    """CPU time (user + sys) of one process: median and minimum over `runs`."""
    samples = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        samples.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e3)
    return statistics.median(samples), min(samples)


def site_packages(app: str) -> str:
    """The extracted site-packages the zipapp's start line (line 2) points at."""
    with open(app, "rb") as f:
        f.readline()
        start = f.readline().decode()
    root = start.split("or '", 1)[1].split("'", 1)[0]
    path = start.split("site = f'{root}", 1)[1].split("'", 1)[0]
    return f"{os.environ.get('SHIV_ROOT') or root}{path}"


def _prelude(site: str) -> str:
    """What the start line does before the first verb module: our modules from one file."""
    return (f"import sys; sys.path.insert(0, {site!r}); from cni_protocol import fastimport; "
            f"fastimport.install({site!r}); ")


def import_costs(site: str, modules: str, top: int) -> list[tuple[int, str]]:
    code = _prelude(site) + f"import {modules}"
    err = subprocess.run([PYTHON, "-IS", "-X", "importtime", "-c", code], capture_output=True,
                         text=True, check=True).stderr
    rows, started = [], False
    for line in err.splitlines()[1:]:
        _, cumulative, name = line.split("|")
        started = started or name.strip() == "cni_protocol.fastimport"
        if started and not name.startswith("   "):  # top-level: their children are included
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def import_ms(site: str, modules: str, runs: int) -> float:
    code = ("import time; t = time.perf_counter(); " + _prelude(site) + f"import {modules}; "
            "print((time.perf_counter() - t) * 1e3)")
    return statistics.median(float(subprocess.run([PYTHON, "-IS", "-c", code], check=True,
                                                  capture_output=True, text=True).stdout)
                             for _ in range(runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plugin-dir", default="dist")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--top", type=int, default=14)
    a = p.parse_args()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    floor, low = cpu_ms([PYTHON, "-IS", "-c", "pass"], env, a.runs)
    print(f"{'interpreter floor (python3 -IS -c pass)':46} {floor:6.1f} ms cpu (min {low:.1f})")
    for app in ("host-local", "bridge"):
        path = os.path.join(a.plugin_dir, app)
        median, low = cpu_ms([path], dict(env, CNI_COMMAND="VERSION"), a.runs)
        print(f"{app + ' VERSION':46} {median:6.1f} ms cpu (min {low:.1f}), "
              f"{median - floor:+.1f} over the floor")
    site = site_packages(os.path.join(a.plugin_dir, "bridge"))
    code = _prelude(site) + ("import time; from cni_bridge import masquerade; "
                             "t = time.process_time(); masquerade.load_iptc(); "
                             "print(time.process_time() - t)")
    try:
        loads = [float(subprocess.run([PYTHON, "-IS", "-c", code], capture_output=True,
                                      text=True, check=True).stdout) * 1e3
                 for _ in range(min(a.runs, 10))]
        print(f"{'python-iptables load (legacy iptables only)':46} "
              f"{statistics.median(loads):6.1f} ms cpu (min {min(loads):.1f})")
    except subprocess.CalledProcessError:
        pass  # a build without python-iptables
    for label, (app, modules) in VERB_MODULES.items():
        site = site_packages(os.path.join(a.plugin_dir, app))
        rows = import_costs(site, modules, a.top)
        print(f"\n{label}: {import_ms(site, modules, a.runs):.1f} ms of imports (wall, "
              "median); per top-level import, ms cumulative (-X importtime, one run):")
        for cumulative, name in rows:
            print(f"  {cumulative / 1000:6.2f}  {name}")


if __name__ == "__main__":
    sys.exit(main())
