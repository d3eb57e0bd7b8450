"""QEMU microvm driver: the one place that builds QEMU's argv and runs it.

Knows nothing of Docker. A guest is described by a `VMSpec`; `launch()`
starts QEMU detached (`-daemonize`, so the guest survives an hbd restart) and
returns a `MicroVM` handle. `MicroVM.find()` re-attaches to a guest that an
earlier hbd started, from the pid file in its run directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from hbd.drivers import jail, qemuopts
from hbd.drivers.cgroups import Cgroups, qemu_limits, remove_soon
from hbd.drivers.procwatch import ProcessWatch, cmdline_of

log = logging.getLogger(__name__)

TCG_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt"
# Unix socket paths are limited by sun_path (108 bytes, one for the NUL).
MAX_SOCKET_PATH = 107
# A QMP connection or command that takes longer means QEMU is stuck.
QMP_TIMEOUT = 10.0


class VMError(Exception):
    """QEMU refused to start, or a guest could not be controlled."""


class QMPTimeout(VMError):
    """QEMU did not answer QMP within QMP_TIMEOUT: the guest's owner destroys it."""


@dataclass(frozen=True)
class DiskSpec:
    """A disk on the guest's SCSI bus: target 0, logical unit `lun` (1 and up:
    the guest adds a hot-plugged LUN 0 only by scanning the bus, which it
    never does; any other LUN it adds when told of it)."""

    path: Path
    serial: str
    lun: int
    readonly: bool = False
    format: str = "raw"
    # A host block device (raw), not an image file: QEMU's host_device driver,
    # opened exclusively (O_EXCL) so that the host cannot mount it while the
    # guest has it, nor another guest take it.
    host_device: bool = False


@dataclass(frozen=True)
class NicSpec:
    """A virtio-net device on a tap hbd opened (`fd`, handed to QEMU: the tap
    lives as long as QEMU holds it, and goes with it)."""

    tap: str
    mac: str
    fd: int


SHARED_FS_TAG = "hbdfs"
# QEMU's stderr, in the guest's run directory.
QEMU_LOG = "qemu.log"
# Every disk sits on one virtio-scsi bus: microvm has no PCI hotplug, but a
# SCSI bus takes and drops devices at any time, and it costs one of the
# machine's eight virtio-mmio transports for any number of disks.
SCSI_BUS = "scsi0.0"
SCSI_LUNS = 16383
# microvm has eight virtio-mmio transports: the agent's serial port, the
# balloon, the SCSI bus, the shared filesystem and at most four NICs.
MAX_NICS = 4


@dataclass
class VMSpec:
    run_dir: Path
    kernel: Path
    initrd: Path
    accel: str = "tcg"
    memory_mib: int = 256
    vcpus: int = 1
    # Disks the guest boots with; more come and go while it runs.
    disks: list[DiskSpec] = field(default_factory=list)
    # Every NIC the guest will ever have: taps of spare slots may be
    # missing, QEMU then makes them (and they go when it exits).
    nics: list[NicSpec] = field(default_factory=list)
    # A running virtiofsd's vhost-user socket: the guest's shared filesystem.
    # Guest RAM is then a shared memfd, which vhost-user needs.
    shared_fs_socket: Path | None = None
    cmdline: str = ""
    tcg_tb_size_mib: int = 24
    balloon: bool = True
    # Host CPUs QEMU (every vCPU thread) may run on; []: any.
    host_cpus: list[int] = field(default_factory=list)
    # Host NUMA nodes guest RAM is bound to; []: no binding.
    host_nodes: list[int] = field(default_factory=list)
    # Guest RAM in this file (a template's memfd, by its /proc/self/fd path),
    # mapped shared (a template writes it) or private copy-on-write (a clone).
    ram_file: str = ""
    ram_shared: bool = False
    # Start paused, waiting for a migration stream (a clone: MicroVM.restore).
    incoming: bool = False
    # More descriptors QEMU inherits (RAM file, migration stream).
    extra_fds: list[int] = field(default_factory=list)
    # The guest's name for QEMU, its cgroup and its logs; "": the run directory's.
    name: str = ""

    @property
    def guest_name(self) -> str:
        return qemuopts.guest_name(self.name or self.run_dir.name)


# QEMU's seccomp filter: every group of system calls it can deny.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass
class HostFds:
    """What hbd opened for one QEMU, by the descriptor numbers QEMU inherits:
    its sockets (listening, made by hbd), console and disks."""

    qmp: int
    agent: int
    console: int
    shared_fs: int = -1
    # Per disk serial: the fdsets of its image and backing chain.
    disk_sets: dict[str, list[int]] = field(default_factory=dict)
    disk_formats: dict[str, list[str]] = field(default_factory=dict)
    # (descriptor, fdset, opaque) for -add-fd.
    fdsets: list[tuple[int, int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class GuestFiles:
    """Where QEMU finds its kernel and initrd (in its jail, or the host's)."""

    kernel: str
    initrd: str


def host_tsc_khz() -> int | None:
    """The host TSC frequency; TCG's rdtsc runs at the host's rate.

    Telling the guest (tsc_early_khz) skips its TSC calibration, which under
    TCG costs a good part of a second.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return round(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def kernel_cmdline(accel: str, extra: str = "") -> str:
    # reboot=t + panic=-1 with QEMU's -no-reboot: a guest reboot or panic ends
    # the QEMU process (microvm has no ACPI to power off through).
    # scan=manual: the SCSI bus is never scanned; disks arrive as hotplug
    # events, which the guest handles without a scan.
    parts = ["console=ttyS0", "reboot=t", "panic=-1", "quiet", "scsi_mod.scan=manual"]
    if accel == "tcg":
        # Under TCG the APIC timer calibration and TSC calibration each spin
        # for a measurable share of the boot: the host tells both clocks.
        # QEMU's emulated APIC counts at 1 GHz (before its divider). With
        # the APIC timer an idle guest sleeps until its next timer; with
        # noapictimer (the PIT) it woke 37 times a second (build-kernel.sh).
        parts += ["hbd.apic_hz=1000000000", "tsc=reliable"]
        khz = host_tsc_khz()
        if khz:
            parts.append(f"tsc_early_khz={khz}")
    if extra:
        parts.append(extra)
    cmdline = " ".join(parts)
    # QEMU appends virtio_mmio.device=... to the command line; after a "--"
    # the kernel would hand those to init instead of the virtio-mmio driver.
    if " -- " in f" {cmdline} ":
        raise VMError("the guest kernel command line must not contain --")
    return cmdline


def memory_backend(spec: VMSpec) -> list[str]:
    """Guest RAM as an explicit backend when it must be one: a shared memfd for
    vhost-user (virtiofsd), a template's file, bound to host NUMA nodes when
    asked."""
    shared = spec.shared_fs_socket is not None
    if not shared and not spec.host_nodes and not spec.ram_file:
        return []
    backend: dict[str, object] = {
        "qom-type": "memory-backend-memfd" if shared else "memory-backend-ram",
        "id": "ram", "size": spec.memory_mib * 1024 * 1024}
    if spec.ram_file:
        if shared:
            raise VMError("a guest on a template's RAM cannot share it with virtiofsd")
        backend.update({"qom-type": "memory-backend-file", "mem-path": spec.ram_file,
                        "share": spec.ram_shared})
    elif shared:
        backend["share"] = True
    if spec.host_nodes:
        backend.update({"host-nodes": spec.host_nodes, "policy": "bind"})
    return ["-object", json.dumps(backend)]


def set_affinity(pid: int, host_cpus: list[int]) -> None:
    """Move every thread of a running process onto those host CPUs (all CPUs
    for []); threads it makes later inherit it."""
    cpus = set(host_cpus) or os.sched_getaffinity(0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def build_argv(qemu: str, spec: VMSpec, fds: HostFds, files: GuestFiles,
               sandbox: bool) -> list[str]:
    if spec.accel == "kvm":
        accel, cpu = "kvm", "host"
    else:
        # thread=multi only pays off with more than one vCPU (it adds ~0.1 s
        # to a one-vCPU boot); tb-size bounds the translation cache's RSS.
        threads = "multi" if spec.vcpus > 1 else "single"
        accel = f"tcg,thread={threads},tb-size={spec.tcg_tb_size_mib}"
        # Without AVX: glibc then picks its SSE routines, which TCG runs much
        # faster (busybox-static's `true` takes 40 ms instead of 75 ms here).
        # -cpu host trips an MSR assertion under TCG.
        cpu = TCG_CPU
    machine = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off"
    memory = memory_backend(spec)
    if memory:
        machine += ",memory-backend=ram"
    argv = [
        qemu,
        "-name", f"guest={spec.guest_name}",
        "-M", machine,
        *memory,
        "-accel", accel,
        "-cpu", cpu,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-no-reboot",
        "-display", "none",
        # Modern virtio-mmio: vhost-user (virtiofsd) refuses legacy devices.
        "-global", "virtio-mmio.force-legacy=false",
        "-kernel", files.kernel,
        "-initrd", files.initrd,
        "-append", kernel_cmdline(spec.accel, spec.cmdline),
    ]
    if sandbox:
        argv += ["-sandbox", SANDBOX]
    for fd, fdset, opaque in fds.fdsets:
        argv += ["-add-fd", f"fd={fd},set={fdset},opaque={qemuopts.escape(opaque)}"]
    argv += [
        "-chardev", f"file,id=console,path=/dev/fdset/{console_fdset(fds)}",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,fd={fds.qmp},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-device", "virtio-serial-device,max_ports=2",
        "-chardev", f"socket,id=agent,fd={fds.agent},server=on,wait=off",
        "-device", "virtserialport,chardev=agent,name=hbd.0",
        "-device", "virtio-scsi-device,id=scsi0",
    ]
    if spec.balloon:
        argv += ["-device", "virtio-balloon-device,free-page-reporting=on"]
    if len(spec.nics) > MAX_NICS:
        raise VMError(f"a microvm has room for at most {MAX_NICS} NICs")
    for disk in spec.disks:
        node = hot_disk_id(disk.serial)
        argv += [
            "-blockdev", json.dumps(blockdev(disk, fds.disk_sets[disk.serial],
                                             fds.disk_formats[disk.serial])),
            "-device", f"scsi-hd,bus={SCSI_BUS},drive={node},id={node},scsi-id=0,"
                       f"lun={disk.lun},serial={qemuopts.disk_serial(disk.serial)}",
        ]
    for i, nic in enumerate(spec.nics):
        argv += [
            "-netdev", f"tap,id=net{i},fd={nic.fd}",
            "-device", f"virtio-net-device,netdev=net{i},mac={qemuopts.mac_address(nic.mac)}",
        ]
    if spec.incoming:
        argv += ["-incoming", "defer"]
    if fds.shared_fs >= 0:
        argv += [
            "-chardev", f"socket,id=fs,fd={fds.shared_fs}",
            "-device", f"vhost-user-fs-device,chardev=fs,tag={SHARED_FS_TAG}",
        ]
    return argv


CONSOLE_OPAQUE = "console"


def console_fdset(fds: HostFds) -> int:
    return next(s for _, s, opaque in fds.fdsets if opaque == CONSOLE_OPAQUE)


def hot_fdset(lun: int, index: int) -> int:
    """The fdset of a disk added while the guest runs: by its LUN (unique in
    a guest), above the command line's (numbered from 1)."""
    return 1000 + lun * 8 + index


def hot_disk_id(serial: str) -> str:
    """QEMU's node and device id of a disk."""
    return f"hd-{qemuopts.disk_serial(serial)}"


def blockdev(disk: DiskSpec, fdsets: list[int], formats: list[str]) -> dict[str, Any]:
    """The block node of a disk, for -blockdev and QMP blockdev-add alike:
    its files are the descriptors hbd opened, in `fdsets`."""
    node = qemuopts.chain_node(fdsets, formats, disk.readonly, disk.host_device)
    node.update({"node-name": hot_disk_id(disk.serial), "discard": "unmap"})
    return node


class MicroVM:
    """A running (or exited) QEMU process and its sockets."""

    def __init__(self, run_dir: Path, pid: int,
                 on_exit: Callable[[], Awaitable[None]] | None = None) -> None:
        self.run_dir = run_dir
        self.pid = pid
        self._qmp_lock = asyncio.Lock()
        self._process = ProcessWatch(pid)
        # What goes with the process (its cgroup), once it has gone.
        self._cleanup: asyncio.Future[None] | None = None
        if on_exit is not None:
            self._cleanup = asyncio.ensure_future(self._after_exit(on_exit))

    async def _after_exit(self, on_exit: Callable[[], Awaitable[None]]) -> None:
        await self._process.wait()
        await on_exit()

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def running(self) -> bool:
        return self._process.running

    async def wait_exit(self) -> None:
        await self._process.wait()
        if self._cleanup is not None and not self._cleanup.cancelled():
            await asyncio.shield(self._cleanup)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self._process.kill(sig)

    async def destroy(self, timeout: float = 5.0) -> None:
        """Make sure QEMU is gone: SIGTERM, then SIGKILL after `timeout`."""
        await self._process.terminate(timeout)
        await self.wait_exit()

    async def qmp(self, command: str, **arguments: Any) -> Any:
        return (await self.qmp_batch([(command, arguments)]))[0]

    async def qmp_batch(self, commands: list[tuple[str, dict[str, Any]]],
                        fds: dict[int, int] | None = None) -> list[Any]:
        """Several commands on one QMP connection (each connection costs a
        round trip and QEMU's greeting). `fds`: a descriptor to pass (as
        SCM_RIGHTS) just before the command of that index. QEMU serves one
        QMP client at a time: calls queue here, not in its backlog."""
        async with self._qmp_lock:
            client = QMPClient(self.run_dir.name)
            try:
                async with asyncio.timeout(QMP_TIMEOUT):
                    await client.connect(str(self.qmp_socket))
            except TimeoutError as e:
                raise QMPTimeout(f"QMP of {self.run_dir.name}: no greeting within "
                                 f"{QMP_TIMEOUT:.0f}s") from e
            except Exception as e:
                raise VMError(f"cannot reach QMP of {self.run_dir.name}: {e}") from e
            results = []
            try:
                for index, (command, arguments) in enumerate(commands):
                    try:
                        if fds and index in fds:
                            client.send_fd_scm(fds[index])
                        async with asyncio.timeout(QMP_TIMEOUT):
                            results.append(await client.execute(command, arguments or None))
                    except TimeoutError as e:
                        raise QMPTimeout(f"QMP {command}: no answer within "
                                         f"{QMP_TIMEOUT:.0f}s") from e
                    except Exception as e:
                        raise VMError(f"QMP {command} failed: {e}") from e
            finally:
                with contextlib.suppress(Exception):
                    await client.disconnect()
            return results

    async def save(self, path: Path, timeout: float = 30.0) -> None:
        """Save the guest's device state to `path` and leave it stopped.

        RAM on a shared file is not part of it (x-ignore-shared): it stays in
        the file, where clones map it. QEMU 7.2 has no file: URI, and a
        jailed QEMU may neither open the file nor spawn a process (exec:):
        hbd opens it and passes it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            await self.qmp_batch([
                ("migrate-set-capabilities",
                 {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}),
                ("getfd", {"fdname": "state"}),
                ("migrate", {"uri": "fd:state"}),
            ], fds={1: fd})
        finally:
            os.close(fd)
        async with asyncio.timeout(timeout):
            while True:
                status = (await self.qmp("query-migrate")).get("status")
                if status == "completed":
                    return
                if status in ("failed", "cancelled"):
                    raise VMError(f"saving the guest {status}")
                await asyncio.sleep(0.01)

    async def restore(self, state_fd: int) -> None:
        """Load a saved guest into this QEMU (started with `incoming`, the
        same devices and the template's RAM file). `state_fd` is QEMU's own
        copy of a descriptor of the saved state (VMSpec.extra_fds). The guest
        runs once it is loaded, as the template did when it was saved; this
        returns as soon as the load has begun."""
        await self.qmp_batch([
            ("migrate-set-capabilities",
             {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}),
            ("migrate-incoming", {"uri": f"fd:{state_fd}"}),
        ])

    async def add_disk(self, disk: DiskSpec) -> None:
        """Attach a disk to the running guest: hbd opens its files and hands
        them over (add-fd), tagged with its serial for remove_disk. All on
        one QMP connection: QEMU drops the descriptors of fdsets nothing
        uses yet when a QMP client disconnects."""
        node = hot_disk_id(disk.serial)
        opened = qemuopts.open_disk(disk.path, disk.format, disk.readonly,
                                    exclusive=disk.host_device)
        sets = [hot_fdset(disk.lun, i) for i in range(len(opened.fds))]
        commands: list[tuple[str, dict[str, Any]]] = [
            ("add-fd", {"fdset-id": fdset, "opaque": disk.serial}) for fdset in sets]
        commands += [
            ("blockdev-add", blockdev(disk, sets, opened.formats)),
            ("device_add", {"driver": "scsi-hd", "id": node, "bus": SCSI_BUS, "drive": node,
                            "serial": disk.serial, "scsi-id": 0, "lun": disk.lun})]
        try:
            await self.qmp_batch(commands, fds=dict(enumerate(opened.fds)))
        except VMError:
            with contextlib.suppress(VMError):
                await self.qmp("blockdev-del", **{"node-name": node})
            with contextlib.suppress(VMError):
                await self._release_fds(disk.serial)
            raise
        finally:
            opened.close()  # QEMU has its own copies

    async def _release_fds(self, opaque: str) -> None:
        """Let QEMU close the descriptors hbd gave it for one disk."""
        sets = await self.qmp("query-fdsets")
        for fdset in sets:
            for fd in fdset.get("fds", []):
                if fd.get("opaque") == opaque:
                    with contextlib.suppress(VMError):
                        await self.qmp("remove-fd", **{"fdset-id": fdset["fdset-id"],
                                                       "fd": fd["fd"]})

    async def remove_disk(self, serial: str) -> None:
        """Detach a disk (the guest has unmounted it)."""
        node = hot_disk_id(serial)
        with contextlib.suppress(VMError):
            await self.qmp("device_del", id=node)
        # The device lets go of its drive once it is unrealized.
        for _ in range(50):
            try:
                await self.qmp("blockdev-del", **{"node-name": node})
                await self._release_fds(serial)
                return
            except VMError:
                await asyncio.sleep(0.02)
        raise VMError(f"disk {serial} is still in use by the guest")

    async def pause(self) -> None:
        await self.qmp("stop")

    async def resume(self) -> None:
        await self.qmp("cont")

    def close(self) -> None:
        """Stop watching the process (hbd is shutting down; QEMU keeps running)."""
        self._process.close()
        if self._cleanup is not None:
            self._cleanup.cancel()

    @classmethod
    def find(cls, run_dir: Path,
             on_exit: Callable[[], Awaitable[None]] | None = None) -> MicroVM | None:
        """Re-attach to the QEMU that owns `run_dir`, if it is still running."""
        try:
            pid = int((run_dir / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        # The pid may have been reused by an unrelated process: a guest's
        # QEMU writes its stderr to its run directory's qemu.log (one an
        # older hbd started names its console log in its argv).
        try:
            ours = os.readlink(f"/proc/{pid}/fd/2") == str(run_dir / QEMU_LOG)
        except OSError:
            ours = False
        argv = cmdline_of(pid)
        if argv is None or not (ours or f"file:{run_dir / 'console.log'}".encode() in argv):
            return None
        return cls(run_dir, pid, on_exit)


PR_SET_THP_DISABLE = 41


def _disable_transparent_hugepages() -> None:
    """QEMU asks for huge pages on guest RAM and its translation cache; a guest
    that touched 20 MiB then costs the host 2 MiB for every spot it touched.
    The setting is inherited by QEMU from hbd, whose own memory is small."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
        log.warning("cannot disable transparent huge pages: errno %d", ctypes.get_errno())


def reap_daemonize_intermediates(exclude: set[int]) -> None:
    """Reap the middle processes of QEMU's -daemonize double fork.

    The middle process exits at once and nobody waits for it; when the first
    process exits, it is handed to hbd (a child subreaper) as a zombie. Left
    alone, every container start would leave one behind. Only QEMU zombies
    that no asyncio launch is waiting for are taken, and sandboxed virtiofsd
    children whose parent was killed before them (nobody else waits for
    those; a parent's own ProcessWatch tolerates finding it reaped)."""
    me = os.getpid()
    for children in Path(f"/proc/{me}/task").glob("*/children"):
        try:
            pids = [int(p) for p in children.read_text().split()]
        except (OSError, ValueError):
            continue
        for pid in pids:
            if pid in exclude:
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            end = stat.rfind(")")
            comm, state = stat[stat.find("(") + 1:end], stat[end + 2:end + 3]
            if state == "Z" and comm.startswith(("qemu-system", "virtiofsd")):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)


@dataclass
class Confinement:
    """How each QEMU is confined (hbd.drivers.jail): all of it on a host
    where hbd runs as root; nothing when vm.jail is off (measurements)."""

    # The empty directory jails are mounted on; None: no jail.
    jail_root: Path | None = None
    user: jail.VmmUser | None = None
    cgroups: Cgroups | None = None
    seccomp: bool = False

    @classmethod
    def full(cls, exec_root: Path, cgroup_parent: str) -> Confinement:
        jail_root = exec_root / jail.JAIL_DIR_NAME
        jail_root.mkdir(mode=0o700, exist_ok=True)
        return cls(jail_root=jail_root, user=jail.vmm_user(),
                   cgroups=Cgroups.detect(cgroup_parent), seccomp=True)


class LaunchFiles:
    """The descriptors hbd opens for one launch; QEMU inherits them, hbd
    closes its own copies once QEMU runs (or failed to)."""

    def __init__(self) -> None:
        self.owned: list[int] = []
        self.sockets: list[socket.socket] = []

    def listen(self, path: Path) -> int:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sockets.append(sock)
        path.unlink(missing_ok=True)
        sock.bind(str(path))
        sock.listen(4)
        return sock.fileno()

    def connect(self, path: Path) -> int:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sockets.append(sock)
        sock.connect(str(path))
        return sock.fileno()

    def open(self, path: Path, flags: int) -> int:
        self.owned.append(os.open(path, flags | os.O_CLOEXEC, 0o600))
        return self.owned[-1]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for fd in self.owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sockets.clear()
        self.owned.clear()


def open_host_files(spec: VMSpec, files: LaunchFiles) -> HostFds:
    """Sockets, console and disks of a guest, opened by hbd."""
    run = spec.run_dir
    console = files.open(run / "console.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fds = HostFds(qmp=files.listen(run / "qmp.sock"), agent=files.listen(run / "agent.sock"),
                  console=console, fdsets=[(console, 1, CONSOLE_OPAQUE)])
    if spec.shared_fs_socket is not None:
        fds.shared_fs = files.connect(spec.shared_fs_socket)
    for disk in spec.disks:
        opened = qemuopts.open_disk(disk.path, disk.format, disk.readonly,
                                    exclusive=disk.host_device)
        files.owned += opened.fds
        sets = []
        for fd in opened.fds:
            sets.append(len(fds.fdsets) + 1)
            fds.fdsets.append((fd, sets[-1], disk.serial))
        fds.disk_sets[disk.serial] = sets
        fds.disk_formats[disk.serial] = opened.formats
    return fds


class QemuMicrovmDriver:
    def __init__(self, qemu: str = "qemu-system-x86_64",
                 confinement: Confinement | None = None) -> None:
        self.qemu = qemu
        self.confinement = confinement or Confinement()
        self._layout = jail.probe_layout()
        _disable_transparent_hugepages()

    def _binary(self) -> str:
        found = shutil.which(self.qemu)
        if found is None:
            raise VMError(f"{self.qemu} not found")
        return os.path.realpath(found)

    def _plan(self, spec: VMSpec, binary: str) -> jail.JailPlan | None:
        c = self.confinement
        if c.jail_root is None or c.user is None:
            return None
        return jail.jail_plan(jail.PlanInputs(
            root=c.jail_root, qemu=binary, kernel=spec.kernel, initrd=spec.initrd,
            user=c.user, kvm=spec.accel == "kvm", layout=self._layout,
            kvm_gid=jail.kvm_group()))

    async def launch(self, spec: VMSpec) -> MicroVM:
        run = spec.run_dir
        if len(str(run / "agent.sock")) > MAX_SOCKET_PATH:
            raise VMError(f"run directory {run} is too long for unix socket paths")
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        (run / "qemu.pid").unlink(missing_ok=True)
        name = spec.guest_name
        binary = self._binary()
        plan = self._plan(spec, binary)
        files = LaunchFiles()
        try:
            fds = open_host_files(spec, files)
            guest_files = GuestFiles(jail.KERNEL_IN_JAIL, jail.INITRD_IN_JAIL) if plan else \
                GuestFiles(str(spec.kernel), str(spec.initrd))
            argv = build_argv(binary, spec, fds, guest_files, self.confinement.seccomp)
            stderr_fd = files.open(run / QEMU_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            procs = self._cgroup(spec, name)
            keep = (*(fd for fd, _, _ in fds.fdsets), fds.qmp, fds.agent,
                    *((fds.shared_fs,) if fds.shared_fs >= 0 else ()),
                    *(nic.fd for nic in spec.nics), *spec.extra_fds)
            log.debug("launch %s", " ".join(argv))
            try:
                pid = jail.spawn(binary, argv, plan, keep, stderr_fd, tuple(spec.host_cpus),
                                 procs)
            except jail.SpawnError as e:
                await self._forget(name)
                raise VMError(f"cannot start QEMU in its jail: {e}") from e
            except BaseException:
                await self._forget(name)
                raise
        finally:
            files.close()
        # Sandboxed virtiofsd children orphaned by a killed parent, left to hbd.
        reap_daemonize_intermediates({pid})
        (run / "qemu.pid").write_text(f"{pid}\n")
        vm = MicroVM(run, pid, lambda: self._forget(name))
        await self._wait_ready(vm)
        return vm

    def _cgroup(self, spec: VMSpec, name: str) -> tuple[Path, ...]:
        groups = self.confinement.cgroups
        if groups is None:
            return ()
        try:
            return groups.create(name, qemu_limits(spec.memory_mib, spec.vcpus,
                                                   spec.tcg_tb_size_mib))
        except OSError as e:
            raise VMError(f"cannot make the cgroup of guest {name}: {e}") from e

    async def _forget(self, name: str) -> None:
        await remove_soon(self.confinement.cgroups, name)

    @staticmethod
    async def _wait_ready(vm: MicroVM) -> None:
        """QEMU is up once it answers QMP (its sockets listen from the start:
        hbd made them); an error before that is in its log."""
        ready = asyncio.ensure_future(vm.qmp("query-status"))
        died = asyncio.ensure_future(vm.wait_exit())
        try:
            done, _ = await asyncio.wait({ready, died}, return_when=asyncio.FIRST_COMPLETED)
            if ready in done and ready.exception() is None:
                return
        finally:
            died.cancel()
        await vm.destroy()
        text = _tail_text(vm.run_dir / QEMU_LOG)
        raise VMError(text or "QEMU exited at start")

    def find(self, run_dir: Path) -> MicroVM | None:
        """A guest an earlier hbd started (its cgroup is named after its run
        directory, as `launch` names a guest's)."""
        return MicroVM.find(run_dir, lambda: self._forget(run_dir.name))


def _tail_text(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
