"""Loading python-iptables (the legacy iptables backend's library) in ~20 ms instead of 110-300.

`import iptc` runs ldconfig and gcc (through ctypes.util.find_library), imports distutils
(with setuptools' shim: ~190 ms), subprocess (~10 ms) and both the IPv4 and the IPv6 half, and
execs `modprobe ip_tables`. `load_iptc` imports only the half it needs, with cheap stand-ins for
those modules and an environment that tells python-iptables where its libraries are; every
stand-in falls back to the real module for anything it does not know, so behaviour does not
change. Measured with `python3 bench/startup.py` ("python-iptables load").

Only the legacy backend uses it: on a host whose iptables is the nf_tables variant it is never
loaded (the nf_tables backends talk netlink).
"""
from __future__ import annotations

import _thread  # builtin, always loaded
import os
import sys

from . import MasqueradeError, error

_LOADED: dict[bool, object] = {}  # ipv6 flag -> iptc.ip4tc / iptc.ip6tc module
_LOAD_LOCK = _thread.allocate_lock()
_IPTC_SUBMODULES = ("easy", "errors", "ip4tc", "ip6tc", "util", "version", "xtables")
_XTABLES_VERSIONS = (12, 11, 10)  # libxtables ABIs python-iptables 1.2 has structs for, newest first
_SONAMES = {  # what python-iptables asks ctypes.util.find_library for, and the usual sonames
    "c": ("libc.so.6",),
    "ip4tc": ("libip4tc.so.2", "libip4tc.so.0"),
    "ip6tc": ("libip6tc.so.2", "libip6tc.so.0"),
    "iptc": ("libiptc.so.0",),
    "xtables": tuple(f"libxtables.so.{v}" for v in _XTABLES_VERSIONS),
}
_lib_dirs_cache: list[str] | None = None


def _lib_dirs() -> list[str]:
    """Directories holding the system's shared libraries, most likely first.

    The directory libc was loaded from (read from /proc/self/maps) is the
    multiarch dir on Debian/Ubuntu and /usr/lib64 on Fedora; the usual
    suspects follow in case /proc is unavailable.
    """
    global _lib_dirs_cache
    if _lib_dirs_cache is not None:
        return _lib_dirs_cache
    found: list[str] = []
    try:
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and b"/libc.so" in fields[5]:
                    found.append(os.path.dirname(fields[5].strip().decode()))
                    break
    except OSError:
        pass
    multiarch = getattr(sys.implementation, "_multiarch", "")
    if multiarch:
        found += [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"]
    found += ["/usr/lib64", "/lib64", "/usr/lib", "/lib"]
    dirs: list[str] = []
    for d in found:
        if d not in dirs and os.path.isdir(d):
            dirs.append(d)
    _lib_dirs_cache = dirs
    return dirs


def _find_soname(name: str) -> str | None:
    """Full path of a known library, or None (then the real find_library decides)."""
    for soname in _SONAMES.get(name, ()):
        for d in _lib_dirs():
            path = f"{d}/{soname}"
            if os.path.exists(path):
                return path
    return None


def _real_module(name: str, standin: object) -> object:
    """Import the real module behind one of our stand-ins (drops the stand-in first)."""
    if sys.modules.get(name) is standin:
        del sys.modules[name]
    __import__(name)
    return sys.modules[name]


def _make_ctypes_util_standin() -> object:
    """A ``ctypes.util`` whose find_library answers our few libraries by a stat().

    The real find_library runs ldconfig/gcc subprocesses and imports
    subprocess/shutil/tempfile (~20 ms). Any other name, or a library not found
    where expected, goes to the real implementation, so answers stay correct.
    """
    mod = type(sys)("ctypes.util")

    def find_library(name: str) -> str | None:
        path = _find_soname(name)
        if path is not None:
            return path
        return _real_module("ctypes.util", mod).find_library(name)

    def __getattr__(attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_real_module("ctypes.util", mod), attr)

    mod.find_library = find_library
    mod.__getattr__ = __getattr__
    return mod


def _make_subprocess_standin() -> object:
    """A ``subprocess`` that imports the real one (~10 ms) only when actually used.

    iptc.util does ``from subprocess import Popen, PIPE`` just to run modprobe,
    which ``_fast_load_kernel`` makes unnecessary when the module is present.
    """
    mod = type(sys)("subprocess")

    def Popen(*args: object, **kwargs: object) -> object:  # noqa: N802 - mirrors subprocess.Popen
        return _real_module("subprocess", mod).Popen(*args, **kwargs)

    def __getattr__(attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_real_module("subprocess", mod), attr)

    mod.Popen = Popen
    mod.PIPE = -1  # == subprocess.PIPE
    mod.__getattr__ = __getattr__
    return mod


def _install_import_shims() -> list[tuple[str, object]]:
    """Put cheap stand-ins into sys.modules for the duration of an iptc import.

    Only modules nobody has imported yet are shadowed, and ``_remove_import_shims``
    takes them out again, so later imports elsewhere get the real modules.
    """
    installed: list[tuple[str, object]] = []
    # iptc.util tries `from distutils.sysconfig import get_python_lib` first and
    # falls back to sysconfig; with setuptools' distutils hack that import alone
    # pulls in setuptools + pkg_resources (~190 ms here). None = "not installed".
    if "distutils" not in sys.modules:
        sys.modules["distutils"] = None
        installed.append(("distutils", None))
    if "ctypes.util" not in sys.modules:
        import ctypes

        standin = _make_ctypes_util_standin()
        sys.modules["ctypes.util"] = standin
        ctypes.util = standin  # `import ctypes.util` binds the attribute
        installed.append(("ctypes.util", standin))
    if "subprocess" not in sys.modules:
        standin = _make_subprocess_standin()
        sys.modules["subprocess"] = standin
        installed.append(("subprocess", standin))
    return installed


def _remove_import_shims(installed: list[tuple[str, object]]) -> None:
    """Undo ``_install_import_shims``.

    The ``ctypes.util`` attribute and iptc.util's ``Popen`` name keep pointing
    at the stand-ins; those delegate to the real modules, so that is harmless.
    """
    missing = object()
    for name, obj in installed:
        if sys.modules.get(name, missing) is obj:
            del sys.modules[name]


def _fast_load_kernel(original: object) -> object:
    """Wrap iptc.util.load_kernel: skip the modprobe fork+exec if the module is there.

    python-iptables runs ``modprobe ip_tables`` on every import. The module is
    present if /sys/module has it or its /proc/net/*_names file exists (that
    file is created by the module itself, builtin or not).
    """
    proc_names = {"ip_tables": "ip_tables_names", "ip6_tables": "ip6_tables_names"}

    def load_kernel(name: str, exc_if_failed: bool = False) -> None:
        if os.path.isdir(f"/sys/module/{name}"):
            return None
        if name in proc_names and os.path.exists(f"/proc/net/{proc_names[name]}"):
            return None
        return original(name, exc_if_failed)

    return load_kernel


def _preset_environment(package_parent: str) -> None:
    """Tell python-iptables where things are, so it does not go looking.

    - XTABLES_LIBDIR: the extension dir (libxt_*.so). Unset, iptc.xtables runs
      ``ldconfig -N -v`` to find it.
    - PYTHON_IPTABLES_XTABLES_VERSION: libxtables' soname version; lets it
      open ``libxtables.so.N`` directly.
    - IPTABLES_LIBDIR: dirs it tries before asking ctypes.util: the system lib
      dir (libxtables) and the dir holding ``libxtwrapper*.so`` (the parent of
      the iptc package; python-iptables' own C helper).

    Values already in the environment win (an operator may know better). The
    variables stay set: libxtables re-reads XTABLES_LIBDIR on re-init, and
    child processes (iptables, IPAM) are not harmed by correct values.
    """
    env = os.environ
    lib_dir = None
    for d in _lib_dirs():
        for version in _XTABLES_VERSIONS:
            if os.path.exists(f"{d}/libxtables.so.{version}"):
                lib_dir = d
                env.setdefault("PYTHON_IPTABLES_XTABLES_VERSION", str(version))
                break
        if lib_dir:
            break
    if lib_dir and os.path.isdir(f"{lib_dir}/xtables"):
        env.setdefault("XTABLES_LIBDIR", f"{lib_dir}/xtables")
    dirs = [d for d in env.get("IPTABLES_LIBDIR", "").split(":") if d]
    for d in (lib_dir, package_parent):
        if d and d not in dirs:
            dirs.append(d)
    env["IPTABLES_LIBDIR"] = ":".join(dirs)


def _stub_package(spec: object) -> object:
    """An ``iptc`` package module that does not run iptc/__init__.py.

    The real __init__ imports ip4tc, ip6tc (a second libiptc + extension init)
    and easy. The stub has the real ``__path__`` so ``import iptc.ip4tc`` works;
    if anybody later asks it for a name only __init__ defines (``iptc.Table6``,
    ``iptc.easy``), its module ``__getattr__`` runs the real __init__ once, in
    place, so the package then behaves exactly like a normally imported one.
    """
    pkg = type(sys)("iptc")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__file__ = spec.origin
    pkg.__spec__ = spec
    pkg.__loader__ = spec.loader
    pkg.__package__ = "iptc"

    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _IPTC_SUBMODULES:  # also reached via `from . import version`
            __import__(f"iptc.{name}")
            return sys.modules[f"iptc.{name}"]
        namespace = pkg.__dict__
        namespace.pop("__getattr__", None)
        with open(spec.origin, "rb") as f:
            code = compile(f.read(), spec.origin, "exec")
        shims = _install_import_shims()
        try:
            exec(code, namespace)  # noqa: S102 - the package's own __init__, in its own namespace
        finally:
            _remove_import_shims(shims)
        try:
            return namespace[name]
        except KeyError:
            raise AttributeError(f"module 'iptc' has no attribute {name!r}") from None

    pkg.__getattr__ = __getattr__
    return pkg


def preload() -> None:
    """Start load_iptc() in a thread, so that the ~20 ms of loading overlap the ADD's netlink
    work. Errors are not lost: the setup that follows calls load_iptc() again, which raises
    them. `_thread`, not `threading` (3.5 ms to import)."""

    def work() -> None:
        try:
            load_iptc()
        except Exception:
            pass

    _thread.start_new_thread(work, ())


def load_iptc(ipv6: bool = False) -> object:
    """Import python-iptables' ``iptc.ip4tc`` (or ``iptc.ip6tc``) cheaply; return that module.

    ``import iptc`` costs 110-300 ms; this costs ~20-30 ms (IPv4; IPv6 adds a few ms).
    Where the time goes and what we do about it:

    1. ``iptc/__init__`` imports IPv4 *and* IPv6 support: we put a stub ``iptc``
       package in sys.modules (``_stub_package``) and import only the
       submodule we need; ``ip6tc`` is loaded only when IPv6 is asked for.
    2. distutils (setuptools' shim) and ``ctypes.util.find_library``
       (ldconfig/gcc subprocesses) during library lookup: replaced by
       stand-ins for the duration of the import (``_install_import_shims``)
       plus environment presets (``_preset_environment``).
    3. ``subprocess`` import and ``modprobe`` exec at ip4tc import: the
       subprocess stand-in is lazy and ``_fast_load_kernel`` skips modprobe
       when the kernel module is already there.

    None of this changes behaviour: every stand-in falls back to the real
    thing for anything it does not know, and errors still come from
    python-iptables itself. Thread-safe; meant to be callable from a
    background thread while the plugin waits for its IPAM child.

    Raises MasqueradeError if python-iptables or the iptables libraries
    cannot be loaded.
    """
    module = _LOADED.get(ipv6)
    if module is not None:
        return module
    with _LOAD_LOCK:
        module = _LOADED.get(ipv6)
        if module is not None:
            return module
        wanted = "iptc.ip6tc" if ipv6 else "iptc.ip4tc"
        if wanted in sys.modules:  # somebody imported python-iptables normally
            module = _LOADED[ipv6] = sys.modules[wanted]
            return module
        pkg = sys.modules.get("iptc")
        if pkg is None:
            from importlib.machinery import PathFinder

            spec = PathFinder.find_spec("iptc")
            if spec is None or not spec.submodule_search_locations:
                raise error("python-iptables is not installed (no module 'iptc' on sys.path)")
            pkg = _stub_package(spec)
            sys.modules["iptc"] = pkg
        package_dir = list(pkg.__path__)[0]
        _preset_environment(os.path.dirname(os.path.abspath(package_dir)))

        shims = _install_import_shims()
        try:
            if "iptc.ip4tc" not in sys.modules:
                __import__("iptc.util")
                util = sys.modules["iptc.util"]
                util.load_kernel = _fast_load_kernel(util.load_kernel)
            __import__(wanted)
        except MasqueradeError:
            raise
        except Exception as exc:  # ImportError, OSError, AttributeError on a missing lib, ...
            libs = ("xtables", "ip4tc", "ip6tc") if ipv6 else ("xtables", "ip4tc")
            missing = [f"lib{n}" for n in libs if _find_soname(n) is None]
            hint = f" (not found in {':'.join(_lib_dirs())}: {', '.join(missing)})" if missing else ""
            raise error(f"cannot load python-iptables ({wanted}){hint}", exc) from exc
        finally:
            _remove_import_shims(shims)
        module = _LOADED[ipv6] = sys.modules[wanted]
        return module
