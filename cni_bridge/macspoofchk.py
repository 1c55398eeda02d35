"""macspoofchk: frames from a pod's port must carry the pod's MAC, in nftables' bridge family.

The reference's layout (pkg/link/spoofcheck.go), so that either implementation's DEL removes
the other's chains; <ref> is "<container ID>-<ifname>", every rule is commented
"macspoofchk-<ref>":

    table bridge nat {
        chain PREROUTING {
            type filter hook prerouting priority dstnat; policy accept;
            iifname "<host veth>" jump cni-br-iface-<ref>
        }
        chain cni-br-iface-<ref> { jump cni-br-iface-<ref>-mac }
        chain cni-br-iface-<ref>-mac {
            ether saddr <pod MAC> return
            drop
        }
    }

The bridge family's prerouting hook sees every frame that enters the bridge from a port, so a
pod that changes its MAC (or forges another) no longer reaches the bridge, its gateway address
or the other pods. Only the Ethernet source is checked, as in the reference. Every change is
one nf_tables transaction (the reference needs two). Teardown finds everything by the
attachment's names, so it needs neither the pod's netns nor the veth's name.
"""
from __future__ import annotations

from . import nfnetlink as nf
from .masquerade import naming

_MAX_NAME = 255  # NFT_NAME_MAXLEN without the NUL


class MacSpoofCheckError(Exception):
    """macspoofchk could not be set up or torn down; str() is one line."""


def _chains(container_id: str, ifname: str) -> tuple[str, str]:
    chain = naming.macspoof_chain(container_id, ifname)
    return chain, chain + "-mac"


def name_problem(container_id: str, ifname: str) -> str | None:
    """Why the attachment's chain names cannot exist (too long for nftables), or None."""
    mac_chain = _chains(container_id, ifname)[1]
    if len(mac_chain.encode()) > _MAX_NAME:
        return (f"macspoofchk: chain {mac_chain[:40]}... would be {len(mac_chain.encode())} bytes; "
                f"nftables allows {_MAX_NAME} (CNI_CONTAINERID is too long for macspoofchk)")
    return None


def _prerouting_rules(nft: nf.NfTables, comment: bytes) -> list[nf.Rule]:
    """PREROUTING's rules with this comment (the others are not decoded)."""
    return [r for r in nft.list_rules(nf.BRIDGE, naming.MACSPOOF_TABLE,
                                      naming.MACSPOOF_BASE_CHAIN, comment + b"\0")
            if r.comment == comment]


def add(container_id: str, ifname: str, host_veth: str, mac: str) -> None:
    """`setup` on a socket of its own (ADD)."""
    _on_own_socket(setup, container_id, ifname, host_veth, mac)


def remove(container_id: str, ifname: str) -> None:
    """`teardown` on a socket of its own (DEL, and a failed ADD's undo)."""
    _on_own_socket(teardown, container_id, ifname)


def _on_own_socket(step, *args: str) -> None:
    try:
        with nf.NfTables() as nft:
            step(nft, *args)
    except OSError as e:
        raise MacSpoofCheckError(f"macspoofchk: {e}") from None


def setup(nft: nf.NfTables, container_id: str, ifname: str, host_veth: str, mac: str) -> None:
    """Table, base chain and the attachment's two chains (created if missing), and their rules
    (replacing any from an earlier ADD of the same attachment): one transaction."""
    problem = name_problem(container_id, ifname)
    if problem:
        raise MacSpoofCheckError(problem)
    chain, mac_chain = _chains(container_id, ifname)
    comment = naming.macspoof_comment(container_id, ifname)
    table = naming.MACSPOOF_TABLE

    def build() -> nf.Batch:
        # Only what is missing is declared (an update of an existing table or chain makes
        # closing the socket wait for an RCU grace period, see masquerade/nftables.py); an
        # earlier ADD's chains of this attachment are emptied, its jump replaced.
        batch = nf.Batch()
        exists = nft.has_table(nf.BRIDGE, table)
        if not exists:
            batch.add_table(nf.BRIDGE, table)
        if not exists or nft.get_chain(nf.BRIDGE, table, naming.MACSPOOF_BASE_CHAIN) is None:
            batch.add_chain(nf.BRIDGE, table, naming.MACSPOOF_BASE_CHAIN,
                            hook=nf.HOOK_PREROUTING, priority=naming.MACSPOOF_PRIORITY,
                            chain_type="filter")
        for name in (chain, mac_chain):
            if exists and nft.get_chain(nf.BRIDGE, table, name) is not None:
                batch.flush_chain(nf.BRIDGE, table, name)
            else:
                batch.add_chain(nf.BRIDGE, table, name)
        if exists:
            for stale in _prerouting_rules(nft, comment.encode()):
                batch.delete_rule(stale)
        batch.add_rule(nf.BRIDGE, table, naming.MACSPOOF_BASE_CHAIN,
                       nf.iifname(host_veth) + [nf.verdict(nf.VERDICT_JUMP, chain)], comment)
        batch.add_rule(nf.BRIDGE, table, chain, [nf.verdict(nf.VERDICT_JUMP, mac_chain)], comment)
        batch.add_rule(nf.BRIDGE, table, mac_chain,
                       nf.ether_saddr(bytes.fromhex(mac.replace(":", "")))
                       + [nf.verdict(nf.VERDICT_RETURN)], comment)
        batch.add_rule(nf.BRIDGE, table, mac_chain, [nf.verdict(nf.VERDICT_DROP)], comment)
        return batch

    _transact(nft, build, f"macspoofchk: set up {chain}")


def teardown(nft: nf.NfTables, container_id: str, ifname: str) -> None:
    """Remove the PREROUTING jump and both chains; the table and PREROUTING stay. One query
    when there is nothing: a jump cannot outlive the chain it names."""
    chain, mac_chain = _chains(container_id, ifname)
    if name_problem(container_id, ifname) or \
            nft.get_chain(nf.BRIDGE, naming.MACSPOOF_TABLE, chain) is None:
        return

    def build() -> nf.Batch:
        batch = nf.Batch()
        for rule in _prerouting_rules(nft, naming.macspoof_comment(container_id, ifname).encode()):
            batch.delete_rule(rule)
        _delete_chains(nft, batch, (chain, mac_chain))
        return batch

    _transact(nft, build, f"macspoofchk: tear down {chain}")


def missing(nft: nf.NfTables, container_id: str, ifname: str, host_veth: str,
            mac: str) -> list[str]:
    """What CHECK finds absent: the jump for the host veth, the MAC's return, the drop."""
    chain, mac_chain = _chains(container_id, ifname)
    table = naming.MACSPOOF_TABLE
    if not nft.has_table(nf.BRIDGE, table):
        return [f"table bridge {table}"]
    comment = naming.macspoof_comment(container_id, ifname).encode()
    gaps = []
    jumps = [r for r in _prerouting_rules(nft, comment) if r.jump_targets() == [chain]]
    if not any(_veth_of(r) == host_veth for r in jumps):
        gaps.append(f"{naming.MACSPOOF_BASE_CHAIN}: iifname {host_veth} jump {chain}")
    if not any(r.jump_targets() == [mac_chain] for r in nft.list_rules(nf.BRIDGE, table, chain)):
        gaps.append(f"{chain}: jump {mac_chain}")
    rules = nft.list_rules(nf.BRIDGE, table, mac_chain)
    packed = bytes.fromhex(mac.replace(":", ""))
    if not any(nf.verdict_of(r) == nf.VERDICT_RETURN and len(r.exprs) > 1
               and r.exprs[1].data_value(3) == packed for r in rules):
        gaps.append(f"{mac_chain}: ether saddr {mac} return")
    if not rules or nf.verdict_of(rules[-1]) != nf.VERDICT_DROP:
        gaps.append(f"{mac_chain}: drop")
    return gaps


def gc(nft: nf.NfTables, valid: set[tuple[str, str]], is_ours) -> None:
    """Remove the chains of attachments not in `valid`.

    The chain names do not say which network an attachment belongs to, so GC of one network
    removes an attachment's chains only where `is_ours(host veth name)` says so (the veth is
    gone, or is a port of this network's bridge): never another network's live pod's."""
    table = naming.MACSPOOF_TABLE
    if not nft.has_table(nf.BRIDGE, table):
        return
    keep = {naming.macspoof_comment(cid, ifname).encode() for cid, ifname in valid}

    def build() -> nf.Batch:
        stale: dict[bytes, list[nf.Rule]] = {}
        for rule in nft.list_rules(nf.BRIDGE, table, naming.MACSPOOF_BASE_CHAIN):
            comment = rule.comment
            if (comment is not None and comment.startswith(b"macspoofchk-")
                    and comment not in keep and len(rule.exprs) > 1 and is_ours(_veth_of(rule))):
                stale.setdefault(comment, []).append(rule)
        batch = nf.Batch()
        for rules in stale.values():
            for rule in rules:
                batch.delete_rule(rule)
            targets = rules[0].jump_targets()
            if targets:
                _delete_chains(nft, batch, (targets[0], targets[0] + "-mac"))
        return batch

    _transact(nft, build, "macspoofchk: collect the checks of stale attachments")


def _transact(nft: nf.NfTables, build, what: str) -> None:
    try:
        nft.transact(build, what)
    except OSError as e:  # the kernel's refusal, or the socket's (ENOBUFS, ...)
        raise MacSpoofCheckError(f"{what}: {e}" if what not in str(e) else str(e)) from None


def _delete_chains(nft: nf.NfTables, batch: nf.Batch, chains: tuple[str, ...]) -> None:
    """Empty, then delete, those of `chains` that exist (the first jumps to the second, so all
    are emptied before any is deleted)."""
    present = [c for c in chains
               if nft.get_chain(nf.BRIDGE, naming.MACSPOOF_TABLE, c) is not None]
    for chain in present:
        batch.flush_chain(nf.BRIDGE, naming.MACSPOOF_TABLE, chain)
    for chain in present:
        batch.delete_chain(nf.BRIDGE, naming.MACSPOOF_TABLE, chain)


def _veth_of(rule: nf.Rule) -> str:
    """The interface name a PREROUTING jump matches (`iifname "..."`)."""
    value = rule.exprs[1].data_value(3) or b""
    return value.split(b"\0", 1)[0].decode(errors="replace")
