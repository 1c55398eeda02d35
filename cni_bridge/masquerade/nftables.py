"""ipMasq in nftables proper (`ipMasqBackend: "nftables"`), as the reference's v1.6+ writes it.

    table inet cni_plugins_masquerade {
        comment "Masquerading for plugins from github.com/containernetworking/plugins"
        chain masq_checks {
            comment "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet"
            ip saddr 10.22.0.2 ip daddr != 10.22.0.0/24 masquerade comment "<c>"
        }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip daddr 224.0.0.0/4 return
            ip6 daddr ff00::/8 return
            goto masq_checks
        }
    }

One rule per pod address, commented `<hash(net)>-<hash(ifname:ID)>, net: .., if: .., id: ..`
(naming.nft_comment), so that an attachment is found by the first 33 characters of the comment
and a network by the first 16: the reference's DEL and GC find our rules, ours find theirs.
Each ADD, DEL and GC is one transaction. The table and its chains stay, as in the reference.
"""
from __future__ import annotations

from .. import nfnetlink as nf
from . import naming
from .addresses import PodAddress, prefix_network

NAME = naming.NFTABLES


def _postrouting_rules() -> list[list[bytes]]:
    """`ip daddr 224.0.0.0/4 return`, `ip6 daddr ff00::/8 return`, `goto masq_checks`."""
    rules = []
    for family in (4, 6):
        multicast = PodAddress(naming.MULTICAST[family])
        rules.append(nf.nfproto(family)
                     + nf.addr_match(nf.DADDR_OFFSET[family], *prefix_network(multicast))
                     + [nf.verdict(nf.VERDICT_RETURN)])
    rules.append([nf.verdict(nf.VERDICT_GOTO, naming.NFT_MASQ_CHAIN)])
    return rules


def _masq_rule(address: PodAddress) -> list[bytes]:
    """`ip saddr <ip> ip daddr != <subnet> masquerade` (ip6 for IPv6)."""
    family = address.family
    return (nf.nfproto(family) + nf.addr_match(nf.SADDR_OFFSET[family], address.packed, address.bits)
            + nf.addr_match(nf.DADDR_OFFSET[family], *prefix_network(address), op=nf.NFT_CMP_NEQ)
            + [nf.masquerade()])


def _masq_rules(nft: nf.NfTables, prefix: str | None = None) -> list[nf.Rule]:
    """masq_checks' rules, only those whose message holds `prefix` (a comment's) if given."""
    return nft.list_rules(nf.INET, naming.NFT_TABLE, naming.NFT_MASQ_CHAIN,
                          prefix.encode() if prefix else None)


def _postrouting_is_ours(rules: list[nf.Rule]) -> bool:
    """Whether postrouting holds exactly its three rules (return, return, goto)."""
    if len(rules) != 3 or rules[2].jump_targets() != [naming.NFT_MASQ_CHAIN]:
        return False
    for rule, family in zip(rules, (4, 6)):
        multicast = PodAddress(naming.MULTICAST[family])
        matches = [(offset, value.ljust(len(multicast.packed), b"\0"), prefixlen, op)
                   for offset, value, prefixlen, op in nf.addr_matches(rule)]
        if (nf.verdict_of(rule) != nf.VERDICT_RETURN or matches != [
                (nf.DADDR_OFFSET[family], multicast.network_packed, multicast.prefixlen,
                 nf.NFT_CMP_EQ)]):
            return False
    return True


def _matching(rules: list[nf.Rule], prefix: str) -> list[nf.Rule]:
    marker = prefix.encode()
    return [r for r in rules if r.comment is not None and r.comment.startswith(marker)]


def table_exists(nft: nf.NfTables) -> bool:
    return nft.has_table(nf.INET, naming.NFT_TABLE)


def setup(nft: nf.NfTables, network: str, container_id: str, ifname: str,
          addresses: list[PodAddress]) -> None:
    """Table and chains if missing, postrouting's three rules if not already there, the
    attachment's old rules replaced by one per address: one transaction, as the reference's
    (which declares the table and chains every time; the result is the same)."""
    table = naming.NFT_TABLE
    prefix = naming.nft_instance_prefix(network, ifname, container_id)
    comment = naming.nft_comment(network, ifname, container_id)

    def build() -> nf.Batch:
        # Only what is missing is declared: re-declaring an existing table or chain is an
        # update, which makes the kernel free the transaction after an RCU grace period and
        # makes closing our socket wait for it (~10 ms a call, measured).
        exists = table_exists(nft)
        batch = nf.Batch()
        if not exists:
            batch.add_table(nf.INET, table, comment=naming.NFT_TABLE_COMMENT)
        if not exists or nft.get_chain(nf.INET, table, naming.NFT_MASQ_CHAIN) is None:
            batch.add_chain(nf.INET, table, naming.NFT_MASQ_CHAIN,
                            comment=naming.NFT_MASQ_CHAIN_COMMENT)
        has_postrouting = exists and nft.get_chain(nf.INET, table,
                                                   naming.NFT_POSTROUTING_CHAIN) is not None
        if not has_postrouting:
            batch.add_chain(nf.INET, table, naming.NFT_POSTROUTING_CHAIN,
                            hook=nf.HOOK_POSTROUTING, priority=100, chain_type="nat")
        postrouting = (nft.list_rules(nf.INET, table, naming.NFT_POSTROUTING_CHAIN)
                       if has_postrouting else [])
        if not _postrouting_is_ours(postrouting):
            # Flushed also when it looked empty: two first ADDs at once both write the three
            # rules, and the one committed last must replace, not add to, the other's.
            batch.flush_chain(nf.INET, table, naming.NFT_POSTROUTING_CHAIN)
            for exprs in _postrouting_rules():
                batch.add_rule(nf.INET, table, naming.NFT_POSTROUTING_CHAIN, exprs)
        for stale in _matching(_masq_rules(nft, prefix) if exists else [], prefix):
            batch.delete_rule(stale)
        for address in addresses:
            batch.add_rule(nf.INET, table, naming.NFT_MASQ_CHAIN, _masq_rule(address), comment)
        return batch

    nft.transact(build, f"set up rules of {container_id}/{ifname}")


def teardown(nft: nf.NfTables, network: str, container_id: str, ifname: str) -> None:
    """Delete the attachment's rules, found by their comment: no addresses needed."""
    prefix = naming.nft_instance_prefix(network, ifname, container_id)

    def build() -> nf.Batch:
        batch = nf.Batch()
        for rule in _matching(_masq_rules(nft, prefix), prefix):
            batch.delete_rule(rule)
        return batch

    nft.transact(build, f"tear down rules of {container_id}/{ifname}")


def missing(nft: nf.NfTables, network: str, container_id: str, ifname: str,
            addresses: list[PodAddress]) -> list[str]:
    """What CHECK finds absent: a rule per address with the attachment's comment."""
    where = f"{NAME} inet {naming.NFT_TABLE} {naming.NFT_MASQ_CHAIN}"
    if not table_exists(nft):
        return [f"table inet {naming.NFT_TABLE}"]
    comment = naming.nft_comment(network, ifname, container_id)
    mine = [r for r in _masq_rules(nft, naming.nft_instance_prefix(network, ifname, container_id))
            if r.comment == comment]
    gaps = []
    for address in addresses:
        sources = {(bytes(v.ljust(len(address.packed), b"\0")), p)
                   for r in mine for off, v, p, _ in nf.addr_matches(r)
                   if off == nf.SADDR_OFFSET[address.family]}
        if (address.packed, address.bits) not in sources:
            gaps.append(f"{where}: ip saddr {address.text} masquerade")
    return gaps


def gc(nft: nf.NfTables, network: str, valid: set[tuple[str, str]]) -> None:
    """Delete the network's rules whose comment is not that of a valid attachment."""
    keep = {naming.nft_comment(network, ifname, container_id) for container_id, ifname in valid}
    network_prefix = naming.nft_network_prefix(network)

    def build() -> nf.Batch:
        batch = nf.Batch()
        for rule in _matching(_masq_rules(nft, network_prefix), network_prefix):
            if rule.comment not in keep:
                batch.delete_rule(rule)
        return batch

    nft.transact(build, f"collect the stale rules of {network}")
