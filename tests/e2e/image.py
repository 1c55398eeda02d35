"""A busybox image for containerd, built offline from Debian's busybox-static.

One uncompressed layer: /bin/busybox, a symlink per applet, the usual empty dirs and a minimal
/etc. Written as a docker-archive, which `ctr images import` takes without flags. All tar
timestamps are 0, so the same busybox always gives the same image digest.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x"}


def _add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o644,
         link: str | None = None, directory: bool = False) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, mode
    elif link is not None:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
    else:
        info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def busybox_layer(busybox: str = BUSYBOX) -> bytes:
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "usr", "etc", "proc", "sys", "dev", "root", "var", "run"):
            _add(tar, d, directory=True, mode=0o755)
        _add(tar, "tmp", directory=True, mode=0o1777)
        _add(tar, "bin/busybox", data=Path(busybox).read_bytes(), mode=0o755)
        for applet in sorted(set(applets) - {"busybox"}):
            _add(tar, f"bin/{applet}", link="busybox")
        _add(tar, "sbin", link="bin")
        _add(tar, "usr/bin", link="../bin")
        _add(tar, "usr/sbin", link="../bin")
        _add(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
        _add(tar, "etc/group", data=b"root:x:0:\n")
        _add(tar, "etc/hosts", data=b"127.0.0.1\tlocalhost\n")
    return buf.getvalue()


def build_busybox_image(out: Path, name: str = "localhost/e2e/busybox:latest",
                        cmd: tuple[str, ...] = ("/bin/sh",)) -> Path:
    """Write the image as a docker-archive tarball at `out` and return it. A CRI sandbox
    ("pause") image is the same layer with a `cmd` that sleeps for ever."""
    layer = busybox_layer()
    diff_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": GOARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    }, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name],
                            "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, diff_id, directory=True, mode=0o755)
        _add(tar, f"{diff_id}/layer.tar", data=layer)
        _add(tar, config_name, data=config)
        _add(tar, "manifest.json", data=manifest)
    return out
