"""`ipam.resolvConf`: a resolv.conf file turned into the result's `dns`."""
from __future__ import annotations

import posix  # not os: see store.py

from cni_protocol.errors import CNIError, IO_FAILURE
from .store import READ_FLAGS, read_at_most

# A resolv.conf is a few hundred bytes (glibc reads at most 3 nameservers and 6 search
# domains). The Go plugin fails on a line longer than 64 KiB (bufio.Scanner's limit); we bound
# the whole file by the same figure, so that /dev/zero or a log file named by mistake is an
# error instead of growing until memory runs out.
RESOLV_CONF_MAX = 64 * 1024


def parse_resolv_conf(path: str) -> dict:
    """nameserver, domain, search and options lines; '#' and ';' start comments."""
    try:
        fd = posix.open(path, READ_FLAGS)  # a FIFO does not hang us; symlinks are fine here
        try:
            data = read_at_most(fd, RESOLV_CONF_MAX)
        finally:
            posix.close(fd)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"ipam.resolvConf: cannot read {path}: {e.strerror}") from None
    if data is None:
        raise CNIError(IO_FAILURE, f"ipam.resolvConf: cannot read {path}: larger than "
                       f"{RESOLV_CONF_MAX} bytes, not a resolv.conf")
    dns: dict = {}
    for line in data.decode(errors="replace").splitlines():
        fields = line.split()
        if not fields or fields[0][0] in "#;":
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver" and values:
            dns.setdefault("nameservers", []).append(values[0])
        elif key == "domain" and values:
            dns["domain"] = values[0]
        elif key == "search":
            dns.setdefault("search", []).extend(values)
        elif key == "options":
            dns.setdefault("options", []).extend(values)
    return dns
