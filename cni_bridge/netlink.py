"""A small rtnetlink (NETLINK_ROUTE) client: just what the bridge plugin needs.

Every CNI call is a fresh process, so import time matters more than features:
pyroute2 costs ~385 ms to import, this module a fraction of a millisecond.
It imports only C modules: `_socket` (`socket` pulls in `enum`), `_struct`, `posix`
and `errno`.

Wire format in one paragraph: a request is an `nlmsghdr` (length, type, flags,
sequence number, port id) followed by a fixed family header (`ifinfomsg` for
links, `ifaddrmsg` for addresses, `rtmsg` for routes) and a list of TLV
attributes (`nlattr`: length, type, payload padded to 4 bytes; attributes can
nest). The kernel answers with NLMSG_ERROR (errno 0 = ACK), a single reply, or
for dumps a series of NLM_F_MULTI messages ending in NLMSG_DONE.

A `Netlink` socket lives in the network namespace of the thread that created it,
for its whole life: open it inside `netns.enter()` to talk to a pod namespace.
Addresses are plain strings ("10.0.0.1", "2001:db8::1") throughout.
"""

from __future__ import annotations

import _socket
import errno
import _struct as struct  # the C module; struct.py only re-exports it (~0.2 ms)
import posix  # not os (~2 ms to import): cni_protocol/skel.py

AF_UNSPEC = 0
AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
AF_BRIDGE = 7  # PF_BRIDGE: bridge-port flags and bridge VLANs

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # do not echo our request back inside error messages
NETLINK_EXT_ACK = 11  # ask the kernel for a human-readable error string

# nlmsghdr types and flags (linux/netlink.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10  # the dump raced with a change: its content is inconsistent
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in NLMSG_ERROR: original request not echoed
NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

# rtnetlink message types (linux/rtnetlink.h)
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26

# link attributes (linux/if_link.h)
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_PROTINFO = 12
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_AF_SPEC = 26
IFLA_NET_NS_FD = 28
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_BR_VLAN_FILTERING = 7
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFLA_BRPORT_ISOLATED = 33
IFLA_BRIDGE_VLAN_INFO = 2  # inside IFLA_AF_SPEC (linux/if_bridge.h)
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
BRIDGE_VLAN_INFO_RANGE_BEGIN = 0x8
BRIDGE_VLAN_INFO_RANGE_END = 0x10

IFF_UP = 0x1
IFF_PROMISC = 0x100

# RFC 2863 operational states, spelled like the reference plugin prints them
# (vishvananda/netlink), so "bridge port in error state: lower-layer-down" matches.
OPERSTATES = ("unknown", "not-present", "down", "lower-layer-down", "testing", "dormant", "up")

# address attributes and flags (linux/if_addr.h)
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
IFA_FLAGS = 8
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80

# route attributes and values (linux/rtnetlink.h)
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_METRICS = 8
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTAX_MTU = 2
RTAX_ADVMSS = 8
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTPROT_BOOT = 3  # what `ip route add` uses for administrator-added routes
RTN_UNICAST = 1
RTM_F_CLONED = 0x200  # cached clone, not a configured route

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")  # len, type
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex; then the hop's attributes
_BRIDGE_VLAN_INFO = struct.Struct("=HH")  # flags, vid
_U8 = struct.Struct("=B")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")

_RECV_SIZE = 65536  # the kernel caps dump batches at 32 KiB


# -- errors --------------------------------------------------------------------------


class NetlinkError(OSError):
    """The kernel refused a request; `errno` says why, str() says what we tried."""

    def __str__(self) -> str:
        return self.strerror


class AlreadyExists(NetlinkError):
    """EEXIST: the link, address or route is already there."""


class NotFound(NetlinkError):
    """ENODEV/ENOENT/ESRCH (and EADDRNOTAVAIL on delete): the object is not there."""


_NOT_FOUND = (errno.ENODEV, errno.ENOENT, errno.ESRCH)
_DELETES = (RTM_DELLINK, RTM_DELADDR)


def _error(code: int, what: str, kernel_says: str, msg_type: int) -> NetlinkError:
    """Map a kernel errno to the domain exception, keeping the kernel's own text."""
    message = f"{what}: {posix.strerror(code)}"
    if kernel_says:
        message += f" ({kernel_says})"
    if code == errno.EEXIST:
        return AlreadyExists(code, message)
    if code in _NOT_FOUND or (code == errno.EADDRNOTAVAIL and msg_type in _DELETES):
        return NotFound(code, message)
    return NetlinkError(code, message)


def _socket_error(e: OSError, what: str) -> NetlinkError:
    """The socket itself failed (not the kernel's answer): the same errno, saying which
    request it was, so that the runtime learns what failed and EAGAIN stays retryable."""
    return NetlinkError(e.errno, f"{what}: {e.strerror or e}")


class _DumpInterrupted(Exception):
    """The kernel flagged a dump as inconsistent; it is safe to simply retry."""


# -- attribute encoding and decoding ---------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _nest(kind: int, *children: bytes) -> bytes:
    return _attr(kind, b"".join(children))


def _u8(kind: int, value: int) -> bytes:
    return _attr(kind, _U8.pack(value))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, _U32.pack(value))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _iter_attrs(data: bytes, offset: int = 0):
    """Yield (type, payload) for each attribute in data[offset:]."""
    end = len(data)
    while offset + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        yield kind & NLA_TYPE_MASK, data[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3


def _attrs(data: bytes, offset: int = 0) -> dict:
    return dict(_iter_attrs(data, offset))


def _get_u32(payload: bytes) -> int:
    return _U32.unpack_from(payload)[0]


def _get_str(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode()


def _family_of(address: str) -> int:
    return AF_INET6 if ":" in address else AF_INET


def _pack_ip(address: str) -> tuple[int, bytes]:
    """"10.0.0.1" -> (AF_INET, 4 bytes); raises ValueError on garbage."""
    family = _family_of(address)
    try:
        return family, _socket.inet_pton(family, address)
    except OSError:
        raise ValueError(f"invalid IP address: {address!r}") from None


def parse_mac(mac: str) -> bytes:
    """"0a:58:0a:f4:00:02" -> 6 bytes; raises ValueError on anything else."""
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"invalid MAC address: {mac!r}")
    try:
        return bytes.fromhex("".join(parts))
    except ValueError:
        raise ValueError(f"invalid MAC address: {mac!r}") from None


def _ifinfomsg(index: int = 0, family: int = AF_UNSPEC, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(family, 0, index, flags, change)


# -- objects returned by the kernel ------------------------------------------------------


class Link:
    """One network interface as RTM_NEWLINK describes it.

    `link_index` is IFLA_LINK: for a veth, the peer's ifindex, which is an index in
    the peer's namespace when `link_netnsid` is set. `master` is the bridge index
    (None if not enslaved). `promisc` is the administrative promisc flag, not the
    promiscuity counter that enslaving to a bridge bumps. `vlan_filtering` is only
    set for bridges.
    """

    __slots__ = (
        "index", "name", "kind", "mac", "mtu", "master", "operstate", "flags",
        "link_index", "link_netnsid", "promisc", "vlan_filtering",
    )

    def __init__(self, body: bytes):
        _family, _arphrd, self.index, self.flags, _change = _IFINFOMSG.unpack_from(body)
        attrs = _attrs(body, _IFINFOMSG.size)
        self.name = _get_str(attrs[IFLA_IFNAME])
        self.mac = attrs[IFLA_ADDRESS].hex(":") if IFLA_ADDRESS in attrs else None
        self.mtu = _get_u32(attrs[IFLA_MTU]) if IFLA_MTU in attrs else None
        self.master = _get_u32(attrs[IFLA_MASTER]) if IFLA_MASTER in attrs else None
        state = attrs[IFLA_OPERSTATE][0] if IFLA_OPERSTATE in attrs else 0
        self.operstate = OPERSTATES[state] if state < len(OPERSTATES) else "unknown"
        self.link_index = _get_u32(attrs[IFLA_LINK]) if IFLA_LINK in attrs else None
        netnsid = attrs.get(IFLA_LINK_NETNSID)
        self.link_netnsid = _I32.unpack_from(netnsid)[0] if netnsid else None
        self.promisc = bool(self.flags & IFF_PROMISC)
        self.kind = None
        self.vlan_filtering = None
        info = _attrs(attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in attrs else {}
        if IFLA_INFO_KIND in info:
            self.kind = _get_str(info[IFLA_INFO_KIND])
        if self.kind == "bridge" and IFLA_INFO_DATA in info:
            filtering = _attrs(info[IFLA_INFO_DATA]).get(IFLA_BR_VLAN_FILTERING)
            self.vlan_filtering = bool(filtering[0]) if filtering else False

    @property
    def up(self) -> bool:
        """Administratively up (IFF_UP); see `operstate` for whether it passes traffic."""
        return bool(self.flags & IFF_UP)

    def __repr__(self) -> str:
        return (f"Link({self.index}, {self.name!r}, kind={self.kind!r}, mac={self.mac!r}, "
                f"mtu={self.mtu}, master={self.master}, operstate={self.operstate!r})")


class Addr:
    """One interface address (RTM_NEWADDR); `flags` holds IFA_F_* bits."""

    __slots__ = ("index", "family", "address", "prefixlen", "flags", "scope")

    def __init__(self, body: bytes):
        self.family, self.prefixlen, flags, self.scope, self.index = _IFADDRMSG.unpack_from(body)
        attrs = _attrs(body, _IFADDRMSG.size)
        self.flags = _get_u32(attrs[IFA_FLAGS]) if IFA_FLAGS in attrs else flags
        # IFA_LOCAL is our own address; IFA_ADDRESS is the peer on point-to-point links.
        packed = attrs.get(IFA_LOCAL) or attrs[IFA_ADDRESS]
        self.address = _socket.inet_ntop(self.family, packed)

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    def __repr__(self) -> str:
        return f"Addr({self.cidr!r}, index={self.index}, flags={self.flags:#x})"


class Route:
    """One route (RTM_NEWROUTE). `dst` is the zero address for a default route. `nexthops`:
    (gateway, oif) of each path; a multipath route (IPv6 merges routes to one destination via
    several gateways into one) has several, and no `gw` or `oif` of its own."""

    __slots__ = ("family", "dst", "prefixlen", "gw", "oif", "nexthops", "table", "scope",
                 "priority", "protocol", "type", "mtu", "advmss")

    def __init__(self, body: bytes):
        (self.family, self.prefixlen, _src_len, _tos, table, self.protocol,
         self.scope, self.type, _flags) = _RTMSG.unpack_from(body)
        attrs = _attrs(body, _RTMSG.size)
        zero = b"\0" * (4 if self.family == AF_INET else 16)
        self.dst = _socket.inet_ntop(self.family, attrs.get(RTA_DST, zero))
        gw = attrs.get(RTA_GATEWAY)
        self.gw = _socket.inet_ntop(self.family, gw) if gw else None
        self.oif = _get_u32(attrs[RTA_OIF]) if RTA_OIF in attrs else None
        multipath = attrs.get(RTA_MULTIPATH)
        self.nexthops = (_nexthops(self.family, multipath) if multipath
                         else [(self.gw, self.oif)])
        self.table = _get_u32(attrs[RTA_TABLE]) if RTA_TABLE in attrs else table
        self.priority = _get_u32(attrs[RTA_PRIORITY]) if RTA_PRIORITY in attrs else None
        metrics = _attrs(attrs[RTA_METRICS]) if RTA_METRICS in attrs else {}
        self.mtu = _get_u32(metrics[RTAX_MTU]) if RTAX_MTU in metrics else None
        self.advmss = _get_u32(metrics[RTAX_ADVMSS]) if RTAX_ADVMSS in metrics else None

    def __repr__(self) -> str:
        return (f"Route({self.dst}/{self.prefixlen}, gw={self.gw}, oif={self.oif}, "
                f"table={self.table}, scope={self.scope})")


def _nexthops(family: int, data: bytes) -> list[tuple[str | None, int]]:
    """RTA_MULTIPATH's paths: struct rtnexthop, then that path's attributes, 4-byte aligned."""
    hops, offset = [], 0
    while offset + _RTNEXTHOP.size <= len(data):
        length, _flags, _hops, oif = _RTNEXTHOP.unpack_from(data, offset)
        if length < _RTNEXTHOP.size:
            break
        gw = _attrs(data[offset + _RTNEXTHOP.size:offset + length]).get(RTA_GATEWAY)
        hops.append((_socket.inet_ntop(family, gw) if gw else None, oif))
        offset += (length + 3) & ~3
    return hops


def _route_msg(family: int, prefixlen: int, table: int, protocol: int, scope: int, rtype: int) -> bytes:
    # rtm_table is 8 bits; larger table ids travel in RTA_TABLE only.
    return _RTMSG.pack(family, prefixlen, 0, 0, table if table < 256 else 0, protocol, scope, rtype, 0)


def _route_attrs(dst: str, prefixlen: int, gw: str | None, oif: int | None,
                 table: int, priority: int | None) -> tuple[int, bytes]:
    family, packed_dst = _pack_ip(dst)
    attrs = _attr(RTA_DST, packed_dst) + _u32(RTA_TABLE, table)
    if gw is not None:
        gw_family, packed_gw = _pack_ip(gw)
        if gw_family != family:
            raise ValueError(f"gateway {gw} is not in the address family of {dst}")
        attrs += _attr(RTA_GATEWAY, packed_gw)
    if oif is not None:
        attrs += _u32(RTA_OIF, oif)
    if priority is not None:
        attrs += _u32(RTA_PRIORITY, priority)
    return family, attrs


# -- the socket ------------------------------------------------------------------------


class NetlinkSocket:
    """A netlink socket of one protocol in the network namespace of the creating thread.

    Use as a context manager (or call close()). Not thread-safe: one request at a
    time, matched to its answers by sequence number. `Netlink` (rtnetlink) and
    `nfnetlink.NfTables` (nf_tables) build their requests on it.
    """

    def __init__(self, protocol: int) -> None:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, protocol)
        try:
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                try:
                    sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:  # kernels before 4.12 lack extended ACKs; errors stay usable
                    pass
            sock.bind((0, 0))  # the kernel picks our port id
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- request/response plumbing

    def _request(self, msg_type: int, flags: int, payload: bytes, what: str) -> list[bytes]:
        """Send one request; return the bodies of the replies (empty for a plain ACK)."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        flags |= NLM_F_REQUEST
        self._send(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload,
                   what)
        replies = []
        interrupted = False
        while True:
            for rtype, rflags, rseq, body in self._receive(what):
                if rseq != seq:
                    continue  # leftover answer to an earlier, abandoned request
                interrupted = interrupted or bool(rflags & NLM_F_DUMP_INTR)
                if rtype == NLMSG_ERROR:
                    code = -_I32.unpack_from(body)[0]
                    if code:
                        raise _error(code, what, _extack_message(body, rflags), msg_type)
                    return replies
                if rtype == NLMSG_DONE:
                    code = -_I32.unpack_from(body)[0] if len(body) >= 4 else 0
                    if code > 0:
                        raise _error(code, what, "", msg_type)
                    if interrupted:
                        raise _DumpInterrupted()
                    return replies
                replies.append(body)
                if not rflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return replies

    def _send(self, data: bytes, what: str) -> None:
        try:
            self._sock.send(data)
        except OSError as e:
            raise _socket_error(e, what) from None

    def _receive(self, what: str):
        """(type, flags, sequence number, body) of each message of one read of the socket."""
        try:
            data = self._sock.recv(_RECV_SIZE)
        except OSError as e:  # ENOBUFS: our receive buffer overflowed, answers were lost
            raise _socket_error(e, what) from None
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, rtype, rflags, rseq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > len(data):
                raise NetlinkError(errno.EMSGSIZE, f"{what}: truncated netlink message")
            yield rtype, rflags, rseq, data[offset + _NLMSGHDR.size : offset + length]
            offset += (length + 3) & ~3

    def _ack(self, msg_type: int, payload: bytes, what: str, flags: int = 0) -> None:
        self._request(msg_type, flags | NLM_F_ACK, payload, what)

    def _dump(self, msg_type: int, payload: bytes, what: str) -> list[bytes]:
        """Dump, retrying when a concurrent change made the kernel flag it inconsistent."""
        for _attempt in range(5):
            try:
                return self._request(msg_type, NLM_F_DUMP, payload, what)
            except _DumpInterrupted:
                continue
        raise NetlinkError(errno.EINTR, f"{what}: dump kept being interrupted by concurrent changes")


class Netlink(NetlinkSocket):
    """A NETLINK_ROUTE socket: links, addresses, routes, bridge ports and VLANs."""

    def __init__(self) -> None:
        super().__init__(NETLINK_ROUTE)

    # -- links

    def get_link(self, name_or_index: str | int) -> Link | None:
        """The link with this name or ifindex, or None if there is none."""
        if isinstance(name_or_index, int):
            payload = _ifinfomsg(name_or_index)
        else:
            payload = _ifinfomsg() + _str(IFLA_IFNAME, name_or_index)
        try:
            replies = self._request(RTM_GETLINK, 0, payload, f"get link {name_or_index}")
        except NotFound:
            return None
        return Link(replies[0])

    def _create_link(self, name: str, attrs: bytes, what: str) -> None:
        payload = _ifinfomsg() + _str(IFLA_IFNAME, name) + attrs
        self._ack(RTM_NEWLINK, payload, what, NLM_F_CREATE | NLM_F_EXCL)

    def create_bridge(self, name: str, mtu: int | None = None, vlan_filtering: bool = False) -> None:
        """Create a bridge; AlreadyExists if the name is taken (by anything)."""
        data = _nest(IFLA_INFO_DATA, _u8(IFLA_BR_VLAN_FILTERING, 1)) if vlan_filtering else b""
        attrs = (_u32(IFLA_MTU, mtu) if mtu else b"") + _nest(
            IFLA_LINKINFO, _str(IFLA_INFO_KIND, "bridge"), data)
        self._create_link(name, attrs, f"create bridge {name}")

    def create_veth(self, name: str, peer_name: str, peer_netns_fd: int | None = None,
                    mtu: int | None = None, mac: str | None = None) -> None:
        """Create a veth pair here; the peer goes to the namespace of `peer_netns_fd`.

        The plugin calls this inside the pod namespace, so the pod end is created
        there under its final name and only the host end crosses namespaces.
        AlreadyExists if either name is taken in its namespace.
        """
        mtu_attr = _u32(IFLA_MTU, mtu) if mtu else b""
        peer = _ifinfomsg() + _str(IFLA_IFNAME, peer_name) + mtu_attr
        if peer_netns_fd is not None:
            peer += _u32(IFLA_NET_NS_FD, peer_netns_fd)
        attrs = mtu_attr + (_attr(IFLA_ADDRESS, parse_mac(mac)) if mac else b"") + _nest(
            IFLA_LINKINFO, _str(IFLA_INFO_KIND, "veth"),
            _nest(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer)))
        self._create_link(name, attrs, f"create veth {name} (peer {peer_name})")

    def set_link(self, index: int, *, up: bool | None = None, master: int | None = None,
                 mtu: int | None = None, mac: str | None = None, netns_fd: int | None = None,
                 promisc: bool | None = None) -> None:
        """Change link settings in one request; None leaves a setting alone.

        master=0 releases the link from its bridge. With netns_fd the kernel moves
        the link first and applies the rest in the new namespace.
        """
        flags = change = 0
        if up is not None:
            change |= IFF_UP
            flags |= IFF_UP if up else 0
        if promisc is not None:
            change |= IFF_PROMISC
            flags |= IFF_PROMISC if promisc else 0
        attrs = b""
        if netns_fd is not None:
            attrs += _u32(IFLA_NET_NS_FD, netns_fd)
        if mtu is not None:
            attrs += _u32(IFLA_MTU, mtu)
        if mac is not None:
            attrs += _attr(IFLA_ADDRESS, parse_mac(mac))
        if master is not None:
            attrs += _u32(IFLA_MASTER, master)
        self._ack(RTM_SETLINK, _ifinfomsg(index, flags=flags, change=change) + attrs, f"set link {index}")

    def delete_link(self, index: int) -> None:
        """Delete a link (deleting one veth end deletes both); NotFound if gone."""
        self._ack(RTM_DELLINK, _ifinfomsg(index), f"delete link {index}")

    def set_bridge_vlan_filtering(self, index: int, on: bool) -> None:
        """Turn 802.1Q filtering on a bridge on or off (needs CONFIG_BRIDGE_VLAN_FILTERING)."""
        attrs = _nest(IFLA_LINKINFO, _str(IFLA_INFO_KIND, "bridge"),
                      _nest(IFLA_INFO_DATA, _u8(IFLA_BR_VLAN_FILTERING, int(on))))
        self._ack(RTM_NEWLINK, _ifinfomsg(index) + attrs, f"set vlan_filtering on link {index}")

    def set_bridge_port(self, index: int, hairpin: bool | None = None, isolated: bool | None = None) -> None:
        """Set per-port flags of a bridge port; None leaves a flag alone.

        hairpin lets a frame go back out of the port it came in on (pod -> its own
        Service VIP); isolated ports can only talk to non-isolated ports.
        """
        flags = b""
        if hairpin is not None:
            flags += _u8(IFLA_BRPORT_MODE, int(hairpin))
        if isolated is not None:
            flags += _u8(IFLA_BRPORT_ISOLATED, int(isolated))
        if not flags:
            return
        # The bridge only parses IFLA_PROTINFO as port flags when it is marked nested.
        payload = _ifinfomsg(index, family=AF_BRIDGE) + _nest(IFLA_PROTINFO | NLA_F_NESTED, flags)
        self._ack(RTM_SETLINK, payload, f"set bridge port flags on link {index}")

    def _bridge_vlan(self, msg_type: int, index: int, vid: int, vid_end: int | None, flags: int, what: str) -> None:
        if vid_end is None or vid_end == vid:
            infos = _attr(IFLA_BRIDGE_VLAN_INFO, _BRIDGE_VLAN_INFO.pack(flags, vid))
        else:
            infos = (_attr(IFLA_BRIDGE_VLAN_INFO, _BRIDGE_VLAN_INFO.pack(flags | BRIDGE_VLAN_INFO_RANGE_BEGIN, vid))
                     + _attr(IFLA_BRIDGE_VLAN_INFO, _BRIDGE_VLAN_INFO.pack(flags | BRIDGE_VLAN_INFO_RANGE_END, vid_end)))
        self._ack(msg_type, _ifinfomsg(index, family=AF_BRIDGE) + _nest(IFLA_AF_SPEC, infos), what)

    def bridge_vlan_add(self, index: int, vid: int, vid_end: int | None = None,
                        pvid: bool = False, untagged: bool = False) -> None:
        """Allow VLAN `vid` (or the range vid..vid_end) on a bridge port.

        pvid: untagged ingress frames get this VLAN; untagged: egress frames leave
        without a tag. An access port is pvid+untagged, a trunk port neither.
        """
        flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
        self._bridge_vlan(RTM_SETLINK, index, vid, vid_end, flags, f"add vlan {vid} to link {index}")

    def bridge_vlan_del(self, index: int, vid: int, vid_end: int | None = None) -> None:
        """Remove VLAN `vid` (or a range) from a bridge port; NotFound if it was not there."""
        self._bridge_vlan(RTM_DELLINK, index, vid, vid_end, 0, f"delete vlan {vid} from link {index}")

    # -- addresses

    def list_addrs(self, index: int | None = None, family: int | None = None) -> list[Addr]:
        """Addresses of one link (or all), optionally only AF_INET or AF_INET6."""
        payload = _IFADDRMSG.pack(family or AF_UNSPEC, 0, 0, 0, 0)
        addrs = [Addr(body) for body in self._dump(RTM_GETADDR, payload, "list addresses")]
        return [a for a in addrs if (index is None or a.index == index) and (family is None or a.family == family)]

    def _addr_request(self, msg_type: int, index: int, address: str, prefixlen: int, what: str, flags: int = 0) -> None:
        family, packed = _pack_ip(address)
        attrs = _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        if msg_type == RTM_NEWADDR and family == AF_INET and prefixlen < 31:
            host_bits = (1 << (32 - prefixlen)) - 1
            attrs += _attr(IFA_BROADCAST, (int.from_bytes(packed, "big") | host_bits).to_bytes(4, "big"))
        self._ack(msg_type, _IFADDRMSG.pack(family, prefixlen, 0, RT_SCOPE_UNIVERSE, index) + attrs, what, flags)

    def add_addr(self, index: int, address: str, prefixlen: int) -> None:
        """Add address/prefixlen (v4 also gets its broadcast); AlreadyExists if present."""
        self._addr_request(RTM_NEWADDR, index, address, prefixlen,
                           f"add address {address}/{prefixlen} to link {index}", NLM_F_CREATE | NLM_F_EXCL)

    def del_addr(self, index: int, address: str, prefixlen: int) -> None:
        """Remove address/prefixlen; NotFound if the link or the address is not there."""
        self._addr_request(RTM_DELADDR, index, address, prefixlen,
                           f"delete address {address}/{prefixlen} from link {index}")

    # -- routes

    def list_routes(self, family: int, table: int | None = RT_TABLE_MAIN) -> list[Route]:
        """Configured routes of one family in `table` (None: every table)."""
        payload = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        routes = []
        for body in self._dump(RTM_GETROUTE, payload, "list routes"):
            if _RTMSG.unpack_from(body)[8] & RTM_F_CLONED:
                continue
            route = Route(body)
            if table is None or route.table == table:
                routes.append(route)
        return routes

    def add_route(self, dst: str, prefixlen: int, gw: str | None = None, oif: int | None = None,
                  table: int | None = None, scope: int | None = None, priority: int | None = None,
                  mtu: int | None = None, advmss: int | None = None) -> None:
        """Add a unicast route; AlreadyExists if an identical one is there.

        Default scope follows `ip route`: link for an IPv4 route without gateway,
        universe otherwise. Without NLM_F_EXCL, as the reference adds routes (netlink's
        RouteAddEcmp): a route to a destination that has one via another gateway is added
        beside it (IPv6 makes the two one multipath route), not refused.
        """
        table = RT_TABLE_MAIN if table is None else table
        family, attrs = _route_attrs(dst, prefixlen, gw, oif, table, priority)
        if scope is None:
            scope = RT_SCOPE_LINK if gw is None and family == AF_INET else RT_SCOPE_UNIVERSE
        metrics = (_u32(RTAX_MTU, mtu) if mtu else b"") + (_u32(RTAX_ADVMSS, advmss) if advmss else b"")
        if metrics:
            attrs += _nest(RTA_METRICS, metrics)
        header = _route_msg(family, prefixlen, table, RTPROT_BOOT, scope, RTN_UNICAST)
        self._ack(RTM_NEWROUTE, header + attrs, f"add route {dst}/{prefixlen}", NLM_F_CREATE)


def _extack_message(body: bytes, flags: int) -> str:
    """The kernel's error string from an NLMSG_ERROR body, if it sent one."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # nlmsgerr: int error, then the request's header (plus payload unless capped).
    offset = 4 + _NLMSGHDR.size
    if not flags & NLM_F_CAPPED:
        offset = 4 + ((_NLMSGHDR.unpack_from(body, 4)[0] + 3) & ~3)
    message = _attrs(body, offset).get(NLMSGERR_ATTR_MSG)
    return _get_str(message) if message else ""
