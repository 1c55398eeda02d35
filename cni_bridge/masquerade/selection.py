"""Which backend an ADD masquerades with, chosen as the reference chooses (REFERENCE.md 7.1).

`ipMasqBackend` unset: iptables, unless iptables is unusable and nftables is usable.
"iptables" means the backend the host's `iptables` command uses: its nf_tables variant
(iptables-nft, the default of Debian 10+, RHEL 8+, ...) or the legacy x_tables one. We tell
which from the command's real path (`/usr/sbin/iptables` -> /etc/alternatives/iptables ->
xtables-nft-multi), a few stat calls, and only exec `iptables --version` when that path does not
say (a wrapper script such as Kubernetes' iptables-wrapper).
"""
from __future__ import annotations

import posix  # not os (~2 ms to import): cni_protocol/skel.py

from . import error
from .naming import IPTABLES_NFT, LEGACY, NFTABLES

_DEFAULT_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _search_dirs() -> list[str]:
    """PATH first (runtimes pass theirs), then the usual places (some pass none)."""
    path = posix.environ.get(b"PATH", b"").decode(errors="surrogateescape")
    dirs = [d for d in path.split(":") if d.startswith("/")]
    return dirs + [d for d in _DEFAULT_DIRS if d not in dirs]


def host_iptables() -> tuple[str, str] | None:
    """(path of the host's `iptables`, "nft" or "legacy"), or None if there is none."""
    for directory in _search_dirs():
        path = f"{directory}/iptables"
        if not posix.access(path, posix.X_OK):
            continue
        target = _real_path(path).rpartition("/")[2]
        if "nft" in target:
            return path, "nft"
        if "legacy" in target:
            return path, "legacy"
        return path, _ask_variant(path)
    return None


def _real_path(path: str, hops: int = 40) -> str:
    """os.path.realpath of a command: symlinks followed (relative ones from their directory)."""
    for _ in range(hops):
        try:
            target = posix.readlink(path)
        except OSError:  # not a link (or gone): this is it
            return path
        path = target if target.startswith("/") else f"{path.rpartition('/')[0]}/{target}"
    return path


def _ask_variant(path: str) -> str:
    """`iptables --version` says "(nf_tables)" or "(legacy)"; before 1.8 there was only legacy."""
    from ..process import Child

    code, out = Child([path, "--version"], {"PATH": ":".join(_DEFAULT_DIRS)}, b"",
                      stderr_to_stdout=True).wait()
    return "nft" if code == 0 and b"nf_tables" in out else "legacy"


def legacy_problem() -> str | None:
    """Why the legacy x_tables cannot be used (None: they can): the kernel must have them,
    loaded (their /proc file) or as a module python-iptables can load."""
    if _exists("/proc/net/ip_tables_names") or _exists("/sys/module/ip_tables"):
        return None
    release = posix.uname().release
    try:
        with open(f"/lib/modules/{release}/modules.dep", "rb") as f:
            if b"/ip_tables.ko" in f.read():
                return None
    except OSError:
        pass
    return "the kernel has no legacy x_tables (CONFIG_IP_NF_IPTABLES)"


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except OSError:
        return False
    return True


def choose(setting: str | None) -> str:
    """The backend ADD writes to for `ipMasqBackend` (None: unset); MasqueradeError (code 102
    to the runtime) when it cannot be used, naming what is missing.

    nf_tables is not probed here: when the kernel lacks it, both of its backends are unusable
    (so falling back changes nothing), and the setup says so in one line, naming the backend."""
    if setting == NFTABLES:
        return NFTABLES
    found = host_iptables()
    if found is None:
        problem = f"no iptables command (looked in {':'.join(_search_dirs())})"
    elif found[1] == "nft":
        return IPTABLES_NFT
    else:
        problem = legacy_problem()
        if problem is None:
            return LEGACY
    if setting == "iptables":
        raise error(f'ipMasqBackend "iptables" cannot be used: {problem}')
    return NFTABLES  # unset: iptables is unusable, so nftables
