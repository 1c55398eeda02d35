"""Reading files that someone else may have put in our way (a lease dir, `resolvConf`).

Opened with O_NONBLOCK, so that a FIFO never hangs the plugin, and read to their end but never
past a bound, so that /dev/zero or a huge file cannot exhaust memory.
"""
from __future__ import annotations

import os

READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK


def read_at_most(fd: int, limit: int) -> bytes | None:
    """The file's bytes up to its end, or None if it holds more than `limit` bytes."""
    data = b""
    while True:
        chunk = os.read(fd, limit + 1 - len(data))
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            return None
