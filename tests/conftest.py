"""Shared by every test: the checkout on sys.path, and where the plugins under test are.

The plugin dir is CNI_TEST_PLUGIN_DIR (default <repo>/dist, where `make zipapps` puts our
zipapps). With the default dir, `zipapp(name)` (re)builds dist/<name> with make when it is
missing or older than its sources, so the tests never run a stale zipapp.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # unit tests import cni_protocol, host_local_ipam, ...


def plugins_dir() -> Path:
    """CNI_TEST_PLUGIN_DIR, default <repo>/dist; a relative path is relative to the repo."""
    d = Path(os.environ.get("CNI_TEST_PLUGIN_DIR", "dist"))
    return (d if d.is_absolute() else ROOT / d).resolve()


_checked: dict[str, Path] = {}


def _make(target: str) -> None:
    """`make target` in the checkout, when it is missing or older than its sources."""
    fresh = subprocess.run(["make", "-q", target], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL).returncode == 0
    if not fresh:
        built = subprocess.run(["make", target], cwd=ROOT, capture_output=True, text=True)
        if built.returncode != 0:
            pytest.fail(f"`make {target}` failed:\n{built.stdout}{built.stderr}")


def _zipapp(name: str) -> Path:
    if name in _checked:
        return _checked[name]
    d = plugins_dir()
    path = d / name
    if d == (ROOT / "dist").resolve():
        _make(f"dist/{name}")
    if not os.access(path, os.X_OK):
        pytest.skip(f"no executable {name} in {d}: run `make zipapps`, or set "
                    "CNI_TEST_PLUGIN_DIR")
    _checked[name] = path
    return path


@pytest.fixture(scope="session")
def zipapp():
    """zipapp(name) -> Path of the plugin under test, built first if it is ours and stale."""
    return _zipapp


@pytest.fixture(scope="session")
def inspect_tool() -> Path:
    """dist/cni-inspect, built first if stale: always ours, whatever CNI_TEST_PLUGIN_DIR says
    (it is a tool for people, not a plugin)."""
    _make("dist/cni-inspect")
    return ROOT / "dist" / "cni-inspect"
