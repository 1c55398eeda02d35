"""The execution protocol: env + stdin in, result or error JSON on stdout, exit status.

A plugin hands `run` the name of its module of verbs: a HANDLERS dict (one function per verb)
and KNOWN_ARGS (the CNI_ARGS keys it understands). It is imported only when a verb needs it,
so VERSION and the "about" line cost no more than the interpreter. Handlers return a
1.x-shaped result dict (ADD) or None, and raise CNIError for anything the runtime should see. Nothing else escapes: an
unexpected exception becomes one error object with a one-line message, never a traceback.
"""
from __future__ import annotations

import os
import sys

from . import jsonio
from . import result as results
from . import version as versions
from .errors import CNIError, DECODE_FAILURE, INTERNAL, INVALID_ENV, INVALID_CONFIG
from .request import Request

MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def run(plugin: str, verbs_module: str) -> None:
    """Serve one invocation and exit."""
    env = os.environ
    command = env.get("CNI_COMMAND", "")
    if not command:
        sys.stderr.write(f"CNI plugin {plugin} (Python) "
                         f"supporting CNI spec versions {', '.join(versions.SUPPORTED_VERSIONS)}\n")
        _exit(0)
    version = versions.LATEST
    try:
        stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
        if command == "VERSION":
            _print(_version_info(stdin))
            _exit(0)
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
        req = Request(command, env, stdin, conf, version, verbs.KNOWN_ARGS)
        out = handler(req)
        if out is not None:
            _print(results.emit(out, version))
    except CNIError as e:
        _fail(e, version)
    except Exception as e:  # a bug: one line for the runtime's log, not a traceback
        _fail(CNIError(INTERNAL, f"{plugin}: internal error: {type(e).__name__}: {e}"), version)
    _exit(0)


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


def _print(obj: dict) -> None:
    sys.stdout.write(jsonio.dumps(obj))
    sys.stdout.write("\n")
    sys.stdout.flush()


def _fail(error: CNIError, version: str) -> None:
    _print(error.to_dict(version))
    _exit(1)


def _exit(code: int) -> None:
    """Exit without finalizing the interpreter (module teardown, garbage collection: ~2 ms,
    more with python-iptables loaded). Everything the verbs write is unbuffered (os.write,
    netlink, libiptc commits) or flushed here; the kernel releases locks and sockets."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # the runtime closed the pipe: nothing left to tell it
    os._exit(code)


def config_error(key: str, problem: str, value: object = None) -> CNIError:
    """Code 7, naming the key: 'ipam.ranges[0][0].subnet: has host bits set'."""
    details = "" if value is None else f"{key}={jsonio.dumps(value)}"
    return CNIError(INVALID_CONFIG, f"invalid config: {key}: {problem}", details)
