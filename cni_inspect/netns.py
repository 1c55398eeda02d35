"""Network namespaces by path: the pod's, and the candidates a search for a pod goes through.

The node's namespace is the one cni-inspect runs in (`ip netns exec <node> cni-inspect ...` or
on the node itself); a pod's is a path: /run/netns/<name> (ip netns, CRI), /proc/<pid>/ns/net
(`ctr run --cni`), or a runtime's own dir.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

NETNS_RUN_DIRS = ("/run/netns", "/var/run/netns")


@dataclass(frozen=True)
class Netns:
    path: str

    @property
    def name(self) -> str | None:
        """The `ip netns` name, when it has one."""
        directory, base = os.path.split(self.path)
        return base if directory in NETNS_RUN_DIRS else None

    def exists(self) -> bool:
        return self.identity() is not None

    def identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the namespace: two paths of one netns have the same."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def command(self, cmd: str) -> str:
        """`cmd` run in this netns, as one types it."""
        if self.name:
            if cmd.startswith("ip "):
                return f"ip -n {self.name} {cmd[3:]}"
            return f"ip netns exec {self.name} {cmd}"
        return f"nsenter --net={self.path} {cmd}"


def resolve(target: str) -> Netns | None:
    """A netns path, or the name of one in /run/netns; None if neither exists."""
    ns = Netns(target if "/" in target else f"{NETNS_RUN_DIRS[0]}/{target}")
    return ns if ns.exists() else None


def own() -> tuple[int, int] | None:
    return Netns("/proc/self/ns/net").identity()


def named() -> list[Netns]:
    """The `ip netns` namespaces, by name."""
    try:
        names = sorted(os.listdir(NETNS_RUN_DIRS[0]))
    except OSError:
        return []
    return [ns for ns in (Netns(f"{NETNS_RUN_DIRS[0]}/{n}") for n in names) if ns.exists()]


def every(extra: list[str] = ()) -> list[Netns]:
    """Every netns on the node once (not ours): named ones, `extra` paths, then those of processes.

    ctr's pods have no name: their netns is only /proc/<pid>/ns/net of the container's task.
    """
    seen = {own()}
    found = []
    candidates = [*named(), *(Netns(p) for p in extra)]
    try:
        pids = sorted((int(p) for p in os.listdir("/proc") if p.isdigit()))
    except OSError:
        pids = []
    candidates += [Netns(f"/proc/{pid}/ns/net") for pid in pids]
    for ns in candidates:
        ident = ns.identity()
        if ident is not None and ident not in seen:
            seen.add(ident)
            found.append(ns)
    return found
