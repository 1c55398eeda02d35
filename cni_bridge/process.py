"""Running a helper program (the IPAM plugin, iptables-nft): our bytes on its stdin, its
stdout collected, its stderr passed through to the runtime's log or collected with stdout.

posix_spawn and pipes rather than the subprocess module, which costs ~10 ms to import; posix
rather than os, as in cni_protocol/skel.py.
"""
from __future__ import annotations

import posix


class Child:
    """One started process; `wait()` collects it."""

    def __init__(self, argv: list[str], env: dict, stdin: bytes,
                 stderr_to_stdout: bool = False) -> None:
        self.done = False
        stdin_r, stdin_w = posix.pipe()
        stdout_r, stdout_w = posix.pipe()
        actions = [(posix.POSIX_SPAWN_DUP2, stdin_r, 0), (posix.POSIX_SPAWN_DUP2, stdout_w, 1)]
        if stderr_to_stdout:
            actions.append((posix.POSIX_SPAWN_DUP2, stdout_w, 2))
        try:
            self.pid = posix.posix_spawn(argv[0], argv, env, file_actions=actions)
        except OSError:
            for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
                posix.close(fd)
            raise
        posix.close(stdin_r)
        posix.close(stdout_w)
        self._stdout = stdout_r
        try:
            # What we send is far below a pipe's buffer; the child reads it first anyway.
            view = memoryview(stdin)
            while view:
                view = view[posix.write(stdin_w, view):]
        except BrokenPipeError:
            pass  # the child died early; wait() reports its exit
        finally:
            posix.close(stdin_w)

    def wait(self) -> tuple[int, bytes]:
        """(exit code, everything it wrote to stdout)."""
        chunks = []
        while chunk := posix.read(self._stdout, 65536):
            chunks.append(chunk)
        posix.close(self._stdout)
        _, status = posix.waitpid(self.pid, 0)
        self.done = True
        return posix.waitstatus_to_exitcode(status), b"".join(chunks)
