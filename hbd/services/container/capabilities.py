"""Linux capabilities as dockerd 20.10 gives them to a container (moby's
oci/caps): the default set, --cap-add, --cap-drop, --privileged."""

from __future__ import annotations

from hbd.errors import InvalidParameter

# Every capability by number (linux/capability.h), as far as the guest kernels go.
ALL: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
NUMBERS = {name: number for number, name in enumerate(ALL)}

# moby's oci/caps.DefaultCapabilities, in its order.
DEFAULT: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
ALL_KEYWORD = "ALL"


def normalize(names: list[str], field: str) -> list[str]:
    """moby's NormalizeLegacyCapabilities: upper case, a CAP_ prefix, "ALL"
    kept; an unknown name is dockerd's 400."""
    out = []
    for name in names:
        if not isinstance(name, str):
            raise InvalidParameter(f"json: cannot unmarshal into Go struct field "
                                   f"HostConfig.{field} of type string")
        upper = name.upper()
        if upper != ALL_KEYWORD and not upper.startswith("CAP_"):
            upper = "CAP_" + upper
        if upper != ALL_KEYWORD and upper not in NUMBERS:
            raise InvalidParameter(f'invalid {field}: unknown capability: "{upper}"')
        out.append(upper)
    return out


def validate(cap_add: list[str] | None, cap_drop: list[str] | None) -> None:
    """dockerd's check at create (and update)."""
    normalize(cap_add or [], "CapAdd")
    normalize(cap_drop or [], "CapDrop")


def effective(cap_add: list[str] | None, cap_drop: list[str] | None,
              privileged: bool) -> list[str]:
    """moby's TweakCapabilities: the container's capability set."""
    if privileged:
        return list(ALL)
    if not cap_add and not cap_drop:
        return list(DEFAULT)
    adds = normalize(cap_add or [], "CapAdd")
    drops = normalize(cap_drop or [], "CapDrop")
    if ALL_KEYWORD in adds:
        return [c for c in ALL if c not in drops]
    if ALL_KEYWORD in drops:
        return adds
    return [c for c in DEFAULT if c not in drops] + adds


def numbers(names: list[str]) -> list[int]:
    """Capability numbers, each once, in order."""
    return sorted({NUMBERS[name] for name in names})


def mask(names: list[str]) -> int:
    """The /proc/PID/status bit mask (CapEff and friends) of a set."""
    return sum(1 << n for n in numbers(names))
