"""ipMasq for the bridge plugin: per-attachment SNAT chains in the iptables nat table.

What the rules look like (identical to containernetworking/plugins
``pkg/ip/ipmasq_iptables_linux.go``, so either implementation's DEL removes the
other's rules)::

    *nat
    :CNI-<24 hex> - [0:0]
    -A POSTROUTING -s 10.22.0.2/32 -m comment --comment "name: \\"net\\" id: \\"ctr\\"" -j CNI-<24 hex>
    -A CNI-<24 hex> -d 10.22.0.0/24 -m comment --comment "..." -j ACCEPT
    -A CNI-<24 hex> ! -d 224.0.0.0/4 -m comment --comment "..." -j MASQUERADE

(IPv6: ip6tables nat, ``/128`` jump, ``! -d ff00::/8``.) The chain name is
``CNI-`` + the first 24 hex digits of sha512(network name + container ID).

Backend: python-iptables drives libiptc, i.e. the *legacy* iptables tables only.
On a host whose ``iptables`` is the nft variant our rules land in the legacy
tables, where ``iptables-nft`` neither sees nor removes them.

Concurrency: libiptc rewrites the whole table per commit and takes no lock, so
every read-modify-commit runs under the xtables lock (see ``xtables_lock``).

Import cost: importing this module imports nothing beyond ``os``/``sys``.
python-iptables is loaded by ``load_iptc`` on first use, in ~30 ms instead of
the 110-300 ms of ``import iptc``; the plugin may call it early from a
background thread. DEL and GC on a host without a legacy nat table never load it.

All failures raise ``MasqueradeError`` with a one-line message.
"""

from __future__ import annotations

import _thread  # builtin, always loaded
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only; typing is never imported at run time
    from collections.abc import Callable, Iterable

    # "10.22.0.2/24", ("10.22.0.2", 24) or an ipaddress.IPv4Interface/IPv6Interface
    Addresses = Iterable[str | tuple[str, int] | object]

__all__ = [
    "MasqueradeError",
    "chain_name",
    "chain_comment",
    "setup_masquerade",
    "teardown_masquerade",
    "gc_masquerade",
]

_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_TOOL = {4: "iptables", 6: "ip6tables"}
_CHAIN_PREFIX = "CNI-"
_COMMIT_ATTEMPTS = 3  # kernel says EAGAIN if a non-locking writer changed the table under us


class MasqueradeError(Exception):
    """An ipMasq step failed; str() is one line fit for a CNI error ``msg``."""


def _error(what: str, exc: BaseException | None = None) -> MasqueradeError:
    """Build the one-line domain error, keeping the library's own words."""
    if exc is None:
        return MasqueradeError(f"ipMasq: {what}")
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if "b'" in detail or 'b"' in detail:  # python-iptables formats libiptc's bytes with %s
        import re

        detail = re.sub(r"""\bb(['"])(.*?)\1""", r"\2", detail)
    return MasqueradeError(f"ipMasq: {what}: {detail}")


# --------------------------------------------------------------------------- naming


from .naming import iptables_chain as chain_name, iptables_comment as chain_comment  # noqa: E402


# --------------------------------------------------------------------------- addresses


def _parse_ip(item: object) -> tuple[int, str, str]:
    """One container address -> (family, "ip/32|128", "network/prefix").

    Accepts "10.22.0.2/24" or ("10.22.0.2", 24). A bare address counts as a /32 (/128).
    """
    from cni_protocol.ip import BITS, fmt, network, parse_ip

    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise _error(f"invalid container address {item!r}: expected (address, prefixlen)")
        addr, plen = str(item[0]), item[1]
    else:
        addr, _, plen = str(item).partition("/")
    try:
        family, value = parse_ip(addr)
        prefix = BITS[family] if plen in ("", None) else int(plen)
        if not 0 <= prefix <= BITS[family]:
            raise ValueError(f"prefix length {prefix} out of range")
    except (ValueError, TypeError) as exc:
        raise _error(f"invalid container address {item!r}", exc) from None
    net = fmt(family, network(family, value, prefix))
    return family, f"{fmt(family, value)}/{BITS[family]}", f"{net}/{prefix}"


def _by_family(ips: Addresses | None) -> dict[int, list[tuple[str, str]]]:
    """Group container addresses per IP family, keeping their order."""
    if isinstance(ips, (str, bytes)):
        ips = [ips]  # a single CIDR string is an easy mistake to make
    groups: dict[int, list[tuple[str, str]]] = {}
    for item in ips or ():
        family, host, net = _parse_ip(item)
        pairs = groups.setdefault(family, [])
        if (host, net) not in pairs:
            pairs.append((host, net))
    return groups


# --------------------------------------------------------------------------- loading python-iptables

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


def preload():
    """Start load_iptc() in a thread; return a function that waits until it has finished.

    The plugin calls this first thing, so the ~20 ms of loading overlap its IPAM child and
    netlink work. Errors are not lost: the setup or teardown that follows calls load_iptc()
    again, which raises them. `_thread`, not `threading` (3.5 ms to import).
    """
    finished = _thread.allocate_lock()
    finished.acquire()

    def work() -> None:
        try:
            load_iptc()
        except Exception:
            pass
        finally:
            finished.release()

    _thread.start_new_thread(work, ())

    def wait() -> None:
        with finished:
            pass

    return wait


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
                raise _error("python-iptables is not installed (no module 'iptc' on sys.path)")
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
            raise _error(f"cannot load python-iptables ({wanted}){hint}", exc) from exc
        finally:
            _remove_import_shims(shims)
        module = _LOADED[ipv6] = sys.modules[wanted]
        return module


# --------------------------------------------------------------------------- nat table access


def _nat_table_exists(family: int) -> bool:
    """Whether this netns has a legacy nat table for the family.

    Read from /proc (per netns), so DEL/GC on a host without one neither loads
    libiptc nor creates an empty legacy table as a side effect (which would make
    iptables-nft warn "iptables-legacy tables present").
    """
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    for base in ("/proc/thread-self/net", "/proc/net"):  # thread-self: right netns even after a thread setns()
        try:
            with open(f"{base}/{name}") as f:
                return "nat" in f.read().split()
        except FileNotFoundError:
            continue
        except OSError:
            return True  # cannot tell: look for real
    return False  # x_tables for this family is not loaded: no legacy tables at all


_VERDICTS = ("", "ACCEPT", "DROP", "RETURN", "QUEUE")


def _masquerade_target(family: int) -> bytes:
    """The ``-j MASQUERADE`` target (revision 0, no options) as the kernel wants it.

    Built here rather than through libxtables: libxtables registers an
    extension only for the IP family that is current when its .so is first
    loaded, so python-iptables cannot use MASQUERADE for IPv4 and IPv6 in one
    process (ldx/python-iptables #316, #325). The layout is kernel ABI:
    ``struct xt_entry_target`` (u16 size, char name[29], u8 revision) followed
    by ``nf_nat_ipv4_multi_range_compat`` (rangesize = 1, one zeroed range) for
    IPv4 or a zeroed ``nf_nat_range`` for IPv6, padded to 8 bytes. It is what
    ``iptables -j MASQUERADE`` sends.
    """
    payload = (1).to_bytes(4, sys.byteorder) + bytes(16) if family == 4 else bytes(40)
    size = (32 + len(payload) + 7) & ~7
    header = size.to_bytes(2, sys.byteorder) + b"MASQUERADE".ljust(29, b"\0") + b"\0"
    return (header + payload).ljust(size, b"\0")


class _Nat:
    """One locked snapshot of the nat table of one family, with one-line errors.

    Methods map to libiptc calls on the snapshot; nothing reaches the kernel
    until the caller commits. Rules are handled as raw entries (bytes as the
    kernel stores them), which is also how they are compared.
    """

    def __init__(self, family: int, iptc_mod: object, table: object) -> None:
        import ctypes

        self.family = family
        self.tool = _TOOL[family]
        self.table = table
        if family == 6:
            self.rule_cls, self.entry_type = iptc_mod.Rule6, iptc_mod.ip6t_entry
        else:
            self.rule_cls, self.entry_type = iptc_mod.Rule, iptc_mod.ipt_entry
        self.chain_cls = sys.modules["iptc.ip4tc"].Chain  # one Chain class serves both families
        self.entry_size = (ctypes.sizeof(self.entry_type) + 7) & ~7
        self.ip_size = self.entry_type.nfcache.offset  # the ipt_ip / ip6t_ip6 header in front

    # reading ------------------------------------------------------------

    def has_chain(self, chain: str) -> bool:
        return bool(self.table.is_chain(chain))

    def user_chains(self) -> list[str]:
        return [c.name for c in self.table.chains if not self.table.builtin_chain(c.name)]

    def entries(self, chain: str) -> list[object]:
        """Raw libiptc entries of a chain (no decoding)."""
        out = []
        entry = self.table.first_rule(chain)
        while entry:
            out.append(entry)
            entry = self.table.next_rule(entry)
        return out

    def target_of(self, entry: object) -> str:
        """Target of an entry in the snapshot: a chain name, ACCEPT, MASQUERADE, ..."""
        name = self.table.get_target(entry)
        return name.decode() if name else ""

    def parts(self, entry: object) -> tuple[bytes, list[tuple[str, bytes]], str, bytes]:
        """Split an entry into (ip header, [(match name+revision, data)], target name, target data)."""
        import ctypes

        blob = ctypes.string_at(ctypes.addressof(entry), entry.next_offset)
        matches = []
        offset = self.entry_size
        while offset + 32 <= entry.target_offset:  # struct xt_entry_match: u16 size, name[29], u8 rev
            size = int.from_bytes(blob[offset : offset + 2], sys.byteorder)
            name = blob[offset + 2 : offset + 31].split(b"\0", 1)[0].decode()
            matches.append((f"{name}/{blob[offset + 31]}", blob[offset + 32 : offset + size]))
            offset += max(size, 32)
        t = entry.target_offset
        target = blob[t + 2 : t + 31].split(b"\0", 1)[0].decode()
        return blob[: self.ip_size], matches, target, blob[t + 32 :]

    def key(self, entry: object, in_snapshot: bool = True) -> tuple[object, ...]:
        """What makes two rules the same (cf. ``iptables -C``): header, matches, target.

        In the snapshot libiptc stores ACCEPT and jumps as verdicts, so the
        target is compared by the name it resolves to; an extension target's
        data (MASQUERADE) is compared too.
        """
        ip, matches, target, data = self.parts(entry)
        if in_snapshot:
            target = self.target_of(entry)
        if target in _VERDICTS or self.has_chain(target):
            data = b""
        return ip, tuple(matches), target, data

    def comment(self, entry: object) -> str | None:
        for name, data in self.parts(entry)[1]:
            if name.startswith("comment/"):
                return data.split(b"\0", 1)[0].decode("utf-8", "replace")
        return None

    # building -----------------------------------------------------------

    def build(self, target: str, comment: str, src: str | None = None, dst: str | None = None) -> object:
        """A raw entry ``[-s SRC] [-d [!]DST] -m comment --comment C -j TARGET``."""
        import ctypes

        try:
            rule = self.rule_cls()
            if src:
                rule.src = src
            if dst:
                rule.dst = dst
            match = rule.create_match("comment")
            match.set_parameter("comment", comment)
            if target in ("ACCEPT", "MASQUERADE"):
                rule.create_target("ACCEPT")  # MASQUERADE: placeholder, replaced below
            else:
                # A jump to a user chain. Created as the standard target and
                # then pointed at the chain, because create_target(chain) makes
                # python-iptables open every table (filter, mangle, raw,
                # security) to find out whether the name is a chain.
                rule.create_target("").standard_target = target
            # Only the extension's own final check (it enforces --comment).
            # Rule.final_check() would also re-parse every option through the
            # extension's save(), with fd 1 -- our CNI result channel --
            # redirected to a pipe meanwhile.
            match._final_check()
            buf = rule.rule
        except Exception as exc:
            raise _error(f"could not build the {target} rule ({self.tool})", exc) from exc
        if target == "MASQUERADE":  # swap the placeholder for the real target
            head = bytes(buf)[: self.entry_type.from_buffer(buf).target_offset]
            full = head + _masquerade_target(self.family)
            buf = (ctypes.c_ubyte * len(full)).from_buffer_copy(full)
            self.entry_type.from_buffer(buf).next_offset = len(full)
        return buf

    def built_key(self, buf: object) -> tuple[object, ...]:
        return self.key(self.entry_type.from_buffer(buf), in_snapshot=False)

    # writing (snapshot only) --------------------------------------------

    def create_chain(self, chain: str) -> None:
        try:
            self.table.create_chain(chain)
        except Exception as exc:
            raise _error(f"could not create chain {chain} ({self.tool} nat)", exc) from exc

    def add(self, chain: str, buf: object, position: int | None = None) -> None:
        try:
            if position is None:
                self.table.append_entry(chain, buf)
            else:
                self.table.insert_entry(chain, buf, position)
        except Exception as exc:
            raise _error(f"could not add rule to chain {chain} ({self.tool} nat)", exc) from exc

    def delete(self, chain: str, entries: list[object]) -> None:
        """Delete these entries (jumps: decodable by python-iptables in any family)."""
        try:
            # Copy every entry and its compare mask before deleting any: the
            # entries live in libiptc's memory, which a delete frees.
            copies = []
            for entry in entries:
                rule = self.table.create_rule(entry, self.chain_cls(self.table, chain))
                copies.append((rule.rule, rule.mask))
            for buf, mask in copies:
                self.table.delete_entry(chain, buf, mask)
        except Exception as exc:
            raise _error(f"could not delete rule from chain {chain} ({self.tool} nat)", exc) from exc

    def remove_chain(self, chain: str) -> None:
        try:
            self.table.flush_entries(chain)
            self.table.delete_chain(chain)
        except Exception as exc:
            raise _error(f"could not delete chain {chain} ({self.tool} nat)", exc) from exc


def _in_nat_table(family: int, work: Callable[[_Nat], bool]) -> None:
    """Run ``work(nat)`` on a fresh snapshot of the nat table under the xtables lock.

    ``work`` edits the snapshot and returns True if it changed anything; we then
    commit. The lock is held from reading the snapshot to the commit, which is
    what makes libiptc's whole-table replace safe.
    """
    import errno

    from cni_bridge.xtables_lock import XtablesLock

    iptc_mod = load_iptc(family == 6)
    table_cls = iptc_mod.Table6 if family == 6 else iptc_mod.Table
    tool = _TOOL[family]

    for attempt in range(1, _COMMIT_ATTEMPTS + 1):
        with XtablesLock():
            try:
                reused = "nat" in table_cls._cache  # python-iptables keeps one Table object per name
                table = table_cls("nat", autocommit=False)
                if reused:
                    table.refresh()  # re-read: the cached snapshot is stale
            except Exception as exc:
                raise _error(f"could not read the {tool} nat table", exc) from exc
            try:
                if not work(_Nat(family, iptc_mod, table)):
                    return
                try:
                    table.commit()
                    return
                except Exception as exc:
                    if attempt < _COMMIT_ATTEMPTS and os.strerror(errno.EAGAIN) in str(exc):
                        continue  # a writer that does not take the lock got in between: redo
                    raise _error(f"could not commit the {tool} nat table", exc) from exc
            finally:
                table.close()


# --------------------------------------------------------------------------- the operations


def setup_masquerade(network: str, container_id: str, ips: Addresses) -> None:
    """Masquerade traffic from the container IPs leaving their subnets (ipMasq ADD).

    ``ips``: iterable of CIDR strings ("10.22.0.2/24"), (address, prefixlen)
    pairs or ipaddress interfaces. Idempotent: rules already present (ours or
    the Go plugin's) are not added again.

    One deliberate difference from the reference: with two subnets of one
    family the second ``-d <subnet> -j ACCEPT`` goes *before* the MASQUERADE
    rule. The reference appends it after, so traffic to that subnet is
    masqueraded anyway. With one address per family the chains are identical.
    """
    groups = _by_family(ips)
    if not groups:
        return
    chain = chain_name(network, container_id)
    comment = chain_comment(network, container_id)

    def work(nat: _Nat, pairs: list[tuple[str, str]]) -> bool:
        changed = False
        if not nat.has_chain(chain):
            nat.create_chain(chain)
            changed = True
        entries = nat.entries(chain)
        present = [nat.key(e) for e in entries]
        targets = [nat.target_of(e) for e in entries]
        first_masq = targets.index("MASQUERADE") if "MASQUERADE" in targets else None
        for _host, net in pairs:
            accept = nat.build("ACCEPT", comment, dst=net)
            if nat.built_key(accept) not in present:
                nat.add(chain, accept, first_masq)  # ACCEPTs stay ahead of MASQUERADE
                present.append(nat.built_key(accept))
                if first_masq is not None:
                    first_masq += 1
                changed = True
        masq = nat.build("MASQUERADE", comment, dst="!" + _MULTICAST[nat.family])
        if nat.built_key(masq) not in present:
            nat.add(chain, masq)
            changed = True

        jumps = [nat.key(e) for e in nat.entries("POSTROUTING") if nat.target_of(e) == chain]
        for host, _net in pairs:
            jump = nat.build(chain, comment, src=host)
            if nat.built_key(jump) not in jumps:
                nat.add("POSTROUTING", jump)
                jumps.append(nat.built_key(jump))
                changed = True
        return changed

    for family, pairs in groups.items():
        _in_nat_table(family, lambda nat, pairs=pairs: work(nat, pairs))


def _remove_chains(nat: _Nat, chains: set[str]) -> bool:
    """Delete every POSTROUTING jump to these chains, then flush and delete them."""
    jumps = [e for e in nat.entries("POSTROUTING") if nat.target_of(e) in chains]
    if jumps:
        nat.delete("POSTROUTING", jumps)
    existing = [c for c in sorted(chains) if nat.has_chain(c)]
    for chain in existing:
        nat.remove_chain(chain)
    return bool(jumps or existing)


def teardown_masquerade(network: str, container_id: str, ips: Addresses | None = None) -> None:
    """Remove the attachment's chain and the POSTROUTING jumps to it (ipMasq DEL).

    Jumps are found by their target, so both the current ``-s ip/32`` form and
    the old ``-s <cidr>`` form go, and no addresses are needed: DEL with a
    vanished netns and no prevResult still cleans up (reference bug #810).
    ``ips``, when given, limits the work to their IP families, as the reference
    does; without it every family that has a legacy nat table is checked.
    Succeeds when nothing exists.
    """
    families = sorted(_by_family(ips)) if ips else [4, 6]
    chain = chain_name(network, container_id)
    for family in families:
        if _nat_table_exists(family):
            _in_nat_table(family, lambda nat: _remove_chains(nat, {chain}))
    def exists(rules: list[str]) -> set[str]:
        return {chain} if f"-N {chain}" in rules else set()

    for family in families:
        _remove_from_nft_backend(family, exists)


_NFT_TOOLS = {4: "iptables-nft", 6: "ip6tables-nft"}
_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")  # runtimes may give us no PATH


def _remove_from_nft_backend(family: int, select) -> list[str]:
    """Remove the chains that `select(rules)` picks, and the POSTROUTING jumps to them, from
    the iptables-nft backend; return their names.

    That is where the reference bridge puts them on a host whose `iptables` is the nf_tables
    variant (Debian 12's default), so our DEL and GC also clean up pods that the Go plugin
    added, as after switching plugins on a running node. One `iptables-nft -S` (~1 ms) finds
    out; only if there is something to remove, one `iptables-nft-restore --noflush` does it.
    """
    from ..process import Child

    tool = next((f"{d}/{_NFT_TOOLS[family]}" for d in _TOOL_DIRS
                 if os.access(f"{d}/{_NFT_TOOLS[family]}", os.X_OK)), None)
    if tool is None:
        return []
    # Its stderr joins stdout: a warning about legacy tables on every call is noise in the
    # runtime's log, and only the -N/-A lines count here.
    code, out = Child([tool, "-w", "-t", "nat", "-S"], {}, b"", stderr_to_stdout=True).wait()
    rules = out.decode(errors="replace").splitlines()
    chains = select(rules) if code == 0 else set()
    if not chains:
        return []
    script = ["*nat"]
    script += ["-D" + rule[2:] for rule in rules
               if rule.startswith("-A POSTROUTING ") and rule.rsplit(" -j ", 1)[-1] in chains]
    for chain in sorted(chains):
        script += [f"-F {chain}", f"-X {chain}"]
    script += ["COMMIT", ""]
    code, out = Child([tool + "-restore", "-w", "--noflush"], {}, "\n".join(script).encode(),
                      stderr_to_stdout=True).wait()
    if code != 0:
        said = " ".join(out.decode(errors="replace").split())
        raise _error(f"could not remove {', '.join(sorted(chains))} from the "
                     f"{_NFT_TOOLS[family]} backend (exit {code}): {said}")
    return sorted(chains)


def gc_masquerade(network: str, valid_container_ids: Iterable[str]) -> list[str]:
    """Remove this network's chains whose container ID is not valid any more (CNI GC).

    A chain is this network's if its first rule carries our comment
    ``name: "<network>" id: "<id>"`` *and* its name is the one derived from
    that (network, id), so chains of other networks and of other plugins that
    use the same comment format (portmap's ``CNI-DN-...``) are never touched.
    Empty chains carry no comment and are left alone. Returns the removed chain
    names (for logging).
    """
    valid = set(valid_container_ids)
    prefix = f'name: "{network}" id: "'
    hexdigits = set("0123456789abcdef")
    victims: set[str] = set()

    def work(nat: _Nat) -> bool:
        victims.clear()  # a retried transaction starts over
        for chain in nat.user_chains():
            if len(chain) != 28 or not chain.startswith(_CHAIN_PREFIX) or not set(chain[4:]) <= hexdigits:
                continue
            entries = nat.entries(chain)
            comment = nat.comment(entries[0]) if entries else None
            if not comment or not comment.startswith(prefix) or not comment.endswith('"'):
                continue
            container_id = comment[len(prefix) : -1]
            if container_id not in valid and chain_name(network, container_id) == chain:
                victims.add(chain)
        return bool(victims) and _remove_chains(nat, victims)

    def stale_in_nft_backend(rules: list[str]) -> set[str]:
        """The same test on `iptables-nft -S` lines, which quote the comment's quotes."""
        marker = prefix.replace('"', '\\"')
        stale = set()
        for rule in rules:
            if rule.startswith(f"-A {_CHAIN_PREFIX}") and f'--comment "{marker}' in rule:
                chain = rule.split(" ", 2)[1]
                container_id = rule.split(marker, 1)[1].split('\\"', 1)[0]
                if container_id not in valid and chain_name(network, container_id) == chain:
                    stale.add(chain)
        return stale

    removed: list[str] = []
    for family in (4, 6):
        if _nat_table_exists(family):
            _in_nat_table(family, work)
            removed.extend(sorted(victims))
        removed.extend(_remove_from_nft_backend(family, stale_in_nft_backend))
    return removed
