"""ipMasq in the nf_tables-backed iptables tables, exactly as `iptables-nft` writes them.

On a host whose `iptables` is the nf_tables variant (Debian 10+, Ubuntu 20.10+, RHEL 8+, ...),
the reference plugin's `iptables -t nat` calls land in the nf_tables tables `ip nat` and
`ip6 nat`. We write the same rules through netlink (cni_bridge.nfnetlink), one transaction
per family, where the reference execs iptables 7 or 8 times:

    table ip nat, chain POSTROUTING (type nat hook postrouting priority 100, policy accept)
        -s 10.22.0.2/32 -m comment --comment "name: \\"net\\" id: \\"ctr\\"" -j CNI-<24 hex>
    chain CNI-<24 hex>
        -d 10.22.0.0/24 -m comment --comment "..." -j ACCEPT
        ! -d 224.0.0.0/4 -m comment --comment "..." -j MASQUERADE

Every expression is encoded as iptables-nft 1.8 encodes it (address matches as payload and
cmp, `-m comment` and `-j MASQUERADE` through the x_tables compat layer, a counter in every
rule), so `iptables-nft -S` shows our rules as its own and the Go plugin's `iptables -D` and
`-X` remove them; our DEL removes theirs.

No lock: iptables-nft takes none (1.8.9 never opens /run/xtables.lock; strace shows it), and
every change of ours is one nf_tables transaction that adds rules or deletes them by handle,
never a rewrite of the table, so concurrent ADDs cannot lose each other's rules.
"""
from __future__ import annotations

import sys

from .. import nfnetlink as nf
from . import naming
from .addresses import JumpOwner, PodAddress, prefix_network, stale_jump

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only; typing is never imported at run time
    from collections.abc import Callable

NAME = naming.IPTABLES_NFT
TABLE = "nat"
POSTROUTING = "POSTROUTING"
_FAMILY = {4: nf.IPV4, 6: nf.IPV6}
_BITS = {4: 32, 6: 128}
_XT_COMMENT_SIZE = 256  # struct xt_comment_info


class _Rule:
    """One rule of ours, decoded: what `iptables -S` would print of it."""

    __slots__ = ("rule", "src", "dst", "dst_negated", "comment", "target")

    def __init__(self, rule: nf.Rule, family: int) -> None:
        self.rule = rule
        self.src = self.dst = None
        self.dst_negated = False
        for offset, value, prefixlen, op in nf.addr_matches(rule):
            value = value.ljust(4 if family == 4 else 16, b"\0")
            if offset == nf.SADDR_OFFSET[family]:
                self.src = (value, prefixlen)
            elif offset == nf.DADDR_OFFSET[family]:
                self.dst, self.dst_negated = (value, prefixlen), op == nf.NFT_CMP_NEQ
        info = nf.xt_info(rule, "match", "comment")
        self.comment = info.split(b"\0", 1)[0] if info is not None else None
        code = nf.verdict_of(rule)
        targets = rule.jump_targets()
        if targets:
            self.target = targets[0]
        elif code == nf.VERDICT_ACCEPT:
            self.target = "ACCEPT"
        elif nf.xt_info(rule, "target", "MASQUERADE") is not None:
            self.target = "MASQUERADE"
        else:
            self.target = None


def _comment(text: str) -> bytes:
    """-m comment --comment TEXT; iptables keeps 255 bytes and a NUL."""
    return nf.xt_match("comment", text.encode()[:_XT_COMMENT_SIZE - 1].ljust(_XT_COMMENT_SIZE, b"\0"))


def _masquerade(family: int) -> bytes:
    """-j MASQUERADE, revision 0, no options: nf_nat_ipv4_multi_range_compat with one empty
    range (IPv4) or an empty nf_nat_range (IPv6), padded to 8 bytes, as iptables-nft sends it."""
    info = (1).to_bytes(4, sys.byteorder) + bytes(20) if family == 4 else bytes(40)
    return nf.xt_target("MASQUERADE", info)


def _exprs(family: int, comment: str, target: bytes, src: tuple[bytes, int] | None = None,
           dst: tuple[bytes, int] | None = None, negate_dst: bool = False) -> list[bytes]:
    exprs: list[bytes] = []
    if src is not None:
        exprs += nf.addr_match(nf.SADDR_OFFSET[family], *src)
    if dst is not None:
        exprs += nf.addr_match(nf.DADDR_OFFSET[family], *dst,
                               op=nf.NFT_CMP_NEQ if negate_dst else nf.NFT_CMP_EQ)
    return exprs + [_comment(comment), nf.counter(), target]


def _rules(nft: nf.NfTables, family: int, chain: str,
           containing: bytes | None = None) -> list[_Rule]:
    return [_Rule(r, family) for r in nft.list_rules(_FAMILY[family], TABLE, chain, containing)]


def _jumps(nft: nf.NfTables, family: int, chain: str) -> list[_Rule]:
    """The POSTROUTING rules that jump to `chain` (only those are decoded)."""
    return [r for r in _rules(nft, family, POSTROUTING, chain.encode() + b"\0")
            if r.target == chain]


def has_chain(nft: nf.NfTables, family: int, chain: str) -> bool:
    return nft.get_chain(_FAMILY[family], TABLE, chain) is not None


def setup(nft: nf.NfTables, family: int, network: str, container_id: str,
          addresses: list[PodAddress]) -> None:
    """The attachment's chain, its rules and the POSTROUTING jumps; what is there stays.

    One deliberate difference from the reference: with two subnets of one family the second
    `-d <subnet> -j ACCEPT` goes before MASQUERADE (the reference appends it after, so that
    subnet is masqueraded anyway). With one address per family the chains are identical.
    """
    fam = _FAMILY[family]
    chain = naming.iptables_chain(network, container_id)
    comment = naming.iptables_comment(network, container_id)

    def build() -> nf.Batch:
        batch = nf.Batch()
        if nft.get_chain(fam, TABLE, POSTROUTING) is None:
            batch.add_table(fam, TABLE)
            batch.add_chain(fam, TABLE, POSTROUTING, hook=nf.HOOK_POSTROUTING, priority=100,
                            chain_type="nat")
        existing = _rules(nft, family, chain) if has_chain(nft, family, chain) else None
        if existing is None:
            batch.add_chain(fam, TABLE, chain)
            existing = []
        masq = next((r for r in existing if r.target == "MASQUERADE"), None)
        accepted = {r.dst for r in existing if r.target == "ACCEPT" and not r.dst_negated}
        for subnet in dict.fromkeys(prefix_network(a) for a in addresses):
            if subnet not in accepted:
                batch.add_rule(fam, TABLE, chain,
                               _exprs(family, comment, nf.verdict(nf.VERDICT_ACCEPT), dst=subnet),
                               before=masq.rule.handle if masq else None)
        if masq is None:
            multicast = prefix_network(PodAddress(naming.MULTICAST[family]))
            batch.add_rule(fam, TABLE, chain, _exprs(family, comment, _masquerade(family),
                                                     dst=multicast, negate_dst=True))
        sources = {r.src for r in _jumps(nft, family, chain)}
        for address in addresses:
            host = (address.packed, address.bits)
            if host not in sources:
                batch.add_rule(fam, TABLE, POSTROUTING, _exprs(
                    family, comment, nf.verdict(nf.VERDICT_JUMP, chain), src=host))
        return batch

    nft.transact(build, f"set up {chain}")


def teardown(nft: nf.NfTables, family: int, network: str, container_id: str,
             owner_of: Callable[[], JumpOwner]) -> None:
    """Remove the attachment's POSTROUTING jumps (`owner_of()` says which: it is asked only
    when the chain exists), and the chain once no jump uses it."""
    fam = _FAMILY[family]
    chain = naming.iptables_chain(network, container_id)

    def build() -> nf.Batch:
        batch = nf.Batch()
        if not has_chain(nft, family, chain):
            return batch
        owner = owner_of()
        jumps = _jumps(nft, family, chain)
        mine = [r for r in jumps if owner.owns(r.src)]
        for r in mine:
            batch.delete_rule(r.rule)
        if len(mine) == len(jumps):
            batch.flush_chain(fam, TABLE, chain)
            batch.delete_chain(fam, TABLE, chain)
        return batch

    nft.transact(build, f"tear down {chain}")


def missing(nft: nf.NfTables, family: int, network: str, container_id: str,
            addresses: list[PodAddress]) -> list[str]:
    """What CHECK finds absent of the attachment's rules (empty: all there)."""
    chain = naming.iptables_chain(network, container_id)
    if not has_chain(nft, family, chain):
        return [f"chain {chain} in {NAME} {_table_name(family)}"]
    rules = _rules(nft, family, chain)
    gaps = [f"{chain}: -d {a.network_text} -j ACCEPT" for a in addresses
            if not any(r.target == "ACCEPT" and r.dst == prefix_network(a) for r in rules)]
    if not any(r.target == "MASQUERADE" for r in rules):
        gaps.append(f"{chain}: -j MASQUERADE")
    sources = {r.src for r in _jumps(nft, family, chain)}
    gaps += [f"POSTROUTING: -s {a.text} -j {chain}" for a in addresses
             if (a.packed, a.bits) not in sources]
    return gaps


def gc(nft: nf.NfTables, family: int, network: str,
       keep: dict[str, set[bytes] | None]) -> None:
    """Remove the network's chains whose name is not in `keep`, and of the others the jumps
    whose source is not in their set of kept addresses (None: keep every jump).

    A chain is the network's when it has our shape and its first rule's comment starts with
    `name: "<network>" id: "`: no need to read the ID back, which iptables may have cut."""
    fam = _FAMILY[family]
    prefix = naming.iptables_comment(network, "")[:-1].encode()
    victims: list[str] = []

    def build() -> nf.Batch:
        victims.clear()
        for c in nft.list_chains(fam, TABLE):
            if naming.is_iptables_chain_name(c.name) and c.name not in keep:
                rules = _rules(nft, family, c.name)
                if rules and rules[0].comment is not None and rules[0].comment.startswith(prefix):
                    victims.append(c.name)
        batch = nf.Batch()
        for r in _rules(nft, family, POSTROUTING) if victims or any(keep.values()) else []:
            if r.target in victims or stale_jump(r.target, r.src, _BITS[family], keep):
                batch.delete_rule(r.rule)
        for chain in victims:
            batch.flush_chain(fam, TABLE, chain)
            batch.delete_chain(fam, TABLE, chain)
        return batch

    nft.transact(build, f"collect the stale chains of {network}")


def _table_name(family: int) -> str:
    return "ip nat" if family == 4 else "ip6 nat"
