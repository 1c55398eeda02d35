"""ipMasq in the legacy iptables tables (x_tables), through python-iptables (libiptc).

The backend of hosts whose `iptables` is iptables-legacy. The rules are the reference's (see
iptables_nft for them); libiptc reads a whole table, edits it in memory and writes it back, so
every read-modify-commit runs under the xtables lock that `iptables --wait` takes
(xtables_lock), and a commit that races a writer which takes no lock is redone.

Whether there is anything of ours at all is read straight from the kernel (`user_chains`:
getsockopt IPT_SO_GET_ENTRIES), so that a DEL on a host with no such chain neither loads
python-iptables (~20 ms) nor touches a table.

All failures raise MasqueradeError with a one-line message.
"""
from __future__ import annotations

import posix  # not os (~2 ms to import): cni_protocol/skel.py
import sys

from . import error, legacy_nat_table_exists as _nat_table_exists, naming
from .addresses import JumpOwner, PodAddress, stale_jump

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only; typing is never imported at run time
    from collections.abc import Callable

NAME = naming.LEGACY
_TOOL = {4: "iptables-legacy", 6: "ip6tables-legacy"}
_COMMIT_ATTEMPTS = 3  # kernel says EAGAIN if a non-locking writer changed the table under us
_READ_ATTEMPTS = 10  # ... and on a read that a writer raced (we read without the lock)
# getsockopt(2) interface of x_tables (linux/netfilter_ipv4/ip_tables.h, ..._ipv6/ip6_tables.h)
_SO_GET_INFO, _SO_GET_ENTRIES = 64, 65
_LEVEL = {4: 0, 6: 41}  # SOL_IP, SOL_IPV6
_GETINFO_SIZE = 84  # name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size
_GET_ENTRIES_HEADER = 40  # name[32], size, then the entries, 8-byte aligned
_TARGET_OFFSET = {4: 88, 6: 140}  # of ipt_entry.target_offset / ip6t_entry.target_offset


_VERDICTS = ("", "ACCEPT", "DROP", "RETURN", "QUEUE")


def _masquerade_target(family: int) -> bytes:
    """The ``-j MASQUERADE`` target (revision 0, no options) as the kernel wants it.

    Built here rather than through libxtables: libxtables registers an
    extension only for the IP family that is current when its .so is first
    loaded, so python-iptables cannot use MASQUERADE for IPv4 and IPv6 in one
    process (ldx/python-iptables #316, #325). The layout is kernel ABI:
    ``struct xt_entry_target`` (u16 size, char name[29], u8 revision) followed
    by ``nf_nat_ipv4_multi_range_compat`` (rangesize = 1, one zeroed range) for
    IPv4 or a zeroed ``nf_nat_range`` for IPv6, padded to 8 bytes. It is what
    ``iptables -j MASQUERADE`` sends.
    """
    payload = (1).to_bytes(4, sys.byteorder) + bytes(16) if family == 4 else bytes(40)
    size = (32 + len(payload) + 7) & ~7
    header = size.to_bytes(2, sys.byteorder) + b"MASQUERADE".ljust(29, b"\0") + b"\0"
    return (header + payload).ljust(size, b"\0")


class _Nat:
    """One locked snapshot of the nat table of one family, with one-line errors.

    Methods map to libiptc calls on the snapshot; nothing reaches the kernel
    until the caller commits. Rules are handled as raw entries (bytes as the
    kernel stores them), which is also how they are compared.
    """

    def __init__(self, family: int, iptc_mod: object, table: object) -> None:
        import ctypes

        self.family = family
        self.tool = _TOOL[family]
        self.table = table
        if family == 6:
            self.rule_cls, self.entry_type = iptc_mod.Rule6, iptc_mod.ip6t_entry
        else:
            self.rule_cls, self.entry_type = iptc_mod.Rule, iptc_mod.ipt_entry
        self.chain_cls = sys.modules["iptc.ip4tc"].Chain  # one Chain class serves both families
        self.entry_size = (ctypes.sizeof(self.entry_type) + 7) & ~7
        self.ip_size = self.entry_type.nfcache.offset  # the ipt_ip / ip6t_ip6 header in front

    # reading ------------------------------------------------------------

    def has_chain(self, chain: str) -> bool:
        return bool(self.table.is_chain(chain))

    def user_chains(self) -> list[str]:
        return [c.name for c in self.table.chains if not self.table.builtin_chain(c.name)]

    def entries(self, chain: str) -> list[object]:
        """Raw libiptc entries of a chain (no decoding)."""
        out = []
        entry = self.table.first_rule(chain)
        while entry:
            out.append(entry)
            entry = self.table.next_rule(entry)
        return out

    def target_of(self, entry: object) -> str:
        """Target of an entry in the snapshot: a chain name, ACCEPT, MASQUERADE, ..."""
        name = self.table.get_target(entry)
        return name.decode() if name else ""

    def parts(self, entry: object) -> tuple[bytes, list[tuple[str, bytes]], str, bytes]:
        """Split an entry into (ip header, [(match name+revision, data)], target name, target data)."""
        import ctypes

        blob = ctypes.string_at(ctypes.addressof(entry), entry.next_offset)
        matches = []
        offset = self.entry_size
        while offset + 32 <= entry.target_offset:  # struct xt_entry_match: u16 size, name[29], u8 rev
            size = int.from_bytes(blob[offset : offset + 2], sys.byteorder)
            name = blob[offset + 2 : offset + 31].split(b"\0", 1)[0].decode()
            matches.append((f"{name}/{blob[offset + 31]}", blob[offset + 32 : offset + size]))
            offset += max(size, 32)
        t = entry.target_offset
        target = blob[t + 2 : t + 31].split(b"\0", 1)[0].decode()
        return blob[: self.ip_size], matches, target, blob[t + 32 :]

    def key(self, entry: object, in_snapshot: bool = True) -> tuple[object, ...]:
        """What makes two rules the same (cf. ``iptables -C``): header, matches, target.

        In the snapshot libiptc stores ACCEPT and jumps as verdicts, so the
        target is compared by the name it resolves to; an extension target's
        data (MASQUERADE) is compared too.
        """
        ip, matches, target, data = self.parts(entry)
        if in_snapshot:
            target = self.target_of(entry)
        if target in _VERDICTS or self.has_chain(target):
            data = b""
        return ip, tuple(matches), target, data

    def comment(self, entry: object) -> str | None:
        for name, data in self.parts(entry)[1]:
            if name.startswith("comment/"):
                return data.split(b"\0", 1)[0].decode("utf-8", "replace")
        return None

    def source(self, entry: object) -> tuple[bytes, int]:
        """The rule's `-s` as (packed address, prefix length); /0 when it has none."""
        ip = self.parts(entry)[0]
        size = 4 if self.family == 4 else 16
        mask = ip[2 * size:3 * size]
        return ip[:size], sum(bin(b).count("1") for b in mask)

    # building -----------------------------------------------------------

    def build(self, target: str, comment: str, src: str | None = None, dst: str | None = None) -> object:
        """A raw entry ``[-s SRC] [-d [!]DST] -m comment --comment C -j TARGET``."""
        import ctypes

        try:
            rule = self.rule_cls()
            if src:
                rule.src = src
            if dst:
                rule.dst = dst
            match = rule.create_match("comment")
            match.set_parameter("comment", comment)
            if target in ("ACCEPT", "MASQUERADE"):
                rule.create_target("ACCEPT")  # MASQUERADE: placeholder, replaced below
            else:
                # A jump to a user chain. Created as the standard target and
                # then pointed at the chain, because create_target(chain) makes
                # python-iptables open every table (filter, mangle, raw,
                # security) to find out whether the name is a chain.
                rule.create_target("").standard_target = target
            # Only the extension's own final check (it enforces --comment).
            # Rule.final_check() would also re-parse every option through the
            # extension's save(), with fd 1 -- our CNI result channel --
            # redirected to a pipe meanwhile.
            match._final_check()
            buf = rule.rule
        except Exception as exc:
            raise error(f"could not build the {target} rule ({self.tool})", exc) from exc
        if target == "MASQUERADE":  # swap the placeholder for the real target
            head = bytes(buf)[: self.entry_type.from_buffer(buf).target_offset]
            full = head + _masquerade_target(self.family)
            buf = (ctypes.c_ubyte * len(full)).from_buffer_copy(full)
            self.entry_type.from_buffer(buf).next_offset = len(full)
        return buf

    def built_key(self, buf: object) -> tuple[object, ...]:
        return self.key(self.entry_type.from_buffer(buf), in_snapshot=False)

    # writing (snapshot only) --------------------------------------------

    def create_chain(self, chain: str) -> None:
        try:
            self.table.create_chain(chain)
        except Exception as exc:
            raise error(f"could not create chain {chain} ({self.tool} nat)", exc) from exc

    def add(self, chain: str, buf: object, position: int | None = None) -> None:
        try:
            if position is None:
                self.table.append_entry(chain, buf)
            else:
                self.table.insert_entry(chain, buf, position)
        except Exception as exc:
            raise error(f"could not add rule to chain {chain} ({self.tool} nat)", exc) from exc

    def delete(self, chain: str, entries: list[object]) -> None:
        """Delete these entries (jumps: decodable by python-iptables in any family)."""
        try:
            # Copy every entry and its compare mask before deleting any: the
            # entries live in libiptc's memory, which a delete frees.
            copies = []
            for entry in entries:
                rule = self.table.create_rule(entry, self.chain_cls(self.table, chain))
                copies.append((rule.rule, rule.mask))
            for buf, mask in copies:
                self.table.delete_entry(chain, buf, mask)
        except Exception as exc:
            raise error(f"could not delete rule from chain {chain} ({self.tool} nat)", exc) from exc

    def remove_chain(self, chain: str) -> None:
        try:
            self.table.flush_entries(chain)
            self.table.delete_chain(chain)
        except Exception as exc:
            raise error(f"could not delete chain {chain} ({self.tool} nat)", exc) from exc


def _in_nat_table(family: int, work: Callable[[_Nat], bool]) -> None:
    """Run ``work(nat)`` on a fresh snapshot of the nat table under the xtables lock.

    ``work`` edits the snapshot and returns True if it changed anything; we then
    commit. The lock is held from reading the snapshot to the commit, which is
    what makes libiptc's whole-table replace safe.
    """
    import errno

    from ..xtables_lock import XtablesLock
    from .iptc_loader import load_iptc

    iptc_mod = load_iptc(family == 6)
    table_cls = iptc_mod.Table6 if family == 6 else iptc_mod.Table
    tool = _TOOL[family]

    for attempt in range(1, _COMMIT_ATTEMPTS + 1):
        with XtablesLock():
            try:
                reused = "nat" in table_cls._cache  # python-iptables keeps one Table object per name
                table = table_cls("nat", autocommit=False)
                if reused:
                    table.refresh()  # re-read: the cached snapshot is stale
            except Exception as exc:
                raise error(f"could not read the {tool} nat table", exc) from exc
            try:
                if not work(_Nat(family, iptc_mod, table)):
                    return
                try:
                    table.commit()
                    return
                except Exception as exc:
                    if attempt < _COMMIT_ATTEMPTS and posix.strerror(errno.EAGAIN) in str(exc):
                        continue  # a writer that does not take the lock got in between: redo
                    raise error(f"could not commit the {tool} nat table", exc) from exc
            finally:
                table.close()


def user_chains(family: int) -> set[str]:
    """The user chains of this netns's legacy nat table, read from the kernel without libiptc.

    No nat table (the usual case on an nf_tables host): an empty set, without creating one
    (asking the kernel for a table that was never used would create it)."""
    if not _nat_table_exists(family):
        return set()
    import _socket

    from ..libc import getsockopt_inout

    sock = _socket.socket(_socket.AF_INET if family == 4 else _socket.AF_INET6,
                          _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, 255)  # IPPROTO_RAW
    try:
        name = b"nat".ljust(32, b"\0")
        for attempt in range(_READ_ATTEMPTS):
            info = getsockopt_inout(sock.fileno(), _LEVEL[family], _SO_GET_INFO,
                                    name.ljust(_GETINFO_SIZE, b"\0"))
            size = int.from_bytes(info[80:84], sys.byteorder)
            request = name + size.to_bytes(4, sys.byteorder) + bytes(4 + size)
            try:
                blob = getsockopt_inout(sock.fileno(), _LEVEL[family], _SO_GET_ENTRIES, request)
                break
            except BlockingIOError:  # EAGAIN: the table changed size in between, as libiptc
                if attempt == _READ_ATTEMPTS - 1:  # sees it too; read it again
                    raise
    except OSError as e:
        raise error(f"cannot read the {_TOOL[family]} nat table", e) from None
    finally:
        sock.close()
    chains, offset, entries = set(), _GET_ENTRIES_HEADER, blob[:_GET_ENTRIES_HEADER + size]
    t = _TARGET_OFFSET[family]
    while offset + t + 4 <= len(entries):
        target_offset = int.from_bytes(entries[offset + t: offset + t + 2], sys.byteorder)
        next_offset = int.from_bytes(entries[offset + t + 2: offset + t + 4], sys.byteorder)
        target = entries[offset + target_offset: offset + next_offset]
        if target[2:31].split(b"\0", 1)[0] == b"ERROR":  # a chain's head: its name follows
            chain = target[32:62].split(b"\0", 1)[0].decode(errors="replace")
            if chain != "ERROR":  # the table's last entry
                chains.add(chain)
        if next_offset <= 0:
            break
        offset += next_offset
    return chains


def setup(family: int, network: str, container_id: str, addresses: list[PodAddress]) -> None:
    """The attachment's chain, rules and POSTROUTING jumps; what is there stays (ours or the
    Go plugin's). A second subnet's ACCEPT goes before MASQUERADE (see iptables_nft.setup)."""
    chain = naming.iptables_chain(network, container_id)
    comment = naming.iptables_comment(network, container_id)

    def work(nat: _Nat) -> bool:
        changed = False
        if not nat.has_chain(chain):
            nat.create_chain(chain)
            changed = True
        entries = nat.entries(chain)
        present = [nat.key(e) for e in entries]
        targets = [nat.target_of(e) for e in entries]
        first_masq = targets.index("MASQUERADE") if "MASQUERADE" in targets else None
        for subnet in dict.fromkeys(a.network_text for a in addresses):
            accept = nat.build("ACCEPT", comment, dst=subnet)
            if nat.built_key(accept) not in present:
                nat.add(chain, accept, first_masq)  # ACCEPTs stay ahead of MASQUERADE
                present.append(nat.built_key(accept))
                if first_masq is not None:
                    first_masq += 1
                changed = True
        masq = nat.build("MASQUERADE", comment, dst="!" + naming.MULTICAST[family])
        if nat.built_key(masq) not in present:
            nat.add(chain, masq)
            changed = True
        jumps = [nat.key(e) for e in nat.entries("POSTROUTING") if nat.target_of(e) == chain]
        for address in addresses:
            jump = nat.build(chain, comment, src=f"{address.text}/{address.bits}")
            if nat.built_key(jump) not in jumps:
                nat.add("POSTROUTING", jump)
                jumps.append(nat.built_key(jump))
                changed = True
        return changed

    _in_nat_table(family, work)


def teardown(family: int, network: str, container_id: str,
             owner_of: Callable[[], JumpOwner]) -> None:
    """Remove the attachment's POSTROUTING jumps, and its chain once no jump uses it (see
    iptables_nft.teardown)."""
    chain = naming.iptables_chain(network, container_id)
    if chain not in user_chains(family):
        return
    owner = owner_of()

    def work(nat: _Nat) -> bool:
        if not nat.has_chain(chain):
            return False
        jumps = [e for e in nat.entries("POSTROUTING") if nat.target_of(e) == chain]
        mine = [e for e in jumps if owner.owns(nat.source(e))]
        if mine:
            nat.delete("POSTROUTING", mine)
        if len(mine) == len(jumps):
            nat.remove_chain(chain)
        return bool(mine) or len(mine) == len(jumps)

    _in_nat_table(family, work)


def missing(family: int, network: str, container_id: str,
            addresses: list[PodAddress]) -> list[str]:
    """What CHECK finds absent of the attachment's rules (empty: all there)."""
    chain = naming.iptables_chain(network, container_id)
    if chain not in user_chains(family):
        return [f"chain {chain} in {_TOOL[family]} nat"]
    gaps: list[str] = []
    comment = naming.iptables_comment(network, container_id)

    def work(nat: _Nat) -> bool:
        present = [nat.key(e) for e in nat.entries(chain)]
        for subnet in dict.fromkeys(a.network_text for a in addresses):
            if nat.built_key(nat.build("ACCEPT", comment, dst=subnet)) not in present:
                gaps.append(f"{chain}: -d {subnet} -j ACCEPT")
        if "MASQUERADE" not in (nat.target_of(e) for e in nat.entries(chain)):
            gaps.append(f"{chain}: -j MASQUERADE")
        sources = {nat.source(e) for e in nat.entries("POSTROUTING") if nat.target_of(e) == chain}
        gaps.extend(f"POSTROUTING: -s {a.text} -j {chain}" for a in addresses
                    if (a.packed, a.bits) not in sources)
        return False  # read only: nothing to commit

    _in_nat_table(family, work)
    return gaps


def gc(family: int, network: str, keep: dict[str, set[bytes] | None]) -> None:
    """Remove the network's chains whose name is not in `keep`, and stale jumps of the kept
    ones (see iptables_nft.gc)."""
    chains = user_chains(family)
    candidates = {c for c in chains if naming.is_iptables_chain_name(c) and c not in keep}
    if not candidates and not any(sources is not None and chain in chains
                                  for chain, sources in keep.items()):
        return
    prefix = naming.iptables_comment(network, "")[:-1]
    bits = 32 if family == 4 else 128

    def work(nat: _Nat) -> bool:
        victims = set()
        for chain in candidates:
            entries = nat.entries(chain) if nat.has_chain(chain) else []
            comment = nat.comment(entries[0]) if entries else None
            if comment is not None and comment.startswith(prefix):
                victims.add(chain)
        jumps = [e for e in nat.entries("POSTROUTING") if nat.target_of(e) in victims
                 or stale_jump(nat.target_of(e), nat.source(e), bits, keep)]
        if jumps:
            nat.delete("POSTROUTING", jumps)
        for chain in sorted(victims):
            nat.remove_chain(chain)
        return bool(victims or jumps)

    _in_nat_table(family, work)
