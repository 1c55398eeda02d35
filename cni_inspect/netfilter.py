"""The masquerade rules and macspoofchk chains of the bridge plugin, in every backend, read with
the backends' standard tools (which is also what --explain tells a person to run):

- legacy: `iptables-legacy-save -c` (`ip6tables-...`), the tables python-iptables writes;
- iptables-nft: `iptables-nft-save -c`, where the Go plugin's `iptables` backend lands on
  Debian 12 and other hosts whose `iptables` is the nf_tables variant;
- nftables: `nft -j list table inet cni_plugins_masquerade` (`ipMasqBackend: "nftables"`);
- macspoofchk: `nft -j list table bridge nat`.

The save tools run without `-t nat`: naming a table that does not exist makes the kernel load
its module, and cni-inspect changes nothing. The names and comments of every object are the
plugins' own (cni_bridge.masquerade.naming).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from cni_bridge.masquerade import naming

IPTABLES_BACKENDS = ("legacy", "iptables-nft")
SAVE_TOOLS = {("legacy", 4): "iptables-legacy-save", ("legacy", 6): "ip6tables-legacy-save",
              ("iptables-nft", 4): "iptables-nft-save", ("iptables-nft", 6): "ip6tables-nft-save"}
LIST_TOOLS = {("legacy", 4): "iptables-legacy", ("legacy", 6): "ip6tables-legacy",
              ("iptables-nft", 4): "iptables-nft", ("iptables-nft", 6): "ip6tables-nft"}
NFT_MASQ_TABLE = f"inet {naming.NFT_TABLE}"
MACSPOOF_TABLE = f"bridge {naming.MACSPOOF_TABLE}"
TOOL_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"  # after PATH: run with `env -i` or from cron
_COMMENT = re.compile(r'--comment "((?:\\.|[^"\\])*)"')
_IPTABLES_COMMENT = re.compile(r'^name: "(.*)" id: "(.*)"$')
_NFT_COMMENT = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{16}, net: (.*), if: (.*), id: (.*)$")


def tool(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{TOOL_PATH}")


def _run(argv: list[str]) -> str | None:
    """stdout of a successful run, None when the tool is missing or fails."""
    path = tool(argv[0])
    if path is None:
        return None
    try:
        proc = subprocess.run([path, *argv[1:]], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


@dataclass
class Rule:
    chain: str
    text: str  # as the standard tool prints it, without counters
    packets: int | None = None
    bytes: int | None = None
    comment: str | None = None
    target: str | None = None  # iptables -j, nftables jump/goto

    def summary(self) -> dict:
        return {"rule": self.text, "packets": self.packets, "bytes": self.bytes}


@dataclass
class Table:
    """One table as its tool lists it: an iptables nat table of a backend and family, or an
    nftables table of a family ("inet", "bridge")."""
    backend: str  # legacy, iptables-nft, nftables
    family: int | str  # 4 or 6 for iptables, the nftables family
    name: str
    chains: set[str] = field(default_factory=set)
    rules: list[Rule] = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"{self.family} {self.name}"

    def chain(self, chain: str) -> list[Rule]:
        return [r for r in self.rules if r.chain == chain]

    def jumps_to(self, chain: str) -> list[Rule]:
        return [r for r in self.chain("POSTROUTING") if r.target == chain]

    def cni_chains(self) -> dict[str, tuple[str, str] | None]:
        """Chains of the bridge plugin's shape -> (network, container ID) from their comment."""
        found = {}
        for chain in sorted(self.chains):
            if naming.is_iptables_chain_name(chain):
                owner = None
                for rule in self.chain(chain):
                    match = _IPTABLES_COMMENT.match(rule.comment or "")
                    if match and naming.iptables_chain(*match.groups()) == chain:
                        owner = match.groups()
                        break
                found[chain] = owner
        return found


# iptables (legacy and nf_tables-backed) ---------------------------------------------------------


def parse_save(backend: str, family: int, text: str) -> Table:
    """The *nat section of `iptables-save -c` output."""
    table = Table(backend, family, "nat")
    in_nat = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif not in_nat:
            continue
        elif line.startswith(":"):
            table.chains.add(line[1:].split(" ", 1)[0])
        else:
            match = re.match(r"^\[(\d+):(\d+)\] (-A (\S+) .*)$", line)
            if not match:
                continue
            rule_text = match.group(3)
            comment = _COMMENT.search(rule_text)
            target = rule_text.rsplit(" -j ", 1)[1].split(" ", 1)[0] \
                if " -j " in rule_text else None
            table.rules.append(Rule(match.group(4), rule_text, int(match.group(1)),
                                    int(match.group(2)),
                                    comment.group(1).replace('\\"', '"') if comment else None,
                                    target))
    return table


def nat_table(backend: str, family: int) -> Table | None:
    """The backend's nat table, None when its tool is missing or the table does not exist."""
    out = _run([SAVE_TOOLS[backend, family], "-c"])
    if out is None or "*nat" not in out.splitlines():
        return None
    return parse_save(backend, family, out)


# nftables --------------------------------------------------------------------------------------


def _value(value: object, quote: bool = False) -> str:
    if isinstance(value, dict):
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "payload" in value:
            return f"{value['payload'].get('protocol', '')} {value['payload']['field']}".strip()
        if "meta" in value:
            return value["meta"]["key"]
        if "set" in value:
            return "{ " + ", ".join(_value(v, quote) for v in value["set"]) + " }"
        if "range" in value:
            return "-".join(_value(v, quote) for v in value["range"])
        return json.dumps(value)
    if isinstance(value, list):
        return "{ " + ", ".join(_value(v, quote) for v in value) + " }"
    return f'"{value}"' if quote else str(value)


def _statement(stmt: dict) -> str:
    (key, arg), = stmt.items()
    if key == "match":
        left = _value(arg["left"])
        op = "" if arg["op"] in ("==", "in") else f" {arg['op']}"
        return f"{left}{op} {_value(arg['right'], quote=left.endswith('name'))}"
    if key == "counter":
        return f"counter packets {arg['packets']} bytes {arg['bytes']}"
    if key in ("jump", "goto"):
        return f"{key} {arg['target']}"
    if arg is None:
        return key  # masquerade, return, drop, accept
    return f"{key} {json.dumps(arg)}"


def parse_nft(family: str, name: str, doc: dict) -> Table:
    """`nft -j list table` output: rules rendered as `nft list` prints them (without handles)."""
    table = Table("nftables", family, name)
    for item in doc.get("nftables", ()):
        if "chain" in item:
            table.chains.add(item["chain"]["name"])
        elif "rule" in item:
            rule = item["rule"]
            statements = rule.get("expr", ())
            text = " ".join(_statement(s) for s in statements)
            if rule.get("comment") is not None:
                text += f' comment "{rule["comment"]}"'
            counters = [s["counter"] for s in statements if "counter" in s]
            target = next((s[k]["target"] for s in statements for k in ("jump", "goto")
                           if k in s), None)
            table.rules.append(Rule(rule["chain"], text,
                                    counters[0]["packets"] if counters else None,
                                    counters[0]["bytes"] if counters else None,
                                    rule.get("comment"), target))
    return table


def nft_table(spec: str) -> Table | None:
    """An nftables table ("inet cni_plugins_masquerade"), None when it or `nft` is missing."""
    out = _run(["nft", "-j", "list", "table", *spec.split()])
    if out is None:
        return None
    try:
        return parse_nft(*spec.split(), json.loads(out))
    except (ValueError, KeyError, TypeError):
        return None


def nft_owner(comment: str | None) -> tuple[str, str, str] | None:
    """(network, ifname, container ID) of a masq_checks rule, checked against its hash prefix.

    The reference removes `"` from the names and cuts the comment at 128 bytes: a cut comment
    gives no owner."""
    match = _NFT_COMMENT.match(comment or "")
    if not match:
        return None
    network, ifname, container_id = match.groups()
    if not comment.startswith(naming.nft_instance_prefix(network, ifname, container_id)):
        return None
    return network, ifname, container_id


def source_of(rule: Rule) -> str | None:
    """The pod address a rule matches: iptables `-s IP/32`, nftables `ip saddr IP`."""
    match = re.search(r"(?:^| )-s (\S+?)(?:/(?:32|128))? ", rule.text) or \
        re.search(r"\bip6? saddr (\S+)", rule.text)
    return match.group(1) if match else None


# the backends' state for one node ---------------------------------------------------------------


class Netfilter:
    """Every table cni-inspect reads, each read once (a node report asks many questions)."""

    def __init__(self, families: tuple[int, ...] = (4, 6)):
        self.families = families
        self._nat: dict[tuple[str, int], Table | None] = {}
        self._nft: dict[str, Table | None] = {}

    def nat(self, backend: str, family: int) -> Table | None:
        if (backend, family) not in self._nat:
            self._nat[backend, family] = nat_table(backend, family)
        return self._nat[backend, family]

    def nft(self, spec: str) -> Table | None:
        if spec not in self._nft:
            self._nft[spec] = nft_table(spec)
        return self._nft[spec]

    def masquerade(self, network: str, container_id: str | None, ifname: str,
                   addresses: list[str]) -> list[dict]:
        """The attachment's rules, per backend and family. By their names and comments; by the
        pod's source address when the container ID is not known."""
        found = []
        for backend in IPTABLES_BACKENDS:
            for family in self.families:
                table = self.nat(backend, family)
                if table is None:
                    continue
                if container_id is not None:
                    chains = {naming.iptables_chain(network, container_id)} & table.chains
                else:
                    chains = {r.target for r in table.chain("POSTROUTING")
                              if source_of(r) in addresses and r.target in table.chains}
                for chain in sorted(chains):
                    found.append(self._iptables_entry(table, chain))
        table = self.nft(NFT_MASQ_TABLE)
        if table is not None:
            if container_id is not None:
                prefix = naming.nft_instance_prefix(network, ifname, container_id)
                rules = [r for r in table.chain(naming.NFT_MASQ_CHAIN)
                         if (r.comment or "").startswith(prefix)]
            else:
                rules = [r for r in table.chain(naming.NFT_MASQ_CHAIN)
                         if source_of(r) in addresses]
            if rules:
                found.append(self._nft_entry(table, rules))
        return found

    @staticmethod
    def _iptables_entry(table: Table, chain: str) -> dict:
        rules = table.chain(chain)
        masq = [r for r in rules if r.target == "MASQUERADE"]
        jumps = table.jumps_to(chain)
        return {"backend": table.backend, "family": table.family, "chain_or_table": chain,
                "rules": [r.summary() for r in jumps + rules],
                "packets": sum(r.packets for r in masq) if masq else None,
                "jumped_to": bool(jumps), "masquerades": bool(masq),
                "sources": sorted({s for s in map(source_of, jumps) if s})}

    @staticmethod
    def _nft_entry(table: Table, rules: list[Rule]) -> dict:
        counted = [r.packets for r in rules if r.packets is not None]
        hooked = any(r.target == naming.NFT_MASQ_CHAIN
                     for r in table.chain(naming.NFT_POSTROUTING_CHAIN))
        return {"backend": "nftables", "family": None, "chain_or_table": table.spec,
                "rules": [r.summary() for r in rules],
                "packets": sum(counted) if counted else None,  # the reference adds no counter
                "jumped_to": hooked, "masquerades": any(" masquerade" in f" {r.text}"
                                                        for r in rules),
                "sources": sorted({s for s in map(source_of, rules) if s})}

    def iptables_chains(self) -> list[dict]:
        """Every bridge-plugin chain of every iptables backend, with its owner if its comment
        names one: for the node report."""
        found = []
        for backend in IPTABLES_BACKENDS:
            for family in self.families:
                table = self.nat(backend, family)
                for chain, owner in (table.cni_chains() if table else {}).items():
                    entry = self._iptables_entry(table, chain)
                    entry["network"], entry["container_id"] = owner or (None, None)
                    entry["ifname"] = None
                    found.append(entry)
        return found

    def nft_rules(self) -> list[dict]:
        """Every masq_checks rule, one entry per attachment, for the node report."""
        table = self.nft(NFT_MASQ_TABLE)
        if table is None:
            return []
        by_owner: dict[tuple, list[Rule]] = {}
        for rule in table.chain(naming.NFT_MASQ_CHAIN):
            by_owner.setdefault(nft_owner(rule.comment) or (None, None, rule.text), []).append(rule)
        found = []
        for (network, ifname, container_id), rules in by_owner.items():
            entry = self._nft_entry(table, rules)
            entry.update(network=network, container_id=container_id,
                         ifname=ifname if network else None)
            found.append(entry)
        return found

    def macspoofchk(self, container_id: str, ifname: str) -> dict | None:
        """The attachment's chains in `bridge nat`: {chains, rules, mac, iifname}."""
        table = self.nft(MACSPOOF_TABLE)
        if table is None:
            return None
        chain = naming.macspoof_chain(container_id, ifname)
        comment = naming.macspoof_comment(container_id, ifname)
        chains = sorted({chain, f"{chain}-mac"} & table.chains)
        jumps = [r for r in table.chain(naming.MACSPOOF_BASE_CHAIN) if r.comment == comment]
        if not chains and not jumps:
            return None
        rules = jumps + table.chain(chain) + table.chain(f"{chain}-mac")
        mac = next((m.group(1) for r in table.chain(f"{chain}-mac")
                    for m in [re.search(r"ether saddr (\S+) return", r.text)] if m), None)
        iifname = next((m.group(1) for r in jumps
                        for m in [re.search(r'iifname "([^"]+)"', r.text)] if m), None)
        return {"table": table.spec, "chains": chains, "rules": [r.summary() for r in rules],
                "jumped_to": bool(jumps), "mac": mac, "iifname": iifname}

    def macspoof_chains(self) -> list[str]:
        """Every attachment's own macspoofchk chain (not its `-mac` one), for the node report."""
        table = self.nft(MACSPOOF_TABLE)
        prefix = naming.MACSPOOF_CHAIN_PREFIX
        return sorted(c for c in (table.chains if table else ())
                      if c.startswith(prefix) and not c.endswith("-mac"))

    def backends_in_use(self) -> list[str]:
        """Backends that hold rules of the bridge plugin (node report)."""
        used = [b for b in IPTABLES_BACKENDS
                if any((t := self.nat(b, f)) and t.cni_chains() for f in self.families)]
        table = self.nft(NFT_MASQ_TABLE)
        if table is not None and table.chain(naming.NFT_MASQ_CHAIN):
            used.append("nftables")
        return used
