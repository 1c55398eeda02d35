"""ipMasq: per-attachment SNAT of a pod's traffic leaving its subnet, in one of three backends.

- legacy: the legacy iptables tables, through python-iptables (legacy.py);
- iptables-nft: the nf_tables-backed iptables tables, as iptables-nft writes them
  (iptables_nft.py), where the reference's iptables calls land on most hosts today;
- nftables: table `inet cni_plugins_masquerade` (nftables.py), `ipMasqBackend: "nftables"`.

Their rules are the reference's, byte for byte (names and comments in naming.py), so that the
Go plugins' DEL removes ours and ours theirs. The verbs see only this interface:

    choose(setting)                  the backend ADD writes to (selection.py), checked up front
    setup(backend, attachment, cidrs)
    teardown(attachment, cidrs, lookup)  in every backend; cidrs None: ask lookup() if needed
    gc(network, valid attachments, leases)  in every backend
    missing(backend, attachment, cidrs)  what CHECK finds absent

where an attachment is (network, container ID, ifname). A teardown first asks the kernel,
cheaply, whether anything of the attachment exists in each backend (a netlink GET, a
getsockopt, a /proc read), and changes a table only if it does: the second DEL of every pod
costs no more than that look. All failures raise MasqueradeError with a one-line message.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only; typing is never imported at run time
    from collections.abc import Callable

    from .addresses import JumpOwner, PodAddress


class MasqueradeError(Exception):
    """An ipMasq step failed; str() is one line fit for a CNI error ``msg``."""


def error(what: str, exc: BaseException | None = None) -> MasqueradeError:
    """The one-line domain error, keeping the library's own words."""
    if exc is None:
        return MasqueradeError(f"ipMasq: {what}")
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if "b'" in detail or 'b"' in detail:  # python-iptables formats libiptc's bytes with %s
        import re

        detail = re.sub(r"""\bb(['"])(.*?)\1""", r"\2", detail)
    return MasqueradeError(f"ipMasq: {what}: {detail}")


class Attachment:
    """(network, container ID, ifname): what a pod's rules belong to."""

    __slots__ = ("network", "container_id", "ifname")

    def __init__(self, network: str, container_id: str, ifname: str) -> None:
        self.network, self.container_id, self.ifname = network, container_id, ifname


def choose(setting: str | None) -> str:
    """The backend for `ipMasqBackend` (None: unset); on a legacy host python-iptables starts
    loading in a thread at once, so that it is ready when the ADD gets to it."""
    from .naming import LEGACY
    from .selection import choose as choose_backend

    backend = choose_backend(setting)
    if backend == LEGACY:
        from .iptc_loader import preload
        preload()
    return backend


def _addresses(cidrs: list[str]) -> list[PodAddress]:
    from .addresses import parse

    try:
        return parse(cidrs)
    except ValueError as e:
        raise error(f"invalid pod address: {e}") from None


def _by_family(addresses: list[PodAddress]) -> dict[int, list[PodAddress]]:
    groups: dict[int, list[PodAddress]] = {}
    for address in addresses:
        groups.setdefault(address.family, []).append(address)
    return groups


def _nft_error(backend: str, e: OSError) -> MasqueradeError:
    return error(f"{backend}: {e}")


def setup(backend: str, att: Attachment, cidrs: list[str]) -> None:
    """Masquerade the attachment's addresses in `backend` (from `choose`); idempotent."""
    addresses = _addresses(cidrs)
    if not addresses:
        return
    if backend == "legacy":  # naming.LEGACY
        from . import legacy
        for family, group in _by_family(addresses).items():
            legacy.setup(family, att.network, att.container_id, group)
        return
    from .. import nfnetlink as nf
    try:
        with nf.NfTables() as nft:
            if backend == "nftables":
                from . import nftables
                nftables.setup(nft, att.network, att.container_id, att.ifname, addresses)
            else:
                from . import iptables_nft
                for family, group in _by_family(addresses).items():
                    iptables_nft.setup(nft, family, att.network, att.container_id, group)
    except OSError as e:
        raise _nft_error(backend, e) from None


def teardown(att: Attachment, cidrs: list[str] | None,
             lookup: Callable[[], tuple[list[str], list[str]] | None] | None = None) -> None:
    """Remove the attachment's rules from every backend that holds any.

    The iptables backends share one chain among a container's interfaces on the network and
    tell this attachment's jumps by their source addresses (addresses.JumpOwner): `cidrs`,
    else `lookup()` (host-local's leases: the attachment's, and its container's other
    attachments'), asked only once a chain of the container turns out to exist. When neither
    knows (no netns, no prevResult, no lease), every jump of the chain goes, as in the
    reference."""
    from . import naming
    from .addresses import JumpOwner
    from .. import nfnetlink as nf

    known: list = []

    def owner_of(family: int) -> Callable[[], JumpOwner]:
        def decide() -> JumpOwner:
            if not known:
                known.append(_jump_owner(cidrs, lookup))
            mine, others = known[0]
            return JumpOwner(None if mine is None else [a for a in mine if a.family == family],
                             others)
        return decide

    # Each backend's module is imported only once the kernel says something may be there:
    # the second DEL of every pod asks and imports no more than that.
    errors = []
    for family in (4, 6):
        if legacy_nat_table_exists(family):
            from . import legacy
            try:
                legacy.teardown(family, att.network, att.container_id, owner_of(family))
            except MasqueradeError as e:
                errors.append(str(e))
    try:
        nft = nf.NfTables()
    except OSError:
        nft = None  # no nf_tables in this kernel: nothing of ours can be there
    if nft is not None:
        chain = naming.iptables_chain(att.network, att.container_id)
        with nft:
            for family, nf_family in ((4, nf.IPV4), (6, nf.IPV6)):
                try:
                    if nft.get_chain(nf_family, "nat", chain) is not None:
                        from . import iptables_nft
                        iptables_nft.teardown(nft, family, att.network, att.container_id,
                                              owner_of(family))
                except OSError as e:
                    errors.append(str(_nft_error(naming.IPTABLES_NFT, e)))
            try:
                if nft.has_table(nf.INET, naming.NFT_TABLE):
                    from . import nftables
                    nftables.teardown(nft, att.network, att.container_id, att.ifname)
            except OSError as e:
                errors.append(str(_nft_error(naming.NFTABLES, e)))
    if errors:
        raise MasqueradeError("; ".join(errors))


def _jump_owner(cidrs: list[str] | None, lookup) -> tuple[list[PodAddress] | None, set[bytes]]:
    """(the attachment's addresses or None, the packed addresses of its container's others)."""
    if cidrs is not None:
        return _addresses(cidrs), set()
    found = lookup() if lookup else None
    if found is None:
        return None, set()
    mine, others = found
    return (_addresses(mine) if mine else None), {a.packed for a in _addresses(others)}


def legacy_nat_table_exists(family: int) -> bool:
    """Whether this netns has a legacy nat table for the family.

    Read from /proc (per netns), so DEL/GC on a host without one neither loads libiptc nor
    creates an empty legacy table as a side effect (asking the kernel for a table that was
    never used creates it, and iptables-nft then warns "iptables-legacy tables present").
    """
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    for base in ("/proc/thread-self/net", "/proc/net"):  # thread-self: right netns even after a thread setns()
        try:
            with open(f"{base}/{name}", "rb") as f:
                return b"nat" in f.read().split()
        except FileNotFoundError:
            continue
        except OSError:
            return True  # cannot tell: look for real
    return False  # x_tables for this family is not loaded: no legacy tables at all


def _valid_sources(container_id: str, valid: set[tuple[str, str]],
                   leases: list[tuple[str, str, str | None]] | None) -> set[bytes] | None:
    """The packed addresses the container's valid attachments hold, or None if a valid
    attachment of it holds no lease (then nothing tells which jumps are whose)."""
    if leases is None:
        return None
    from .addresses import PodAddress

    ifnames = {ifname for cid, ifname in valid if cid == container_id}
    held: dict[str, list[str]] = {}
    for ip, cid, ifname in leases:
        if cid == container_id and ifname in ifnames:
            held.setdefault(ifname, []).append(ip)
    if set(held) != ifnames:
        return None
    try:
        return {PodAddress(ip).packed for ips in held.values() for ip in ips}
    except ValueError:
        return None


def missing(backend: str, att: Attachment, cidrs: list[str]) -> list[str]:
    """What of the attachment's rules `backend` lacks (CHECK): empty when all are there."""
    addresses = _addresses(cidrs)
    if not addresses:
        return []
    if backend == "legacy":
        from . import legacy
        return [gap for family, group in _by_family(addresses).items()
                for gap in legacy.missing(family, att.network, att.container_id, group)]
    from .. import nfnetlink as nf
    try:
        with nf.NfTables() as nft:
            if backend == "nftables":
                from . import nftables
                return nftables.missing(nft, att.network, att.container_id, att.ifname,
                                        addresses)
            from . import iptables_nft
            return [gap for family, group in _by_family(addresses).items()
                    for gap in iptables_nft.missing(nft, family, att.network, att.container_id,
                                                    group)]
    except OSError as e:
        raise _nft_error(backend, e) from None


def gc(network: str, valid: set[tuple[str, str]],
       leases: list[tuple[str, str, str | None]] | None = None) -> None:
    """Remove the network's rules of attachments not in `valid` ((container ID, ifname)
    pairs), in every backend. Best effort: every backend is tried, the errors are joined.

    `leases` (host-local's, (address, container ID, ifname)) tell the iptables backends which
    jumps of a shared chain belong to valid attachments: a container whose every valid
    attachment holds a lease keeps only those addresses' jumps. Without them a valid
    container's chain is kept whole."""
    from . import legacy, naming
    from .. import nfnetlink as nf

    keep = {naming.iptables_chain(network, cid): _valid_sources(cid, valid, leases)
            for cid, _ in valid}
    errors = []
    for family in (4, 6):
        try:
            legacy.gc(family, network, keep)
        except MasqueradeError as e:
            errors.append(str(e))
    try:
        nft = nf.NfTables()
    except OSError:
        nft = None
    if nft is not None:
        from . import iptables_nft, nftables
        with nft:
            for family in (4, 6):
                try:
                    iptables_nft.gc(nft, family, network, keep)
                except OSError as e:
                    errors.append(str(_nft_error(iptables_nft.NAME, e)))
            try:
                nftables.gc(nft, network, valid)
            except OSError as e:
                errors.append(str(_nft_error(nftables.NAME, e)))
    if errors:
        raise MasqueradeError("; ".join(errors))
