#!/usr/bin/python3
"""Build one plugin as a shiv zipapp that starts as fast as a plain script.

shiv extracts the app's site-packages once into <root>/<name>_<build id>/ and compiles it,
which is what we want. But running a zipapp costs twice on every call: shiv's bootstrap
(pathlib, zipfile, json, site, ...: ~65 ms) and, before it, the interpreter's runpy
(importlib.util, contextlib: ~5 ms). So the archive starts with two lines of our own instead
of shiv's `#!python` line (a zip file may carry any prefix):

    #!/usr/bin/python3 -ISc<read line 2 of this file and exec it>
    #<start code>

The kernel runs the system interpreter isolated and without site (so neither PYTHON*
variables, a user site, HOME nor PATH matter) on a `-c` one-liner, which runs the start code
of line 2: import the entry point straight from the extracted site-packages, or, when that
is missing (the first run after an install), hand over to shiv's own bootstrap, which
extracts it under its file lock (through `_cni_first_run`, which turns a failure to extract
into a CNI error).

usage: build_zipapp.py --shiv SHIV --entry MOD:FUNC --site-packages DIR --out FILE [--root DIR]
       build_zipapp.py --prune INSTALLED_APP [--root DIR]   (drop extractions of other builds)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import zipfile

INTERPRETER = "/usr/bin/python3 -IS"  # one argument for the kernel: "-IS" then "c..."
EXTRACT_ROOT = "/var/cache/cni-python"

# The whole shebang line must stay within the kernel's 255 characters.
SHEBANG = ('#!' + INTERPRETER + 'cimport sys;f=open(sys.argv[1],"rb");f.readline();'
           'exec(f.readline()[1:])\n')

# Line 2, one line of Python after a '#'. sys.argv is ['-c', <this file>, ...].
START = (
    "#import os; f.close(); "
    "sys.argv = sys.argv[1:]; "
    "root = os.environ.get('SHIV_ROOT') or '{root}'; "
    "name = os.path.basename(os.path.realpath(sys.argv[0])); "
    "site = f'{{root}}/{{name}}_{build_id}/site-packages'; "
    "warm = os.path.isdir(site); "
    "sys.path.insert(0, site if warm else sys.argv[0]); "
    "exec('from {module} import {func}; {func}()' if warm else 'import _cni_first_run')\n"
)

# Added to the archive's root: the cold path, in CNI terms when extraction is impossible.
FIRST_RUN = '''"""First run of this CNI plugin: shiv extracts its packages, then runs it. If it cannot
(a read-only or full disk), the runtime gets a CNI error, not a traceback."""
import json
import sys

try:
    import _bootstrap
    _bootstrap.bootstrap()
except OSError as e:
    sys.stdout.write(json.dumps({
        "cniVersion": "1.1.0", "code": 5,
        "msg": f"cannot extract the plugin's Python packages: {e}",
        "details": "SHIV_ROOT names a writable directory for them; `make install` extracts "
                   "them at install time"}) + "\\n")
    sys.exit(1)
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shiv")
    p.add_argument("--entry")
    p.add_argument("--site-packages")
    p.add_argument("--out")
    p.add_argument("--root", default=EXTRACT_ROOT)
    p.add_argument("--prune", metavar="INSTALLED_APP")
    a = p.parse_args()
    if a.prune:
        prune(a.prune, a.root)
        return
    if not (a.shiv and a.entry and a.site_packages and a.out):
        p.error("--shiv, --entry, --site-packages and --out are required to build")

    raw = a.out + ".shiv"
    subprocess.run([a.shiv, "--site-packages", a.site_packages, "-e", a.entry, "-o", raw,
                    "-p", INTERPRETER, "--root", a.root, "--reproducible"], check=True)
    module, func = a.entry.split(":")
    with zipfile.ZipFile(raw, "a") as archive:
        build_id = json.loads(archive.read("environment.json"))["build_id"]
        archive.writestr(zipfile.ZipInfo("_cni_first_run.py", (1980, 1, 1, 0, 0, 0)), FIRST_RUN)
    with open(raw, "rb") as f:
        data = f.read()
    zip_data = data[data.index(b"\n") + 1:]  # drop shiv's #! line
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as out:
        out.write(SHEBANG.encode())
        out.write(START.format(root=a.root, build_id=build_id, module=module, func=func).encode())
        out.write(zip_data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, a.out)
    os.unlink(raw)
    print(f"built {a.out} (build id {build_id[:12]}, extracts to {a.root})")


def prune(app: str, root: str) -> None:
    """Remove <root>/<name>_<id> extractions of builds older than the previous one.

    The previous build's stays: a plugin started just before the install may still be
    running from it, and imports its modules lazily.
    """
    with zipfile.ZipFile(app) as archive:
        build_id = json.loads(archive.read("environment.json"))["build_id"]
    name = os.path.basename(os.path.realpath(app))
    if not os.path.isdir(root):
        return
    others = [os.path.join(root, entry) for entry in os.listdir(root)
              if entry.startswith(f"{name}_") and build_id not in entry]
    others.sort(key=os.path.getmtime)
    for path in others[:-1]:
        shutil.rmtree(path, ignore_errors=True)
        lock = os.path.join(root, f".{os.path.basename(path)}_lock")
        if os.path.exists(lock):
            os.unlink(lock)

if __name__ == "__main__":
    main()
