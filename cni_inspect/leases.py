"""host-local's lease store: `<dataDir>/<network>/<ip>` holding `<containerID>\\r\\n<ifname>`.

Files of other names (`lock`, `last_reserved_ip.<N>`, a reservation's temporary name) are not
leases. A file holding only the container ID is a lease of a plugin before v0.8 (any ifname).
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass


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
    """Every lease of the network, in address order."""
    directory = store_dir(data_dir, network)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                content = f.read().decode(errors="replace").strip()
        except OSError:
            continue
        container_id, sep, ifname = content.partition("\r\n")
        found.append((ip.version, ip, Lease(path, name, container_id.strip(),
                                            ifname.strip() if sep else None)))
    return [lease for _, _, lease in sorted(found, key=lambda t: (t[0], t[1]))]
