#!/usr/bin/python3
"""Where a plugin process's start-up goes: the interpreter's floor, each zipapp's VERSION, and
the modules each verb imports, with their cost (python3 -X importtime, self + children).

    python3 bench/startup.py [--plugin-dir dist] [--runs 30] [--top 12]

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
LOADER = 'import sys;f=open(sys.argv[1],"rb");f.readline();exec(f.readline()[1:])'
VERB_MODULES = {
    "host-local ADD": ("host-local", "host_local_ipam.plugin"),
    "bridge ADD/DEL": ("bridge", "cni_bridge.plugin, cni_bridge.attach"),
    "bridge CHECK": ("bridge", "cni_bridge.plugin, cni_bridge.check"),
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
    """The extracted site-packages the zipapp's loader line points at."""
    with open(app, "rb") as f:
        f.readline()
        start = f.readline().decode()
    build_id = start.split("{name}_", 1)[1].split("/", 1)[0]
    root = start.split("or '", 1)[1].split("'", 1)[0]
    return f"{os.environ.get('SHIV_ROOT') or root}/{os.path.basename(app)}_{build_id}/site-packages"


def import_costs(site: str, modules: str, top: int) -> list[tuple[int, str]]:
    code = f"import os, sys; sys.path.insert(0, {site!r}); import cni_protocol.skel, {modules}"
    err = subprocess.run([PYTHON, "-IS", "-X", "importtime", "-c", code], capture_output=True,
                         text=True, check=True).stderr
    rows = []
    for line in err.splitlines()[1:]:
        _, cumulative, name = line.split("|")
        if not name.startswith("   "):  # top-level imports only: their children are included
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plugin-dir", default="dist")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    median, low = cpu_ms([PYTHON, "-IS", "-c", "pass"], env, a.runs)
    print(f"{'interpreter floor (python3 -IS -c pass)':44} {median:6.1f} ms cpu (min {low:.1f})")
    for app in ("host-local", "bridge"):
        path = os.path.join(a.plugin_dir, app)
        median, low = cpu_ms([path], dict(env, CNI_COMMAND="VERSION"), a.runs)
        print(f"{app + ' VERSION':44} {median:6.1f} ms cpu (min {low:.1f})")
    site = site_packages(os.path.join(a.plugin_dir, "bridge"))
    code = (f"import sys, time; sys.path.insert(0, {site!r}); from cni_bridge import masquerade; "
            "t = time.process_time(); masquerade.load_iptc(); print(time.process_time() - t)")
    loads = [float(subprocess.run([PYTHON, "-IS", "-c", code], capture_output=True, text=True,
                                  check=True).stdout) * 1e3 for _ in range(min(a.runs, 10))]
    print(f"{'python-iptables load (a thread of ADD, DEL)':44} {statistics.median(loads):6.1f} ms "
          f"cpu (min {min(loads):.1f})")
    for label, (app, modules) in VERB_MODULES.items():
        site = site_packages(os.path.join(a.plugin_dir, app))
        rows = import_costs(site, modules, a.top)
        print(f"\n{label}: imports after `os` (the loader's), ms (cumulative, one run)")
        for cumulative, name in rows:
            print(f"  {cumulative / 1000:6.2f}  {name}")


if __name__ == "__main__":
    sys.exit(main())
