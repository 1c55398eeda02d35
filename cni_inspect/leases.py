"""host-local's lease store: `<dataDir>/<network>/<ip>` holding `<containerID>\\r\\n<ifname>`.

Files of other names (`lock`, `last_reserved_ip.<N>`, a reservation's temporary name) are not
leases. A file holding only the container ID is a lease of a plugin before v0.8 (any ifname).
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from host_local_ipam.store import RESERVING_NAME, DiskStore


@dataclass
class Lease:
    path: str
    ip: str
    container_id: str
    ifname: str | None  # None: a legacy id-only lease

    def names(self, container_id: str | None, ifname: str) -> bool:
        return (container_id is not None and self.container_id == container_id
                and self.ifname in (None, ifname))

    def summary(self) -> dict:
        return {"path": self.path, "ip": self.ip, "container_id": self.container_id,
                "ifname": self.ifname}


def store_dir(data_dir: str, network: str) -> str:
    return os.path.join(data_dir, network)


def leases(data_dir: str, network: str) -> list[Lease]:
    """Every lease of the network, in address order, read by host-local's own store: a FIFO,
    a symlink or an oversized file named as an address is skipped, never opened so as to block."""
    try:
        found = DiskStore(data_dir, network, create=False).leases()
    except OSError:
        return []
    directory = store_dir(data_dir, network)
    rows = [(ipaddress.ip_address(name), Lease(os.path.join(directory, name), name,
                                               container_id, ifname))
            for name, container_id, ifname in found if name != RESERVING_NAME]
    return [lease for _, lease in sorted(rows, key=lambda row: (row[0].version, row[0]))]
