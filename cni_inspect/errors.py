"""The one error cni-inspect has: bad input that stops it before it can inspect anything."""
from __future__ import annotations


class InspectError(Exception):
    """An unknown target, a missing or unreadable conf, or a pod not attached by a bridge conf.

    str() is the one line printed; the exit code is 2.
    """
