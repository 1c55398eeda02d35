#!/usr/bin/python3
"""Build one plugin as a shiv zipapp that starts as fast as a plain script.

shiv extracts the app's site-packages once into <root>/<plugin>_<shiv build id>/, which is what
we want. But running a zipapp costs twice on every call: shiv's bootstrap (pathlib, zipfile,
json, site, ...: ~65 ms) and, before it, the interpreter's runpy (importlib.util, contextlib:
~5 ms). So the archive starts with two lines of our own instead of shiv's `#!python` line (a
zip file may carry any prefix):

    #!/usr/bin/python3 -ISc<read line 2 of this file and exec it>#<plugin> <build id>
    #<start code>

The kernel runs the system interpreter isolated and without site (so neither PYTHON*
variables, a user site, HOME nor PATH matter) on a `-c` one-liner, which runs the start code
of line 2: put the extracted site-packages on sys.path and serve the call (cni_protocol.skel),
or, when that is missing (the first run after an install), extract it first under shiv's file
lock (`_cni_first_run`, which turns a failure to extract into a CNI error). The start code uses
`posix`, not `os`: importing os costs ~2 ms (_collections_abc), a fifth of the interpreter's
own start, and VERSION needs nothing else from it.

Our own modules are imported from one file of compiled code that this tool writes into the
site-packages (cni_protocol/fastimport.py: ~2 ms a call less than the import system's search).

The comment closing line 1 names the plugin and the build: a hash over the sources of both
plugins and of this tool, the same in both zipapps of one build. The bridge reads the first
line of the IPAM plugin it finds; when it is the one of this build's host-local (FIRST_LINES in
the generated `cni_build` module), it runs host-local's verb in its own process instead of
exec'ing it (cni_bridge/ipam.py).

A tool for people (cni-inspect) is built the same way, with `--tool NAME --entry MOD:FUNC`: its
start line calls the entry point instead of serving a CNI call, and a first run that cannot
extract says so on stderr.

usage: build_zipapp.py --shiv SHIV --plugin NAME --verbs MODULE --site-packages DIR --out FILE
                       --id-from PATH... [--root DIR]
       build_zipapp.py --shiv SHIV --tool NAME --entry MOD:FUNC --site-packages DIR --out FILE
                       --id-from PATH... [--root DIR]
       build_zipapp.py --prune INSTALLED_APP [--root DIR]   (drop extractions of other builds)
"""
from __future__ import annotations

import __future__
import argparse
import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cni_protocol import fastimport  # noqa: E402  (the format of the compiled-modules file)

INTERPRETER = "/usr/bin/python3 -IS"  # one argument for the kernel: "-IS" then "c..."
LOADER = 'import sys;f=open(sys.argv[1],"rb");f.readline();exec(f.readline()[1:])'
EXTRACT_ROOT = "/var/cache/cni-python"
PLUGINS = ("bridge", "host-local")
TOOLS = ("cni-inspect",)
OUR_PACKAGES = ("cni_protocol", "cni_bridge", "host_local_ipam")

# Line 2, one line of Python after a '#'. sys.argv is ['-c', <this file>, ...].
START = (
    "#import posix; f.close(); "
    "sys.argv = sys.argv[1:]; "
    "root = posix.environ.get(b'SHIV_ROOT', b'').decode('utf-8', 'surrogateescape') "
    "or '{root}'; "
    "site = f'{{root}}/{plugin}_{shiv_id}/site-packages'; "
    "warm = posix.access(site, posix.F_OK); "
    "sys.path.insert(0, site if warm else sys.argv[0]); "
    "exec('from cni_protocol import fastimport; fastimport.install(site); "
    "from cni_protocol.skel import run; run(\"{plugin}\", \"{verbs}\")' if warm else "
    "'import _cni_first_run; _cni_first_run.main(site, \"{plugin}\", \"{verbs}\")')\n"
)

# Line 2 of a tool's zipapp: its entry point instead of a CNI call.
TOOL_START = (
    "#import posix; f.close(); "
    "sys.argv = sys.argv[1:]; "
    "root = posix.environ.get(b'SHIV_ROOT', b'').decode('utf-8', 'surrogateescape') "
    "or '{root}'; "
    "site = f'{{root}}/{name}_{shiv_id}/site-packages'; "
    "warm = posix.access(site, posix.F_OK); "
    "sys.path.insert(0, site if warm else sys.argv[0]); "
    "exec('from {module} import {func}; sys.exit({func}())' if warm else "
    "'import _cni_first_run; _cni_first_run.main_tool(site, \"{name}\", \"{module}\", "
    "\"{func}\")')\n"
)

# Added to the archive's root: the cold path, in CNI terms when extraction is impossible.
FIRST_RUN = '''"""First run of this CNI plugin: extract its packages where the start line looks for them
(under shiv's file lock, so that concurrent first runs extract once), then serve the call.
If that is impossible (a read-only or full disk), the runtime gets a CNI error, not a
traceback."""
import json
import shutil
import sys
import zipfile
from pathlib import Path


def extract(site: str) -> None:
    """shiv's extraction; if it fails (ENOSPC, say), its half-written temp dir goes too, under
    shiv's lock (a concurrent first run may be extracting into it once the lock is free)."""
    from _bootstrap import extract_site_packages
    from _bootstrap.filelock import FileLock
    target = Path(site).parent
    try:
        with zipfile.ZipFile(sys.argv[0]) as archive:
            extract_site_packages(archive, target)
    except OSError:
        try:
            with FileLock(target.parent / f".{target.name}_lock"):
                if not target.exists():
                    shutil.rmtree(target.parent / f"{target.name}.tmp", ignore_errors=True)
        except OSError:
            pass  # no lock file possible: the directory itself failed, nothing was written
        raise


def main(site: str, plugin: str, verbs: str) -> None:
    try:
        extract(site)
    except OSError as e:
        sys.stdout.write(json.dumps({
            "cniVersion": "1.1.0", "code": 5,
            "msg": f"cannot extract the plugin's Python packages: {e}",
            "details": "SHIV_ROOT names a writable directory for them; `make install` extracts "
                       "them at install time"}) + "\\n")
        sys.exit(1)
    sys.path[0] = site
    from cni_protocol.skel import run
    run(plugin, verbs)


def main_tool(site: str, name: str, module: str, func: str) -> None:
    try:
        extract(site)
    except OSError as e:
        sys.exit(f"{name}: cannot extract its Python packages: {e} (SHIV_ROOT names a "
                 "writable directory for them; `make install` extracts them at install time)")
    sys.path[0] = site
    sys.exit(getattr(__import__(module, fromlist=[func]), func)())
'''

# Added to the site-packages: what the running bridge knows of its own build.
BUILD_MODULE = '''"""Written by tools/build_zipapp.py: which build of the plugins this is.

A plugin file whose first line is FIRST_LINES[name] is our plugin `name` of this very build:
cni_bridge.ipam runs such a host-local in-process."""
BUILD_ID = {build_id!r}
FIRST_LINES = {first_lines!r}
'''


def first_line(plugin: str, build_id: str) -> bytes:
    """Line 1 of `plugin`'s zipapp: the loader, and the comment naming plugin and build."""
    line = f"#!{INTERPRETER}c{LOADER}#{plugin} {build_id}\n"
    if len(line) > 255:  # the kernel reads no further for the interpreter line
        raise ValueError(f"shebang line of {len(line)} characters: {line!r}")
    return line.encode()


def build_id(paths: list[str]) -> str:
    """A hash over the name and bytes of every .py file under `paths` (named from the
    package on, wherever the checkout is), and this tool's: equal ids mean the same code (and
    the same start lines) in both zipapps."""
    digest = hashlib.sha256()
    tool = os.path.abspath(__file__)
    files = [(os.path.basename(tool), tool)]
    for path in paths:
        base = os.path.dirname(os.path.abspath(path))
        for parent, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files.extend((os.path.relpath(os.path.join(parent, n), base), os.path.join(parent, n))
                         for n in sorted(names) if n.endswith(".py"))
    for label, name in files:
        with open(name, "rb") as f:
            data = f.read()
        digest.update(f"{label}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:32]


def compiled_modules(sites: list[str]) -> bytes:
    """fastimport.FILE: every module of our packages (and cni_build) in `sites`, compiled."""
    modules = {}
    for site in sites:
        for parent, dirs, names in os.walk(site):
            dirs[:] = sorted(dirs)
            package = os.path.relpath(parent, site).replace(os.sep, ".")
            if package != "." and package.split(".")[0] not in OUR_PACKAGES:
                continue
            for name in sorted(names):
                if not name.endswith(".py") or package == "." and name != "cni_build.py":
                    continue
                module = name[:-3] if package == "." else f"{package}.{name[:-3]}"
                is_package = name == "__init__.py"
                if is_package:
                    module = package
                path = os.path.join(parent, name)
                with open(path, "rb") as f:
                    modules[module] = (is_package, _compile(f.read(), os.path.relpath(path, site)))
    return fastimport.pack(modules, importlib.util.MAGIC_NUMBER)


def _compile(source: bytes, filename: str):
    """The module's code, with `from __future__ import annotations` as a compiler flag rather
    than a statement: the same code, without importing __future__ at run time (~0.2 ms)."""
    tree = ast.parse(source, filename)
    tree.body = [node for node in tree.body
                 if not (isinstance(node, ast.ImportFrom) and node.module == "__future__"
                         and [a.name for a in node.names] == ["annotations"])]
    return compile(tree, filename, "exec", flags=__future__.annotations.compiler_flag,
                   dont_inherit=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shiv")
    p.add_argument("--plugin", choices=PLUGINS)
    p.add_argument("--verbs", help="the plugin's module of verbs, e.g. cni_bridge.plugin")
    p.add_argument("--tool", choices=TOOLS, help="a tool's name (instead of --plugin)")
    p.add_argument("--entry", help="the tool's entry point, MOD:FUNC")
    p.add_argument("--site-packages")
    p.add_argument("--out")
    p.add_argument("--id-from", nargs="+", metavar="PATH",
                   help="the sources of both plugins: the build id is their hash")
    p.add_argument("--root", default=EXTRACT_ROOT)
    p.add_argument("--prune", metavar="INSTALLED_APP")
    a = p.parse_args()
    if a.prune:
        prune(a.prune, a.root)
        return
    if not (a.shiv and (a.plugin and a.verbs or a.tool and a.entry) and a.site_packages
            and a.out and a.id_from):
        p.error("--shiv, --plugin and --verbs (or --tool and --entry), --site-packages, --out "
                "and --id-from are required to build")
    name = a.plugin or a.tool

    build = build_id(a.id_from)
    first_lines = {name: first_line(name, build) for name in PLUGINS}
    raw = a.out + ".shiv"
    entry = a.entry or a.verbs.split(".")[0] + ".__main__:main"  # `python3 <zipapp>`: shiv's way
    with tempfile.TemporaryDirectory() as generated:
        with open(os.path.join(generated, "cni_build.py"), "w") as f:
            f.write(BUILD_MODULE.format(build_id=build, first_lines=first_lines))
        with open(os.path.join(generated, fastimport.FILE), "wb") as f:
            f.write(compiled_modules([a.site_packages, generated]))
        subprocess.run([a.shiv, "--site-packages", a.site_packages, "--site-packages", generated,
                        "-e", entry, "-o", raw, "-p", INTERPRETER, "--root", a.root,
                        "--reproducible"], check=True)
    with zipfile.ZipFile(raw, "a") as archive:
        shiv_id = json.loads(archive.read("environment.json"))["build_id"]
        archive.writestr(zipfile.ZipInfo("_cni_first_run.py", (1980, 1, 1, 0, 0, 0)), FIRST_RUN)
    with open(raw, "rb") as f:
        data = f.read()
    zip_data = data[data.index(b"\n") + 1:]  # drop shiv's #! line
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as out:
        if a.plugin:
            out.write(first_lines[a.plugin])
            out.write(START.format(root=a.root, plugin=a.plugin, shiv_id=shiv_id,
                                   verbs=a.verbs).encode())
        else:
            module, func = a.entry.split(":")
            out.write(first_line(a.tool, build))
            out.write(TOOL_START.format(root=a.root, name=a.tool, shiv_id=shiv_id,
                                        module=module, func=func).encode())
        out.write(zip_data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, a.out)
    os.unlink(raw)
    print(f"built {a.out} (build {build[:12]}, extracts to {a.root}/{name}_{shiv_id[:12]}...)")


def installed_plugin(app: str) -> str:
    """The plugin's (or tool's) name on line 1 of a zipapp this tool built."""
    with open(app, "rb") as f:
        line = f.readline().decode(errors="replace")
    name = line.rstrip("\n").rpartition("#")[2].split(" ")[0]
    if name not in PLUGINS + TOOLS:
        raise SystemExit(f"{app}: not a zipapp of build_zipapp.py (line 1 is {line[:80]!r})")
    return name


def prune(app: str, root: str) -> None:
    """Remove <root>/<plugin>_<id> extractions of builds older than the previous one.

    The previous build's stays: a plugin started just before the install may still be
    running from it, and imports its modules lazily.
    """
    name = installed_plugin(app)
    with zipfile.ZipFile(app) as archive:
        shiv_id = json.loads(archive.read("environment.json"))["build_id"]
    if not os.path.isdir(root):
        return
    others = [os.path.join(root, entry) for entry in os.listdir(root)
              if entry.startswith(f"{name}_") and shiv_id not in entry]
    others.sort(key=os.path.getmtime)
    for path in others[:-1]:
        shutil.rmtree(path, ignore_errors=True)
        lock = os.path.join(root, f".{os.path.basename(path)}_lock")
        if os.path.exists(lock):
            os.unlink(lock)


if __name__ == "__main__":
    main()
