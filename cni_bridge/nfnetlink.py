"""A small nf_tables netlink client: what the masquerade backends and macspoofchk need.

The kernel's nf_tables speaks netlink (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_NFTABLES):
`nft` and `iptables-nft` are front ends that turn their syntax into these messages. Talking it
ourselves costs a socket and a few hundred microseconds where `nft -f` or `iptables-nft-restore`
cost a fork, an exec and a cache fetch of the whole table (3-5 ms here, growing with the number
of rules), and it lets a DEL ask "does this chain exist?" with one message.

Wire format in one paragraph: every message is an nlmsghdr, a 4-byte nfgenmsg (address family,
version 0, resource id) and attributes, as in rtnetlink; integers in attributes are big-endian.
Changes travel in a batch (BATCH_BEGIN, the messages, BATCH_END) that the kernel applies as one
transaction: all of it or nothing, never half. A rule is a list of expressions (`payload` loads
packet bytes into a register, `cmp` compares a register, `immediate` sets the verdict, ...)
plus opaque user data in which `nft` keeps the rule's comment.

The encodings are the ones `nft` 1.0 and `iptables-nft` 1.8 produce (see `addr_match`), so
their listings show our rules exactly as if they had written them, and so their deletes find them.
"""

from __future__ import annotations

import _struct as struct  # the C module; struct.py only re-exports it
import errno

from .netlink import (NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, AlreadyExists, NetlinkError,
                      NetlinkSocket, NotFound, _NLMSGHDR, _attr, _error, _extack_message,
                      _get_str, _iter_attrs, _I32)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 16
NFNL_MSG_BATCH_END = 17
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800

# nfgenmsg families (NFPROTO_*)
INET = 1
IPV4 = 2
BRIDGE = 7
IPV6 = 10
FAMILY_NAMES = {INET: "inet", IPV4: "ip", BRIDGE: "bridge", IPV6: "ip6"}

# message types (enum nf_tables_msg_types)
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_DELRULE = 8

NFTA_TABLE_NAME = 1
NFTA_TABLE_USERDATA = 6
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_HOOK = 4
NFTA_CHAIN_POLICY = 5
NFTA_CHAIN_TYPE = 7
NFTA_CHAIN_USERDATA = 12
NFTA_HOOK_HOOKNUM = 1
NFTA_HOOK_PRIORITY = 2
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_HANDLE = 3
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_POSITION = 6
NFTA_RULE_USERDATA = 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2

# hooks (NF_INET_*, also used by the bridge family)
HOOK_PREROUTING = 0
HOOK_POSTROUTING = 4
NF_ACCEPT = 1
# verdicts
VERDICT_DROP = 0
VERDICT_ACCEPT = 1
VERDICT_JUMP = -3
VERDICT_GOTO = -4
VERDICT_RETURN = -5

# expression attributes
NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFT_PAYLOAD_LL_HEADER = 0
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_META_IIFNAME = 6
NFT_META_NFPROTO = 15
NFT_CMP_EQ = 0
NFT_CMP_NEQ = 1
# where the source and destination addresses are in an IPv4 / IPv6 header
SADDR_OFFSET = {4: 12, 6: 8}
DADDR_OFFSET = {4: 16, 6: 24}
NFTNL_UDATA_COMMENT = 0  # the same type for tables, chains and rules

_NFGENMSG = struct.Struct(">BBH")  # family, version, resource id (big-endian)
_BE32 = struct.Struct(">I")
_BE32_SIGNED = struct.Struct(">i")
_BE64 = struct.Struct(">Q")
_IFNAMSIZ = 16
_SOL_SOCKET, _SO_SNDBUFFORCE = 1, 32
_SEND_BUFFER = 200 * 1024  # below the usual default (net.core.wmem_default, 208 KiB)


class NfTablesError(NetlinkError):
    """The kernel refused an nf_tables request or transaction."""


# -- attributes -----------------------------------------------------------------------------


def _be32(kind: int, value: int) -> bytes:
    return _attr(kind, (_BE32_SIGNED if value < 0 else _BE32).pack(value))


def _string(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _nest(kind: int, *children: bytes) -> bytes:
    return _attr(kind, b"".join(children))


def _data(kind: int, value: bytes) -> bytes:
    return _nest(kind, _attr(NFTA_DATA_VALUE, value))


def userdata_comment(comment: bytes | str) -> bytes:
    """The user data `nft` stores a comment in: type 0, length, the text and a NUL."""
    text = (comment.encode() if isinstance(comment, str) else comment) + b"\0"
    return bytes((NFTNL_UDATA_COMMENT, len(text))) + text


def comment_of(userdata: bytes | None) -> bytes | None:
    """The comment in a table's, chain's or rule's user data, without its NUL."""
    offset = 0
    while userdata and offset + 2 <= len(userdata):
        kind, length = userdata[offset], userdata[offset + 1]
        if kind == NFTNL_UDATA_COMMENT:
            return userdata[offset + 2: offset + 2 + length].rstrip(b"\0")
        offset += 2 + length
    return None


# -- expressions ----------------------------------------------------------------------------


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(NFTA_LIST_ELEM, _string(NFTA_EXPR_NAME, name), _nest(NFTA_EXPR_DATA, *attrs))


def meta(key: int) -> bytes:
    return _expr("meta", _be32(2, key), _be32(1, NFT_REG_1))  # NFTA_META_KEY, NFTA_META_DREG


def payload(base: int, offset: int, length: int) -> bytes:
    # NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
    return _expr("payload", _be32(1, NFT_REG_1), _be32(2, base), _be32(3, offset),
                 _be32(4, length))


def cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", _be32(1, NFT_REG_1), _be32(2, op), _data(3, value))


def bitwise(mask: bytes) -> bytes:
    # NFTA_BITWISE_SREG, _DREG, _LEN, _MASK, _XOR: reg &= mask
    return _expr("bitwise", _be32(1, NFT_REG_1), _be32(2, NFT_REG_1), _be32(3, len(mask)),
                 _data(4, mask), _data(5, bytes(len(mask))))


def verdict(code: int, chain: str | None = None) -> bytes:
    inner = _be32(NFTA_VERDICT_CODE, code)
    if chain is not None:
        inner += _string(NFTA_VERDICT_CHAIN, chain)
    # NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA
    return _expr("immediate", _be32(1, NFT_REG_VERDICT), _nest(2, _nest(NFTA_DATA_VERDICT, inner)))


def counter() -> bytes:
    # NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS
    return _expr("counter", _attr(1, _BE64.pack(0)), _attr(2, _BE64.pack(0)))


def xt_match(name: str, info: bytes, revision: int = 0) -> bytes:
    """An x_tables match run by nf_tables' compat layer, as iptables-nft writes `-m NAME`."""
    return _expr("match", _string(1, name), _be32(2, revision), _attr(3, info))


def xt_target(name: str, info: bytes, revision: int = 0) -> bytes:
    """An x_tables target run by the compat layer, as iptables-nft writes `-j NAME`."""
    return _expr("target", _string(1, name), _be32(2, revision), _attr(3, info))


def masquerade() -> bytes:
    return _expr("masq")


def nfproto(family: int) -> list[bytes]:
    """`meta nfproto ipv4|ipv6`: nft's implicit guard before an ip/ip6 match in an inet table."""
    return [meta(NFT_META_NFPROTO), cmp(NFT_CMP_EQ, bytes((IPV4 if family == 4 else IPV6,)))]


def addr_match(offset: int, packed: bytes, prefixlen: int, op: int = NFT_CMP_EQ) -> list[bytes]:
    """Compare the address at `offset` of the network header with packed/prefixlen.

    As nft and iptables-nft encode it: a prefix on a byte boundary loads just those bytes
    (10.22.0.0/24: 3 bytes, no mask); any other prefix loads the whole address and masks it.
    """
    if prefixlen % 8 == 0:
        length = prefixlen // 8
        return [payload(NFT_PAYLOAD_NETWORK_HEADER, offset, length), cmp(op, packed[:length])]
    bits = len(packed) * 8
    mask = (((1 << prefixlen) - 1) << (bits - prefixlen)).to_bytes(len(packed), "big")
    value = bytes(a & b for a, b in zip(packed, mask))
    return [payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len(packed)), bitwise(mask),
            cmp(op, value)]


def iifname(name: str) -> list[bytes]:
    """`iifname "NAME"`: the interface name padded with NULs to IFNAMSIZ, as nft compares it."""
    return [meta(NFT_META_IIFNAME), cmp(NFT_CMP_EQ, name.encode().ljust(_IFNAMSIZ, b"\0"))]


def ether_saddr(mac: bytes) -> list[bytes]:
    return [payload(NFT_PAYLOAD_LL_HEADER, 6, 6), cmp(NFT_CMP_EQ, mac)]


# -- objects the kernel returns ----------------------------------------------------------------


class Expr:
    """One expression of a rule: its name and its attributes {type: payload}."""

    __slots__ = ("name", "attrs", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        outer = dict(_iter_attrs(raw))
        self.name = _get_str(outer[NFTA_EXPR_NAME])
        self.attrs = dict(_iter_attrs(outer.get(NFTA_EXPR_DATA, b"")))

    def verdict(self) -> tuple[int, str | None] | None:
        """(verdict code, chain it jumps or goes to, if any) of an `immediate`; else None."""
        if self.name != "immediate" or 2 not in self.attrs:
            return None
        data = dict(_iter_attrs(self.attrs[2]))
        inner = dict(_iter_attrs(data.get(NFTA_DATA_VERDICT, b"")))
        if NFTA_VERDICT_CODE not in inner:
            return None
        chain = inner.get(NFTA_VERDICT_CHAIN)
        return (_BE32_SIGNED.unpack(inner[NFTA_VERDICT_CODE])[0],
                _get_str(chain) if chain is not None else None)

    def data_value(self, kind: int) -> bytes | None:
        """The NFTA_DATA_VALUE inside attribute `kind` (a cmp's value, a bitwise mask)."""
        if kind not in self.attrs:
            return None
        return dict(_iter_attrs(self.attrs[kind])).get(NFTA_DATA_VALUE)


class Rule:
    """A rule: its handle, chain, expressions and the comment in its user data."""

    __slots__ = ("family", "table", "chain", "handle", "exprs", "userdata")

    def __init__(self, body: bytes) -> None:
        self.family = body[0]
        attrs = dict(_iter_attrs(body, _NFGENMSG.size))
        self.table = _get_str(attrs[NFTA_RULE_TABLE])
        self.chain = _get_str(attrs[NFTA_RULE_CHAIN])
        self.handle = _BE64.unpack(attrs[NFTA_RULE_HANDLE])[0]
        self.exprs = [Expr(payload) for _, payload in
                      _iter_attrs(attrs.get(NFTA_RULE_EXPRESSIONS, b""))]
        self.userdata = attrs.get(NFTA_RULE_USERDATA)

    @property
    def comment(self) -> bytes | None:
        return comment_of(self.userdata)

    def jump_targets(self) -> list[str]:
        return [v[1] for v in (e.verdict() for e in self.exprs) if v is not None and v[1]]

    def __repr__(self) -> str:
        return (f"Rule({FAMILY_NAMES.get(self.family)} {self.table} {self.chain} "
                f"handle {self.handle}: {[e.name for e in self.exprs]}, {self.comment!r})")


class Chain:
    """A chain; `hook` is None for a regular chain."""

    __slots__ = ("name", "table", "hook", "priority", "type", "userdata")

    def __init__(self, body: bytes) -> None:
        attrs = dict(_iter_attrs(body, _NFGENMSG.size))
        self.name = _get_str(attrs[NFTA_CHAIN_NAME])
        self.table = _get_str(attrs[NFTA_CHAIN_TABLE])
        self.type = _get_str(attrs[NFTA_CHAIN_TYPE]) if NFTA_CHAIN_TYPE in attrs else None
        self.userdata = attrs.get(NFTA_CHAIN_USERDATA)
        self.hook = self.priority = None
        if NFTA_CHAIN_HOOK in attrs:
            hook = dict(_iter_attrs(attrs[NFTA_CHAIN_HOOK]))
            self.hook = _BE32.unpack(hook[NFTA_HOOK_HOOKNUM])[0]
            self.priority = _BE32_SIGNED.unpack(hook[NFTA_HOOK_PRIORITY])[0]


# -- requests ---------------------------------------------------------------------------------


def rule_body(family: int, table: str, chain: str, exprs: list[bytes],
              comment: bytes | str | None = None) -> bytes:
    body = (_NFGENMSG.pack(family, 0, 0) + _string(NFTA_RULE_TABLE, table)
            + _string(NFTA_RULE_CHAIN, chain) + _nest(NFTA_RULE_EXPRESSIONS, *exprs))
    if comment is not None:
        body += _attr(NFTA_RULE_USERDATA, userdata_comment(comment))
    return body


class Batch:
    """The messages of one transaction, in order; `NfTables.commit` sends them."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int, bytes]] = []  # (type, flags, body)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def _add(self, msg_type: int, flags: int, body: bytes) -> None:
        self.messages.append(((NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, body))

    def add_table(self, family: int, table: str, comment: str | None = None) -> None:
        """Create the table unless it exists (`nft add table`)."""
        body = _NFGENMSG.pack(family, 0, 0) + _string(NFTA_TABLE_NAME, table)
        if comment is not None:
            body += _attr(NFTA_TABLE_USERDATA, userdata_comment(comment))
        self._add(NFT_MSG_NEWTABLE, NLM_F_CREATE, body)

    def add_chain(self, family: int, table: str, chain: str, *, hook: int | None = None,
                  priority: int = 0, chain_type: str = "filter",
                  comment: str | None = None) -> None:
        """Create the chain unless it exists; with `hook`, a base chain (policy accept)."""
        body = (_NFGENMSG.pack(family, 0, 0) + _string(NFTA_CHAIN_TABLE, table)
                + _string(NFTA_CHAIN_NAME, chain))
        if hook is not None:
            body += (_nest(NFTA_CHAIN_HOOK, _be32(NFTA_HOOK_HOOKNUM, hook),
                           _be32(NFTA_HOOK_PRIORITY, priority))
                     + _be32(NFTA_CHAIN_POLICY, NF_ACCEPT) + _string(NFTA_CHAIN_TYPE, chain_type))
        if comment is not None:
            body += _attr(NFTA_CHAIN_USERDATA, userdata_comment(comment))
        self._add(NFT_MSG_NEWCHAIN, NLM_F_CREATE, body)

    def add_rule(self, family: int, table: str, chain: str, exprs: list[bytes],
                 comment: bytes | str | None = None, before: int | None = None) -> None:
        """Append a rule to the chain, or insert it before the rule with handle `before`."""
        body = rule_body(family, table, chain, exprs, comment)
        if before is None:
            self._add(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body)
        else:
            self._add(NFT_MSG_NEWRULE, NLM_F_CREATE,
                      body + _attr(NFTA_RULE_POSITION, _BE64.pack(before)))

    def delete_rule(self, rule: Rule) -> None:
        self._add(NFT_MSG_DELRULE, 0, _NFGENMSG.pack(rule.family, 0, 0)
                  + _string(NFTA_RULE_TABLE, rule.table) + _string(NFTA_RULE_CHAIN, rule.chain)
                  + _attr(NFTA_RULE_HANDLE, _BE64.pack(rule.handle)))

    def flush_chain(self, family: int, table: str, chain: str) -> None:
        """Delete every rule of the chain (a DELRULE without a handle)."""
        self._add(NFT_MSG_DELRULE, 0, _NFGENMSG.pack(family, 0, 0)
                  + _string(NFTA_RULE_TABLE, table) + _string(NFTA_RULE_CHAIN, chain))

    def delete_chain(self, family: int, table: str, chain: str) -> None:
        self._add(NFT_MSG_DELCHAIN, 0, _NFGENMSG.pack(family, 0, 0)
                  + _string(NFTA_CHAIN_TABLE, table) + _string(NFTA_CHAIN_NAME, chain))


class NfTables(NetlinkSocket):
    """A NETLINK_NETFILTER socket for nf_tables, in the netns of the creating thread."""

    def __init__(self) -> None:
        try:
            super().__init__(NETLINK_NETFILTER)
        except OSError as e:  # EPROTONOSUPPORT: no nfnetlink in this kernel
            raise NfTablesError(e.errno, f"nf_tables: cannot open a netfilter netlink socket: "
                                f"{e.strerror}") from None

    def _get(self, msg_type: int, body: bytes, what: str) -> list[bytes]:
        return self._request((NFNL_SUBSYS_NFTABLES << 8) | msg_type, NLM_F_ACK, body, what)

    def _dump_all(self, msg_type: int, body: bytes, what: str) -> list[bytes]:
        return self._dump((NFNL_SUBSYS_NFTABLES << 8) | msg_type, body, what)

    def has_table(self, family: int, table: str) -> bool:
        try:
            self._get(NFT_MSG_GETTABLE, _NFGENMSG.pack(family, 0, 0)
                      + _string(NFTA_TABLE_NAME, table), f"get table {table}")
        except NotFound:
            return False
        return True

    def get_chain(self, family: int, table: str, chain: str) -> Chain | None:
        """The chain, or None when it or its table does not exist."""
        try:
            replies = self._get(NFT_MSG_GETCHAIN, _NFGENMSG.pack(family, 0, 0)
                                + _string(NFTA_CHAIN_TABLE, table)
                                + _string(NFTA_CHAIN_NAME, chain), f"get chain {chain}")
        except NotFound:
            return None
        return Chain(replies[0]) if replies else None

    def list_chains(self, family: int, table: str) -> list[Chain]:
        """Every chain of the table ([] when the table does not exist)."""
        try:
            replies = self._dump_all(NFT_MSG_GETCHAIN, _NFGENMSG.pack(family, 0, 0)
                                     + _string(NFTA_CHAIN_TABLE, table), f"list chains of {table}")
        except NotFound:
            return []
        chains = [Chain(body) for body in replies if body[0] == family]
        return [c for c in chains if c.table == table]

    def list_rules(self, family: int, table: str, chain: str | None = None,
                   containing: bytes | None = None) -> list[Rule]:
        """The rules of one chain (or of the whole table), in order; [] when it is missing.

        `containing`: only rules whose message holds these bytes (a chain they jump to, a
        comment's prefix). The kernel cannot filter rules by content, and decoding one costs
        ~0.1 ms in Python, so that a node's POSTROUTING of 100 pods' jumps is looked through
        with a substring search before anything is decoded."""
        body = _NFGENMSG.pack(family, 0, 0) + _string(NFTA_RULE_TABLE, table)
        if chain is not None:
            body += _string(NFTA_RULE_CHAIN, chain)
        try:
            replies = self._dump_all(NFT_MSG_GETRULE, body, f"list rules of {table} {chain or ''}")
        except NotFound:
            return []
        rules = [Rule(r) for r in replies
                 if r[0] == family and (containing is None or containing in r)]
        return [r for r in rules if r.table == table and (chain is None or r.chain == chain)]

    def transact(self, build, what: str, attempts: int = 3) -> None:
        """Commit `build()`, the batch decided from a fresh read, again from another read if a
        concurrent change made it stale: a rule or chain it names went or came (another
        plugin's DEL, say), or a chain it deletes got a new jump (EBUSY)."""
        for attempt in range(attempts):
            try:
                self.commit(build(), what)
                return
            except NetlinkError as e:
                stale = isinstance(e, (NotFound, AlreadyExists)) or e.errno == errno.EBUSY
                if not stale or attempt == attempts - 1:
                    raise

    def commit(self, batch: Batch, what: str) -> None:
        """Apply the batch as one transaction; raise the first error the kernel reports.

        Only the last message asks for an ACK: the kernel reports every failing message
        anyway, and queues all its answers before we read one, so an ACK per message would
        overflow our receive buffer on a GC of a few hundred rules (ENOBUFS, although the
        transaction was applied). The answer to the last message, or an error about the
        batch as a whole (its BEGIN), ends the wait."""
        if not batch:
            return
        seq = self._seq
        begin, end = seq + 1, seq + 2 + len(batch.messages)
        parts = [_NLMSGHDR.pack(_NLMSGHDR.size + _NFGENMSG.size, NFNL_MSG_BATCH_BEGIN,
                                NLM_F_REQUEST, begin, 0)
                 + _NFGENMSG.pack(0, 0, NFNL_SUBSYS_NFTABLES)]
        last = end - 1
        for i, (msg_type, flags, body) in enumerate(batch.messages, start=begin + 1):
            ack = NLM_F_ACK if i == last else 0
            parts.append(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type,
                                        NLM_F_REQUEST | ack | flags, i, 0) + body)
        parts.append(_NLMSGHDR.pack(_NLMSGHDR.size + _NFGENMSG.size, NFNL_MSG_BATCH_END,
                                    NLM_F_REQUEST, end, 0)
                     + _NFGENMSG.pack(0, 0, NFNL_SUBSYS_NFTABLES))
        self._seq = end
        data = b"".join(parts)
        if len(data) > _SEND_BUFFER:  # one sendmsg carries the whole transaction
            self._sock.setsockopt(_SOL_SOCKET, _SO_SNDBUFFORCE, len(data) + 4096)
        self._send(data, what)
        first_error = None
        while True:
            for rtype, rflags, rseq, body in self._receive(what):
                if rtype != NLMSG_ERROR:
                    continue
                code = -_I32.unpack_from(body)[0]
                if code and first_error is None:
                    first_error = _nft_error(code, what, _extack_message(body, rflags),
                                             rseq - begin - 1, batch)
                if rseq == last or (code and rseq == begin):
                    if first_error is not None:
                        raise first_error
                    return


def _nft_error(code: int, what: str, kernel_says: str, index: int, batch: Batch) -> NetlinkError:
    """The domain error for a failed transaction, naming the message that failed."""
    step = ""
    if 0 <= index < len(batch.messages):
        names = {NFT_MSG_NEWTABLE: "add table", NFT_MSG_NEWCHAIN: "add chain",
                 NFT_MSG_NEWRULE: "add rule", NFT_MSG_DELRULE: "delete rule",
                 NFT_MSG_DELCHAIN: "delete chain"}
        step = f" ({names.get(batch.messages[index][0] & 0xFF, 'message')} #{index + 1})"
    error = _error(code, f"{what}{step}", kernel_says, 0)
    if type(error) is NetlinkError:
        return NfTablesError(error.errno, error.strerror)
    return error  # NotFound, AlreadyExists


def addr_matches(rule: Rule) -> list[tuple[int, bytes, int, int]]:
    """(offset, address, prefix length, cmp op) of every address match in the rule (the
    shapes `addr_match` writes), in order. The address is as long as the load (3 bytes for a
    /24): the caller, who knows the family, pads it."""
    out = []
    exprs = rule.exprs
    i = 0
    while i < len(exprs):
        e = exprs[i]
        if (e.name == "payload" and e.attrs.get(2) == _BE32.pack(NFT_PAYLOAD_NETWORK_HEADER)
                and 3 in e.attrs and 4 in e.attrs):
            offset, length = _BE32.unpack(e.attrs[3])[0], _BE32.unpack(e.attrs[4])[0]
            j, mask = i + 1, None
            if j < len(exprs) and exprs[j].name == "bitwise":
                mask, j = exprs[j].data_value(4), j + 1
            if j < len(exprs) and exprs[j].name == "cmp" and 2 in exprs[j].attrs:
                value = exprs[j].data_value(3) or b""
                prefix = sum(bin(b).count("1") for b in mask) if mask else length * 8
                out.append((offset, value, prefix, _BE32.unpack(exprs[j].attrs[2])[0]))
                i = j + 1
                continue
        i += 1
    return out


def xt_info(rule: Rule, kind: str, name: str) -> bytes | None:
    """The info blob of the rule's compat match or target `name` (kind "match"/"target")."""
    for e in rule.exprs:
        if e.name == kind and e.attrs.get(1, b"").split(b"\0", 1)[0] == name.encode():
            return e.attrs.get(3)
    return None


def verdict_of(rule: Rule) -> int | None:
    """The verdict code an `immediate` of the rule sets (accept, drop, jump, ...), or None."""
    for e in rule.exprs:
        verdict = e.verdict()
        if verdict is not None:
            return verdict[0]
    return None
