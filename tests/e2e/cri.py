"""A minimal CRI client: containerd's runtime.v1 RuntimeService, called as kubelet calls it.

The messages are built at run time from a descriptor of the subset of the CRI API that the
tests use, so neither grpcio-tools nor a download of cri-api is needed: only grpcio and
protobuf, which `make venv` installs.

Source of the subset: k8s.io/cri-api `pkg/apis/runtime/v1/api.proto` as staged in
kubernetes/kubernetes, path staging/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto, commit
f9e5dd84ad4df476b02bd7237b2e2d05d6d79f7b (Apache-2.0, The Kubernetes Authors). Only the
messages, fields and enum values below are taken, with upstream's names, numbers and types;
every other field is left out, which proto3 allows (a server's unknown fields are skipped).
A stable API never renumbers a field, so the subset also speaks to containerd 1.6.20.
"""
from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

PACKAGE = "runtime.v1"
SERVICE = f"/{PACKAGE}.RuntimeService/"

ENUMS: dict[str, tuple[tuple[str, int], ...]] = {
    "PodSandboxState": (("SANDBOX_READY", 0), ("SANDBOX_NOTREADY", 1)),
}

# message -> (field, number, type); "repeated T" for repeated fields, as in the .proto.
MESSAGES: dict[str, tuple[tuple[str, int, str], ...]] = {
    "VersionRequest": (("version", 1, "string"),),
    "VersionResponse": (("version", 1, "string"), ("runtime_name", 2, "string"),
                        ("runtime_version", 3, "string"), ("runtime_api_version", 4, "string")),
    "StatusRequest": (("verbose", 1, "bool"),),
    "RuntimeCondition": (("type", 1, "string"), ("status", 2, "bool"), ("reason", 3, "string"),
                         ("message", 4, "string")),
    "RuntimeStatus": (("conditions", 1, "repeated RuntimeCondition"),),
    "StatusResponse": (("status", 1, "RuntimeStatus"),),
    "PodSandboxMetadata": (("name", 1, "string"), ("uid", 2, "string"),
                           ("namespace", 3, "string"), ("attempt", 4, "uint32")),
    "LinuxPodSandboxConfig": (("cgroup_parent", 1, "string"),),
    "PodSandboxConfig": (("metadata", 1, "PodSandboxMetadata"), ("hostname", 2, "string"),
                         ("log_directory", 3, "string"), ("linux", 8, "LinuxPodSandboxConfig")),
    "RunPodSandboxRequest": (("config", 1, "PodSandboxConfig"),
                             ("runtime_handler", 2, "string")),
    "RunPodSandboxResponse": (("pod_sandbox_id", 1, "string"),),
    "StopPodSandboxRequest": (("pod_sandbox_id", 1, "string"),),
    "StopPodSandboxResponse": (),
    "RemovePodSandboxRequest": (("pod_sandbox_id", 1, "string"),),
    "RemovePodSandboxResponse": (),
    "PodSandboxStatusRequest": (("pod_sandbox_id", 1, "string"), ("verbose", 2, "bool")),
    "PodIP": (("ip", 1, "string"),),
    "PodSandboxNetworkStatus": (("ip", 1, "string"), ("additional_ips", 2, "repeated PodIP")),
    "PodSandboxStatus": (("id", 1, "string"), ("metadata", 2, "PodSandboxMetadata"),
                         ("state", 3, "PodSandboxState"), ("created_at", 4, "int64"),
                         ("network", 5, "PodSandboxNetworkStatus")),
    "PodSandboxStatusResponse": (("status", 1, "PodSandboxStatus"),),
    "ImageSpec": (("image", 1, "string"),),
    "ContainerMetadata": (("name", 1, "string"), ("attempt", 2, "uint32")),
    "ContainerConfig": (("metadata", 1, "ContainerMetadata"), ("image", 2, "ImageSpec"),
                        ("command", 3, "repeated string"), ("args", 4, "repeated string")),
    "CreateContainerRequest": (("pod_sandbox_id", 1, "string"), ("config", 2, "ContainerConfig"),
                               ("sandbox_config", 3, "PodSandboxConfig")),
    "CreateContainerResponse": (("container_id", 1, "string"),),
    "StartContainerRequest": (("container_id", 1, "string"),),
    "StartContainerResponse": (),
    "ExecSyncRequest": (("container_id", 1, "string"), ("cmd", 2, "repeated string"),
                        ("timeout", 3, "int64")),
    "ExecSyncResponse": (("stdout", 1, "bytes"), ("stderr", 2, "bytes"),
                         ("exit_code", 3, "int32")),
}

# RuntimeService method -> (request, response)
METHODS = {name: (f"{name}Request", f"{name}Response") for name in (
    "Version", "Status", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox",
    "PodSandboxStatus", "CreateContainer", "StartContainer", "ExecSync")}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "bytes": _F.TYPE_BYTES,
            "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32, "int64": _F.TYPE_INT64}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="e2e/cri-runtime-v1-subset.proto",
                                               package=PACKAGE, syntax="proto3")
    for name, values in ENUMS.items():
        enum = proto.enum_type.add(name=name)
        for value, number in values:
            enum.value.add(name=value, number=number)
    for name, fields in MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field, number, kind in fields:
            repeated, _, kind = kind.rpartition(" ")
            spec = message.field.add(name=field, number=number,
                                     label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if kind in _SCALARS:
                spec.type = _SCALARS[kind]
            else:
                spec.type = _F.TYPE_ENUM if kind in ENUMS else _F.TYPE_MESSAGE
                spec.type_name = f".{PACKAGE}.{kind}"
    return proto


def _message_classes() -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    proto = _file_descriptor()
    pool.Add(proto)
    classes = message_factory.GetMessageClassesForFiles([proto.name], pool)
    return {name.removeprefix(f"{PACKAGE}."): cls for name, cls in classes.items()}


TYPES = _message_classes()


def sandbox_config(cgroup: str, name: str, namespace: str = "e2e") -> dict:
    """A pod as kubelet describes it; its cgroups go under `cgroup`, the node's
    (CONTAINERD.md: a relative cgroup parent keeps them inside the test's own)."""
    return {"metadata": {"name": name, "uid": f"uid-{name}", "namespace": namespace},
            "hostname": name, "linux": {"cgroup_parent": f"{cgroup}/{name}"}}


class CriClient:
    """RuntimeService calls over containerd's socket: client.RunPodSandbox(config={...})."""

    def __init__(self, socket: Path, timeout: float = 60):
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self.timeout = timeout

    def __getattr__(self, method: str):
        if method not in METHODS:
            raise AttributeError(method)
        request, response = (TYPES[name] for name in METHODS[method])
        stub = self._channel.unary_unary(SERVICE + method,
                                         request_serializer=request.SerializeToString,
                                         response_deserializer=response.FromString)
        return lambda **fields: stub(request(**fields), timeout=self.timeout)

    def close(self) -> None:
        self._channel.close()
