"""DiskStore on a temp dir (no root needed): the reference's byte format, the crash-safe
reservation (temp file linked into place) and id-only legacy files. MemoryStore keeps the
same contract."""
from __future__ import annotations

import os
import stat

import pytest

from host_local_ipam.store import RESERVING_NAME, DiskStore, MemoryStore


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
