"""Our own modules from one file of compiled code, written by the build beside the packages.

The import system finds a module by walking sys.path (stat calls, directory caches, a .pyc
opened, read and validated against its source): ~80 us a module here, for a bridge ADD or
CHECK that imports ~25 of ours ~2 ms of a process that lives ~20-30. tools/build_zipapp.py
compiles every module of our packages into one file (FILE: the bytecode magic number, an
index, the code objects); `install` reads its index and puts a finder first on sys.meta_path
that reads each module's code from the file (one pread) and executes it. Anything not in the
index (the standard library, python-iptables) is found as usual, and so is everything when
the file is missing or was compiled for another Python.

Its code is that of the .py files shipped in the same zipapp: editing an extracted .py file
changes nothing until `make zipapps` rebuilds the file.
"""
import marshal
import posix
import sys

FILE = "cni_modules.bin"  # in the site-packages directory, beside our packages
ModuleSpec = type(__spec__)  # importlib.machinery's, without importing importlib


def install(site: str) -> None:
    """Serve our modules from `site`/FILE from now on, if it is there and ours."""
    magic = sys.modules["_frozen_importlib_external"].MAGIC_NUMBER
    try:
        fd = posix.open(f"{site}/{FILE}", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return
    head = posix.read(fd, 4096)
    index_end = 8 + int.from_bytes(head[4:8], "little")
    if head[:4] != magic:
        posix.close(fd)
        return
    if len(head) < index_end:
        head += posix.pread(fd, index_end - len(head), len(head))
    # The fd stays open for the process's life: modules are read from it as they are imported.
    sys.meta_path.insert(0, _Finder(marshal.loads(head[8:index_end]), fd, index_end))


def pack(modules: dict[str, tuple[bool, object]], magic: bytes) -> bytes:
    """FILE's bytes for {module name: (is a package, code object)}: the build's half."""
    index, chunks, offset = {}, [], 0
    for name, (is_package, code) in modules.items():
        chunk = marshal.dumps(code)
        index[name] = (offset, len(chunk), is_package)
        chunks.append(chunk)
        offset += len(chunk)
    head = marshal.dumps(index)
    return magic + len(head).to_bytes(4, "little") + head + b"".join(chunks)


class _Finder:
    """A meta path finder and loader for the modules in one FILE."""

    def __init__(self, index: dict, fd: int, base: int) -> None:
        self._index = index
        self._fd = fd
        self._base = base

    def find_spec(self, name: str, path=None, target=None):
        entry = self._index.get(name)
        if entry is None:
            return None
        return ModuleSpec(name, self, origin=FILE, is_package=entry[2])

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        offset, length, _ = self._index[module.__name__]
        code = marshal.loads(posix.pread(self._fd, length, self._base + offset))
        exec(code, module.__dict__)
