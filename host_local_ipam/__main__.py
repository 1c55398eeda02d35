"""Entry point of the host-local zipapp."""
from __future__ import annotations


def main() -> None:
    from cni_protocol import skel
    skel.run("host-local", "host_local_ipam.plugin")


if __name__ == "__main__":
    main()
