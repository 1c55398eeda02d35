"""IPAM delegation as the spec says: find the plugin in CNI_PATH, give it our env (with the
verb we want) and our stdin, let its stderr through, read its result or error from stdout.

`start` returns at once so the IPAM plugin (a process of its own) runs while the bridge does its
netlink work; `wait` collects it.
"""
from __future__ import annotations

import os

from cni_protocol import jsonio
from cni_protocol.errors import CNIError, DECODE_FAILURE, INTERNAL, INVALID_CONFIG
from cni_protocol.request import Request
from cni_protocol.result import upgrade


def find_plugin(plugin: str, path: list[str]) -> str:
    for directory in path:
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(INVALID_CONFIG, f"failed to find IPAM plugin {plugin!r} in CNI_PATH",
                   f"CNI_PATH={':'.join(path)}")


class IPAMCall:
    """One running IPAM plugin process."""

    def __init__(self, plugin: str, command: str, req: Request) -> None:
        self.plugin = plugin
        self.command = command
        self.done = False
        executable = find_plugin(plugin, req.path)
        env = dict(req.env)
        env["CNI_COMMAND"] = command
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        try:
            self.pid = os.posix_spawn(
                executable, [executable], env,
                file_actions=[(os.POSIX_SPAWN_DUP2, stdin_r, 0),
                              (os.POSIX_SPAWN_DUP2, stdout_w, 1)])
        except OSError as e:
            for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
                os.close(fd)
            raise CNIError(INVALID_CONFIG, f"cannot run IPAM plugin {executable}: {e.strerror}"
                           ) from None
        os.close(stdin_r)
        os.close(stdout_w)
        self._stdout = stdout_r
        try:
            # The conf is far below a pipe's buffer in practice; the child reads it first anyway.
            view = memoryview(req.stdin)
            while view:
                view = view[os.write(stdin_w, view):]
        except BrokenPipeError:
            pass  # the child died early; wait() reports its exit
        finally:
            os.close(stdin_w)

    def wait(self) -> dict | None:
        """The plugin's result (ADD, upgraded to the 1.x shape) or None; raises its error."""
        chunks = []
        while True:
            chunk = os.read(self._stdout, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._stdout)
        _, status = os.waitpid(self.pid, 0)
        self.done = True
        output = b"".join(chunks)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise self._error(output, code)
        if self.command != "ADD":
            return None
        try:
            return upgrade(jsonio.loads(output))
        except (ValueError, KeyError, TypeError) as e:
            raise CNIError(DECODE_FAILURE, f"cannot decode the result of IPAM plugin "
                           f"{self.plugin}: {e}", output.decode(errors="replace")[:200]) from None

    def _error(self, output: bytes, code: int) -> CNIError:
        try:
            err = jsonio.loads(output)
            return CNIError(int(err["code"]), err.get("msg", ""), err.get("details", ""))
        except (ValueError, KeyError, TypeError):
            text = output.decode(errors="replace").strip() or "no error message"
            return CNIError(INTERNAL,
                            f"IPAM plugin {self.plugin} {self.command} failed "
                            f"(exit {code}): {text[:200]}")


def start(plugin: str, command: str, req: Request) -> IPAMCall:
    return IPAMCall(plugin, command, req)


def run(plugin: str, command: str, req: Request) -> dict | None:
    return IPAMCall(plugin, command, req).wait()
