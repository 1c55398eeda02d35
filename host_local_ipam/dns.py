"""`ipam.resolvConf`: a resolv.conf file turned into the result's `dns`."""
from __future__ import annotations

from cni_protocol.errors import CNIError, IO_FAILURE


def parse_resolv_conf(path: str) -> dict:
    """nameserver, domain, search and options lines; '#' and ';' start comments."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"ipam.resolvConf: cannot read {path}: {e.strerror}") from None
    dns: dict = {}
    for line in lines:
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
