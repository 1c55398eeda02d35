"""Run a CNI plugin and log the call, so a test can prove which plugin a runtime ran.

usage: cni_wrapper.py REAL_PLUGIN LOGFILE   (stdin, stdout, exit code and CNI_* as the plugin's)

Each call appends one JSON line: plugin path, CNI_* environment, the parsed stdin, exit code,
stdout and stderr. Debian's ctr falls back to /usr/lib/cni when a plugin is missing from
/opt/cni/bin, so "a pod got an address" alone does not show that our plugin ran.
"""
import json
import os
import subprocess
import sys
import time


def main() -> int:
    real, logfile = sys.argv[1], sys.argv[2]
    stdin = sys.stdin.buffer.read()
    started = time.monotonic()
    proc = subprocess.run([real], input=stdin, capture_output=True)
    sys.stdout.buffer.write(proc.stdout)
    sys.stderr.buffer.write(proc.stderr)
    try:
        conf = json.loads(stdin)
    except ValueError:
        conf = stdin.decode(errors="replace")
    entry = {"plugin": real, "env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")},
             "stdin": conf, "rc": proc.returncode, "seconds": round(time.monotonic() - started, 3),
             "stdout": proc.stdout.decode(errors="replace"),
             "stderr": proc.stderr.decode(errors="replace")}
    with open(logfile, "a") as log:
        log.write(json.dumps(entry) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
