"""Entry point of the host-local zipapp."""
from __future__ import annotations


def main() -> None:
    from cni_protocol import skel
    from .plugin import HANDLERS, KNOWN_ARGS
    skel.run("host-local", HANDLERS, KNOWN_ARGS)


if __name__ == "__main__":
    main()
