"""The two libc calls the os and socket modules cannot make for us, through `_ctypes`.

- setns(2): os.setns exists only from Python 3.12.
- getsockopt(2) with an input buffer: the legacy iptables table is read by passing its name
  *in* the buffer (IPT_SO_GET_INFO / IPT_SO_GET_ENTRIES); socket.getsockopt only hands the
  kernel a fresh zeroed buffer.

Through the C core of ctypes (`_ctypes`, 0.6 ms to import) rather than the ctypes package, whose
pure-Python half costs another ~3 ms in a process that lives for ~20 ms. The classes below are
what ctypes.c_int, ctypes.c_void_p and a CDLL function would be.
"""
from __future__ import annotations

import posix  # not os (~2 ms to import): cni_protocol/skel.py
import sys

_functions: dict[str, object] = {}


def _function(name: str, restype: str, argtypes: str):
    """libc's `name` as a callable; types as struct letters: i int, P pointer."""
    if name in _functions:
        return _functions[name]
    import _ctypes

    def simple(letter: str) -> type:
        return type(f"c_{letter}", (_ctypes._SimpleCData,), {"_type_": letter})

    class CFunction(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = simple(restype)
        _argtypes_ = tuple(simple(a) for a in argtypes)

    function = CFunction(_ctypes.dlsym(_ctypes.dlopen(None, posix.RTLD_NOW), name))
    _functions[name] = (function, _ctypes)
    return function, _ctypes


def _raise_errno(_ctypes) -> None:
    code = _ctypes.get_errno()
    raise OSError(code, posix.strerror(code))


def setns(fd: int, nstype: int) -> None:
    if hasattr(posix, "setns"):  # Python 3.12+
        posix.setns(fd, nstype)
        return
    function, _ctypes = _function("setns", "i", "ii")
    if function(fd, nstype) != 0:
        _raise_errno(_ctypes)


def getsockopt_inout(fd: int, level: int, option: int, buffer: bytes) -> bytes:
    """getsockopt(2) on a buffer that starts out holding `buffer`; returns what the kernel
    left in it, as long as it said it used."""
    function, _ctypes = _function("getsockopt", "i", "iiiPP")
    data = _char_array(_ctypes, len(buffer)).from_buffer_copy(buffer)
    length = _char_array(_ctypes, 4).from_buffer_copy(len(buffer).to_bytes(4, sys.byteorder))
    if function(fd, level, option, _ctypes.addressof(data), _ctypes.addressof(length)) != 0:
        _raise_errno(_ctypes)
    return bytes(data)[: int.from_bytes(bytes(length), sys.byteorder)]


def _char_array(_ctypes, size: int) -> type:
    char = type("c_char", (_ctypes._SimpleCData,), {"_type_": "c"})
    return type(f"c_char_Array_{size}", (_ctypes.Array,), {"_type_": char, "_length_": size})
