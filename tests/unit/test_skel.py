"""skel.serve, the one function from (env, stdin) to (exit status, stdout bytes), run on
host-local's verbs with a lease store in a temp dir (no root, no network)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cni_protocol import skel

ROOT = Path(__file__).resolve().parents[2]
VERBS = "host_local_ipam.plugin"


def conf(tmp_path: Path, version: str = "1.0.0", ranges=None) -> bytes:
    return json.dumps({"cniVersion": version, "name": "net", "type": "host-local",
                       "ipam": {"type": "host-local", "dataDir": str(tmp_path),
                                "ranges": ranges or [[{"subnet": "10.1.2.0/24"}]]}}).encode()


def env(command: str, **extra: str) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", **extra}


def leases(tmp_path: Path) -> list[str]:
    d = tmp_path / "net"
    return sorted(n for n in os.listdir(d) if n != "lock" and not n.startswith("last_"))


def test_an_add_answers_its_result_and_how_to_undo_it(tmp_path):
    answer = skel.serve("host-local", VERBS, env("ADD"), conf(tmp_path))
    assert answer.status == 0
    assert json.loads(answer.stdout)["ips"] == [{"address": "10.1.2.2/24",
                                                 "gateway": "10.1.2.1"}]
    assert answer.stdout.endswith(b"\n") and leases(tmp_path) == ["10.1.2.2"]
    answer.undo()
    assert leases(tmp_path) == []


def test_other_verbs_answer_no_undo(tmp_path):
    skel.serve("host-local", VERBS, env("ADD"), conf(tmp_path))
    for command in ("CHECK", "DEL"):
        answer = skel.serve("host-local", VERBS, env(command), conf(tmp_path))
        assert (answer.status, answer.stdout, answer.undo) == (0, b"", None)


FAKE_VERBS = """
undone = []
KNOWN_ARGS = ()
def add(req):
    return {"ips": [{"address": "10.1.2.2/24"}, {"address": "10.1.3.2/24"}]}
def delete(req):
    undone.append((req.command, req.container_id, req.ifname))
HANDLERS = {"ADD": add, "DEL": delete}
"""


def test_an_add_whose_result_the_version_cannot_carry_is_undone_by_its_del(tmp_path,
                                                                           monkeypatch):
    """Two IPv4 addresses, cniVersion 0.2.0 (one ip4 per result): code 1, and the plugin's
    DEL of the same attachment ran."""
    (tmp_path / "fake_verbs.py").write_text(FAKE_VERBS)
    monkeypatch.syspath_prepend(str(tmp_path))
    answer = skel.serve("fake", "fake_verbs", env("ADD"), conf(tmp_path, "0.2.0"))
    error = json.loads(answer.stdout)
    assert answer.status == 1 and error["code"] == 1 and error["cniVersion"] == "0.2.0"
    assert "more than one IPv4 address" in error["msg"]
    assert sys.modules["fake_verbs"].undone == [("DEL", "c1", "eth0")]


def test_errors_are_the_spec_object_in_the_requests_version(tmp_path):
    answer = skel.serve("host-local", VERBS, env("ADD", CNI_IFNAME=""), conf(tmp_path, "0.4.0"))
    assert answer.status == 1 and answer.undo is None
    assert json.loads(answer.stdout) == {"cniVersion": "0.4.0", "code": 4,
                                         "msg": "required env variables [CNI_IFNAME] missing",
                                         "details": "CNI_COMMAND=ADD"}


def test_version_answers_without_a_verbs_module():
    answer = skel.serve("x", "no.such.module", {"CNI_COMMAND": "VERSION"}, b"")
    assert answer.status == 0 and json.loads(answer.stdout)["cniVersion"] == "1.1.0"


def test_the_process_entry_point_writes_what_serve_answers(tmp_path):
    """run() is serve() plus stdin, stdout and the exit status: the same bytes."""
    stdin = conf(tmp_path / "a")
    expected = skel.serve("host-local", VERBS, env("ADD"), stdin).stdout
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from cni_protocol import skel; "
            "skel.run('host-local', 'host_local_ipam.plugin')")
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                       input=conf(tmp_path / "b"), capture_output=True, env=env("ADD"))
    assert (p.returncode, p.stdout, p.stderr) == (0, expected, b"")
