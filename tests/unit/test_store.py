"""DiskStore on a temp dir (no root needed): the reference's byte format, the crash-safe
reservation (temp file linked into place), id-only legacy files, and whatever else may be in
the directory (odd file types, files that are no leases, files larger than any lease of ours,
planted symlinks). MemoryStore keeps the same contract."""
from __future__ import annotations

import os
import signal
import socket
import stat

import pytest

from cni_protocol.request import MAX_CONTAINER_ID
from host_local_ipam.store import (LEASE_MAX, RESERVING_NAME, DiskStore, MemoryStore,
                                   is_address_name)


@pytest.fixture(params=["disk", "memory"])
def store(request, tmp_path):
    return DiskStore(str(tmp_path), "net1") if request.param == "disk" else MemoryStore()


def test_reserve_once(store):
    with store.lock():
        assert store.reserve("c1", "eth0", "10.1.2.2", 0)
        assert not store.reserve("c2", "eth0", "10.1.2.2", 0)
        assert store.reserve("c1", "eth1", "2001:db8::2", 1)
    assert store.last_reserved(0) == "10.1.2.2"
    assert store.last_reserved(1) == "2001:db8::2"
    assert store.last_reserved(2) is None
    assert sorted(store.leases()) == [("10.1.2.2", "c1", "eth0"), ("2001:db8::2", "c1", "eth1")]
    assert store.get_by_id("c1", "eth0") == ["10.1.2.2"]
    assert store.get_by_id("c2", "eth0") == []


def test_release_by_id_prefers_full_matches_then_legacy(store):
    store.reserve("c1", "eth0", "10.1.2.2", 0)
    store.reserve("c1", "eth1", "10.1.2.3", 0)
    _plant(store, "10.1.2.9", "c1")  # an id-only file of plugins < 0.8
    assert sorted(store.get_by_id("c1", "eth0")) == ["10.1.2.2", "10.1.2.9"]
    assert store.release_by_id("c1", "eth0") == ["10.1.2.2"]
    assert sorted(ip for ip, _, _ in store.leases()) == ["10.1.2.3", "10.1.2.9"]
    assert store.release_by_id("c1", "eth0") == ["10.1.2.9"]  # none left: the legacy form
    assert store.release_by_id("c1", "eth0") == []
    assert store.leases() == [("10.1.2.3", "c1", "eth1")]


def _plant(store, ip: str, content: str) -> None:
    if isinstance(store, MemoryStore):
        store.files[ip] = content
    else:
        with open(os.path.join(store.dir, ip), "w") as f:
            f.write(content)


def test_disk_format(tmp_path):
    s = DiskStore(str(tmp_path), "net1")
    with s.lock():
        s.reserve("c1", "eth0", "10.1.2.2", 3)
    d = tmp_path / "net1"
    assert sorted(os.listdir(d)) == ["10.1.2.2", "last_reserved_ip.3", "lock"]
    assert (d / "10.1.2.2").read_bytes() == b"c1\r\neth0"
    assert (d / "last_reserved_ip.3").read_bytes() == b"10.1.2.2"
    assert stat.S_IMODE((d / "10.1.2.2").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "last_reserved_ip.3").stat().st_mode) == 0o600


def test_disk_reservation_leftover_is_never_a_lease_and_del_removes_it(tmp_path):
    s = DiskStore(str(tmp_path), "net1")
    leftover = tmp_path / "net1" / RESERVING_NAME
    leftover.write_bytes(b"c1\r\neth0")  # killed between link() and unlink()
    assert s.get_by_id("c1", "eth0") == []
    assert s.release_by_id("c1", "eth0") == []
    assert not leftover.exists()


def test_disk_lease_file_is_never_overwritten(tmp_path):
    s = DiskStore(str(tmp_path), "net1")
    (tmp_path / "net1" / "10.1.2.2").write_bytes(b"")  # an empty file left by the Go plugin
    assert not s.reserve("c1", "eth0", "10.1.2.2", 0)
    assert (tmp_path / "net1" / "10.1.2.2").read_bytes() == b""
    assert sorted(os.listdir(tmp_path / "net1")) == ["10.1.2.2"]


def test_disk_leftover_linked_to_a_lease_is_not_truncated(tmp_path):
    """Killed between link() and unlink(): the temp name and a lease share one inode."""
    s = DiskStore(str(tmp_path), "net1")
    with s.lock():
        s.reserve("c1", "eth0", "10.1.2.2", 0)
    d = tmp_path / "net1"
    os.link(d / "10.1.2.2", d / RESERVING_NAME)
    with s.lock():
        assert s.reserve("c2", "eth0", "10.1.2.3", 0)
    assert (d / "10.1.2.2").read_bytes() == b"c1\r\neth0"
    assert (d / "10.1.2.3").read_bytes() == b"c2\r\neth0"
    assert sorted(os.listdir(d)) == ["10.1.2.2", "10.1.2.3", "last_reserved_ip.0", "lock"]


def test_disk_empty_leftover_is_replaced(tmp_path):
    """Killed between open() and write(): the next reservation leaves no trace of it."""
    s = DiskStore(str(tmp_path), "net1")
    (tmp_path / "net1" / RESERVING_NAME).write_bytes(b"")
    with s.lock():
        assert s.reserve("c1", "eth0", "10.1.2.2", 0)
    assert sorted(os.listdir(tmp_path / "net1")) == ["10.1.2.2", "last_reserved_ip.0", "lock"]


def test_reserved_names_every_address_taken(store):
    store.reserve("c1", "eth0", "10.1.2.2", 0)
    store.reserve("c2", "eth0", "2001:db8::2", 1)
    assert sorted(store.reserved()) == ["10.1.2.2", "2001:db8::2"]


# --- what else may be in the directory ---------------------------------------------------------

@pytest.fixture
def alarm():
    """Fail instead of hanging: an open() that blocks (a FIFO) is interrupted after 5 s."""
    def timeout(*_):
        raise TimeoutError("blocked for 5 s")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _odd_entries(d) -> None:
    """A symlink loop, a FIFO, a socket, a directory, a dangling symlink and a symlink to a
    lease, some of them named as addresses; and files that are no leases of ours."""
    os.symlink("loop", d / "loop")
    os.symlink(d / "10.1.2.50", d / "10.1.2.50")  # a loop named as an address
    os.mkfifo(d / "10.1.2.51")
    os.mkfifo(d / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "10.1.2.52"))
    sock.close()
    (d / "10.1.2.53").mkdir()
    os.symlink("/nonexistent", d / "10.1.2.54")
    (d.parent / "target").write_bytes(b"c1\r\neth0")
    os.symlink(d.parent / "target", d / "10.1.2.55")
    (d / "notes.txt").write_bytes(b"c9")
    (d / "010.1.2.56").write_bytes(b"c9\r\neth0")  # parses as an address, not as we name one


def test_odd_entries_are_skipped_and_never_block(tmp_path, alarm):
    s = DiskStore(str(tmp_path), "net1")
    d = tmp_path / "net1"
    _odd_entries(d)
    with s.lock():
        assert s.reserve("c1", "eth0", "10.1.2.2", 0)
        for taken in ("10.1.2.50", "10.1.2.51", "10.1.2.52", "10.1.2.53", "10.1.2.54"):
            assert not s.reserve("c2", "eth0", taken, 0)  # a name in the way is a taken address
    assert s.get_by_id("c1", "eth0") == ["10.1.2.2"]  # not the symlink to a lease
    assert s.leases() == [("10.1.2.2", "c1", "eth0")]  # GC sees only what it may release
    assert sorted(s.reserved()) == ["10.1.2.2", "10.1.2.50", "10.1.2.51", "10.1.2.52",
                                    "10.1.2.53", "10.1.2.54", "10.1.2.55"]
    assert s.release_by_id("c1", "eth0") == ["10.1.2.2"]
    assert s.release_by_id("c9", "eth0") == ["010.1.2.56"]  # a file of the attachment's bytes
    assert s.release_by_id("c9", "eth0") == ["notes.txt"]   # (DEL matches content, as Go does)
    assert (tmp_path / "target").read_bytes() == b"c1\r\neth0"
    assert stat.S_ISFIFO((d / "10.1.2.51").lstat().st_mode)


def test_leases_are_only_files_named_as_the_store_names_them(tmp_path):
    """GC releases what leases() lists and the runtime did not keep: never notes.txt."""
    s = DiskStore(str(tmp_path), "net1")
    d = tmp_path / "net1"
    with s.lock():
        s.reserve("c1", "eth0", "10.1.2.2", 0)
    for name in ("notes.txt", "README", "10.1.2.3.bak", "010.1.2.4", " 10.1.2.5",
                 "::ffff:10.1.2.6", "2001:DB8::7", "2001:db8:0::8", ".reserving.99"):
        (d / name).write_bytes(b"x")
    (d / "2001:db8::9").write_bytes(b"legacy")
    (d / RESERVING_NAME).write_bytes(b"c2\r\neth0")
    assert sorted(s.leases()) == [(RESERVING_NAME, "c2", "eth0"), ("10.1.2.2", "c1", "eth0"),
                                  ("2001:db8::9", "legacy", None)]


@pytest.mark.parametrize("name, expected", [
    ("10.1.2.3", True), ("2001:db8::1", True), ("::", True), ("::102:304", True),
    ("010.1.2.3", False), ("10.1.2.3 ", False), ("::ffff:10.1.2.3", False),
    ("2001:0db8::1", False), ("2001:DB8::1", False), ("::1.2.3.4", False), ("lock", False),
    ("last_reserved_ip.0", False), (RESERVING_NAME, False), ("10.1.2.3\udcff", False),
])
def test_is_address_name(name, expected):
    assert is_address_name(name) is expected


def test_a_lease_of_the_largest_accepted_id_is_read_whole(tmp_path):
    s = DiskStore(str(tmp_path), "net1")
    cid = "f" * MAX_CONTAINER_ID
    with s.lock():
        s.reserve(cid, "x" * 15, "10.1.2.2", 0)
    assert (tmp_path / "net1" / "10.1.2.2").stat().st_size == LEASE_MAX
    assert s.get_by_id(cid, "x" * 15) == ["10.1.2.2"]
    assert s.leases() == [("10.1.2.2", cid, "x" * 15)]


def test_a_file_larger_than_any_lease_of_ours_is_not_one(tmp_path):
    """A lease whose ID is longer than ours can be (the Go plugin has no limit): read in part,
    it would look like the id-only file of another container, and GC would free it although
    its attachment is valid. Not read at all, it is never matched nor released."""
    s = DiskStore(str(tmp_path), "net1")
    cid = "g" * 5000
    (tmp_path / "net1" / "10.1.2.9").write_bytes(f"{cid}\r\neth0".encode())
    (tmp_path / "net1" / "10.1.2.10").write_bytes(b"c1\r\neth0" + b" " * 8192)
    assert s.leases() == []
    assert s.get_by_id("c1", "eth0") == []
    assert s.get_by_id(cid, "eth0") == []
    assert s.release_by_id("c1", "eth0") == []
    assert sorted(os.listdir(tmp_path / "net1")) == ["10.1.2.10", "10.1.2.9"]


# --- the store's own files: lock, last_reserved_ip.N, the reservation temp file --------------------

KINDS = ["symlink", "dangling-symlink", "fifo", "socket", "directory"]


def _planted(tmp_path, name: str, kind: str) -> DiskStore:
    """A store whose `name` is of `kind`; a symlink leads to tmp_path/target ("precious")."""
    (tmp_path / "net1").mkdir()
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    path = tmp_path / "net1" / name
    if kind == "symlink":
        os.symlink(target, path)
    elif kind == "dangling-symlink":
        os.symlink(tmp_path / "nonexistent", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        path.mkdir()
    return DiskStore(str(tmp_path), "net1")


@pytest.mark.parametrize("kind", KINDS)
def test_a_lock_that_is_not_a_regular_file_is_refused(tmp_path, alarm, kind):
    s = _planted(tmp_path, "lock", kind)
    with pytest.raises(OSError) as e:
        with s.lock():
            pass
    assert e.value.filename == str(tmp_path / "net1" / "lock")
    assert e.value.strerror in ("is a symbolic link, refusing to follow it",
                                "is not a regular file", "Is a directory"), e.value
    assert (tmp_path / "target").read_bytes() == b"precious"


@pytest.mark.parametrize("kind", KINDS)
def test_a_last_reserved_ip_that_is_not_a_regular_file_is_refused(tmp_path, alarm, kind):
    """A planted symlink made an ADD overwrite its target (the Go plugin follows it too)."""
    s = _planted(tmp_path, "last_reserved_ip.0", kind)
    d, target = tmp_path / "net1", tmp_path / "target"
    with pytest.raises(OSError) as e:
        s.last_reserved(0)
    assert e.value.filename == str(d / "last_reserved_ip.0")
    with s.lock(), pytest.raises(OSError) as e:
        s.reserve("c1", "eth0", "10.1.2.2", 0)
    assert e.value.filename == str(d / "last_reserved_ip.0")
    assert target.read_bytes() == b"precious"
    assert sorted(os.listdir(d)) == ["last_reserved_ip.0", "lock"]  # the lease was undone


def test_last_reserved_ip_is_read_within_bounds(tmp_path):
    d = tmp_path / "net1"
    s = DiskStore(str(tmp_path), "net1")
    (d / "last_reserved_ip.0").write_bytes(b" 2001:db8:1:2:3:4:5:6\n")
    assert s.last_reserved(0) == "2001:db8:1:2:3:4:5:6"
    (d / "last_reserved_ip.0").write_bytes(b"10.1.2.3" + b"\n" * (1 << 20))
    assert s.last_reserved(0) is None  # not an address: no hint, as for garbage
    with s.lock():
        assert s.reserve("c1", "eth0", "10.1.2.2", 0)
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.1.2.2"


def test_a_planted_reservation_temp_symlink_is_not_followed(tmp_path):
    d = tmp_path / "net1"
    s = DiskStore(str(tmp_path), "net1")
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    os.symlink(target, d / RESERVING_NAME)
    with s.lock():
        assert s.reserve("c1", "eth0", "10.1.2.2", 0)
    assert target.read_bytes() == b"precious"
    assert (d / "10.1.2.2").read_bytes() == b"c1\r\neth0"
    assert sorted(os.listdir(d)) == ["10.1.2.2", "last_reserved_ip.0", "lock"]


class _FailingPosix:
    """host_local_ipam.store's `posix`, whose unlink() of an existing reservation temp file
    fails (EIO), as `strace -e inject=unlink:error=EIO:when=2` makes it on a host-local ADD."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def unlink(self, path, *args, **kwargs):
        if str(path).endswith(RESERVING_NAME) and os.path.lexists(path):
            raise OSError(5, "Input/output error", path)
        return self._real.unlink(path, *args, **kwargs)


def test_a_reservation_whose_temp_name_cannot_be_removed_still_holds(tmp_path, monkeypatch):
    """The lease is linked into place, then unlinking the temp name fails: the reservation
    stands (the caller learns of it, so a failed ADD releases it) and the leftover goes with
    the next reservation; it was an OSError that left the lease to nobody."""
    import host_local_ipam.store as store_module
    store = DiskStore(str(tmp_path), "net1")
    monkeypatch.setattr(store_module, "posix", _FailingPosix(store_module.posix))
    with store.lock():
        assert store.reserve("c1", "eth0", "10.1.2.2", 0)
    assert (tmp_path / "net1" / "10.1.2.2").read_bytes() == b"c1\r\neth0"
    assert store.last_reserved(0) == "10.1.2.2"
    monkeypatch.undo()
    with store.lock():
        assert store.reserve("c2", "eth0", "10.1.2.3", 0)
    assert not (tmp_path / "net1" / RESERVING_NAME).exists()
    assert store.get_by_id("c1", "eth0") == ["10.1.2.2"]


def test_a_failing_unlock_neither_fails_the_verb_nor_keeps_the_lock(tmp_path, monkeypatch):
    """flock(LOCK_UN) failing (EIO, injected) after a reservation: the lease stands and the
    lock is free, since the fd is closed; it was an OSError out of the lock's __exit__."""
    import fcntl
    import host_local_ipam.store as store_module
    store = DiskStore(str(tmp_path), "net1")

    def flock(fd, op):
        if op == fcntl.LOCK_UN:
            raise OSError(5, "Input/output error")
        return fcntl.flock(fd, op)
    monkeypatch.setattr(store_module, "flock", flock)
    with store.lock():
        assert store.reserve("c1", "eth0", "10.1.2.2", 0)
    fd = os.open(tmp_path / "net1" / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no BlockingIOError
    finally:
        os.close(fd)
    assert store.get_by_id("c1", "eth0") == ["10.1.2.2"]


def test_cni_inspect_reads_the_leases_as_the_store_does(tmp_path, alarm):
    """cni-inspect lists a network's leases through this store: a FIFO named as an address (it
    used to open it and hang) and the other odd entries are skipped, leases come in address
    order with their paths."""
    from cni_inspect.leases import leases
    d = tmp_path / "net1"
    d.mkdir()
    _odd_entries(d)
    for ip, content in (("10.1.2.9", b"c2\r\neth0"), ("10.1.2.10", b"c3"), ("fd00::5", b"c4\r\neth1")):
        (d / ip).write_bytes(content)
    assert [(l.ip, l.container_id, l.ifname, l.path) for l in leases(str(tmp_path), "net1")] == [
        ("10.1.2.9", "c2", "eth0", str(d / "10.1.2.9")), ("10.1.2.10", "c3", None, str(d / "10.1.2.10")),
        ("fd00::5", "c4", "eth1", str(d / "fd00::5"))]
    assert leases(str(tmp_path), "absent") == []
