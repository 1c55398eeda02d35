"""The execution protocol: env + stdin in, exit status + stdout bytes out.

`serve` is that function, whole. The process entry point (`run`) and the bridge's in-process
IPAM call (cni_bridge/ipam.py) both go through it, so a verb run either way answers the same
bytes by construction.

A plugin names its module of verbs: HANDLERS (one function per verb) and KNOWN_ARGS (the
CNI_ARGS keys it understands). Handlers return a 1.x-shaped result dict (ADD) or None, and
raise CNIError for anything the runtime should see. Nothing else escapes: an unexpected
exception becomes one error object with a one-line message, never a traceback. An ADD whose
answer cannot be given (not expressible in the request's version, or stdout closed or broken)
is undone with the plugin's own DEL of the same request, as a failed step of the ADD is.

Start-up: this module imports only `posix`, which the interpreter has loaded already, and not
`os` (~2 ms: os builds _collections_abc's classes); requests, results and the verbs are
imported only when a verb needs them. VERSION thus costs the interpreter's start, the loader
line and the JSON module's C half.
"""
from __future__ import annotations

import posix
import sys

from . import jsonio
from . import version as versions
from .errors import CNIError, DECODE_FAILURE, INTERNAL, INVALID_ENV, INVALID_CONFIG

MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


class Answer:
    """What one call answers: exit status, stdout bytes, and for a successful ADD how to undo
    it if the answer cannot be delivered."""

    __slots__ = ("status", "stdout", "undo")

    def __init__(self, status: int, stdout: bytes, undo=None) -> None:
        self.status = status
        self.stdout = stdout
        self.undo = undo


def run(plugin: str, verbs_module: str) -> None:
    """Serve this process's invocation and exit."""
    _park_closed_std_fds()
    env = environ()
    if not env.get("CNI_COMMAND"):
        _note(f"CNI plugin {plugin} (Python) supporting CNI spec versions "
              f"{', '.join(versions.SUPPORTED_VERSIONS)}")
        _exit(0)
    answer = serve(plugin, verbs_module, env, _read_stdin())
    status = answer.status
    try:
        _write(1, answer.stdout)
    except OSError as e:
        if answer.undo is not None:
            _undo(plugin, answer.undo, f"its result could not be written to stdout: {e.strerror}")
            status = 1
    _exit(status)


def serve(plugin: str, verbs_module: str, env: dict[str, str], stdin: bytes) -> Answer:
    """One call of `plugin`: the environment's CNI_COMMAND with this env and stdin."""
    command = env.get("CNI_COMMAND", "")
    version = versions.LATEST
    try:
        if command == "VERSION":
            return Answer(0, _dumps(_version_info(stdin)))
        verbs = __import__(verbs_module, fromlist=["HANDLERS"])
        handler = verbs.HANDLERS.get(command)
        if handler is None:
            raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND: {command}",
                           f"known commands: {', '.join(['VERSION', *verbs.HANDLERS])}")
        conf = decode_conf(stdin)
        version = _reported_version(conf)  # what an error speaks if negotiation fails
        version = versions.negotiate(conf)
        if command in MINIMUM_VERSION:
            versions.require(version, MINIMUM_VERSION[command], command)
        from .request import Request
        req = Request(command, env, stdin, conf, version, verbs.KNOWN_ARGS)
        out = handler(req)
        if out is None:
            return Answer(0, b"")
        undo = _undo_of(verbs, command, req)
        from .result import emit
        try:
            return Answer(0, _dumps(emit(out, version)), undo)
        except CNIError:
            if undo is not None:
                _undo(plugin, undo, f"its result cannot be given in version {version}")
            raise
    except CNIError as e:
        return Answer(1, _dumps(e.to_dict(version)))
    except Exception as e:  # a bug: one line for the runtime's log, not a traceback
        error = CNIError(INTERNAL, f"{plugin}: internal error: {type(e).__name__}: {e}")
        return Answer(1, _dumps(error.to_dict(version)))


def environ() -> dict[str, str]:
    """The process environment as os.environ decodes it (file system encoding, unencodable
    bytes as surrogates), without importing os."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {k.decode(encoding, errors): v.decode(encoding, errors)
            for k, v in posix.environ.items()}


def decode_conf(stdin: bytes) -> dict:
    try:
        conf = jsonio.loads(stdin)
    except ValueError as e:
        raise CNIError(DECODE_FAILURE, "error decoding network configuration from stdin",
                       str(e)) from None
    if not isinstance(conf, dict):
        raise CNIError(DECODE_FAILURE, "error decoding network configuration from stdin",
                       "the configuration is not a JSON object")
    return conf


def config_error(key: str, problem: str, value: object = None) -> CNIError:
    """Code 7, naming the key: 'ipam.ranges[0][0].subnet: has host bits set'."""
    details = "" if value is None else f"{key}={jsonio.dumps(value)}"
    return CNIError(INVALID_CONFIG, f"invalid config: {key}: {problem}", details)


def _undo_of(verbs, command: str, req):
    """How to take back a successful ADD: the plugin's DEL of the same attachment, what the
    runtime sends after a failed ADD."""
    delete = verbs.HANDLERS.get("DEL")
    if command != "ADD" or delete is None:
        return None
    from .request import Request

    def undo() -> None:
        env = dict(req.env, CNI_COMMAND="DEL")
        delete(Request("DEL", env, req.stdin, req.conf, req.version, verbs.KNOWN_ARGS))
    return undo


def _undo(plugin: str, undo, why: str) -> None:
    """Best effort; stderr, the runtime's log, says what happened."""
    try:
        undo()
        outcome = "undone"
    except Exception as e:
        outcome = f"not undone: {getattr(e, 'msg', None) or e}"
    _note(f"{plugin}: ADD {outcome}: {why}")


def _note(line: str) -> None:
    """A line for the runtime's log (our stderr), if anyone still reads it."""
    try:
        _write(2, (line + "\n").encode(errors="backslashreplace"))
    except OSError:
        pass


def _reported_version(conf: dict) -> str:
    """The version an error is reported in: the conf's own if it is a string we know."""
    v = conf.get("cniVersion")
    return v if v in versions.SUPPORTED_VERSIONS else versions.LATEST


def _version_info(stdin: bytes) -> dict:
    version = versions.LATEST
    if stdin.strip():
        try:
            conf = jsonio.loads(stdin)
            if isinstance(conf, dict) and conf.get("cniVersion") in versions.SUPPORTED_VERSIONS:
                version = conf["cniVersion"]
        except ValueError:
            pass
    return {"cniVersion": version, "supportedVersions": list(versions.SUPPORTED_VERSIONS)}


def _dumps(obj: dict) -> bytes:
    return (jsonio.dumps(obj) + "\n").encode()  # ASCII: jsonio escapes everything else


def _park_closed_std_fds() -> None:
    """/dev/null on a closed fd 0, 1 or 2. Otherwise the next file or socket we open gets
    that number, and a result written to fd 1 would land in a lease file or a netlink socket.
    fd 1 is opened read-only, so that writing the answer fails as it should."""
    for fd, flags in ((0, posix.O_RDONLY), (1, posix.O_RDONLY), (2, posix.O_WRONLY)):
        try:
            posix.fstat(fd)
        except OSError:
            posix.open("/dev/null", flags)  # the lowest free number: this fd


def _read_stdin() -> bytes:
    if posix.isatty(0):
        return b""
    chunks = []
    try:
        while chunk := posix.read(0, 65536):
            chunks.append(chunk)
    except OSError:
        pass  # a stdin we cannot read is an empty conf: the decoder says so
    return b"".join(chunks)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view):]


def _exit(code: int) -> None:
    """Exit without finalizing the interpreter (module teardown, garbage collection: ~2 ms,
    more with python-iptables loaded). Our answers go out with posix.write, unbuffered, and
    everything the verbs write is too (netlink, libiptc commits); the kernel releases locks
    and sockets."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # the runtime closed the pipe: nothing left to tell it
    posix._exit(code)
