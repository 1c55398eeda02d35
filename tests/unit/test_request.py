"""The spec's parameters as the reference's skel validates them: required env per verb,
CNI_ARGS (incl. IgnoreUnknown), container ID, ifname and network name; version negotiation."""
from __future__ import annotations

import pytest

from cni_protocol import version as versions
from cni_protocol.errors import CNIError
from cni_protocol.request import (MAX_CONTAINER_ID, REQUIRED_ENV, Request, check_ifname,
                                  parse_cni_args, valid_id)

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
CONF = {"cniVersion": "1.1.0", "name": "net1", "type": "host-local"}


def make(command: str = "ADD", conf: dict | None = None, known=("IP",), **env: str) -> Request:
    e = {k: v for k, v in dict(ENV, CNI_COMMAND=command, **env).items() if v is not None}
    return Request(command, e, b"", conf or CONF, "1.1.0", known)


def error(*args, **kw) -> CNIError:
    with pytest.raises(CNIError) as e:
        make(*args, **kw)
    return e.value


# --- container ID, ifname, network name ----------------------------------------------------

@pytest.mark.parametrize("value", ["a", "0", "abc", "A-b_c.d", "f" * 64, "9.9"])
def test_valid_ids(value):
    assert valid_id(value)


@pytest.mark.parametrize("value", ["", "-x", ".x", "_x", "../x", "..", ".", "a/b", "a b", "a:b",
                                   "a\n", "\u00e9t\u00e9", "a\x00b", "a$b"])
def test_invalid_ids(value):
    assert not valid_id(value)


@pytest.mark.parametrize("cid", ["../x", "-x", "a/b", " c1"])
def test_bad_container_id_is_code_4(cid):
    e = error(CNI_CONTAINERID=cid)
    assert (e.code, e.msg) == (4, "invalid characters in CNI_CONTAINERID")
    assert repr(cid) in e.details


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_container_id_of_the_maximum_length(command):
    assert make(command, CNI_CONTAINERID="f" * MAX_CONTAINER_ID).container_id == "f" * 1024


def test_longer_container_id_is_refused_by_add_only():
    e = error(CNI_CONTAINERID="f" * (MAX_CONTAINER_ID + 1))
    assert (e.code, e.msg) == (4, "invalid CNI_CONTAINERID: longer than 1024 bytes")
    assert e.details == "CNI_CONTAINERID has 1025 bytes"
    for command in ("CHECK", "DEL"):  # they find nothing: no ADD made it
        assert make(command, CNI_CONTAINERID="f" * 100_000).container_id == "f" * 100_000


@pytest.mark.parametrize("name", ["eth0", "a", "x" * 15, "veth.1-2_3", "\u00e9" * 7])
def test_valid_ifnames(name):
    check_ifname(name)
    assert make(CNI_IFNAME=name).ifname == name


@pytest.mark.parametrize("name, problem", [
    ("x" * 16, "is longer than 15 bytes"),
    ("\u00e9" * 8, "is longer than 15 bytes"),  # 16 bytes in UTF-8
    (".", "is . or .."),
    ("..", "is . or .."),
    ("a/b", "contains / or : or whitespace"),
    ("../eth0", "contains / or : or whitespace"),
    ("a:b", "contains / or : or whitespace"),
    ("a b", "contains / or : or whitespace"),
    ("a\tb", "contains / or : or whitespace"),
    ("eth\udcff", "is not valid UTF-8"),  # the byte 0xff, as os.environ holds it
    ("eth\ud800", "is not valid UTF-8"),
    ("eth\0", "contains a NUL character"),
])
def test_bad_ifname_is_code_4(name, problem):
    for command in ("ADD", "CHECK", "DEL"):
        e = error(command, CNI_IFNAME=name)
        assert (e.code, e.msg) == (4, f"invalid CNI_IFNAME: interface name {problem}")


@pytest.mark.parametrize("name", ["a/b", "..", ".", "-n", "../../etc", "net 1", "n:1"])
def test_bad_network_name_is_code_7(name):
    e = error(conf=dict(CONF, name=name))
    assert (e.code, e.msg) == (7, "invalid characters found in network name")


@pytest.mark.parametrize("name", [None, "", 5])
def test_missing_network_name_is_code_7(name):
    conf = {k: v for k, v in dict(CONF, name=name).items() if v is not None}
    assert (error(conf=conf).code, error(conf=conf).msg) == (7, "missing network name")


# --- required env per verb -------------------------------------------------------------------

def test_required_env_per_verb():
    assert REQUIRED_ENV == {
        "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
        "GC": ("CNI_PATH",),
        "STATUS": ("CNI_PATH",),
    }


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH", "CNI_NETNS"])
def test_missing_env_is_named(command, var):
    if var == "CNI_NETNS" and command == "DEL":
        assert make(command, CNI_NETNS=None).netns == ""  # DEL works without a netns
        return
    e = error(command, **{var: None})
    assert (e.code, e.msg) == (4, f"required env variables [{var}] missing")


def test_every_missing_env_is_named_at_once():
    e = error(CNI_CONTAINERID=None, CNI_PATH="")
    assert e.msg == "required env variables [CNI_CONTAINERID,CNI_PATH] missing"


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_only_cni_path(command):
    req = Request(command, {"CNI_COMMAND": command, "CNI_PATH": "/a:/b:"}, b"", CONF,
                  "1.1.0", ())
    assert (req.container_id, req.ifname, req.path) == ("", "", ["/a", "/b"])


# --- CNI_ARGS ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("", {}),
    (";", {}),
    ("IP=10.1.2.3", {"IP": "10.1.2.3"}),
    ("IP=10.1.2.3/24;", {"IP": "10.1.2.3/24"}),
    ("IP=", {"IP": ""}),
    ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-1;IP=10.1.2.3",
     {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "p-1", "IP": "10.1.2.3"}),
    ("K8S_POD_NAME=p;IgnoreUnknown=true", {"K8S_POD_NAME": "p"}),
    ("IgnoreUnknown=TRUE;X=1", {"X": "1"}),
    ("IgnoreUnknown=True;X=1", {"X": "1"}),
    ("IgnoreUnknown=0", {}),
    ("IgnoreUnknown=false;IP=1.2.3.4", {"IP": "1.2.3.4"}),
])
def test_cni_args(raw, expected):
    assert parse_cni_args(raw, ("IP",)) == expected


@pytest.mark.parametrize("raw", ["K8S_POD_NAME=p", "IP=1.2.3.4;K8S_POD_NAME=p",
                                 "IgnoreUnknown=0;K8S_POD_NAME=p",
                                 "IgnoreUnknown=false;K8S_POD_NAME=p"])
def test_unknown_cni_args_key_is_code_4_and_named(raw):
    with pytest.raises(CNIError) as e:
        parse_cni_args(raw, ("IP",))
    assert (e.value.code, e.value.msg) == (4, "invalid CNI_ARGS: unknown args ['K8S_POD_NAME']")


@pytest.mark.parametrize("raw, msg", [
    ("garbage", "invalid CNI_ARGS: pair 'garbage' is not K=V"),
    ("IP=1.2.3.4;oops", "invalid CNI_ARGS: pair 'oops' is not K=V"),
    ("=v", "invalid CNI_ARGS: pair '=v' is not K=V"),
    ("IgnoreUnknown=yes;X=1", "invalid CNI_ARGS: IgnoreUnknown must be 1, true, 0 or false"),
])
def test_malformed_cni_args_is_code_4(raw, msg):
    with pytest.raises(CNIError) as e:
        parse_cni_args(raw, ("IP",))
    assert (e.value.code, e.value.msg) == (4, msg)


def test_request_parses_cni_args():
    assert make(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.2.3").args == {
        "K8S_POD_NAME": "p", "IP": "10.1.2.3"}
    assert error(CNI_ARGS="K8S_POD_NAME=p").code == 4


# --- version negotiation -----------------------------------------------------------------------

@pytest.mark.parametrize("conf, expected", [
    ({"cniVersion": v}, v) for v in versions.SUPPORTED_VERSIONS
] + [
    ({}, "0.1.0"),  # no cniVersion: the spec's first version
    ({"cniVersions": ["0.3.1", "1.0.0", "0.4.0"]}, "1.0.0"),
    ({"cniVersions": ["0.3.1", "9.9.9", "2.0.0"]}, "0.3.1"),
    ({"cniVersions": ["1.1.0", "1.0.0"]}, "1.1.0"),
    ({"cniVersion": "0.4.0", "cniVersions": ["1.0.0"]}, "0.4.0"),  # libcni set cniVersion
])
def test_negotiate(conf, expected):
    assert versions.negotiate(conf) == expected


@pytest.mark.parametrize("conf", [{"cniVersion": "0.5.0"}, {"cniVersion": "1.0"},
                                  {"cniVersion": "1.2.0"},
                                  {"cniVersions": ["9.9.9"]}, {"cniVersions": []}])
def test_negotiate_incompatible_is_code_1(conf):
    with pytest.raises(CNIError) as e:
        versions.negotiate(conf)
    assert (e.value.code, e.value.msg) == (1, "incompatible CNI versions")
    assert 'plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]' \
        in e.value.details


def test_an_empty_cni_version_means_0_1_0_as_in_the_reference():
    assert versions.negotiate({"cniVersion": ""}) == "0.1.0"


def test_negotiate_non_string_version_is_code_7():
    with pytest.raises(CNIError) as e:
        versions.negotiate({"cniVersion": 1})
    assert e.value.code == 7


@pytest.mark.parametrize("verb, minimum, old, new", [
    ("CHECK", "0.4.0", "0.3.1", "0.4.0"),
    ("GC", "1.1.0", "1.0.0", "1.1.0"),
    ("STATUS", "1.1.0", "1.0.0", "1.1.0"),
])
def test_verb_minimum_versions(verb, minimum, old, new):
    versions.require(new, minimum, verb)
    with pytest.raises(CNIError) as e:
        versions.require(old, minimum, verb)
    assert (e.value.code, e.value.msg) == (1, f"config version does not allow {verb}")


# --- GC's attachment list ----------------------------------------------------------------------

def gc_request(conf: dict) -> Request:
    return Request("GC", {"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}, b"",
                   dict(CONF, **conf), "1.1.0", ())


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_valid_attachments(key):
    req = gc_request({key: [{"containerID": "a", "ifname": "eth0"},
                            {"containerID": "a", "ifname": "net1", "extra": 1}]})
    assert req.valid_attachments() == {("a", "eth0"), ("a", "net1")}


@pytest.mark.parametrize("entry", [
    {"containerID": "a"},  # no ifname: "" would release the lease of a real eth0
    {"containerID": "a", "ifname": None},
    {"containerID": "a", "ifname": 0},
    {"ifname": "eth0"},
    {"containerID": ["a"], "ifname": "eth0"},
    "a/eth0",
])
@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_a_malformed_attachment_refuses_the_gc_naming_the_entry(key, entry):
    req = gc_request({key: [{"containerID": "a", "ifname": "eth0"}, entry]})
    with pytest.raises(CNIError) as e:
        req.valid_attachments()
    assert (e.value.code, e.value.msg) == (
        7, f"invalid {key}[1]: an attachment needs a string containerID and ifname")
    assert e.value.details == f"{key}[1]={entry!r}"


def test_gc_without_an_attachment_list_is_code_7():
    with pytest.raises(CNIError) as e:
        gc_request({}).valid_attachments()
    assert (e.value.code, e.value.msg) == (7, "GC needs cni.dev/valid-attachments")
