"""One plugin invocation: the spec's environment parameters plus the conf on stdin, validated."""
from __future__ import annotations

from .errors import CNIError, INVALID_ENV, INVALID_CONFIG

# Which parameters each verb needs, as the reference's skel enforces them.
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}

# The longest CNI_CONTAINERID an ADD accepts. The spec sets none; containerd, CRI-O and podman
# send 64 hex digits. host-local stores the ID in its lease files and reads them back whole up
# to the size this allows, so an ID that ADD accepted can always be found again; DEL, CHECK and
# GC of a longer ID (which no ADD of ours made) find nothing.
MAX_CONTAINER_ID = 1024
IFNAMSIZ = 16  # the kernel's, with the terminating NUL: a name has at most 15 bytes

_ID_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_REST = _ID_FIRST | frozenset("_.-")


def valid_id(value: str) -> bool:
    """^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$ without importing re (3 ms of start-up)."""
    return bool(value) and value[0] in _ID_FIRST and all(c in _ID_REST for c in value)


def check_ifname(name: str) -> None:
    """The kernel's IFNAMSIZ rules, as the reference's skel checks them."""
    problem = _ifname_problem(name)
    if problem:
        raise CNIError(INVALID_ENV, f"invalid CNI_IFNAME: interface name {problem}",
                       f"CNI_IFNAME={name!r}")


def _ifname_problem(name: str) -> str | None:
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach os.environ as lone surrogates
        return "is not valid UTF-8"
    if not name:
        return "is empty"
    if size > IFNAMSIZ - 1:
        return f"is longer than {IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return "is . or .."
    if "\0" in name:  # only JSON can carry one (a bridge name); netlink would cut the name there
        return "contains a NUL character"
    if any(c in "/:" or c.isspace() for c in name):
        return "contains / or : or whitespace"
    return None


def parse_cni_args(raw: str, known: tuple[str, ...]) -> dict[str, str]:
    """CNI_ARGS 'K=V;K=V'. Unknown keys are refused unless IgnoreUnknown=1|true."""
    args: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENV, f"invalid CNI_ARGS: pair {pair!r} is not K=V",
                           f"CNI_ARGS={raw!r}")
        args[key] = value
    ignore = args.pop("IgnoreUnknown", "false").lower()
    if ignore not in ("1", "true", "0", "false"):
        raise CNIError(INVALID_ENV, "invalid CNI_ARGS: IgnoreUnknown must be 1, true, 0 or false",
                       f"IgnoreUnknown={ignore!r}")
    unknown = [k for k in args if k not in known]
    if unknown and ignore in ("0", "false"):
        raise CNIError(INVALID_ENV, f"invalid CNI_ARGS: unknown args {unknown}",
                       "set IgnoreUnknown=1 to pass arguments meant for other plugins")
    return args


class Request:
    """The parameters of one call. `conf` is the whole network conf as the runtime sent it."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "conf",
                 "stdin", "version", "env")

    def __init__(self, command: str, env: dict, stdin: bytes, conf: dict, version: str,
                 known_args: tuple[str, ...]) -> None:
        missing = [k for k in REQUIRED_ENV.get(command, ()) if not env.get(k)]
        if missing:
            raise CNIError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing",
                           f"CNI_COMMAND={command}")
        self.command = command
        self.env = env
        self.stdin = stdin
        self.conf = conf
        self.version = version
        self.container_id = env.get("CNI_CONTAINERID", "")
        self.netns = env.get("CNI_NETNS", "")
        self.ifname = env.get("CNI_IFNAME", "")
        self.path = [p for p in env.get("CNI_PATH", "").split(":") if p]
        self.args = parse_cni_args(env.get("CNI_ARGS", ""), known_args)
        if self.container_id and not valid_id(self.container_id):
            raise CNIError(INVALID_ENV, "invalid characters in CNI_CONTAINERID",
                           f"CNI_CONTAINERID={self.container_id!r} must match "
                           "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
        if command == "ADD" and len(self.container_id) > MAX_CONTAINER_ID:  # ASCII: chars = bytes
            raise CNIError(INVALID_ENV, f"invalid CNI_CONTAINERID: longer than {MAX_CONTAINER_ID} "
                           "bytes", f"CNI_CONTAINERID has {len(self.container_id)} bytes")
        if self.ifname or "CNI_IFNAME" in REQUIRED_ENV.get(command, ()):
            check_ifname(self.ifname)
        name = conf.get("name")
        if not isinstance(name, str) or not name:
            raise CNIError(INVALID_CONFIG, "missing network name", "the conf has no \"name\"")
        if not valid_id(name):
            raise CNIError(INVALID_CONFIG, "invalid characters found in network name",
                           f"name={name!r} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")

    @property
    def network(self) -> str:
        return self.conf["name"]

    def valid_attachments(self) -> set[tuple[str, str]]:
        """GC's cni.dev/valid-attachments (or libcni's misspelt alias cni.dev/attachments) as
        (containerID, ifname) pairs. A malformed entry refuses the GC: guessing could release
        an attachment that is in use."""
        key = ("cni.dev/valid-attachments" if "cni.dev/valid-attachments" in self.conf
               else "cni.dev/attachments")
        valid = self.conf.get(key)
        if not isinstance(valid, list):
            raise CNIError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments",
                           "a list of {containerID, ifname}; an empty list releases everything")
        pairs = set()
        for i, entry in enumerate(valid):
            if not (isinstance(entry, dict) and isinstance(entry.get("containerID"), str)
                    and isinstance(entry.get("ifname"), str)):
                raise CNIError(INVALID_CONFIG, f"invalid {key}[{i}]: an attachment needs a "
                               "string containerID and ifname", f"{key}[{i}]={entry!r}")
            pairs.add((entry["containerID"], entry["ifname"]))
        return pairs

    @property
    def runtime_config(self) -> dict:
        value = self.conf.get("runtimeConfig")
        return value if isinstance(value, dict) else {}
