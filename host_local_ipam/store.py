"""Lease stores: the on-disk one, byte-compatible with the reference host-local, and an
in-memory one for unit tests. The allocator only ever talks to this interface:

    lock()                                 context manager, exclusive
    reserve(id, ifname, ip, set_index)     False if `ip` is taken; records last_reserved_ip;
                                           only under lock()
    last_reserved(set_index)               str | None
    get_by_id(id, ifname)                  [ip, ...] held by the attachment (or legacy id)
    release_by_id(id, ifname)              [ip, ...] released
    leases()                               [(ip, id, ifname or None for id-only files), ...]
    reserved()                             [ip, ...] every address taken, lease or not
    release(ip)

Disk layout (<dataDir>/<network>/): one file per address, named by the address and holding
"<id>\\r\\n<ifname>"; last_reserved_ip.<set index>; `lock`, flocked and never unlinked.
Whatever else is in the directory (a symlink, a FIFO, a socket, a subdirectory, a file larger
than any lease of ours) is skipped, never opened in a way that could block, follow a link or
read without bound. A lookup by attachment matches the content of any other file, as the
reference's does; leases() (what GC may release) lists only files named as addresses and the
reservation temp file.
"""
from __future__ import annotations

import _stat as stat  # the C module: stat.py only re-exports it
import posix  # not os (~2 ms of start-up, see cni_protocol/skel.py): no os.path here
from fcntl import LOCK_EX, LOCK_UN, flock

from cni_protocol.ip import fmt, parse_ip
from cni_protocol.request import IFNAMSIZ, MAX_CONTAINER_ID

DEFAULT_DATA_DIR = "/var/lib/cni/networks"  # the dataDir of a conf that names none
LOCK_NAME = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
# A reservation is written under this name first and linked into place, so a crash never
# leaves an empty lease file (reference issue #498). It does not parse as an IP, so the Go
# plugin's lookups and GC tools ignore it; DEL and GC of the attachment remove a leftover.
# Reservations are serialized by the lock, so one name will do: a crash leaves at most one file.
RESERVING_PREFIX = ".reserving."
RESERVING_NAME = RESERVING_PREFIX + "tmp"
# The largest lease an ADD of ours can write: a longer file is not one of ours.
LEASE_MAX = MAX_CONTAINER_ID + len("\r\n") + IFNAMSIZ - 1
# An address in text, with room for whitespace a hand edit may have left (a hint only).
LAST_RESERVED_MAX = 64


# Files that someone else may have put in our way (a lease dir, `resolvConf`) are opened with
# O_NONBLOCK, so that a FIFO never hangs the plugin, and read within a bound, so that /dev/zero
# or a huge file cannot exhaust memory. (Here rather than in a module of their own: dns.py uses
# them too, and a module costs ~0.1 ms of start-up on every call.)
READ_FLAGS = posix.O_RDONLY | posix.O_NONBLOCK


def read_at_most(fd: int, limit: int) -> bytes | None:
    """The file's bytes up to its end, or None if it holds more than `limit` bytes."""
    data = b""
    while True:
        chunk = posix.read(fd, limit + 1 - len(data))
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            return None


def _content(container_id: str, ifname: str) -> str:
    return f"{container_id.strip()}\r\n{ifname}"


def is_address_name(name: str) -> bool:
    """A name as the store (and Go's net.IP.String()) writes an address, not merely one that
    parses as an address ('010.1.2.3', '::ffff:10.1.2.3' and ' 10.1.2.3' do not count)."""
    try:
        return fmt(*parse_ip(name)) == name
    except ValueError:
        return False


def _open_own(path: str, flags: int, mode: int = 0o600) -> int:
    """Open one of the store's own files (lock, last_reserved_ip.N) without following a
    symlink or blocking on a FIFO; anything but a regular file is refused."""
    try:
        fd = posix.open(path, flags | posix.O_NOFOLLOW | posix.O_NONBLOCK, mode)
    except OSError:  # ELOOP for a symlink, ENXIO for a socket: say which, from lstat
        refusal = _refusal(path)
        if refusal is None:
            raise
        raise refusal from None
    if not stat.S_ISREG(posix.fstat(fd).st_mode):
        posix.close(fd)
        raise _refusal(path) or OSError(None, "is not a regular file", path)
    return fd


def _refusal(path: str) -> OSError | None:
    """What stands where one of our files should be, as an OSError without errno (the
    `errno` module alone costs 0.1 ms of start-up): None if it is a regular file or nothing."""
    try:
        mode = posix.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return OSError(None, "is a symbolic link, refusing to follow it", path)
    if not stat.S_ISREG(mode):
        return OSError(None, "is not a regular file", path)
    return None


def _unlink_leftover(path: str) -> None:
    try:
        posix.unlink(path)
    except OSError:
        pass


def _join(directory: str, name: str) -> str:
    """os.path.join for a name without slashes."""
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def _lexists(path: str) -> bool:
    try:
        posix.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _makedirs(path: str, mode: int) -> None:
    """os.makedirs(path, mode, exist_ok=True): parents with the default mode, as it does;
    a concurrent ADD creating the same directories is no error."""
    try:
        posix.mkdir(path, mode)
        return
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = path.rstrip("/").rpartition("/")[0]
        if not parent:
            raise
        _makedirs(parent, 0o777)
        try:
            posix.mkdir(path, mode)
            return
        except FileExistsError:
            pass
    if not stat.S_ISDIR(posix.stat(path).st_mode):
        raise FileExistsError(17, "File exists", path)


class _Lock:
    """flock(LOCK_EX) on <dir>/lock: blocking, the same inode the Go plugin locks."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        # O_NONBLOCK is for open() only: flock() blocks unless LOCK_NB
        self._fd = _open_own(self._path, posix.O_RDONLY | posix.O_CREAT, 0o750)
        flock(self._fd, LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, -1
        try:
            flock(fd, LOCK_UN)
        except OSError:
            pass  # closing our only fd of the file releases the lock all the same
        finally:
            posix.close(fd)  # the bridge's process runs several host-local verbs: no fd kept


class DiskStore:
    def __init__(self, data_dir: str, network: str, create: bool = True) -> None:
        """`create` False: for reading only (the bridge looking up a lease), the directory
        must exist already (FileNotFoundError otherwise)."""
        self.dir = _join(data_dir, network)
        if create:
            _makedirs(self.dir, 0o755)
        elif not stat.S_ISDIR(posix.stat(self.dir).st_mode):
            raise NotADirectoryError(20, "Not a directory", self.dir)
        self._lock = _Lock(_join(self.dir, LOCK_NAME))

    def lock(self) -> _Lock:
        return self._lock

    def reserve(self, container_id: str, ifname: str, ip: str, set_index: int) -> bool:
        path = _join(self.dir, ip)
        if _lexists(path):
            return False
        tmp = _join(self.dir, RESERVING_NAME)
        try:  # a crash leftover: never truncate it, it may be linked to a lease already
            posix.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW, 0o600)
        try:
            posix.write(fd, _content(container_id, ifname).encode())
        finally:
            posix.close(fd)
        try:
            posix.link(tmp, path)
        except FileExistsError:
            posix.unlink(tmp)
            return False
        except BaseException:
            _unlink_leftover(tmp)  # the link's error is the one to report
            raise
        # The lease is in place: a temp name that cannot be removed now is a leftover like a
        # crash's (the next reservation or the attachment's DEL removes it), not a failure
        # that would lose this lease to the caller.
        _unlink_leftover(tmp)
        try:
            self._write_last_reserved(ip, set_index)
        except BaseException:
            self.release(ip)  # the caller never learns of this lease: do not leak it
            raise
        return True

    def _write_last_reserved(self, ip: str, set_index: int) -> None:
        fd = _open_own(_join(self.dir, f"{LAST_RESERVED_PREFIX}{set_index}"),
                       posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC)
        try:
            posix.write(fd, ip.encode())
        finally:
            posix.close(fd)

    def last_reserved(self, set_index: int) -> str | None:
        try:
            fd = _open_own(_join(self.dir, f"{LAST_RESERVED_PREFIX}{set_index}"),
                           posix.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = read_at_most(fd, LAST_RESERVED_MAX)
        finally:
            posix.close(fd)
        if not data:  # empty, or too long to be an address: no hint
            return None
        return data.decode(errors="replace").strip() or None

    def _entries(self) -> list[tuple[str, str]]:
        """(name, stripped content) of every lease file, including a reservation leftover."""
        out = []
        dir_fd = posix.open(self.dir, posix.O_RDONLY | posix.O_DIRECTORY)
        try:
            with posix.scandir(dir_fd) as listing:
                for entry in listing:
                    # d_type from the listing: no syscall to skip links, FIFOs, sockets, dirs
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    name = entry.name
                    if name == LOCK_NAME or name.startswith(LAST_RESERVED_PREFIX):
                        continue
                    # posix.open/posix.read: a third of open()'s cost, for every lease on every call.
                    try:  # O_NOFOLLOW, O_NONBLOCK: it may have been replaced since the listing
                        fd = posix.open(name, READ_FLAGS | posix.O_NOFOLLOW, dir_fd=dir_fd)
                    except OSError:
                        continue
                    try:  # one read: Linux reads a regular file short only at its end
                        data = posix.read(fd, LEASE_MAX + 1)
                    except OSError:
                        continue
                    finally:
                        posix.close(fd)
                    if len(data) <= LEASE_MAX:  # else larger than any lease of ours
                        out.append((name, data.decode(errors="replace").strip()))
        finally:
            posix.close(dir_fd)
        return out

    def get_by_id(self, container_id: str, ifname: str) -> list[str]:
        full, legacy = _content(container_id, ifname), container_id.strip()
        return [name for name, data in self._entries()
                if data in (full, legacy) and name != RESERVING_NAME]

    def release_by_id(self, container_id: str, ifname: str) -> list[str]:
        """Every file of the attachment; id-only (pre-0.8) files if there are none.

        A reservation's temp file goes too, whoever's it is: under the lock no reservation is
        under way, so it is a crash's leftover (an ADD killed before it wrote the file leaves
        it empty: nothing would match it), and it never holds an address by itself (a lease
        already linked from it is another name of the same file, which stays)."""
        entries = self._entries()
        if any(name == RESERVING_NAME for name, _ in entries):
            self.release(RESERVING_NAME)
        for match in (_content(container_id, ifname), container_id.strip()):
            names = [name for name, data in entries if data == match and name != RESERVING_NAME]
            if names:
                for name in names:
                    self.release(name)
                return names
        return []

    def leases(self) -> list[tuple[str, str, str | None]]:
        """Only files named as the store names them: GC releases what is not kept."""
        return [(name, *_split(data)) for name, data in self._entries()
                if name == RESERVING_NAME or is_address_name(name)]

    def reserved(self) -> list[str]:
        """Names only, read from the listing: any file of an address's name blocks reserve()."""
        return [name for name in posix.listdir(self.dir) if is_address_name(name)]

    def release(self, ip: str) -> None:
        try:
            posix.unlink(_join(self.dir, ip))
        except FileNotFoundError:
            pass


class _NoLock:
    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


class MemoryStore:
    """The same contract in a dict, for allocator unit tests (no filesystem, no root)."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.last: dict[int, str] = {}

    def lock(self) -> _NoLock:
        return _NoLock()

    def reserve(self, container_id: str, ifname: str, ip: str, set_index: int) -> bool:
        if ip in self.files:
            return False
        self.files[ip] = _content(container_id, ifname)
        self.last[set_index] = ip
        return True

    def last_reserved(self, set_index: int) -> str | None:
        return self.last.get(set_index)

    def get_by_id(self, container_id: str, ifname: str) -> list[str]:
        full, legacy = _content(container_id, ifname), container_id.strip()
        return [ip for ip, data in self.files.items() if data in (full, legacy)]

    def release_by_id(self, container_id: str, ifname: str) -> list[str]:
        for match in (_content(container_id, ifname), container_id.strip()):
            ips = [ip for ip, data in self.files.items() if data == match]
            if ips:
                for ip in ips:
                    del self.files[ip]
                return ips
        return []

    def leases(self) -> list[tuple[str, str, str | None]]:
        return [(ip, *_split(data)) for ip, data in self.files.items()]

    def reserved(self) -> list[str]:
        return list(self.files)

    def release(self, ip: str) -> None:
        self.files.pop(ip, None)


def _split(data: str) -> tuple[str, str | None]:
    container_id, sep, ifname = data.partition("\r\n")
    return container_id, ifname if sep else None
