#!/usr/bin/python3
"""Build one plugin as a shiv zipapp whose warm start skips shiv's bootstrap.

shiv extracts the app's site-packages once into <root>/<name>_<build id>/ and compiles it, which
is what we want; but its bootstrap (pathlib, zipfile, json, site, ...) costs ~65 ms on every
run. We replace the archive's __main__.py with a few lines that go straight to the extracted
site-packages when it exists and fall back to shiv's bootstrap (extraction under its lock) when
it does not. The shebang pins the system interpreter in isolated mode without site
(`/usr/bin/python3 -IS`), so neither PYTHON* variables, a user site, HOME nor PATH matter.

usage: build_zipapp.py --shiv SHIV --entry MOD:FUNC --site-packages DIR --out FILE [--root DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import zipfile

INTERPRETER = "/usr/bin/python3 -IS"
EXTRACT_ROOT = "/var/cache/cni-python"

WARM_MAIN = '''\
# Warm path of this shiv zipapp (tools/build_zipapp.py): run from the extracted site-packages
# when it is there; otherwise shiv's bootstrap extracts it first (under its file lock).
import os
import sys

_root = os.environ.get("SHIV_ROOT") or "%(root)s"
_name = os.path.basename(os.path.realpath(sys.argv[0]))
_site = f"{_root}/{_name}_%(build_id)s/site-packages"
if os.path.isdir(_site):
    sys.path.insert(0, _site)
    from %(module)s import %(func)s
    %(func)s()
else:
    import _bootstrap
    _bootstrap.bootstrap()
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shiv", required=True)
    p.add_argument("--entry", required=True)
    p.add_argument("--site-packages", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--root", default=EXTRACT_ROOT)
    a = p.parse_args()

    raw = a.out + ".shiv"
    subprocess.run([a.shiv, "--site-packages", a.site_packages, "-e", a.entry, "-o", raw,
                    "-p", INTERPRETER, "--root", a.root, "--reproducible"], check=True)
    module, func = a.entry.split(":")
    with zipfile.ZipFile(raw) as src:
        env = json.loads(src.read("environment.json"))
        tmp = a.out + ".tmp"
        with open(tmp, "wb") as out:
            out.write(f"#!{INTERPRETER}\n".encode())
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
                for info in src.infolist():
                    data = src.read(info)
                    if info.filename == "__main__.py":
                        data = (WARM_MAIN % {"root": a.root, "build_id": env["build_id"],
                                             "module": module, "func": func}).encode()
                    dst.writestr(info, data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, a.out)
    os.unlink(raw)
    print(f"built {a.out} (build id {env['build_id'][:12]}, extracts to {a.root})")


if __name__ == "__main__":
    main()
