"""The host-wide xtables lock, the same one `iptables --wait` takes.

libiptc (python-iptables) reads a whole table, edits it in memory and writes the
whole table back on commit, and it takes no lock of its own. Two writers that
overlap lose one of the two changes. The iptables binaries (and therefore the Go
reference plugins, kube-proxy, flannel, ...) serialise on a blocking
``flock(LOCK_EX)`` of ``/run/xtables.lock`` (``$XTABLES_LOCKFILE`` overrides it,
as in iptables >= 1.8.5). Holding that same lock around every
read-modify-commit makes our commits safe against them and against each other.

The lock file lives in the mount namespace, not the network namespace: it is
one lock for the whole host even when the tables are per netns. That matches
iptables and is intended.
"""

from __future__ import annotations

import os

DEFAULT_LOCK_PATH = "/run/xtables.lock"


def lock_path() -> str:
    """Path of the lock file, as iptables resolves it."""
    return os.environ.get("XTABLES_LOCKFILE") or DEFAULT_LOCK_PATH


class XtablesLock:
    """Context manager: hold the xtables lock (blocking, like ``iptables --wait``).

    The file is created if missing (mode 0600, as iptables does) and never
    unlinked: every waiter must lock the same inode. Closing the descriptor
    releases the lock, so a crash can never leave it held.
    """

    __slots__ = ("path", "_fd")

    def __init__(self, path: str | None = None) -> None:
        self.path = path or lock_path()
        self._fd = -1

    def __enter__(self) -> XtablesLock:
        import fcntl  # builtin-cheap; kept local so importing this module costs nothing

        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; EINTR is retried by Python
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
