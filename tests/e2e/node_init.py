"""First process of a test's node (containerd, or the holder of podman's namespaces): shadow the
host paths a runtime writes, then become COMMAND.

usage: node_init.py HOST_NS WORKDIR TARGET=SOURCE... -- COMMAND [ARG...]

Runs already inside the node's netns and a private mount namespace (nsenter --net + unshare
--mount --propagation private), so every mount here vanishes with the namespace and the real
TARGETs (/etc/cni, /var/lib/cni, /run/containerd, ...) are never written. A TARGET that does
not exist gets its mountpoint inside an overlay over its nearest existing parent, whose upper
dir is in WORKDIR. HOST_NS is the caller's "mnt:[..] net:[..]": if either namespace is still the
caller's, nothing is mounted.
"""
import os
import subprocess
import sys
from pathlib import Path


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def shadow(target: Path, source: Path, workdir: Path) -> None:
    parent = target
    while not parent.exists():
        parent = parent.parent
    if parent == Path("/"):
        sys.exit(f"node_init: refusing to overlay / for {target}")
    if parent != target:
        layer = workdir / "overlay" / str(parent).strip("/").replace("/", "_")
        if not layer.exists():  # one overlay per parent, e.g. /var/lib for /var/lib/cni
            (layer / "upper").mkdir(parents=True)
            (layer / "work").mkdir()
            mount("-t", "overlay", "overlay", "-o",
                  f"lowerdir={parent},upperdir={layer}/upper,workdir={layer}/work", str(parent))
        target.mkdir(parents=True)
    mount("--bind", str(source), str(target))


def main() -> None:
    host_ns, workdir, *rest = sys.argv[1:]
    split = rest.index("--")
    pairs, command = rest[:split], rest[split + 1:]
    for ns in ("mnt", "net"):
        if os.readlink(f"/proc/self/ns/{ns}") in host_ns.split():
            sys.exit(f"node_init: still in the caller's {ns} namespace, not mounting anything")
    for pair in pairs:
        target, source = pair.split("=", 1)
        shadow(Path(target), Path(source), Path(workdir))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
