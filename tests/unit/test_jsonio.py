"""jsonio: the `json` module's results through the C accelerator alone, and a ValueError (so
code 6, never 999) for anything that is not one JSON document."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cni_protocol import jsonio

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    '{"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.1.2.0/24"}]]}}',
    '  {"a": [1, 2.5, -3e-2, true, false, null, "\\u00e9\\ud83d\\ude00", {}]}\n\t',
    '[]', '"x"', "0", "-1.5", "1e400", "NaN", "[Infinity, -Infinity]", '{"a": 1, "a": 2}',
    '{"nested": ' * 50 + "1" + "}" * 50,
]
BAD = [
    "", " ", "{", '{"cniVersion": "1.0.0",', '{"a" 1}', '{"a": 1,}', "[1,]", '"abc', "nul",
    "{'a': 1}", '{"a": tru}', '{"a": "\x01"}', "[1] [2]", '{"a": 1} x', "\ufeff{}",
    "[" * 100000, '{"a":' * 100000,
]


@pytest.mark.parametrize("text", DOCS)
def test_loads_is_json_loads(text):
    got = jsonio.loads(text.encode())
    assert json.dumps(got) == json.dumps(json.loads(text))


@pytest.mark.parametrize("text", BAD, ids=range(len(BAD)))
def test_loads_rejects_with_value_error(text):
    with pytest.raises(ValueError):
        jsonio.loads(text.encode())


def test_loads_rejects_invalid_utf8():
    with pytest.raises(ValueError):
        jsonio.loads(b'{"a": "\xff"}')


def test_bad_documents_in_a_fresh_interpreter():
    """Where neither `json` nor `json.decoder` was ever imported, as in the plugins."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from cni_protocol import jsonio\n"
            "for doc in sys.stdin.buffer.read().decode().split('\\0'):\n"
            "    try:\n"
            "        jsonio.loads(doc.encode())\n"
            "    except ValueError:\n"
            "        print('ValueError')\n"
            "    except BaseException as e:\n"
            "        print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                         input="\0".join(BAD), capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["ValueError"] * len(BAD)


@pytest.mark.parametrize("obj", [
    {"cniVersion": "1.1.0", "code": 7, "msg": "invalid config: x", "details": ""},
    {"ips": [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"}], "dns": {}},
    ["\u00e9", "\ud83d\ude00", "a\"b\\c\n", 1.5, -0.0, 10 ** 20, True, None, {"1": []}],
])
def test_dumps_is_json_dumps(obj):
    assert jsonio.dumps(obj) == json.dumps(obj)
