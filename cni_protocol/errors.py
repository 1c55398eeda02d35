"""CNI error codes (spec section "Error") and the one exception every plugin raises."""
from __future__ import annotations

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Codes >= 100 are ours.
ALLOCATION_FAILED = 100  # host-local: a requested address is taken, or a range set is exhausted
LEASE_NOT_FOUND = 101    # host-local CHECK: no lease for the attachment
BRIDGE_FAILURE = 102     # bridge: a netlink, sysctl or iptables step failed; msg says which
CHECK_FAILED = 103       # bridge CHECK: the attachment differs from prevResult
INTERNAL = 999  # an unexpected exception: a bug, reported as one line, never a traceback


class CNIError(Exception):
    """An error the runtime sees as the spec's error object on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg,
                "details": self.details}
