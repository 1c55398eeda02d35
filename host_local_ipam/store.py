"""Lease stores: the on-disk one, byte-compatible with the reference host-local, and an
in-memory one for unit tests. The allocator only ever talks to this interface:

    lock()                                 context manager, exclusive
    reserve(id, ifname, ip, set_index)     False if `ip` is taken; records last_reserved_ip;
                                           only under lock()
    last_reserved(set_index)               str | None
    get_by_id(id, ifname)                  [ip, ...] held by the attachment (or legacy id)
    release_by_id(id, ifname)              [ip, ...] released
    leases()                               [(ip, id, ifname or None for id-only files), ...]
    release(ip)

Disk layout (<dataDir>/<network>/): one file per address, named by the address and holding
"<id>\\r\\n<ifname>"; last_reserved_ip.<set index>; `lock`, flocked and never unlinked.
"""
from __future__ import annotations

import os
from fcntl import LOCK_EX, LOCK_UN, flock

LOCK_NAME = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
# A reservation is written under this name first and linked into place, so a crash never
# leaves an empty lease file (reference issue #498). It does not parse as an IP, so the Go
# plugin's lookups and GC tools ignore it; DEL and GC of the attachment remove a leftover.
# Reservations are serialized by the lock, so one name will do: a crash leaves at most one file.
RESERVING_PREFIX = ".reserving."
RESERVING_NAME = RESERVING_PREFIX + "tmp"


def _content(container_id: str, ifname: str) -> str:
    return f"{container_id.strip()}\r\n{ifname}"


def _is_bookkeeping(name: str) -> bool:
    return name == LOCK_NAME or name.startswith(LAST_RESERVED_PREFIX)


class _Lock:
    """flock(LOCK_EX) on <dir>/lock: blocking, the same inode the Go plugin locks."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        if self._fd < 0:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CREAT, 0o750)
        flock(self._fd, LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        flock(self._fd, LOCK_UN)


class DiskStore:
    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = os.path.join(data_dir, network)
        os.makedirs(self.dir, 0o755, exist_ok=True)
        self._lock = _Lock(os.path.join(self.dir, LOCK_NAME))

    def lock(self) -> _Lock:
        return self._lock

    def reserve(self, container_id: str, ifname: str, ip: str, set_index: int) -> bool:
        path = os.path.join(self.dir, ip)
        if os.path.lexists(path):
            return False
        tmp = os.path.join(self.dir, RESERVING_NAME)
        try:  # a crash leftover: never truncate it, it may be linked to a lease already
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, _content(container_id, ifname).encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        self._write_last_reserved(ip, set_index)
        return True

    def _write_last_reserved(self, ip: str, set_index: int) -> None:
        fd = os.open(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{set_index}"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, ip.encode())
        finally:
            os.close(fd)

    def last_reserved(self, set_index: int) -> str | None:
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{set_index}"), "rb") as f:
                return f.read().decode(errors="replace").strip() or None
        except FileNotFoundError:
            return None

    def _entries(self) -> list[tuple[str, str]]:
        """(name, stripped content) of every lease file, including reservation leftovers."""
        out = []
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in os.listdir(dir_fd):
                if _is_bookkeeping(name):
                    continue
                # os.open/os.read: a third of open()'s cost, for every lease on every call.
                try:
                    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                try:
                    data = os.read(fd, 4096)
                except IsADirectoryError:
                    continue
                finally:
                    os.close(fd)
                out.append((name, data.decode(errors="replace").strip()))
        finally:
            os.close(dir_fd)
        return out

    def get_by_id(self, container_id: str, ifname: str) -> list[str]:
        full, legacy = _content(container_id, ifname), container_id.strip()
        return [name for name, data in self._entries()
                if data in (full, legacy) and not name.startswith(RESERVING_PREFIX)]

    def release_by_id(self, container_id: str, ifname: str) -> list[str]:
        """Every file of the attachment; id-only (pre-0.8) files if there are none."""
        entries = self._entries()
        for match in (_content(container_id, ifname), container_id.strip()):
            names = [name for name, data in entries if data == match]
            if names:
                for name in names:
                    self.release(name)
                return [n for n in names if not n.startswith(RESERVING_PREFIX)]
        return []

    def leases(self) -> list[tuple[str, str, str | None]]:
        return [(name, *_split(data)) for name, data in self._entries()]

    def release(self, ip: str) -> None:
        try:
            os.unlink(os.path.join(self.dir, ip))
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

    def release(self, ip: str) -> None:
        self.files.pop(ip, None)


def _split(data: str) -> tuple[str, str | None]:
    container_id, sep, ifname = data.partition("\r\n")
    return container_id, ifname if sep else None
