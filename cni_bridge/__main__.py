"""Entry point of the bridge zipapp."""
from __future__ import annotations


def main() -> None:
    from cni_protocol import skel
    skel.run("bridge", "cni_bridge.plugin")


if __name__ == "__main__":
    main()
