"""host-local stays import-light: what the zipapp's entry point loads, in a fresh interpreter."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Never: pyroute2, iptc, filelock (asyncio). Nor what the lean core avoids on purpose: json and
# ipaddress pull in re, enum and functools (several ms in a process that lives ~20 ms).
HEAVY = ("asyncio", "pyroute2", "iptc", "filelock", "dataclasses", "typing", "subprocess",
         "pathlib", "logging", "argparse", "cni_bridge", "json", "re", "ipaddress", "enum",
         "functools", "socket")


def test_host_local_imports_no_heavy_module():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from host_local_ipam import __main__, plugin; "
            "from cni_protocol import skel; "
            "print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)], check=True,
                         capture_output=True, text=True).stdout
    loaded = set(out.split())
    assert "host_local_ipam.plugin" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []
