"""Request bodies checked against the Go types dockerd decodes them into.

dockerd's routers decode a body into a Go struct with encoding/json
(httputils.ReadJSON): a value of the wrong JSON kind anywhere in it is a 400
naming the struct field and its Go type, before anything else is looked at.
hbd's routers declare the same shapes here, so that a body of the wrong
shape gets dockerd's answer instead of reaching a service as something it
cannot use. Keys match field names case-insensitively, as in Go; unknown keys
are ignored; null leaves a field at its zero value.
"""

from __future__ import annotations

from typing import Any

from hbd.errors import InvalidParameter
from hbd.services import goparse

# Each struct by the name Go prints for it: its fields' Go types (those a
# service could trip on; a service may take more than Go would, as Exec's Cmd
# given as one string, or the string forms of strslice.StrSlice). A type is a
# scalar (string, bool, int64, uint…), `[]T`, `[N]T`, `map[string]T`, a
# pointer `*T`, or one of these structs.
STRUCTS: dict[str, dict[str, str]] = {
    "types.NetworkConnect": {"Container": "string",
                             "EndpointConfig": "*network.EndpointSettings"},
    "types.NetworkDisconnect": {"Container": "string", "Force": "bool"},
    "network.EndpointSettings": {
        "IPAMConfig": "*network.EndpointIPAMConfig", "Links": "[]string",
        "Aliases": "[]string", "MacAddress": "string", "DriverOpts": "map[string]string",
        "NetworkID": "string", "EndpointID": "string", "Gateway": "string",
        "IPAddress": "string", "IPPrefixLen": "int", "IPv6Gateway": "string",
        "GlobalIPv6Address": "string", "GlobalIPv6PrefixLen": "int", "DNSNames": "[]string"},
    "network.EndpointIPAMConfig": {"IPv4Address": "string", "IPv6Address": "string",
                                   "LinkLocalIPs": "[]string"},
    "network.CreateRequest": {
        "Name": "string", "Driver": "string", "Scope": "string", "EnableIPv4": "*bool",
        "EnableIPv6": "*bool", "IPAM": "*network.IPAM", "Internal": "bool",
        "Attachable": "bool", "Ingress": "bool", "ConfigOnly": "bool",
        "Options": "map[string]string", "Labels": "map[string]string"},
    "network.IPAM": {"Driver": "string", "Options": "map[string]string",
                     "Config": "[]network.IPAMConfig"},
    "network.IPAMConfig": {"Subnet": "string", "IPRange": "string", "Gateway": "string",
                           "AuxiliaryAddresses": "map[string]string"},
    "volume.CreateOptions": {"Name": "string", "Driver": "string",
                             "DriverOpts": "map[string]string", "Labels": "map[string]string"},
    "types.ExecConfig": {
        "User": "string", "Privileged": "bool", "Tty": "bool", "ConsoleSize": "*[2]uint",
        "AttachStdin": "bool", "AttachStderr": "bool", "AttachStdout": "bool",
        "Detach": "bool", "DetachKeys": "string", "Env": "[]string", "WorkingDir": "string"},
    "types.ExecStartCheck": {"Detach": "bool", "Tty": "bool", "ConsoleSize": "*[2]uint"},
    # Container create: what lies inside the fields (the container service
    # checks the fields' own kinds, with its texts: see SERVICE_CHECKED).
    "container.CreateRequest": {
        "Env": "[]string", "Labels": "map[string]string", "Shell": "[]string",
        "OnBuild": "[]string", "Healthcheck": "*container.HealthConfig",
        "HostConfig": "*container.HostConfig",
        "NetworkingConfig": "*network.NetworkingConfig"},
    "container.HealthConfig": {"Test": "[]string"},
    "container.HostConfig": {
        "Binds": "[]string", "Links": "[]string", "VolumesFrom": "[]string",
        "Dns": "[]string", "DnsOptions": "[]string", "DnsSearch": "[]string",
        "ExtraHosts": "[]string", "GroupAdd": "[]string", "SecurityOpt": "[]string",
        "PortBindings": "map[string][]nat.PortBinding", "Mounts": "[]mount.Mount",
        "Devices": "[]container.DeviceMapping", "LogConfig": "container.LogConfig",
        "RestartPolicy": "container.RestartPolicy", "Tmpfs": "map[string]string",
        "Sysctls": "map[string]string", "StorageOpt": "map[string]string",
        "Annotations": "map[string]string"},
    "nat.PortBinding": {"HostIp": "string", "HostPort": "string"},
    "mount.Mount": {
        "Type": "string", "Source": "string", "Target": "string", "ReadOnly": "bool",
        "Consistency": "string", "BindOptions": "*mount.BindOptions",
        "VolumeOptions": "*mount.VolumeOptions", "TmpfsOptions": "*mount.TmpfsOptions"},
    "mount.BindOptions": {"Propagation": "string", "NonRecursive": "bool",
                          "CreateMountpoint": "bool", "ReadOnlyNonRecursive": "bool",
                          "ReadOnlyForceRecursive": "bool"},
    "mount.VolumeOptions": {"NoCopy": "bool", "Labels": "map[string]string",
                            "Subpath": "string", "DriverConfig": "*mount.Driver"},
    "mount.Driver": {"Name": "string", "Options": "map[string]string"},
    "mount.TmpfsOptions": {"SizeBytes": "int64", "Mode": "uint32", "Options": "[][]string"},
    "container.DeviceMapping": {"PathOnHost": "string", "PathInContainer": "string",
                                "CgroupPermissions": "string"},
    "container.LogConfig": {"Type": "string", "Config": "map[string]string"},
    "container.RestartPolicy": {"Name": "string"},
    "network.NetworkingConfig": {"EndpointsConfig": "map[string]*network.EndpointSettings"},
    "registry.AuthConfig": {
        "username": "string", "password": "string", "auth": "string", "email": "string",
        "serveraddress": "string", "identitytoken": "string", "registrytoken": "string"},
}

_INTS = {"int", "int64", "int32", "uint", "uint64", "uint32", "uint16"}
# Structs whose fields' own JSON kinds a service checks, with texts of its
# own (hbd/services/container/config.py): here only what lies inside them.
SERVICE_CHECKED = {"container.CreateRequest", "container.HostConfig", "container.LogConfig"}


def check_body(body: Any, struct: str) -> dict[str, Any]:
    """`body` (as httputils.ReadJSON decoded it) as the Go struct `struct`:
    the body itself (null: the zero value, {}), or ReadJSON's 400."""
    try:
        return _as_struct(body, struct)
    except ValueError as e:
        raise InvalidParameter(f"invalid JSON: {e}") from None


def decode(raw: bytes, struct: str) -> dict[str, Any]:
    """A body that a router decodes itself with json.NewDecoder(r.Body).Decode:
    ValueError with Go's bare text (an empty body is io.EOF) for whatever
    does not fit."""
    if not raw.strip():
        raise ValueError("EOF")
    return _as_struct(goparse.json_decode_first(raw), struct)


def _as_struct(body: Any, struct: str) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValueError(f"json: cannot unmarshal {goparse.json_kind(body)} into Go value of "
                         f"type {struct}")
    _check_fields(body, struct, struct.rsplit(".", maxsplit=1)[-1])
    return body


def field(body: dict[str, Any], name: str) -> Any:
    """A field's value as Go finds it: the exact key first, else any case of it."""
    if name in body:
        return body[name]
    folded = name.lower()
    return next((v for k, v in body.items() if k.lower() == folded), None)


def _check_fields(body: dict[str, Any], struct: str, where: str) -> None:
    for name, go_type in STRUCTS[struct].items():
        value = field(body, name)
        if struct in SERVICE_CHECKED and not _kind_fits(value, go_type):
            continue
        _check(value, go_type, f"{where}.{name}")


def _kind_fits(value: Any, go_type: str) -> bool:
    """Whether a value is of the JSON kind a Go type takes (not what it holds)."""
    t = go_type.lstrip("*")
    if value is None:
        return True
    if t in STRUCTS or t.startswith("map["):
        return isinstance(value, dict)
    if t.startswith("["):
        return isinstance(value, list)
    return _scalar_fits(value, t)


def _check(value: Any, go_type: str, where: str) -> None:
    if value is None:
        return
    t = go_type.lstrip("*")
    if t in STRUCTS:
        if not isinstance(value, dict):
            _refuse(value, t, where)
        _check_fields(value, t, where)
    elif t.startswith("map[string]"):
        if not isinstance(value, dict):
            _refuse(value, t, where)
        for item in value.values():
            _check(item, t.removeprefix("map[string]"), where)
    elif t.startswith("["):
        if not isinstance(value, list):
            _refuse(value, t, where)
        for item in value:
            _check(item, t.split("]", 1)[1], where)
    elif not _scalar_fits(value, t):
        _refuse(value, t, where)


def _scalar_fits(value: Any, t: str) -> bool:
    if t == "string":
        return isinstance(value, str)
    if t == "bool":
        return isinstance(value, bool)
    if t in _INTS:
        return (isinstance(value, int) and not isinstance(value, bool)
                and (value >= 0 or not t.startswith("u")))
    return True


def _refuse(value: Any, go_type: str, where: str) -> None:
    kind = goparse.json_kind(value)
    if kind == "number" and go_type in _INTS:
        kind = f"number {value}"  # Go names the number it could not fit
    raise ValueError(f"json: cannot unmarshal {kind} into Go struct field {where} of type "
                     f"{go_type}")
