#!/usr/bin/python3
"""The pod network of "Kubernetes The Hard Way", built in network namespaces by CNI plugins.

Two worker nodes share the host network 10.240.0.0/24 (a bridge in the netns PREFIX-net). Each
node has a POD_CIDR and a route to the other node's POD_CIDR, added by hand as in the
walk-through. The pods on each node are made by the bridge and host-local plugins of
--plugin-dir, with conf/10-bridge.conflist set to that node's subnet. A jumpbox on the host
network has no route to any POD_CIDR, so a pod reaches it only through its node's masquerade.
Each node keeps its conf in WORKDIR/<node>/net.d and a libcni cache of its pods in
WORKDIR/<node>/cache, as a runtime would, and the walk is cni-inspect's, run in the node.

  cluster.py demo [--keep]   build, print the walk one screen per node, then a pod lost without
                             DEL, found by cni-inspect and freed by GC; tear down
  cluster.py show            print the walk of a kept cluster again
  cluster.py clean           tear down a kept cluster

Nothing is created in the root network namespace. Each namespace is named PREFIX-* and is
deleted by its exact name, as recorded in WORKDIR/state.json. Teardown sends DEL through the
plugins first, as a runtime would.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFLIST = ROOT / "conf" / "10-bridge.conflist"
DEFAULT_WORKDIR = Path("/tmp/kthw-demo")
DEFAULT_INSPECT = ROOT / "dist" / "cni-inspect"
HOSTNET_BRIDGE = "hostnet"
BRIDGE = "cnio0"


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    pod_cidr: str = ""


NODES = (Host("node-0", "10.240.0.20", "10.200.0.0/24"),
         Host("node-1", "10.240.0.21", "10.200.1.0/24"))
JUMPBOX = Host("jumpbox", "10.240.0.10")

# Nodes track connections as kube-proxy's rules would make them do: without a rule that needs
# conntrack the kernel tracks nothing in a netns, and "no NAT" could not be told from "no entry".
TRACK_RULESET = """
table inet kthw_track {
  chain forward { type filter hook forward priority 0; policy accept; ct state new counter; }
}
"""


class CommandError(RuntimeError):
    def __init__(self, cmd, proc: subprocess.CompletedProcess):
        super().__init__(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                         f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}")
        self.proc = proc


def run(*cmd, input=None, env=None, check=True, timeout=60) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], input=input, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode:
        raise CommandError(cmd, proc)
    return proc


def icmp_flows(ns: str) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """ICMP flows in a netns's conntrack: ((orig src, orig dst), (reply src, reply dst))."""
    out = in_ns(ns, "conntrack", "-L", "-p", "icmp").stdout
    flows = []
    for line in out.splitlines():
        pairs = re.findall(r"src=(\S+) dst=(\S+)", line)
        if len(pairs) == 2:
            flows.append((pairs[0], pairs[1]))
    return flows


def in_ns(ns: str, *cmd, **kw) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *cmd, **kw)


def ip_json(ns: str, *args) -> list:
    return json.loads(run("ip", "-n", ns, "-j", *args).stdout or "[]")


def netns_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


def invoke_list(verb: str, conflist: dict, *, plugin_dir: Path, runtime_ns: str, container_id: str,
                netns: str, ifname: str = "eth0", cni_args: str = "", runtime_config=None,
                cached_result=None, log=None):
    """Run a conflist the way libcni does, with the plugins executed in the runtime's netns.

    ADD runs the plugins in order, each getting the previous result as prevResult, and returns
    the last result (the one libcni caches). DEL runs them in reverse order, each with the cached
    result. Each plugin gets only the runtimeConfig keys its capabilities ask for.
    """
    plugins = conflist["plugins"] if verb == "ADD" else list(reversed(conflist["plugins"]))
    env = dict(os.environ, CNI_COMMAND=verb, CNI_CONTAINERID=container_id, CNI_NETNS=netns,
               CNI_IFNAME=ifname, CNI_PATH=str(plugin_dir), CNI_ARGS=cni_args)
    result = cached_result if verb == "DEL" else None
    for plugin in plugins:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf.update(name=conflist["name"], cniVersion=conflist["cniVersion"])
        wanted = {k: v for k, v in (runtime_config or {}).items()
                  if plugin.get("capabilities", {}).get(k)}
        if wanted:
            conf["runtimeConfig"] = wanted
        if result is not None:
            conf["prevResult"] = result
        started = time.monotonic()
        proc = in_ns(runtime_ns, plugin_dir / plugin["type"], input=json.dumps(conf), env=env,
                     check=False)
        if log:
            log(f"{verb} {plugin['type']:<10} {container_id}  exit {proc.returncode}  "
                f"{time.monotonic() - started:.2f} s")
        if proc.returncode:
            raise CommandError([f"CNI {verb}", plugin["type"], container_id], proc)
        if verb == "ADD":
            result = json.loads(proc.stdout)
    return result


def invoke_gc(conflist: dict, *, plugin_dir: Path, runtime_ns: str, valid: list[dict], log):
    """GC as libcni sends it to a conf list of cniVersion 1.1.0: each plugin gets the
    attachments the runtime still has in `cni.dev/valid-attachments`."""
    env = dict(os.environ, CNI_COMMAND="GC", CNI_PATH=str(plugin_dir))
    for plugin in conflist["plugins"]:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf.update(name=conflist["name"], cniVersion="1.1.0",
                    **{"cni.dev/valid-attachments": valid})
        proc = in_ns(runtime_ns, plugin_dir / plugin["type"], input=json.dumps(conf), env=env,
                     check=False)
        log(f"GC {plugin['type']} valid: {' '.join(v['containerID'] for v in valid)}  "
            f"exit {proc.returncode}")
        if proc.returncode:
            raise CommandError(["CNI GC", plugin["type"]], proc)


def node_conflist(node: Host, ip_masq: bool, data_dir: Path) -> dict:
    """conf/10-bridge.conflist for one node: its POD_CIDR, and the IPAM store in our workdir."""
    conflist = json.loads(CONFLIST.read_text())
    bridge = conflist["plugins"][0]
    bridge["ipMasq"] = ip_masq
    bridge["ipam"]["ranges"] = [[{"subnet": node.pod_cidr}]]
    bridge["ipam"]["dataDir"] = str(data_dir)
    return conflist


class Cluster:
    """The two-node cluster; self.state records everything made, so teardown can find it."""

    def __init__(self, plugin_dir, workdir=DEFAULT_WORKDIR, prefix="kthw", ip_masq=True,
                 pods_per_node=2, log=print, inspect=DEFAULT_INSPECT):
        self.workdir = Path(workdir)
        self.log = log
        self.owns_workdir_state = False
        self.state = {"prefix": prefix, "source_dir": str(Path(plugin_dir).resolve()),
                      "cni_bin": str(self.workdir / "cni-bin"),
                      "inspect": str(Path(inspect).resolve()),
                      "ip_masq": ip_masq, "pods_per_node": pods_per_node, "netns": [],
                      "pods": []}

    @classmethod
    def load(cls, workdir=DEFAULT_WORKDIR, log=print) -> Cluster:
        cluster = cls("/", workdir, log=log)
        cluster.state = json.loads((cluster.workdir / "state.json").read_text())
        cluster.owns_workdir_state = True
        return cluster

    @property
    def plugin_dir(self) -> Path:
        """The cluster's CNI_PATH: copies of the plugins, installed there by up()."""
        return Path(self.state["cni_bin"])

    @property
    def pods(self) -> list[dict]:
        return self.state["pods"]

    def ns(self, name: str) -> str:
        return f"{self.state['prefix']}-{name}"

    def pods_of(self, node: Host) -> list[dict]:
        return [p for p in self.pods if p["node"] == node.name]

    def node_dir(self, node: Host | str) -> Path:
        """The node's own files: conf dir net.d, libcni cache, IPAM store."""
        return self.workdir / (node if isinstance(node, str) else node.name)

    def cache_file(self, pod: dict) -> Path:
        return (self.node_dir(pod["node"]) / "cache" / "results"
                / f"{pod['conflist']['name']}-{pod['id']}-eth0")

    def _save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.owns_workdir_state = True
        tmp = self.workdir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.workdir / "state.json")

    def _add_netns(self, name: str) -> str:
        ns = self.ns(name)
        run("ip", "netns", "add", ns)
        self.state["netns"].append(ns)
        self._save()
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    # -- build ---------------------------------------------------------------------------------

    def up(self) -> None:
        source = Path(self.state["source_dir"])
        for name in ("bridge", "host-local"):
            if not os.access(source / name, os.X_OK):
                raise FileNotFoundError(f"no executable {source / name}")
        if (self.workdir / "state.json").exists():
            raise FileExistsError(f"{self.workdir}/state.json exists: a cluster is kept there, "
                                  f"remove it with `cluster.py clean --workdir {self.workdir}`")
        if not os.access(self.state["inspect"], os.X_OK):
            raise FileNotFoundError(f"no executable {self.state['inspect']} (`make zipapps`)")
        self._save()
        self.plugin_dir.mkdir(exist_ok=True)
        for name in ("bridge", "host-local"):
            shutil.copy2(source / name, self.plugin_dir / name)
        net = self._add_netns("net")
        run("ip", "-n", net, "link", "add", HOSTNET_BRIDGE, "type", "bridge")
        run("ip", "-n", net, "link", "set", HOSTNET_BRIDGE, "up")
        for host in (*NODES, JUMPBOX):
            ns = self._add_netns(host.name)
            run("ip", "-n", net, "link", "add", host.name, "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", net, "link", "set", host.name, "master", HOSTNET_BRIDGE, "up")
            run("ip", "-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
        for node in NODES:
            for other in NODES:
                if other != node:
                    run("ip", "-n", self.ns(node.name), "route", "add", other.pod_cidr,
                        "via", other.ip)
            in_ns(self.ns(node.name), "nft", "-f", "-", input=TRACK_RULESET)
            conf_dir = self.node_dir(node) / "net.d"
            conf_dir.mkdir(parents=True, exist_ok=True)
            conflist = node_conflist(node, self.state["ip_masq"], self.node_dir(node) / "ipam")
            (conf_dir / CONFLIST.name).write_text(json.dumps(conflist, indent=1))
        for node in NODES:
            for i in range(1, self.state["pods_per_node"] + 1):
                self.add_pod(node, f"{node.name}-pod-{i}")

    def _cni(self, verb: str, pod: dict):
        return invoke_list(verb, pod["conflist"], plugin_dir=self.plugin_dir,
                           runtime_ns=self.ns(pod["node"]), container_id=pod["id"],
                           netns=f"/run/netns/{pod['netns']}" if netns_exists(pod["netns"]) else "",
                           cni_args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"
                                    f"K8S_POD_NAME={pod['name']}",
                           cached_result=pod.get("result"), log=self.log)

    def add_pod(self, node: Host, name: str) -> dict:
        """A pod as a runtime makes it: a netns with lo up, then ADD of the node's conflist."""
        ns = self._add_netns(name)
        pod = {"name": name, "node": node.name, "netns": ns, "id": ns,
               "conflist": node_conflist(node, self.state["ip_masq"],
                                         self.workdir / node.name / "ipam")}
        self.pods.append(pod)  # recorded before ADD: a failed ADD still gets its DEL
        self._save()
        pod["result"] = self._cni("ADD", pod)
        self._save()
        self._cache(pod)
        return pod

    def _cache(self, pod: dict) -> None:
        """The cache entry libcni writes after ADD, which cni-inspect reads the netns from."""
        path = self.cache_file(pod)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps({
            "kind": "cniCacheV1", "containerId": pod["id"],
            "config": base64.b64encode(json.dumps(pod["conflist"]).encode()).decode(),
            "ifName": "eth0", "networkName": pod["conflist"]["name"],
            "netns": f"/run/netns/{pod['netns']}",
            "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "default"],
                        ["K8S_POD_NAME", pod["name"]]],
            "capabilityArgs": {}, "result": pod["result"]}))
        path.chmod(0o600)

    # -- teardown ------------------------------------------------------------------------------

    def down(self) -> None:
        """DEL every pod through the plugins, then delete our namespaces by exact name.

        Keeps going past errors so that nothing stays behind, and raises the first one at the end.
        """
        errors = []
        for pod in reversed(self.pods):
            try:
                self._cni("DEL", pod)
                self.cache_file(pod).unlink(missing_ok=True)
            except Exception as e:  # noqa: BLE001 - teardown must go on
                errors.append(e)
        for ns in reversed(self.state["netns"]):
            if netns_exists(ns):
                proc = run("ip", "netns", "del", ns, check=False)
                if proc.returncode:
                    errors.append(CommandError(["ip", "netns", "del", ns], proc))
        if self.owns_workdir_state:
            for d in (*(node.name for node in NODES), "cni-bin"):
                shutil.rmtree(self.workdir / d, ignore_errors=True)
            (self.workdir / "state.json").unlink(missing_ok=True)
            if not any(self.workdir.iterdir()):
                self.workdir.rmdir()
        if errors:
            raise errors[0]

    # -- observation (used by the walk and by tests/test_cluster.py) ------------------------------

    @staticmethod
    def pod_ip(pod: dict) -> str:
        return pod["result"]["ips"][0]["address"].split("/")[0]

    def host_veth(self, pod: dict) -> dict:
        """The node's end of the pod's veth pair, found by the peer ifindex of the pod's eth0."""
        eth0 = ip_json(pod["netns"], "link", "show", "dev", "eth0")[0]
        for link in ip_json(self.ns(pod["node"]), "link", "show"):
            if link["ifindex"] == eth0["link_index"]:
                return {"pod_ifindex": eth0["ifindex"], "peer_ifindex": eth0["link_index"], **link}
        raise LookupError(f"no link with ifindex {eth0['link_index']} in {pod['node']}")

    def bridge_ports(self, node: Host) -> list[str]:
        return [link["ifname"] for link in
                ip_json(self.ns(node.name), "link", "show", "master", BRIDGE)]

    def bridge_addr(self, node: Host) -> str:
        addrs = ip_json(self.ns(node.name), "-4", "addr", "show", "dev", BRIDGE)[0]["addr_info"]
        return f"{addrs[0]['local']}/{addrs[0]['prefixlen']}"

    def ping(self, pod: dict, dst: str) -> int | None:
        """ttl of the reply to one ping from the pod, None when there is no reply."""
        proc = in_ns(pod["netns"], "ping", "-c", "1", "-W", "2", dst, check=False)
        match = re.search(r"ttl=(\d+)", proc.stdout)
        return int(match.group(1)) if proc.returncode == 0 and match else None

    def conntrack(self, node: Host) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        return icmp_flows(self.ns(node.name))

    def inspect(self, node: Host, *args, explain: bool = False) -> str:
        """cni-inspect run in the node, on the node's conf dir, libcni cache and IPAM store."""
        cmd = [self.state["inspect"], *args, "--conf-dir", self.node_dir(node) / "net.d",
               "--cache-dir", self.node_dir(node) / "cache", *(["--explain"] if explain else [])]
        return in_ns(self.ns(node.name), *cmd).stdout.rstrip("\n")

    # -- the walk ------------------------------------------------------------------------------

    def overview(self) -> str:
        ports = " ".join(link["ifname"] for link in
                         ip_json(self.ns("net"), "link", "show", "master", HOSTNET_BRIDGE))
        lines = [f"Kubernetes The Hard Way pod network; CNI plugins from "
                 f"{self.state['source_dir']}, installed in {self.plugin_dir} (CNI_PATH)",
                 f"host network 10.240.0.0/24: bridge {HOSTNET_BRIDGE} in netns {self.ns('net')}"
                 f", ports: {ports}"]
        for host in (*NODES, JUMPBOX):
            cidr = f"POD_CIDR {host.pod_cidr}" if host.pod_cidr else "no route to any POD_CIDR"
            lines.append(f"  {host.name:<8} {host.ip:<12} netns {self.ns(host.name):<16} {cidr}")
        plugin = self.pods[0]["conflist"]["plugins"][0] if self.pods else {}
        lines.append(f"conf ({CONFLIST.relative_to(ROOT)}, subnet per node): "
                     + json.dumps(plugin, separators=(",", ":")))
        return "\n".join(lines)

    def pings(self) -> list[tuple[dict, str, str, int | None]]:
        """The pings of the walk: across nodes, across the bridge, and out to the jumpbox."""
        out = []
        for node in NODES:
            pods = self.pods_of(node)
            if not pods:
                continue
            other = next(self.pods_of(n) for n in NODES if n != node)
            targets = [(other[0]["name"], self.pod_ip(other[0]))] if other else []
            targets += [(p["name"], self.pod_ip(p)) for p in pods[1:2]]
            targets.append((JUMPBOX.name, JUMPBOX.ip))
            out += [(pods[0], name, ip, self.ping(pods[0], ip)) for name, ip in targets]
        return out

    def node_screen(self, node: Host, pings, explain: bool) -> str:
        """The walk on one node: cni-inspect's view of the node, the pings, then its view of the
        first pod (after the pings: conntrack), with the commands that show each fact."""
        pods = self.pods_of(node)
        lines = [f"==== {node.name}: netns {self.ns(node.name)}, eth0 {node.ip}/24, POD_CIDR "
                 f"{node.pod_cidr}",
                 "$ cni-inspect node   (the bridge, its ports, leases, NAT rules)",
                 self.inspect(node, "node"),
                 f"pings from {pods[0]['name'] if pods else '-'} (ttl 64 minus one per router):"]
        for src, name, ip, ttl in pings:
            if src["node"] == node.name:
                lines.append(f"  -> {name} {ip}: " + (f"ttl={ttl}" if ttl else "no reply") +
                             (" (the jumpbox has no route back to a POD_CIDR)"
                              if not ttl and name == JUMPBOX.name else ""))
        if pods:
            lines += [f"$ cni-inspect pod {pods[0]['id']}"
                      + (" --explain   (each fact, then the command that shows it)"
                         if explain else ""),
                      self.inspect(node, "pod", pods[0]["id"], explain=explain)]
        return "\n".join(lines)

    def lose_pod(self, node: Host) -> dict:
        """A pod whose netns goes without a DEL and whose runtime forgot it (its cache was on
        a tmpfs, the node rebooted): its lease and NAT chain stay behind."""
        pod = self.add_pod(node, f"{node.name}-pod-lost")
        run("ip", "netns", "del", pod["netns"])
        self.cache_file(pod).unlink()
        return pod

    def gc(self, node: Host, log) -> None:
        """GC from the runtime, naming the pods it still has: frees what the others left."""
        pods = self.pods_of(node)
        invoke_gc(pods[0]["conflist"], plugin_dir=self.plugin_dir, runtime_ns=self.ns(node.name),
                  valid=[{"containerID": p["id"], "ifname": "eth0"} for p in pods
                         if netns_exists(p["netns"])], log=log)

    def leak_and_gc(self, node: Host) -> str:
        """The injected problem: found by `cni-inspect node`, freed by GC."""
        lost = self.lose_pod(node)
        lines = [f"==== injected on {node.name}: the netns of {lost['name']} "
                 f"({self.pod_ip(lost)}) deleted without a DEL, and the runtime forgot it",
                 "$ cni-inspect node", self.inspect(node, "node"),
                 "GC (cniVersion 1.1.0) with the pods the runtime still has:"]
        self.gc(node, log=lambda msg: lines.append("  " + msg))
        self.pods.remove(lost)
        self._save()
        lines += ["$ cni-inspect node", self.inspect(node, "node")]
        return "\n".join(lines)

    def walk(self) -> str:
        pings = self.pings()
        return "\n\n".join([self.overview(), *(self.node_screen(n, pings, explain=n == NODES[0])
                                                 for n in NODES)])

    def demo(self) -> str:
        return self.walk() + "\n\n" + self.leak_and_gc(NODES[0])


class Interrupted(Exception):
    pass


def _interrupt(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def say(msg: str) -> None:
    """print, but a closed stdout (`| head`) must not stop the teardown."""
    try:
        print(msg, flush=True)
    except OSError:
        sys.stdout = open(os.devnull, "w")  # for the rest of the process


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("demo", "show", "clean"))
    parser.add_argument("--plugin-dir", default=str(ROOT / "dist"),
                        help="dir holding bridge and host-local (default: dist/)")
    parser.add_argument("--inspect", default=str(DEFAULT_INSPECT),
                        help="the cni-inspect that prints the walk (default: dist/cni-inspect)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                        help=f"state, plugin copies and IPAM store (default: {DEFAULT_WORKDIR})")
    parser.add_argument("--prefix", default="kthw", help="name prefix of every netns")
    parser.add_argument("--pods-per-node", type=int, default=2)
    parser.add_argument("--no-masq", action="store_true", help="ipMasq false in the conf")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up (demo)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (it creates network namespaces)")
    workdir = Path(args.workdir)
    workdir_opt = f" --workdir {workdir}" if workdir != DEFAULT_WORKDIR else ""

    if args.command != "demo":
        if not (workdir / "state.json").exists():
            say(f"no kept cluster in {workdir}")
            return 0 if args.command == "clean" else 1
        cluster = Cluster.load(workdir, log=say)
        if args.command == "show":
            say(cluster.walk())
        else:
            cluster.down()
        return 0

    if (workdir / "state.json").exists():
        parser.error(f"a cluster is kept in {workdir}: run `{sys.argv[0]} clean{workdir_opt}`")
    cluster = Cluster(args.plugin_dir, workdir, args.prefix, not args.no_masq,
                      args.pods_per_node, log=say, inspect=args.inspect)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        cluster.up()
        say("\n" + cluster.demo() + "\n")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # teardown must not be cut short
        if args.keep and (workdir / "state.json").exists():
            say(f"kept: `{sys.argv[0]} show{workdir_opt}` prints it again, "
                f"`{sys.argv[0]} clean{workdir_opt}` removes it")
        else:
            cluster.down()
            say("torn down: DEL sent for every pod, namespaces deleted")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CommandError, FileNotFoundError, FileExistsError, Interrupted) as e:
        sys.exit(f"cluster.py: {e}")
