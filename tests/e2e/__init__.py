"""Shared by the end-to-end tests: root checks, signal handling, the cluster tool.

The plugins under test come from the `zipapp` fixture of tests/conftest.py (CNI_TEST_PLUGIN_DIR,
default dist/). CNI_TEST_PLUGIN_DIR=/usr/lib/cni (or ../shared/reference-v1.9.1) runs the same
tests against Debian's (or upstream's newest) reference Go plugins.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = Path("/usr/lib/cni")  # Debian's Go plugins, 1.1.1
UPSTREAM_DIR = ROOT.parent / "shared" / "reference-v1.9.1"  # upstream's newest; CI has ../shared


def plugins_under_test(zipapp) -> Path:
    """The dir holding bridge and host-local (skips when not root: the tests make netns)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, mounts and cgroups")
    zipapp("host-local")
    return zipapp("bridge").parent


def is_reference(plugins: Path) -> bool:
    """True when the bridge under test is a Go reference one: Debian's or upstream's newest."""
    return (plugins / "bridge").resolve() in (REFERENCE_DIR / "bridge",
                                              UPSTREAM_DIR.resolve() / "bridge")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Let a SIGTERM (a CI timeout) unwind through the fixtures' cleanup as Ctrl-C does."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def load_cluster_tool():
    """tools/cluster.py as a module: the tests build the same cluster as the demo."""
    spec = importlib.util.spec_from_file_location("kthw_cluster", ROOT / "tools" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
