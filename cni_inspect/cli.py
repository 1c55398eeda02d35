"""Command line of cni-inspect: `pod TARGET` and `node`, text or --json, exit codes.

Exit codes: 0 inspected (problems or not), 1 problems found with --strict, 2 bad input (an
unknown target, a missing conf, a pod not attached by a bridge conf), as one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import confs as confs_mod
from .cache import DEFAULT_CACHE_DIR
from .errors import InspectError

EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cni-inspect", description="Inspect the network of a pod attached by the CNI "
        "bridge plugin, or of the whole node; run as root in the node's netns.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="one JSON object (schema: README)")
    common.add_argument("--explain", action="store_true",
                        help="beside each fact, the standard command that shows it")
    common.add_argument("--strict", action="store_true", help="exit 1 when there are problems")
    confs = common.add_mutually_exclusive_group()
    confs.add_argument("--conf", metavar="FILE", help="the network conf (.conf or .conflist)")
    confs.add_argument("--conf-dir", metavar="DIR", default=confs_mod.DEFAULT_CONF_DIR,
                       help="pod: its first conf, as runtimes pick it; node: every conf "
                            "(default %(default)s)")
    common.add_argument("--cache-dir", metavar="DIR", default=DEFAULT_CACHE_DIR,
                        help="libcni's cache dir (default %(default)s)")
    common.add_argument("--data-dir", metavar="DIR", help="host-local's dataDir (default: the "
                        "conf's, else /var/lib/cni/networks)")
    pod = sub.add_parser("pod", parents=[common], help="one pod's path, from its interface to "
                         "the node's NAT")
    pod.add_argument("target", metavar="TARGET",
                     help="container ID (or a unique prefix), netns path or name, or pod IP")
    pod.add_argument("--netns", metavar="PATH", help="the pod's netns, when the cache has none")
    pod.add_argument("--ifname", default="eth0", help="the pod's interface (default %(default)s)")
    sub.add_parser("node", parents=[common], help="every bridge, lease and rule of the confs")
    return parser


def _pod(args) -> dict:
    from .kernel import Kernel
    from .locate import locate
    from .netfilter import Netfilter
    from .pod import inspect

    conf = confs_mod.load(args.conf) if args.conf else confs_mod.first_conf(args.conf_dir)
    conf = confs_mod.bridge_conf(conf, args.data_dir)
    with Kernel() as node:
        attachment = locate(node, conf, args.target, args.ifname, args.cache_dir, args.netns)
        return inspect(node, attachment, Netfilter())


def _node(args) -> dict:
    from .kernel import Kernel
    from .netfilter import Netfilter
    from .node import inspect

    if args.conf:
        confs = [confs_mod.load(args.conf)]
    else:
        confs = [confs_mod.load(path) for path in confs_mod.conf_files(args.conf_dir)]
    if not any(c.bridge is not None for c in confs):
        where = args.conf or args.conf_dir
        raise InspectError(f"no bridge network conf in {where}")
    for conf in confs:
        if conf.bridge is not None and args.data_dir:
            conf.data_dir = args.data_dir
    with Kernel() as node:
        return inspect(node, confs, args.cache_dir, Netfilter())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("cni-inspect: needs root (it reads other namespaces and the netfilter tables)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        report = _pod(args) if args.command == "pod" else _node(args)
    except InspectError as e:
        print(f"cni-inspect: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from . import render

    if args.json:
        if args.explain:
            commands = render.pod_commands if args.command == "pod" else render.node_commands
            report["explain"] = commands(report)
        print(json.dumps(report, indent=1))
    else:
        print((render.pod_text if args.command == "pod" else render.node_text)(report,
                                                                               args.explain))
    return EXIT_PROBLEMS if args.strict and report["problems"] else EXIT_OK
