"""fastimport: our modules imported from the build's one file of compiled code, and the
fallback to ordinary imports when that file is missing or was made for another Python."""
from __future__ import annotations

import importlib.util
import json
import marshal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cni_protocol import fastimport

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import build_zipapp  # noqa: E402


def _site(tmp_path: Path) -> Path:
    """A site-packages with a package whose sources say where they were imported from."""
    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("FROM = 'source'\n")
    (site / "pkg" / "mod.py").write_text("from __future__ import annotations\n"
                                         "from . import FROM\n"
                                         "def f(x: Undefined) -> int: return 1\n")
    return site


def _compiled(site: Path, text: str) -> dict:
    return {"pkg": (True, build_zipapp._compile(text.encode(), "pkg/__init__.py")),
            "pkg.mod": (False, build_zipapp._compile((site / "pkg" / "mod.py").read_bytes(),
                                                     "pkg/mod.py"))}


def _import_in_fresh_python(site: Path) -> dict:
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
            "from cni_protocol import fastimport; fastimport.install(sys.argv[1]);"
            "import pkg.mod; print(json.dumps({'from': pkg.mod.FROM, "
            "'annotation': pkg.mod.f.__annotations__['x'], "
            "'future imported': '__future__' in sys.modules, 'path': pkg.__path__}))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(site), str(ROOT)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_modules_come_from_the_compiled_file(tmp_path):
    site = _site(tmp_path)
    magic = importlib.util.MAGIC_NUMBER
    (site / fastimport.FILE).write_bytes(fastimport.pack(_compiled(site, "FROM = 'file'\n"),
                                                         magic))
    assert _import_in_fresh_python(site) == {
        "from": "file", "annotation": "Undefined", "future imported": False, "path": []}


@pytest.mark.parametrize("blob", ["missing", "another Python"])
def test_without_a_usable_file_imports_are_the_ordinary_ones(tmp_path, blob):
    site = _site(tmp_path)
    if blob == "another Python":
        (site / fastimport.FILE).write_bytes(
            fastimport.pack(_compiled(site, "FROM = 'file'\n"), b"\x00\x00\r\n"))
    seen = _import_in_fresh_python(site)
    assert seen["from"] == "source" and seen["path"] == [str(site / "pkg")]


def test_the_zipapps_compile_every_module_of_ours_they_ship(zipapp):
    for name, packages in (("host-local", {"cni_protocol", "host_local_ipam"}),
                           ("bridge", {"cni_protocol", "host_local_ipam", "cni_bridge"})):
        with zipfile.ZipFile(zipapp(name)) as archive:
            shipped = set()
            for path in archive.namelist():
                top, _, rest = path.partition("/")
                if top == "site-packages" and rest.endswith(".py") and (
                        rest.split("/")[0] in packages or rest == "cni_build.py"):
                    shipped.add(rest[:-3].replace("/", ".").removesuffix(".__init__"))
            blob = archive.read(f"site-packages/{fastimport.FILE}")
        index_end = 8 + int.from_bytes(blob[4:8], "little")
        assert blob[:4] == importlib.util.MAGIC_NUMBER
        assert set(marshal.loads(blob[8:index_end])) == shipped, name
        assert {"cni_bridge.plugin", "host_local_ipam.plugin", "cni_build"} <= shipped \
            or name == "host-local"
