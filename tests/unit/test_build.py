"""The build id the two zipapps share: on line 1 of each, and in the bridge's cni_build module,
which is how the bridge knows a host-local of its own build."""
from __future__ import annotations

import ast
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import build_zipapp  # noqa: E402

PACKAGES = ["cni_protocol", "host_local_ipam", "cni_bridge"]


def _cni_build(app: Path) -> dict:
    with zipfile.ZipFile(app) as archive:
        source = archive.read("site-packages/cni_build.py").decode()
    return {node.targets[0].id: ast.literal_eval(node.value)
            for node in ast.parse(source).body if isinstance(node, ast.Assign)}


def test_both_zipapps_start_with_the_lines_the_bridge_compares(zipapp):
    bridge, host_local = zipapp("bridge"), zipapp("host-local")
    built = _cni_build(bridge)
    assert _cni_build(host_local) == built
    for name, app in (("bridge", bridge), ("host-local", host_local)):
        first = app.read_bytes().split(b"\n", 1)[0] + b"\n"
        assert first == built["FIRST_LINES"][name]
        assert first.endswith(f"#{name} {built['BUILD_ID']}\n".encode()) and len(first) <= 255
    assert built["BUILD_ID"] == build_zipapp.build_id([str(ROOT / p) for p in PACKAGES])


def test_the_build_id_changes_with_any_source_of_either_plugin(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    paths = [str(tmp_path / p) for p in PACKAGES]
    before = build_zipapp.build_id(paths)
    assert build_zipapp.build_id(paths) == before
    for changed in ("host_local_ipam/store.py", "cni_bridge/attach.py", "cni_protocol/skel.py"):
        with open(tmp_path / changed, "a") as f:
            f.write("\n")
        after = build_zipapp.build_id(paths)
        assert after != before, changed
        before = after
    (tmp_path / "cni_bridge" / "new.py").write_text("")
    assert build_zipapp.build_id(paths) != before
