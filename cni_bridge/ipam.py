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
from .process import Child


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
        executable = find_plugin(plugin, req.path)
        env = dict(req.env)
        env["CNI_COMMAND"] = command
        try:
            self._child = Child([executable], env, req.stdin)
        except OSError as e:
            raise CNIError(INVALID_CONFIG, f"cannot run IPAM plugin {executable}: {e.strerror}"
                           ) from None

    @property
    def done(self) -> bool:
        return self._child.done

    def wait(self) -> dict | None:
        """The plugin's result (ADD, upgraded to the 1.x shape) or None; raises its error."""
        code, output = self._child.wait()
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
