"""Entry point of the cni-inspect zipapp."""
from __future__ import annotations


def main() -> None:
    from cni_inspect.cli import main as run
    raise SystemExit(run())


if __name__ == "__main__":
    main()
