"""IPAM delegation as the spec says: find the plugin in CNI_PATH, give it our env (with the
verb we want) and our stdin, let its stderr through, read its result or error from stdout.

When the plugin found is our own host-local of this very build (its file starts with the line
this build's host-local starts with: cni_build.FIRST_LINES, see tools/build_zipapp.py), its
verb runs in this process, through the function its own process would run
(cni_protocol.skel.serve): the same request, answer bytes and error objects, the same lock and
store, and one interpreter start (~10 ms of CPU) fewer per call. Anything else is exec'd:
another plugin, another build of ours, a wrapper script. A symlink to our zipapp of this build
is our zipapp (its bytes are what count).

`start` returns a call whose `wait` collects the answer: an exec'd plugin runs meanwhile, as the
bridge does its netlink work; an in-process call has run when `start` returns, and `done`
(collected) once `wait` has returned its answer, as for a process. Answers are
checked here, once (cni_protocol.result.parse): attach and check trust their shape.

A delegation loop (ipam.type naming a bridge, directly or through other plugins) is refused
instead of recursing without bound: an IPAM plugin that is this bridge is not run, and every
plugin we run finds DELEGATE_MARK in its environment, so that a bridge of ours started as
somebody's IPAM plugin (through a wrapper, another build, the Go bridge) refuses.
"""
from __future__ import annotations

import _stat
import posix  # not os, as in cni_protocol.skel

from cni_protocol import jsonio
from cni_protocol.errors import CNIError, DECODE_FAILURE, INVALID_CONFIG
from cni_protocol.request import Request

DELEGATE_MARK = "CNI_PYTHON_BRIDGE_DELEGATE"
IN_PROCESS = ("host-local", "host_local_ipam.plugin")  # (plugin, its module of verbs)
MAX_ERROR_CODE = 2**64 - 1  # what a runtime's Go decoder takes (types.Error.Code is a uint)


def find_plugin(plugin: str, path: list[str]) -> str:
    """The spec's lookup: the first executable file named `plugin` in CNI_PATH."""
    for directory in path:
        candidate = f"{directory}/{plugin}"
        try:
            regular = _stat.S_ISREG(posix.stat(candidate).st_mode)
        except (OSError, ValueError):
            continue
        if regular and posix.access(candidate, posix.X_OK):
            return candidate
    raise CNIError(INVALID_CONFIG, f"failed to find IPAM plugin {plugin!r} in CNI_PATH",
                   f"CNI_PATH={':'.join(path)}")


def _built_as(executable: str) -> str | None:
    """Which plugin of this very build `executable` is, by its first line; None if none."""
    try:
        from cni_build import FIRST_LINES  # written into the zipapp by tools/build_zipapp.py
    except ImportError:
        return None  # not running from a zipapp: no build to compare with
    try:
        fd = posix.open(executable, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
        try:
            head = posix.read(fd, max(map(len, FIRST_LINES.values())))
        finally:
            posix.close(fd)
    except OSError:
        return None
    return next((name for name, line in FIRST_LINES.items() if head.startswith(line)), None)


def _loop(why: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"ipam.type names a bridge plugin: {why}, a delegation loop",
                    "ipam.type must name an IPAM plugin, such as host-local")


def refusing_delegation_loops(handler):
    """The bridge's `handler` for a verb, refusing when this bridge is somebody's IPAM plugin."""
    def verb(req: Request):
        if DELEGATE_MARK in req.env:
            raise _loop(f"this bridge was started as an IPAM plugin ({DELEGATE_MARK} is set)")
        return handler(req)
    return verb


class IPAMCall:
    """One IPAM verb: a process of its own, or already answered in ours."""

    def __init__(self, plugin: str, command: str, req: Request) -> None:
        self.plugin = plugin
        self.command = command
        self._req = req
        executable = find_plugin(plugin, req.path)
        env = dict(req.env, CNI_COMMAND=command)
        env[DELEGATE_MARK] = "1"
        built_as = _built_as(executable)
        if built_as == "bridge":
            raise _loop(f"{executable} is this bridge")
        self.in_process = built_as == IN_PROCESS[0]
        if self.in_process:
            from cni_protocol.skel import serve
            answer = serve(*IN_PROCESS, env, req.stdin)
            self._child, self._answer = None, (answer.status, answer.stdout)
            self._collected = False
            return
        from .process import Child
        try:
            self._child = Child([executable], env, req.stdin)
        except OSError as e:
            raise CNIError(INVALID_CONFIG, f"cannot run IPAM plugin {executable}: {e.strerror}"
                           ) from None

    @property
    def done(self) -> bool:
        """Whether `wait` has collected the answer."""
        return self._collected if self._child is None else self._child.done

    def wait(self) -> dict | None:
        """The plugin's result (ADD, in the 1.x shape) or None; raises its error. An ADD that
        succeeded with an answer we cannot use is released (IPAM DEL) first."""
        if self._child is None:
            status, output = self._answer
            self._collected = True
        else:
            status, output = self._child.wait()
        if status != 0:
            raise self._error(status, output)
        if self.command != "ADD":
            return None
        from cni_protocol.result import InvalidResult, parse  # only ADD answers a result
        try:
            return parse(jsonio.loads(output))
        except (ValueError, InvalidResult) as e:
            problem = e if isinstance(e, InvalidResult) else f"not a JSON result: {e}"
        try:
            run(self.plugin, "DEL", self._req)
        except CNIError:
            pass  # the error below is the one to report; the runtime's DEL tries again
        raise CNIError(DECODE_FAILURE,
                       f"IPAM plugin {self.plugin} returned an invalid result: {problem}",
                       output.decode(errors="replace")[:200])

    def _error(self, status: int, output: bytes) -> CNIError:
        """The plugin's error object as ours, if it is one; otherwise code 6 saying so."""
        failed = f"IPAM plugin {self.plugin} {self.command} failed ({_exit_status(status)})"
        try:
            err = jsonio.loads(output)
        except ValueError:
            err = None
        if not isinstance(err, dict):
            text = output.decode(errors="replace").strip()
            return CNIError(DECODE_FAILURE, f"{failed} without an error object on stdout"
                            + (f": {text[:200]}" if text else ""))
        code, msg, details = err.get("code"), err.get("msg", ""), err.get("details", "")
        if type(code) is not int or not 1 <= code <= MAX_ERROR_CODE:
            problem = f"code {code!r} is not an integer from 1 to {MAX_ERROR_CODE}"
        elif not isinstance(msg, str) or not isinstance(details, str):
            problem = "msg and details must be strings"
        else:
            return CNIError(code, msg, details)
        text = output.decode(errors="replace").strip()
        return CNIError(DECODE_FAILURE, f"{failed} with an invalid error object: {problem}",
                        text[:200])


def _exit_status(status: int) -> str:
    return f"exit {status}" if status >= 0 else f"killed by signal {-status}"


def start(plugin: str, command: str, req: Request) -> IPAMCall:
    return IPAMCall(plugin, command, req)


def run(plugin: str, command: str, req: Request) -> dict | None:
    return IPAMCall(plugin, command, req).wait()


def host_local_leases(req: Request, plugin: str) -> list[tuple[str, str, str | None]] | None:
    """The network's leases in host-local's store, (address, container ID, ifname or None),
    read under its lock: ours and the Go host-local's share that format, so this is what the
    IPAM plugin holds, whichever of them it is. None when the IPAM plugin is not host-local or
    its store cannot be read. The bridge asks when it must know an attachment's addresses and
    neither the pod's interface nor prevResult tells (a DEL without netns, GC)."""
    if plugin != "host-local":
        return None
    try:
        from host_local_ipam.config import IPAMConfig
        from host_local_ipam.store import DiskStore
        store = DiskStore(IPAMConfig(req).data_dir, req.network, create=False)
        with store.lock():
            return store.leases()
    except (CNIError, OSError):
        return None
