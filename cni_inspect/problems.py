"""Problems found, each a short stable code and a message that says what to do."""
from __future__ import annotations


class Problems:
    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, code: str, message: str) -> None:
        self.items.append({"code": code, "message": message})

    def __bool__(self) -> bool:
        return bool(self.items)
