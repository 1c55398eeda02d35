"""cniVersion negotiation: exact match against what we support, as the reference's reconciler."""
from __future__ import annotations

from .errors import CNIError, INCOMPATIBLE_VERSION, INVALID_CONFIG

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]


def parse(version: str) -> tuple[int, ...]:
    """'0.3.1' -> (0, 3, 1); raises ValueError for anything that is not dotted integers."""
    parts = tuple(int(p) for p in version.split("."))
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts):
        raise ValueError(version)
    return parts + (0,) * (3 - len(parts))


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def negotiate(conf: dict) -> str:
    """The conf's cniVersion (libcni sets it; a bare cniVersions list picks its highest we speak).

    A missing cniVersion means 0.1.0, as the spec's first version had no field.
    """
    version = conf.get("cniVersion")
    if version is None and isinstance(conf.get("cniVersions"), list):
        ours = [v for v in conf["cniVersions"] if v in SUPPORTED_VERSIONS]
        if not ours:
            raise incompatible(str(conf["cniVersions"]))
        return max(ours, key=parse)
    if version is None or version == "":
        return "0.1.0"  # as the reference decodes an empty one too
    if not isinstance(version, str):
        raise CNIError(INVALID_CONFIG, "invalid cniVersion: must be a string",
                       f"cniVersion is {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise incompatible(version)
    return version


def incompatible(version: str) -> CNIError:
    supported = " ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return CNIError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                    f'config is "{version}", plugin supports [{supported}]')


def require(version: str, minimum: str, verb: str) -> None:
    """CHECK needs 0.4.0, GC and STATUS need 1.1.0: older configs get code 1."""
    if not at_least(version, minimum):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version does not allow {verb}",
                       f'config is "{version}", {verb} needs {minimum} or later')
