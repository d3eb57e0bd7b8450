"""HostConfig, field by field: each is enforced, or refused with an error that
says why. None is taken and then ignored.

A container runs in a guest (a VM) of its own, or shares one with the
containers whose namespaces it joins (a sandbox). "The guest" below is that
VM; "the container cgroup" is the container's cgroup (v2) inside it. Checks
use dockerd's words and statuses where dockerd has them (20.10, the oracle);
what dockerd leaves to runc is checked when the container starts, as there.

Enforced
- Memory: the guest's RAM is sized to it and memory.max holds it (start.py).
- MemoryReservation: memory.low of the container cgroup, as runc on cgroup
  v2. At least 6MB, at most Memory.
- MemorySwap: dockerd's checks (needs Memory, not below it; -1 unlimited).
  The guest has no swap, so memory+swap never exceeds the memory limit and
  the bound holds as given.
- MemorySwappiness: 0-100, or -1/null for the default (shown as null, as
  dockerd shows it). Nothing to swap in a guest without swap: any value
  holds.
- NanoCpus: the guest gets ceil(NanoCpus) vCPUs and cpu.max the quota; 0 <
  NanoCpus <= the host's CPUs.
- CpuPeriod, CpuQuota: cpu.max (1ms-1s period, quota at least 1ms, neither
  with NanoCpus).
- CpuShares: cpu.weight of the container cgroup (runc's conversion, 2 to
  262144 shares). It weighs the container against the other containers of
  its guest; each guest's vCPUs are host threads the host schedules alike.
- CpusetCpus: the guest's QEMU (all its vCPU threads) runs only on those
  host CPUs, and the guest has no more vCPUs than they are; also by
  `docker update`. dockerd's format and availability checks.
- CpusetMems: the guest's RAM is bound to those host NUMA nodes (QEMU's
  memory backend, policy=bind) unless they are all of the host's.
- PidsLimit: pids.max; 0 and below mean unlimited (shown as null).
- Ulimits: setrlimit in the guest before exec, for the main process and
  every exec; names checked at start, as runc checks them.
- OomScoreAdj: /proc/self/oom_score_adj of every process of the container
  in the guest (-1000..1000).
- Init: the guest init's own binary is bound at /sbin/docker-init and runs
  the command as PID 1 does docker-init (tini): signals forwarded, zombies
  reaped, exit 128+n for a signal n.
- ShmSize: the size of /dev/shm (not negative).
- Sysctls: written in the container's namespaces by its main process. As
  runc: only namespaced ones (kernel.msg*, kernel.sem, kernel.shm*,
  fs.mqueue.*, net.*) and not kernel.hostname, checked at start; others too
  when the container has a guest of its own (its kernel is its alone; a
  guest shared with other containers takes only namespaced ones).
- GroupAdd: supplementary groups of every process, resolved in the guest
  against the container's /etc/group as runc resolves them.
- StorageOpt: `size` is the size of the container's writable layer (its
  scratch disk); other options are refused as dockerd's overlay2 refuses
  them.
- Runtime: "hbd" (the default), and "runc" or "io.containerd.runc.v2" as
  its aliases, so that files written for dockerd run unchanged: every
  container runs in a guest. Any other is refused with dockerd's error.
- Isolation: "" or "default" only, with dockerd's error for the others.
- UsernsMode: "" or "host": hbd remaps no users; the container's users are
  its guest's own.
- CgroupnsMode: "private" (a cgroup namespace of its own in the guest);
  "host" is refused, as the other host namespaces are.
- UTSMode: "" (its own hostname); "host" is refused.
- NetworkMode, PidMode, IpcMode: namespaces.py (host modes refused).
- Binds, Mounts (with VolumeOptions.Subpath), Tmpfs, VolumesFrom: mounts.py.
- VolumeDriver: "" or "local"; another is refused with dockerd's error when
  the container has volumes (create.py, mounts.py).
- PortBindings, PublishAllPorts, Dns, DnsOptions, DnsSearch, ExtraHosts:
  network.py. RestartPolicy: restart.py. AutoRemove: monitor.py.
  ReadonlyRootfs: the guest remounts the root read-only. ConsoleSize: the
  main process's tty size.
- ContainerIDFile: the client's (the CLI writes the file); kept as given.
- Annotations: metadata for the runtime, kept and shown; hbd's reads none.

Refused (400 unless dockerd has its own status), because a guest cannot have them
- CgroupParent: a host cgroup for the container; its guest is not in one.
- BlkioWeight, BlkioWeightDevice, BlkioDeviceReadBps, BlkioDeviceWriteBps,
  BlkioDeviceReadIOps, BlkioDeviceWriteIOps: the guest kernel has no I/O
  controller, and the devices named are the host's, not the guest's.
- CpuRealtimePeriod, CpuRealtimeRuntime: no real-time group scheduling in
  the guest kernel.
- Devices other than block devices, DeviceCgroupRules, DeviceRequests
  (--gpus): the guest has no host devices. A host block device
  (`--device /dev/sdb:/dev/xvda:rw`, a Kubernetes raw block volume) is
  attached to the guest as a disk and its node made in the container:
  check_devices here, sandboxes.py.
- KernelMemory, KernelMemoryTCP: cgroup v1 only (and deprecated); the
  guest has cgroup v2.
- OomKillDisable: cgroup v2 cannot disable the OOM killer.
- CpuCount, CpuPercent: Windows options. IOMaximumIOps, IOMaximumBandwidth:
  Windows options, with dockerd's own error (500).
- Cgroup (another container's cgroup): not available.

- CapAdd, CapDrop, Privileged: the capability sets of every process of the
  container in its guest, as runc sets them from dockerd's (security.py,
  capabilities.py); unknown names refused with dockerd's error.
- SecurityOpt: seccomp (Docker's default profile, a given one, unconfined),
  no-new-privileges; apparmor and label accepted without effect, as dockerd
  on a host without them (security.py, seccomp.py).
- MaskedPaths, ReadonlyPaths: masked and made read-only in the container's
  mount namespace (none when privileged).

Another engineer's, as they are for now: LogConfig (the logs work), Links
(the network work).

For tenants (Keystone projects), tenancy.py refuses with 403 what would
reach the host: host bind mounts (Binds, Mounts), Privileged, NetworkMode
host, Devices, DeviceCgroupRules, DeviceRequests, and CapAdd beyond
Docker's default set; quota.py bounds Memory and NanoCpus per project.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbd.drivers import disks
from hbd.errors import InvalidParameter, SystemError_
from hbd.services.container import security

VM_MESSAGE = "hbd runs each container in its own virtual machine: "
DEFAULT_RUNTIME = "hbd"
# Names a dockerd host gives its runtime; here they mean hbd's.
RUNTIME_ALIASES = ("runc", "io.containerd.runc.v2")
MIN_MEMORY = 6 * 1024 * 1024
MIN_SCRATCH = 64 * 1024 * 1024
MAX_SCRATCH = 1024**4

# Fields a guest cannot have: (field, what it asks for), refused when set.
_REFUSED: tuple[tuple[str, str], ...] = (
    ("CgroupParent", "a cgroup parent on the host (--cgroup-parent) does not apply to it"),
    ("BlkioWeight", "block I/O weights (--blkio-weight) need an I/O controller its kernel "
                    "does not have"),
    ("BlkioWeightDevice", "host devices (--blkio-weight-device) are not its devices"),
    ("BlkioDeviceReadBps", "host devices (--device-read-bps) are not its devices"),
    ("BlkioDeviceWriteBps", "host devices (--device-write-bps) are not its devices"),
    ("BlkioDeviceReadIOps", "host devices (--device-read-iops) are not its devices"),
    ("BlkioDeviceWriteIOps", "host devices (--device-write-iops) are not its devices"),
    ("CpuRealtimePeriod", "its kernel has no real-time group scheduling (--cpu-rt-period)"),
    ("CpuRealtimeRuntime", "its kernel has no real-time group scheduling "
                           "(--cpu-rt-runtime)"),
    ("DeviceCgroupRules", "it has no host devices for device cgroup rules "
                          "(--device-cgroup-rule)"),
    ("DeviceRequests", "host devices (--gpus, device requests) cannot be passed to it"),
    ("KernelMemory", "kernel memory limits (--kernel-memory) are a cgroup v1 feature; "
                     "its cgroups are v2"),
    ("KernelMemoryTCP", "kernel TCP memory limits are a cgroup v1 feature; its cgroups "
                        "are v2"),
    ("OomKillDisable", "cgroup v2 cannot disable the OOM killer (--oom-kill-disable)"),
    ("Cgroup", "another container's cgroup (Cgroup) is not available"),
)
# Windows-only fields dockerd discards on Linux with a warning; hbd says no.
_WINDOWS_ONLY = ("CpuCount", "CpuPercent")

# runc's namespaced sysctls: those a container may set in a shared kernel.
_IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}
_SYSCTL_NAME = re.compile(r"^[A-Za-z0-9_-]+([./][A-Za-z0-9_*:-]+)*$")
_RLIMITS = {"cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock",
            "as", "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime"}
_UINT_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_RAM_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")


@dataclass(frozen=True)
class HostFacts:
    """What the checks need to know of the host."""

    cpus: frozenset[int] = field(default_factory=lambda: frozenset(os.sched_getaffinity(0)))
    nodes: frozenset[int] = field(default_factory=lambda: frozenset(_online_nodes()))


def _online_nodes() -> set[int]:
    try:
        return parse_uint_list(Path("/sys/devices/system/node/online").read_text().strip())
    except (OSError, ValueError):
        return {0}


def parse_uint_list(text: str) -> set[int]:
    """dockerd's parsers.ParseUintList: "0-2,4" → {0, 1, 2, 4}."""
    if not text or not _UINT_LIST.match(text):
        raise ValueError(f"invalid format: {text}")
    out: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first:
            raise ValueError(f"invalid format: {text}")
        out.update(range(first, last + 1))
    return out


def format_uint_list(values: set[int] | frozenset[int]) -> str:
    """{0, 1, 2, 4} → "0-2,4", as the kernel prints a cpu list."""
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and runs[-1][1] == value - 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def ram_in_bytes(text: str) -> int:
    """go-units RAMInBytes: "20G", "512m", "1.5GiB" (binary units)."""
    m = _RAM_SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size: '{text}'")
    unit = "bkmgtp".index((m.group(2) or "b").lower())
    return int(float(m.group(1)) * 1024**unit)


# -- at create (and at update, on the merged config) -----------------------------------------


def check(hc: dict[str, Any], host: HostFacts | None = None) -> None:
    """Every HostConfig field hbd checks when a container is created or
    updated, normalised in place as dockerd shows it."""
    host = host or HostFacts()
    _refuse_unavailable(hc)
    check_devices(hc)
    _check_modes(hc)
    _check_memory(hc)
    _check_cpu(hc, host)
    _check_cpusets(hc, host)
    _check_process_options(hc)
    check_storage_opt(hc)
    security.check(hc)


DEVICE_PERMISSIONS = re.compile(r"^[rwm]{1,3}$")


def check_devices(hc: dict[str, Any]) -> None:
    """Devices: host block devices only (a guest has no other host device),
    with a container path and cgroup permissions (defaults filled in as
    dockerd shows them)."""
    for device in hc.get("Devices") or []:
        host = str(device.get("PathOnHost") or "")
        try:
            disks.block_device(host)
        except disks.NotBlockDevice as e:
            raise InvalidParameter(f"{VM_MESSAGE}host devices (--device) other than block "
                                   f"devices cannot be passed to it: {e}") from None
        inside = str(device.get("PathInContainer") or host)
        if not inside.startswith("/"):
            raise InvalidParameter(f"{inside} is not an absolute path")
        permissions = str(device.get("CgroupPermissions") or "rwm")
        if not DEVICE_PERMISSIONS.match(permissions):
            raise InvalidParameter(f"invalid device mode: {permissions}")
        device.update({"PathOnHost": host, "PathInContainer": inside,
                       "CgroupPermissions": permissions})


def device_node_mode(host_mode: int, permissions: str) -> int:
    """The permission bits of a device's node in the container: its host
    node's, less reading or writing when the permissions do not give them."""
    mode = host_mode & 0o777
    if "r" not in permissions:
        mode &= ~0o444
    if "w" not in permissions:
        mode &= ~0o222
    return mode


def _set(value: Any) -> bool:
    """Whether a field holds a value that asks for something (not 0, "", [], null, false)."""
    return bool(value)


def _refuse_unavailable(hc: dict[str, Any]) -> None:
    for name, what in _REFUSED:
        if _set(hc.get(name)):
            raise InvalidParameter(VM_MESSAGE + what)
    for name in _WINDOWS_ONLY:
        if hc.get(name):
            raise InvalidParameter(f"{name} is a Windows option: on Linux use --cpus "
                                   "(NanoCpus)")
    # dockerd's own refusals of the Windows I/O limits (with its status).
    if hc.get("IOMaximumIOps"):
        raise SystemError_("Invalid QoS settings: linux does not support configuration of "
                           "maximum IOPs")
    if hc.get("IOMaximumBandwidth"):
        raise SystemError_("Invalid QoS settings: linux does not support configuration of "
                           "maximum bandwidth")


def _check_modes(hc: dict[str, Any]) -> None:
    runtime = hc.get("Runtime") or DEFAULT_RUNTIME
    if runtime != DEFAULT_RUNTIME and runtime not in RUNTIME_ALIASES:
        raise InvalidParameter(f"Unknown runtime specified {runtime}")
    hc["Runtime"] = runtime
    isolation = hc.get("Isolation") or ""
    if isolation not in ("", "default"):
        raise SystemError_(f'Invalid isolation: "{isolation}" - linux only supports '
                           "'default'")
    cgroupns = hc.get("CgroupnsMode") or "private"
    if cgroupns == "host":
        raise InvalidParameter(VM_MESSAGE + "the host's cgroup namespace (--cgroupns host) "
                               "is not available")
    if cgroupns != "private":
        raise InvalidParameter(f"invalid cgroup namespace mode: {cgroupns}")
    hc["CgroupnsMode"] = cgroupns
    uts = hc.get("UTSMode") or ""
    if uts == "host":
        raise InvalidParameter(VM_MESSAGE + "the host's uts namespace (--uts host) is not "
                               "available")
    if uts:
        raise InvalidParameter(f"invalid UTS mode: {uts}")
    if (hc.get("UsernsMode") or "") not in ("", "host"):
        raise InvalidParameter(f"invalid USER mode: {hc['UsernsMode']}")


def _check_memory(hc: dict[str, Any]) -> None:
    memory = int(hc.get("Memory") or 0)
    reservation = int(hc.get("MemoryReservation") or 0)
    swap = int(hc.get("MemorySwap") or 0)
    if reservation and reservation < MIN_MEMORY:
        raise InvalidParameter("Minimum memory reservation allowed is 6MB")
    if memory and reservation > memory:
        raise InvalidParameter("Minimum memory limit can not be less than memory reservation "
                               "limit, see usage")
    if swap > 0 and not memory:
        raise InvalidParameter("You should always set the Memory limit when using "
                               "Memoryswap limit, see usage")
    if swap > 0 and swap < memory:
        raise InvalidParameter("Minimum memoryswap limit should be larger than memory limit, "
                               "see usage")
    swappiness = hc.get("MemorySwappiness")
    if swappiness is not None and swappiness != -1 and not 0 <= swappiness <= 100:
        raise InvalidParameter(f"Invalid value: {swappiness}, valid memory swappiness range "
                               "is 0-100")
    if swappiness == -1:
        hc["MemorySwappiness"] = None
    if hc.get("PidsLimit") is not None and hc["PidsLimit"] <= 0:
        hc["PidsLimit"] = None


def _check_cpu(hc: dict[str, Any], host: HostFacts) -> None:
    nano = int(hc.get("NanoCpus") or 0)
    period = int(hc.get("CpuPeriod") or 0)
    quota = int(hc.get("CpuQuota") or 0)
    if nano and period:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be "
                               "set")
    if nano and quota:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    if nano < 0 or nano > len(host.cpus) * 10**9:
        raise InvalidParameter(f"Range of CPUs is from 0.01 to {len(host.cpus)}.00, as there "
                               f"are only {len(host.cpus)} CPUs available")
    if period and not 1000 <= period <= 1_000_000:
        raise InvalidParameter("CPU cfs period can not be less than 1ms (i.e. 1000) or larger "
                               "than 1s (i.e. 1000000)")
    if 0 < quota < 1000:
        raise InvalidParameter("CPU cfs quota can not be less than 1ms (i.e. 1000)")


def _check_cpusets(hc: dict[str, Any], host: HostFacts) -> None:
    for key, what, available, words in (("CpusetCpus", "cpus", host.cpus, "CPUs"),
                                       ("CpusetMems", "mems", host.nodes, "memory nodes")):
        text = hc.get(key) or ""
        if not text:
            continue
        try:
            wanted = parse_uint_list(text)
        except ValueError as e:
            raise InvalidParameter(f"Invalid value {text} for cpuset {what}: {e}") from None
        if not wanted <= available:
            raise InvalidParameter(f"Requested {words} are not available - requested {text}, "
                                   f"available: {format_uint_list(available)}")


def _check_process_options(hc: dict[str, Any]) -> None:
    adj = int(hc.get("OomScoreAdj") or 0)
    if not -1000 <= adj <= 1000:
        raise InvalidParameter(f"Invalid value {adj}, range for oom score adj is [-1000, 1000]")
    if not all(isinstance(v, str) for v in hc.get("GroupAdd") or []):
        raise InvalidParameter("json: cannot unmarshal into Go struct field "
                               "HostConfig.GroupAdd of type string")
    for ulimit in hc.get("Ulimits") or []:
        if not (isinstance(ulimit, dict) and isinstance(ulimit.get("Name", ""), str) and
                all(isinstance(ulimit.get(k, 0), int) for k in ("Soft", "Hard"))):
            raise InvalidParameter("json: cannot unmarshal into Go struct field "
                                   "HostConfig.Ulimits of type units.Ulimit")


def check_storage_opt(hc: dict[str, Any]) -> None:
    for key, value in (hc.get("StorageOpt") or {}).items():
        if key.lower() != "size":
            raise SystemError_(f"Unknown option {key}")
        scratch_size(str(value))


def scratch_size(text: str) -> int:
    """StorageOpt size: the container's writable layer, in bytes."""
    try:
        size = ram_in_bytes(text)
    except ValueError:
        raise InvalidParameter(f"invalid storage size: {text}") from None
    if not MIN_SCRATCH <= size <= MAX_SCRATCH:
        raise InvalidParameter(f"invalid storage size: {text}: hbd makes a container's "
                               "writable layer 64MiB to 1TiB")
    return size


def storage_size(hc: dict[str, Any]) -> int:
    """The scratch disk size StorageOpt asks for, or 0 for hbd's default."""
    for key, value in (hc.get("StorageOpt") or {}).items():
        if key.lower() == "size":
            return scratch_size(str(value))
    return 0


# -- at start: what dockerd leaves to runc -----------------------------------------------------


def check_at_start(hc: dict[str, Any], own_guest: bool) -> None:
    """runc's checks, made before hbd boots anything; dockerd answers 500."""
    shares = int(hc.get("CpuShares") or 0)
    if shares > 262144:
        raise _runtime_error("the maximum allowed cpu-shares is 262144")
    for ulimit in hc.get("Ulimits") or []:
        name = str(ulimit.get("Name") or "")
        if name.lower() not in _RLIMITS:
            raise _runtime_error(f"wrong rlimit value: RLIMIT_{name.upper()}")
    for key in hc.get("Sysctls") or {}:
        _check_sysctl(str(key), hc, own_guest)


def _runtime_error(message: str) -> SystemError_:
    return SystemError_(f"failed to create task for container: {message}: unknown")


def _check_sysctl(key: str, hc: dict[str, Any], own_guest: bool) -> None:
    name = key.replace("/", ".")
    if name == "kernel.hostname":
        raise _runtime_error(f'sysctl "{key}" is not allowed as it conflicts with the OCI '
                             '"hostname" field')
    namespaced = name in _IPC_SYSCTLS or name.startswith(("fs.mqueue.", "net.")) or \
        name == "kernel.domainname"
    if not _SYSCTL_NAME.match(key) or ".." in key or not (namespaced or own_guest):
        raise _runtime_error(f'sysctl "{key}" is not in a separate kernel namespace')


def cpu_weight(shares: int) -> int:
    """runc's cpu.shares → cpu.weight (cgroup v2); 0 for the default."""
    if shares <= 0:
        return 0
    # Go's integer division truncates toward zero.
    return 1 + math.trunc((shares - 2) * 9999 / 262142)


def vcpus_for(hc: dict[str, Any], default: int) -> int:
    """The guest's vCPUs: ceil(NanoCpus) or the default, no more than CpusetCpus."""
    vcpus = math.ceil(int(hc["NanoCpus"]) / 1e9) if hc.get("NanoCpus") else default
    if hc.get("CpusetCpus"):
        cpus = parse_uint_list(hc["CpusetCpus"])
        vcpus = min(vcpus, len(cpus)) if hc.get("NanoCpus") else len(cpus)
    return max(1, vcpus)


def host_cpus(hc: dict[str, Any]) -> list[int]:
    """The host CPUs the guest may run on ([] for all)."""
    text = hc.get("CpusetCpus") or ""
    return sorted(parse_uint_list(text)) if text else []


def host_nodes(hc: dict[str, Any], host: HostFacts | None = None) -> list[int]:
    """The host NUMA nodes the guest's RAM is bound to ([] for no binding)."""
    text = hc.get("CpusetMems") or ""
    if not text:
        return []
    wanted = parse_uint_list(text)
    return [] if wanted >= (host or HostFacts()).nodes else sorted(wanted)
