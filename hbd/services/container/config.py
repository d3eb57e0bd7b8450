"""Docker's container Config and HostConfig: defaults, merge with the image, checks.

What dockerd does in daemon/create.go and daemon/commit.go (`merge`), so that
`inspect` returns the shape and values clients expect.
"""

from __future__ import annotations

import copy
import re
import secrets
from typing import Any

from hbd.errors import InvalidParameter
from hbd.services import goparse
from hbd.services.container import hostconfig, security

# Re-exported: the builder and commit --change check STOPSIGNAL through this module.
from hbd.services.container.signals import parse_signal as parse_signal  # noqa: PLC0414

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
VALID_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

CONFIG_DEFAULTS: dict[str, Any] = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
    "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
    "StdinOnce": False, "Env": None, "Cmd": None, "Image": "", "Volumes": None,
    "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None,
}
# Fields present in the API only when set (omitempty in moby's types).
CONFIG_OPTIONAL = ("ExposedPorts", "Healthcheck", "ArgsEscaped", "NetworkDisabled",
                   "MacAddress", "StopSignal", "StopTimeout", "Shell")

HOST_CONFIG_DEFAULTS: dict[str, Any] = {
    "Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "json-file", "Config": {}},
    "NetworkMode": "default", "PortBindings": {}, "RestartPolicy": {"Name": "no",
                                                                   "MaximumRetryCount": 0},
    "AutoRemove": False, "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [0, 0],
    "Annotations": None, "CapAdd": None, "CapDrop": None, "CgroupnsMode": "private",
    "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None, "GroupAdd": None,
    "IpcMode": "private", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "",
    "Privileged": False, "PublishAllPorts": False, "ReadonlyRootfs": False,
    "SecurityOpt": None, "UTSMode": "", "UsernsMode": "", "ShmSize": DEFAULT_SHM_SIZE,
    "Runtime": "hbd", "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0,
    "CgroupParent": "", "BlkioWeight": 0, "BlkioWeightDevice": [], "BlkioDeviceReadBps": [],
    "BlkioDeviceWriteBps": [], "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [],
    "CpuPeriod": 0, "CpuQuota": 0, "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0,
    "CpusetCpus": "", "CpusetMems": "", "Devices": [], "DeviceCgroupRules": None,
    "DeviceRequests": None, "MemoryReservation": 0, "MemorySwap": 0,
    "MemorySwappiness": None, "OomKillDisable": None, "PidsLimit": None, "Ulimits": [],
    "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0,
    "Mounts": None, "Tmpfs": None, "Sysctls": None, "StorageOpt": None,
    "MaskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                    "/sys/devices/virtual/powercap"],
    "ReadonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                      "/proc/sysrq-trigger"],
}
# Present only when the client set them.
HOST_CONFIG_OPTIONAL = ("Mounts", "Tmpfs", "Sysctls", "StorageOpt", "Annotations")

RESTART_POLICIES = ("", "no", "always", "unless-stopped", "on-failure")

# Log drivers hbd serves (and "none"), with the options each takes (as dockerd's
# validators).
LOG_DRIVER_OPTS: dict[str, frozenset[str]] = {
    "json-file": frozenset({"max-file", "max-size", "compress", "labels", "labels-regex",
                            "env", "env-regex", "tag"}),
    "local": frozenset({"max-file", "max-size", "compress"}),
    # hbd's own: the CRI log format at a path kubelet chooses (hbd/api/cri).
    "cri": frozenset({"path"}),
}
# dockerd's other built-in drivers: they ship logs elsewhere; hbd refuses them.
LOG_DRIVERS_REFUSED = ("syslog", "journald", "gelf", "fluentd", "awslogs", "splunk",
                       "gcplogs", "logentries")
# What every driver accepts: the delivery mode, its buffer, dockerd's log cache.
LOG_COMMON_OPTS = frozenset({"mode", "max-buffer-size", "cache-disabled", "cache-max-file",
                             "cache-max-size", "cache-compress"})

# JSON types of the request fields, checked before anything reads them (Go's
# decoder refuses a mistyped field with a 400; so do we).
CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "Hostname": str, "Domainname": str, "User": str, "AttachStdin": bool,
    "AttachStdout": bool, "AttachStderr": bool, "ExposedPorts": dict, "Tty": bool,
    "OpenStdin": bool, "StdinOnce": bool, "Env": list, "Cmd": (list, str),
    "Healthcheck": dict, "ArgsEscaped": bool, "Image": str, "Volumes": dict,
    "WorkingDir": str, "Entrypoint": (list, str), "NetworkDisabled": bool, "MacAddress": str,
    "OnBuild": list, "Labels": dict, "StopSignal": str, "StopTimeout": int, "Shell": list,
    "HostConfig": dict, "NetworkingConfig": dict,
}
HOST_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    **{k: type(v) for k, v in HOST_CONFIG_DEFAULTS.items() if v is not None},
    "Binds": list, "VolumesFrom": list, "CapAdd": list, "CapDrop": list, "ExtraHosts": list,
    "GroupAdd": list, "Links": list, "SecurityOpt": list, "DeviceCgroupRules": list,
    "DeviceRequests": list, "MemorySwappiness": int, "OomKillDisable": bool,
    "PidsLimit": int, "Mounts": list, "Tmpfs": dict, "Sysctls": dict, "StorageOpt": dict,
    "Annotations": dict, "Init": bool, "KernelMemory": int, "KernelMemoryTCP": int,
}
_JSON_NAMES = {str: "string", bool: "bool", int: "number", float: "number", list: "array",
               dict: "object"}


def check_types(body: dict[str, Any], types: dict[str, type | tuple[type, ...]],
                struct: str) -> None:
    for key, value in body.items():
        expected = types.get(key)
        if expected is None or value is None:
            continue
        allowed = expected if isinstance(expected, tuple) else (expected,)
        ok = isinstance(value, allowed) and not (bool not in allowed and
                                                 isinstance(value, bool))
        if int in allowed and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            got = _JSON_NAMES.get(type(value), type(value).__name__)
            want = "/".join(_JSON_NAMES[t] for t in allowed)
            raise InvalidParameter(f"json: cannot unmarshal {got} into Go struct field "
                                   f"{struct}.{key} of type {want}")

_ADJECTIVES = (
    "agile", "amber", "brave", "bright", "calm", "clever", "cosmic", "crisp", "daring",
    "eager", "early", "fancy", "fierce", "gentle", "golden", "happy", "hidden", "humble",
    "jolly", "keen", "lively", "lucid", "merry", "mighty", "nimble", "noble", "patient",
    "plucky", "proud", "quick", "quiet", "rapid", "serene", "sharp", "shiny", "silent",
    "smooth", "snappy", "steady", "sunny", "swift", "tender", "tidy", "vivid", "witty",
)
_BIRDS = (
    "albatross", "avocet", "bittern", "bunting", "buzzard", "condor", "cormorant", "crane",
    "curlew", "dipper", "dunlin", "egret", "falcon", "finch", "gannet", "godwit", "goshawk",
    "grebe", "harrier", "heron", "hoopoe", "ibis", "jacana", "kestrel", "kingfisher",
    "kite", "lapwing", "linnet", "magpie", "merlin", "nightjar", "oriole", "osprey",
    "pelican", "petrel", "plover", "puffin", "redstart", "roller", "sandpiper", "shrike",
    "siskin", "skylark", "starling", "swift", "tern", "thrush", "wagtail", "warbler",
    "waxwing", "wren",
)


def generate_name(taken: set[str]) -> str:
    """A random `adjective_bird` name (dockerd uses adjective_scientist)."""
    for attempt in range(100):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_BIRDS)}"
        if attempt > 10:
            name += str(secrets.randbelow(10))
        if name not in taken:
            return name
    raise InvalidParameter("could not generate a unique container name")


def validate_name(name: str) -> str:
    """The canonical `/name`; error text as dockerd's."""
    if not VALID_NAME.match(name):
        raise InvalidParameter(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name if name.startswith("/") else "/" + name


def _list_of_str(value: Any, field: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]  # the API accepts a string for Cmd/Entrypoint (strslice)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"invalid {field}: must be a list of strings")
    return list(value)


def normalize_config(body: dict[str, Any]) -> dict[str, Any]:
    """The Config part of a create request, typed and with dockerd's zero values."""
    check_types(body, CONFIG_TYPES, "ContainerCreateRequest")
    config = {**CONFIG_DEFAULTS}
    for key, value in body.items():
        if key in CONFIG_DEFAULTS or key in CONFIG_OPTIONAL:
            config[key] = value
    for key in ("Cmd", "Entrypoint", "Env", "OnBuild", "Shell"):
        if key in config:
            config[key] = _list_of_str(config[key], key)
    for key in ("Hostname", "Domainname", "User", "Image", "WorkingDir"):
        if not isinstance(config[key], str):
            raise InvalidParameter(f"invalid {key}: must be a string")
    if config["Labels"] is not None and not isinstance(config["Labels"], dict):
        raise InvalidParameter("invalid Labels: must be an object")
    for env in config["Env"] or []:
        if env.startswith("="):
            raise InvalidParameter(f"invalid environment variable: {env}")
    if config.get("StopSignal"):
        parse_signal(config["StopSignal"])
    return config


# moby's ContainerConfigWrapper still embeds a deprecated HostConfig at the
# top level of a create body (docker-py sends `runtime=` there). With no
# "HostConfig" object, those top-level fields are the host config; with one,
# only these fill in its zero values.
LEGACY_MERGED = ("Memory", "MemorySwap", "CpuShares", "CpusetCpus")


def host_config_of(body: dict[str, Any]) -> Any:
    """The host config a create body asks for, as dockerd's getHostConfig reads it."""
    inner = body.get("HostConfig")
    top = {k: v for k, v in body.items() if k in HOST_CONFIG_DEFAULTS or k in HOST_CONFIG_TYPES}
    if inner is None:
        hc: Any = top or None
    elif isinstance(inner, dict):
        hc = dict(inner)
        for key in LEGACY_MERGED:
            if top.get(key) and not hc.get(key):
                hc[key] = top[key]
    else:
        return inner  # normalize_host_config words the error
    cpuset = body.get("Cpuset")
    if isinstance(cpuset, str) and cpuset:
        hc = hc if hc is not None else {}
        if not hc.get("CpusetCpus"):
            hc["CpusetCpus"] = cpuset
    return hc


def normalize_host_config(body: dict[str, Any] | None) -> dict[str, Any]:
    if body is not None and not isinstance(body, dict):
        raise InvalidParameter("json: cannot unmarshal into Go struct field "
                               "ContainerCreateRequest.HostConfig of type object")
    check_types(body or {}, HOST_CONFIG_TYPES, "HostConfig")
    hc = copy.deepcopy(HOST_CONFIG_DEFAULTS)
    for key in HOST_CONFIG_OPTIONAL:
        hc.pop(key)
    for key, value in (body or {}).items():
        if value is None and key in HOST_CONFIG_DEFAULTS and \
                HOST_CONFIG_DEFAULTS[key] is not None:
            continue  # null means "default" for fields dockerd fills in
        hc[key] = value
    if not hc.get("NetworkMode"):
        hc["NetworkMode"] = "default"
    policy = hc.get("RestartPolicy") or {}
    if not isinstance(policy, dict):
        raise InvalidParameter("invalid RestartPolicy")
    name = policy.get("Name", "") or "no"
    if name not in RESTART_POLICIES:
        raise InvalidParameter(f"invalid restart policy '{name}'")
    retries = policy.get("MaximumRetryCount", 0) or 0
    if not isinstance(retries, int) or retries < 0:
        raise InvalidParameter("invalid restart policy: maximum retry count can't be negative")
    if retries and name != "on-failure":
        raise InvalidParameter(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'")
    hc["RestartPolicy"] = {"Name": name, "MaximumRetryCount": retries}
    if hc.get("AutoRemove") and name != "no":
        raise InvalidParameter("can't create 'AutoRemove' container with restart policy")
    if (hc.get("ShmSize") or 0) < 0:
        raise InvalidParameter("SHM size can not be less than 0")
    for key in ("Memory", "CpuShares", "CpuPeriod"):
        if (hc.get(key) or 0) < 0:
            raise InvalidParameter(f"invalid {key}: must be a non-negative integer")
    if hc["Memory"] and hc["Memory"] < 6 * 1024 * 1024:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    if not hc["ShmSize"]:
        hc["ShmSize"] = DEFAULT_SHM_SIZE
    console = hc.get("ConsoleSize") or [0, 0]
    if not (isinstance(console, list) and len(console) == 2 and
            all(isinstance(v, int) and v >= 0 for v in console)):
        raise InvalidParameter("invalid ConsoleSize")
    hc["ConsoleSize"] = console
    hostconfig.check(hc)
    security.normalize_privileged(hc, body or {})
    hc["LogConfig"] = normalize_log_config(hc["LogConfig"])
    return hc


def normalize_log_config(log_config: dict[str, Any]) -> dict[str, Any]:
    """dockerd's mergeAndVerifyLogConfig: the default driver for none given,
    the options checked in its order. Option values are read at start."""
    check_types(log_config, {"Type": str, "Config": dict}, "LogConfig.HostConfig.LogConfig")
    opts = log_config.get("Config") or {}
    for value in opts.values():
        if not isinstance(value, str):
            raise InvalidParameter(
                f"json: cannot unmarshal {_JSON_NAMES.get(type(value), 'value')} into Go "
                "struct field LogConfig.HostConfig.LogConfig.Config of type string")
    driver = log_config.get("Type") or "json-file"
    if driver != "none":
        _check_log_opts(driver, opts)
    return {"Type": driver, "Config": dict(opts)}


def _check_log_opts(driver: str, opts: dict[str, str]) -> None:
    mode = opts.get("mode", "")
    if mode not in ("", "blocking", "non-blocking"):
        raise InvalidParameter(f"logger: logging mode not supported: {mode}")
    if "max-buffer-size" in opts:
        if mode != "non-blocking":
            raise InvalidParameter("logger: max-buffer-size option is only supported with "
                                   "'mode=non-blocking'")
        try:
            goparse.size(opts["max-buffer-size"], binary=True)
        except ValueError as e:
            raise InvalidParameter(f"error parsing option max-buffer-size: {e}") from e
    cache_disabled = opts.get("cache-disabled", "")
    if cache_disabled and cache_disabled not in goparse.BOOLS:
        raise InvalidParameter(f"invalid value for option cache-disabled: {cache_disabled}")
    if driver in LOG_DRIVERS_REFUSED:
        raise InvalidParameter(f"hbd does not serve the {driver} logging driver: "
                               "use json-file, local or none")
    if driver not in LOG_DRIVER_OPTS:
        raise InvalidParameter(
            f'error looking up logging plugin {driver}: plugin "{driver}" not found')
    for key in opts:
        if key not in LOG_COMMON_OPTS and key not in LOG_DRIVER_OPTS[driver]:
            where = "json-file log driver" if driver == "json-file" else f"log driver {driver}"
            raise InvalidParameter(f"unknown log opt '{key}' for {where}")


def merge_image_config(config: dict[str, Any], image_config: dict[str, Any]) -> None:
    """dockerd's merge(): fill the user's Config from the image's, in place."""
    if not config["User"]:
        config["User"] = image_config.get("User") or ""
    image_ports = image_config.get("ExposedPorts") or {}
    if not config.get("ExposedPorts"):
        if image_ports:
            config["ExposedPorts"] = dict(image_ports)
    else:
        for port in image_ports:
            config["ExposedPorts"].setdefault(port, {})
    image_env = image_config.get("Env") or []
    if not config["Env"]:
        config["Env"] = list(image_env) or None
    else:
        keys = {e.split("=", 1)[0] for e in config["Env"]}
        config["Env"] += [e for e in image_env if e.split("=", 1)[0] not in keys]
    labels = dict(config["Labels"] or {})
    for k, v in (image_config.get("Labels") or {}).items():
        labels.setdefault(k, v)
    config["Labels"] = labels
    if not config["Entrypoint"]:
        if not config["Cmd"]:
            config["Cmd"] = image_config.get("Cmd")
            if image_config.get("ArgsEscaped"):
                config["ArgsEscaped"] = True
        if config["Entrypoint"] is None:
            config["Entrypoint"] = image_config.get("Entrypoint")
    image_health = image_config.get("Healthcheck")
    if image_health:
        user_health = config.get("Healthcheck")
        if not user_health:
            config["Healthcheck"] = dict(image_health)
        else:
            for key in ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval",
                        "Retries"):
                if not user_health.get(key) and key in image_health:
                    user_health[key] = image_health[key]
    if not config["WorkingDir"]:
        config["WorkingDir"] = image_config.get("WorkingDir") or ""
    image_volumes = image_config.get("Volumes") or {}
    if not config["Volumes"]:
        config["Volumes"] = dict(image_volumes) or None
    else:
        config["Volumes"].update(image_volumes)
    if not config.get("StopSignal") and image_config.get("StopSignal"):
        config["StopSignal"] = image_config["StopSignal"]


def command_of(config: dict[str, Any]) -> list[str]:
    """Entrypoint + Cmd; dockerd drops an entrypoint of [""] (`--entrypoint ""`)."""
    entrypoint = [e for e in (config["Entrypoint"] or [])]
    if entrypoint == [""]:
        entrypoint = []
    args = entrypoint + list(config["Cmd"] or [])
    if not args:
        raise InvalidParameter("No command specified")
    return args


def process_env(config: dict[str, Any], hostname: str,
                linked: list[str] | None = None) -> list[str]:
    """The environment dockerd gives a container's process
    (CreateDaemonEnvironment): `linked` is what its legacy links set."""
    env = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if config["Tty"]:
        env.append("TERM=xterm")
    return replace_or_append_env(env + list(linked or []), config["Env"] or [])


def replace_or_append_env(base: list[str], overrides: list[str]) -> list[str]:
    out = list(base)
    index = {e.split("=", 1)[0]: i for i, e in enumerate(out)}
    for entry in overrides:
        key = entry.split("=", 1)[0]
        if "=" not in entry:
            # `-e NAME` without a value and unset on the client: drop it.
            if key in index:
                out[index[key]] = ""
            continue
        if key in index:
            out[index[key]] = entry
        else:
            index[key] = len(out)
            out.append(entry)
    return [e for e in out if e]


def api_older_than(api_version: str, version: tuple[int, int]) -> bool:
    """Whether the client's API version ("" : the latest) is below `version`."""
    try:
        return bool(api_version) and tuple(int(p) for p in api_version.split(".")) < version
    except ValueError:
        return False
