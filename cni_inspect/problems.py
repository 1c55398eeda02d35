"""Problems found, each a short stable code and a message that says what to do."""
from __future__ import annotations


class Problems:
    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, code: str, message: str) -> None:
        self.items.append({"code": code, "message": message})

    def __bool__(self) -> bool:
        return bool(self.items)


def freeing(container_id: str, ifname: str) -> str:
    """How to free what a pod that is gone left behind."""
    return ("Free it through the runtime (remove the pod), or by a CNI DEL of "
            f"CNI_CONTAINERID={container_id} CNI_IFNAME={ifname} with an empty CNI_NETNS, or a "
            "GC (cniVersion 1.1.0) whose cni.dev/valid-attachments leaves it out.")


def not_enslaved(veth: str, master: str | None, bridges: list[str], whose: str = "") -> str:
    return (f"host veth {veth}{whose} is " + (f"a port of {master}" if master else "on no bridge")
            + f", not of {' or '.join(bridges)}: the pod reaches nothing. "
            f"`ip link set {veth} master {bridges[0]}` reconnects it.")
