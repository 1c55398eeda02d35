"""The one primitive for running code inside another network namespace.

`with enter("/var/run/netns/pod"):` switches the *calling thread* into that
namespace with setns(2) and switches it back on exit, exceptions included.
Everything namespace-sensitive that happens inside follows the thread:

- a `Netlink()` socket opened inside stays bound to that namespace for its
  whole life, even after the block ends;
- files under /proc/sys/net/ opened inside are that namespace's sysctls.

Only the calling thread moves; other threads stay where they are.
"""

from __future__ import annotations

import errno
import posix  # not os (~2 ms to import): cni_protocol/skel.py

CLONE_NEWNET = 0x40000000
CURRENT_PATH = "/proc/thread-self/ns/net"  # the calling thread's own namespace
# open(2) of a path that cannot be a namespace file: EISDIR, ENOTDIR, ELOOP, ENXIO (a socket)
_NOT_A_NETNS = (errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ENXIO)


class NetnsError(OSError):
    """Entering or leaving a network namespace failed."""

    def __str__(self) -> str:
        return self.strerror


class NetnsNotFound(NetnsError):
    """The namespace path does not exist (e.g. the runtime already deleted the pod's netns)."""


class NotANetns(NetnsError):
    """The path exists but is no network namespace (a FIFO, a directory, another ns type)."""


def _switch_to(fd: int) -> None:
    from .libc import setns
    setns(fd, CLONE_NEWNET)


def open_current() -> int:
    """An fd of the calling thread's network namespace (e.g. for IFLA_NET_NS_FD); close it after use."""
    return posix.open(CURRENT_PATH, posix.O_RDONLY | posix.O_CLOEXEC)


class NetnsContext:
    """Context manager returned by `enter()`; remembers where to return to."""

    __slots__ = ("path", "_origin_fd")

    def __init__(self, path: str):
        self.path = path
        self._origin_fd = -1

    def __enter__(self) -> NetnsContext:
        try:
            # O_NONBLOCK: a FIFO given as CNI_NETNS must not block us (setns then refuses it).
            target_fd = posix.open(self.path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK)
        except FileNotFoundError:
            raise NetnsNotFound(errno.ENOENT, f"network namespace {self.path} does not exist") from None
        except OSError as e:
            if e.errno in _NOT_A_NETNS:  # a directory, a socket, a symlink loop, ...
                raise NotANetns(e.errno, f"{self.path} is not a network namespace") from None
            raise NetnsError(e.errno, f"cannot open network namespace {self.path}: {e.strerror}") from None
        try:
            origin_fd = open_current()
            try:
                _switch_to(target_fd)
            except OSError as e:
                posix.close(origin_fd)
                if e.errno == errno.EINVAL:
                    raise NotANetns(e.errno, f"{self.path} is not a network namespace") from None
                raise NetnsError(e.errno, f"cannot enter network namespace {self.path}: {e.strerror}") from None
        finally:
            posix.close(target_fd)
        self._origin_fd = origin_fd
        return self

    def __exit__(self, *exc_info) -> None:
        origin_fd, self._origin_fd = self._origin_fd, -1
        try:
            _switch_to(origin_fd)
        except OSError as e:
            # The thread is stuck in the pod namespace: anything it does next would
            # land in the wrong place, so this must not be swallowed.
            raise NetnsError(e.errno, f"cannot return from network namespace {self.path}: {e.strerror}") from None
        finally:
            posix.close(origin_fd)


def enter(path: str) -> NetnsContext:
    """Run the with-block with the calling thread in the network namespace at `path`.

    Raises NetnsNotFound if `path` does not exist, NotANetns if it is something
    else (a FIFO, a directory, another kind of namespace), NetnsError if it
    cannot be entered.
    """
    return NetnsContext(path)
