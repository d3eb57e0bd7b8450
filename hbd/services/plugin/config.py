"""A plugin's config.json as dockerd reads it, and what follows from it.

dockerd decodes config.json into types.PluginConfig with Go's encoding/json:
keys match field names case-insensitively, unknown keys are ignored, missing
ones take Go's zero values, and a value of the wrong JSON kind is an error
naming the Go struct field. The API then shows the struct with every field,
in Go's capitalised names. `decode` does the same with plain dicts and
lists, in the order dockerd encodes them. Also here: the privileges a
config asks for (moby's computePrivileges), the initial settings
(InitEmptySettings) and `docker plugin set` (plugin/v2/settable.go).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from hbd.errors import SystemError_
from hbd.services.goparse import go_json_error, json_kind


class ConfigError(Exception):
    """Go's json error text for a config that does not decode."""


@dataclass(frozen=True)
class Slice:
    elem: Any


@dataclass(frozen=True)
class Struct:
    go: str  # the Go type, named in error texts
    fields: tuple[tuple[str, Any, bool], ...]  # JSON name, type, omitted when zero


STRING, BOOL, UINT32, PTR_STRING, INTERFACE_TYPE = ("string", "bool", "uint32", "*string",
                                                    "PluginInterfaceType")
STRINGS = Slice(STRING)

DEVICE = Struct("PluginDevice", (
    ("Description", STRING, False), ("Name", STRING, False), ("Path", PTR_STRING, False),
    ("Settable", STRINGS, False)))
MOUNT = Struct("PluginMount", (
    ("Description", STRING, False), ("Destination", STRING, False), ("Name", STRING, False),
    ("Options", STRINGS, False), ("Settable", STRINGS, False), ("Source", PTR_STRING, False),
    ("Type", STRING, False)))
ENV = Struct("PluginEnv", (
    ("Description", STRING, False), ("Name", STRING, False), ("Settable", STRINGS, False),
    ("Value", PTR_STRING, False)))
PLUGIN_CONFIG = Struct("PluginConfig", (
    ("Args", Struct("PluginConfigArgs", (
        ("Description", STRING, False), ("Name", STRING, False), ("Settable", STRINGS, False),
        ("Value", STRINGS, False))), False),
    ("Description", STRING, False),
    ("DockerVersion", STRING, True),
    ("Documentation", STRING, False),
    ("Entrypoint", STRINGS, False),
    ("Env", Slice(ENV), False),
    ("Interface", Struct("PluginConfigInterface", (
        ("ProtocolScheme", STRING, True), ("Socket", STRING, False),
        ("Types", Slice(INTERFACE_TYPE), False))), False),
    ("IpcHost", BOOL, False),
    ("Linux", Struct("PluginConfigLinux", (
        ("AllowAllDevices", BOOL, False), ("Capabilities", STRINGS, False),
        ("Devices", Slice(DEVICE), False))), False),
    ("Mounts", Slice(MOUNT), False),
    ("Network", Struct("PluginConfigNetwork", (("Type", STRING, False),)), False),
    ("PidHost", BOOL, False),
    ("PropagatedMount", STRING, False),
    ("User", Struct("PluginConfigUser", (("GID", UINT32, True), ("UID", UINT32, True))), False),
    ("WorkDir", STRING, False),
    ("rootfs", Struct("PluginConfigRootfs", (("diff_ids", STRINGS, False),
                                            ("type", STRING, False))), True),
))


def _go_type(t: Any) -> str:
    if isinstance(t, Struct):
        return f"types.{t.go}"
    if isinstance(t, Slice):
        return "[]" + _go_type(t.elem)
    return "string" if t in (PTR_STRING, INTERFACE_TYPE) else str(t)


def _zero(t: Any) -> Any:
    if isinstance(t, Struct):
        return {name: _zero(ft) for name, ft, omit in t.fields if not omit}
    if t == STRING:
        return ""
    if t == BOOL:
        return False
    if t == UINT32:
        return 0
    return None  # nil slices and pointers


def _interface_type(value: Any) -> str:
    """PluginInterfaceType.UnmarshalJSON: "docker.volumedriver/1.0", kept as
    dockerd prints it back (prefix.capability/version)."""
    if not isinstance(value, str):
        raw = json.dumps(value, separators=(",", ":"))
        raise ConfigError(f"{json.dumps(raw)} is not a plugin interface type")
    prefix_end, version_at = 0, -1
    for i, ch in enumerate(value):
        if ch == ".":
            prefix_end = i
        elif ch == "/":
            version_at = i
            break
    if version_at < 0:
        return f"{value[:prefix_end]}.{value[prefix_end + 1:]}/"
    return (f"{value[:prefix_end]}.{value[prefix_end + 1:version_at]}/"
            f"{value[version_at + 1:]}")


def split_interface_type(text: str) -> tuple[str, str, str]:
    """(prefix, capability, version) of a stored interface type."""
    head, _, version = text.partition("/")
    prefix, _, capability = head.rpartition(".")
    return prefix, capability, version


def _decode(value: Any, t: Any, struct: str, path: str) -> Any:
    def mismatch(extra: str = "") -> ConfigError:
        return ConfigError(f"json: cannot unmarshal {json_kind(value)}{extra} into Go struct "
                           f"field {struct}.{path} of type {_go_type(t)}")

    if value is None:
        return _zero(t)
    if t == INTERFACE_TYPE:
        return _interface_type(value)
    if isinstance(t, Struct):
        if not isinstance(value, dict):
            raise mismatch()
        return _decode_struct(value, t, path)
    if isinstance(t, Slice):
        if not isinstance(value, list):
            raise mismatch()
        return [_decode(v, t.elem, struct, path) for v in value]
    if t in (STRING, PTR_STRING):
        if not isinstance(value, str):
            raise mismatch()
        return value
    if t == BOOL:
        if not isinstance(value, bool):
            raise mismatch()
        return value
    # uint32
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise mismatch()
    if isinstance(value, float) or not 0 <= value < 2**32:
        raise mismatch(f" {value}")
    return value


def _decode_struct(obj: dict[str, Any], t: Struct, prefix: str) -> dict[str, Any]:
    by_name = {name: (name, ft, omit) for name, ft, omit in t.fields}
    by_fold = {name.lower(): (name, ft, omit) for name, ft, omit in t.fields}
    values: dict[str, Any] = {}
    for key, value in obj.items():
        field = by_name.get(key) or by_fold.get(key.lower())
        if field is None:
            continue  # Go ignores unknown keys
        name, ft, _ = field
        values[name] = _decode(value, ft, t.go, f"{prefix}.{name}" if prefix else name)
    out: dict[str, Any] = {}
    for name, ft, omit in t.fields:
        value = values.get(name, _zero(ft))
        if omit and value in (None, "", 0, {}):
            continue
        out[name] = value
    return out


def decode(raw: bytes) -> dict[str, Any]:
    """config.json as types.PluginConfig; ConfigError with Go's text otherwise."""
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(go_json_error(e)) from None
    except UnicodeDecodeError:
        raise ConfigError("invalid character in JSON") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"json: cannot unmarshal {json_kind(document)} into Go value of type "
                          "types.PluginConfig")
    return _decode_struct(document, PLUGIN_CONFIG, "")


def ordered(config: dict[str, Any]) -> dict[str, Any]:
    """The config with its keys in Go's field order, which for these structs
    is plain code-point order (the order the state store keeps them in)."""
    result: dict[str, Any] = json.loads(json.dumps(config, sort_keys=True))
    return result


def encode(config: dict[str, Any]) -> bytes:
    """The config blob as dockerd writes it (json.Encoder: compact, a newline)."""
    return json.dumps(config, separators=(",", ":")).encode() + b"\n"


def capabilities(config: dict[str, Any]) -> list[str]:
    return [split_interface_type(t)[1] for t in config["Interface"]["Types"] or []]


def privileges(config: dict[str, Any]) -> list[dict[str, Any]]:
    """What a plugin asks of the host (moby's computePrivileges)."""
    out = []

    def add(name: str, description: str, value: list[str]) -> None:
        out.append({"Name": name, "Description": description, "Value": value})

    network = config["Network"]["Type"]
    if network not in ("null", "bridge", ""):
        add("network", "permissions to access a network", [network])
    if config["IpcHost"]:
        add("host ipc namespace", "allow access to host ipc namespace", ["true"])
    if config["PidHost"]:
        add("host pid namespace", "allow access to host pid namespace", ["true"])
    for mount in config["Mounts"] or []:
        if mount["Source"] is not None:
            add("mount", "host path to mount", [mount["Source"]])
    linux = config["Linux"]
    for device in linux["Devices"] or []:
        if device["Path"] is not None:
            add("device", "host device to access", [device["Path"]])
    if linux["AllowAllDevices"]:
        add("allow-all-devices", "allow 'rwm' access to all devices", ["true"])
    if linux["Capabilities"]:
        add("capabilities", "list of additional capabilities required",
            list(linux["Capabilities"]))
    return out


def initial_settings(config: dict[str, Any]) -> dict[str, Any]:
    """InitEmptySettings: the settable values start as the config has them."""
    return {
        "Args": list(config["Args"]["Value"] or []),
        "Devices": copy.deepcopy(config["Linux"]["Devices"] or []),
        "Env": [f"{e['Name']}={e['Value']}" for e in config["Env"] or []
                if e["Value"] is not None],
        "Mounts": copy.deepcopy(config["Mounts"] or []),
    }


# -- docker plugin set ------------------------------------------------------------------

ALLOWED_FIELDS = {"env": "value", "args": "value", "devices": "path", "mounts": "source"}


@dataclass
class _Settable:
    name: str
    field: str
    value: str

    @classmethod
    def parse(cls, arg: str) -> _Settable:
        """<name>[.<field>][=<value>]"""
        i = arg.find("=")
        if i == 0:
            raise SystemError_("invalid format, must be <name>[.<field>][=<value>]")
        name, value = (arg, "") if i < 0 else (arg[:i], arg[i + 1:])
        field = ""
        dot = name.rfind(".")
        if dot > 0:
            name, field = name[:dot], name[dot + 1:]
        return cls(name, field, value)

    def pretty(self) -> str:
        return f"{self.name}.{self.field}" if self.field else self.name

    def check(self, kind: str, settable: list[str] | None) -> None:
        settable = settable or []
        field = self.field
        if not field:
            if len(settable) > 1:
                raise SystemError_("multiple fields are settable, one must be specified")
            if settable:
                field = settable[0]
        if field != ALLOWED_FIELDS[kind] or field not in settable:
            raise SystemError_(f"{json.dumps(self.pretty())} is not settable")


def apply_settings(config: dict[str, Any], settings: dict[str, Any], args: list[str]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """New (config, settings) after `docker plugin set ARGS` (Plugin.Set); the
    inputs are left alone, so a failure changes nothing."""
    config, settings = copy.deepcopy(config), copy.deepcopy(settings)
    for s in [_Settable.parse(a) for a in args]:
        env = next((e for e in config["Env"] or [] if e["Name"] == s.name), None)
        if env is not None:
            s.check("env", env["Settable"])
            entry = f"{s.name}={s.value}"
            for i, current in enumerate(settings["Env"]):
                if current.partition("=")[0] == s.name:
                    settings["Env"][i] = entry
                    break
            else:
                settings["Env"].append(entry)
            continue
        index = next((i for i, m in enumerate(config["Mounts"] or []) if m["Name"] == s.name),
                     None)
        if index is not None:
            s.check("mounts", config["Mounts"][index]["Settable"])
            if config["Mounts"][index]["Source"] is None:
                raise SystemError_("Plugin config has no mount source")
            config["Mounts"][index]["Source"] = s.value
            if index < len(settings["Mounts"]):
                settings["Mounts"][index]["Source"] = s.value
            continue
        devices = config["Linux"]["Devices"] or []
        index = next((i for i, d in enumerate(devices) if d["Name"] == s.name), None)
        if index is not None:
            s.check("devices", devices[index]["Settable"])
            if devices[index]["Path"] is None:
                raise SystemError_("Plugin config has no device path")
            devices[index]["Path"] = s.value
            if index < len(settings["Devices"]):
                settings["Devices"][index]["Path"] = s.value
            continue
        if config["Args"]["Name"] == s.name:
            s.check("args", config["Args"]["Settable"])
            settings["Args"] = s.value.split(" ")
            continue
        raise SystemError_(f"setting {json.dumps(s.name)} not found in the plugin "
                           "configuration")
    return config, settings
