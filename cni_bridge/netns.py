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


class NetnsError(OSError):
    """Entering or leaving a network namespace failed."""

    def __str__(self) -> str:
        return self.strerror


class NetnsNotFound(NetnsError):
    """The namespace path does not exist (e.g. the runtime already deleted the pod's netns)."""


def _load_setns():
    """posix.setns exists from Python 3.12; before that, call libc's setns(2) ourselves.

    Through the C core of ctypes (`_ctypes`, 0.6 ms) rather than the ctypes package, whose
    pure-Python half costs another ~3 ms to import in a process that lives for ~30 ms.
    The two classes below are what ctypes.c_int and a CDLL function would be.
    """
    if hasattr(posix, "setns"):
        return posix.setns
    import _ctypes

    class CInt(_ctypes._SimpleCData):
        _type_ = "i"

    class CFunction(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = CInt
        _argtypes_ = (CInt, CInt)

    libc_setns = CFunction(_ctypes.dlsym(_ctypes.dlopen(None, posix.RTLD_NOW), "setns"))

    def setns(fd: int, nstype: int) -> None:
        if libc_setns(fd, nstype) != 0:
            code = _ctypes.get_errno()
            raise OSError(code, posix.strerror(code))

    return setns


_setns = None


def _switch_to(fd: int) -> None:
    global _setns
    if _setns is None:
        _setns = _load_setns()
    _setns(fd, CLONE_NEWNET)


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
            target_fd = posix.open(self.path, posix.O_RDONLY | posix.O_CLOEXEC)
        except FileNotFoundError:
            raise NetnsNotFound(errno.ENOENT, f"network namespace {self.path} does not exist") from None
        except OSError as e:
            raise NetnsError(e.errno, f"cannot open network namespace {self.path}: {e.strerror}") from None
        try:
            origin_fd = open_current()
            try:
                _switch_to(target_fd)
            except OSError as e:
                posix.close(origin_fd)
                reason = "not a network namespace" if e.errno == errno.EINVAL else e.strerror
                raise NetnsError(e.errno, f"cannot enter network namespace {self.path}: {reason}") from None
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

    Raises NetnsNotFound if `path` does not exist, NetnsError if it cannot be
    entered (for instance because it is not a network namespace).
    """
    return NetnsContext(path)
