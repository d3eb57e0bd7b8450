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
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

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


@dataclass(frozen=True)
class NicSpec:
    """A virtio-net device on a tap hbd opened (`fd`, handed to QEMU: the tap
    lives as long as QEMU holds it, and goes with it)."""

    tap: str
    mac: str
    fd: int


SHARED_FS_TAG = "hbdfs"
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


def pinned(argv: list[str], host_cpus: list[int]) -> list[str]:
    """`argv` run on those host CPUs only, from its first instruction (every
    thread QEMU makes inherits the affinity)."""
    if not host_cpus:
        return argv
    return ["taskset", "-c", ",".join(str(c) for c in host_cpus), *argv]


def set_affinity(pid: int, host_cpus: list[int]) -> None:
    """Move every thread of a running process onto those host CPUs (all CPUs
    for []); threads it makes later inherit it."""
    cpus = set(host_cpus) or os.sched_getaffinity(0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def build_argv(qemu: str, spec: VMSpec) -> list[str]:
    run = spec.run_dir
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
        "-name", run.name,
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
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", kernel_cmdline(spec.accel, spec.cmdline),
        "-serial", f"file:{run / 'console.log'}",
        "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(run / "qemu.pid"),
        "-daemonize",
        "-device", "virtio-serial-device,max_ports=2",
        "-chardev", f"socket,id=agent,path={run / 'agent.sock'},server=on,wait=off",
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
            # JSON: a path with a comma in it cannot break the option apart.
            "-blockdev", json.dumps(blockdev(disk)),
            "-device", f"scsi-hd,bus={SCSI_BUS},drive={node},id={node},scsi-id=0,"
                       f"lun={disk.lun},serial={disk.serial}",
        ]
    for i, nic in enumerate(spec.nics):
        argv += [
            "-netdev", f"tap,id=net{i},fd={nic.fd}",
            "-device", f"virtio-net-device,netdev=net{i},mac={nic.mac}",
        ]
    if spec.incoming:
        argv += ["-incoming", "defer"]
    if spec.shared_fs_socket is not None:
        argv += [
            "-chardev", f"socket,id=fs,path={spec.shared_fs_socket}",
            "-device", f"vhost-user-fs-device,chardev=fs,tag={SHARED_FS_TAG}",
        ]
    return argv


def hot_disk_id(serial: str) -> str:
    """QEMU's node and device id of a disk."""
    return f"hd-{serial}"


def blockdev(disk: DiskSpec) -> dict[str, Any]:
    """The block node of a disk, for -blockdev and QMP blockdev-add alike."""
    return {"driver": disk.format, "node-name": hot_disk_id(disk.serial),
            "read-only": disk.readonly, "discard": "unmap",
            "file": {"driver": "file", "filename": str(disk.path), "aio": "threads"}}


class MicroVM:
    """A running (or exited) QEMU process and its sockets."""

    def __init__(self, run_dir: Path, pid: int) -> None:
        self.run_dir = run_dir
        self.pid = pid
        self._qmp_lock = asyncio.Lock()
        self._process = ProcessWatch(pid)

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

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self._process.kill(sig)

    async def destroy(self, timeout: float = 5.0) -> None:
        """Make sure QEMU is gone: SIGTERM, then SIGKILL after `timeout`."""
        await self._process.terminate(timeout)

    async def qmp(self, command: str, **arguments: Any) -> Any:
        # QEMU serves one QMP client at a time; calls queue here, not in its backlog.
        async with self._qmp_lock:
            client = QMPClient(self.run_dir.name)
            try:
                async with asyncio.timeout(QMP_TIMEOUT):
                    await client.connect(str(self.qmp_socket))
            except TimeoutError as e:
                raise QMPTimeout(f"QMP of {self.run_dir.name}: no greeting within "
                                 f"{QMP_TIMEOUT:.0f}s") from e
            except Exception as e:  # qemu.qmp raises its own ConnectError hierarchy
                raise VMError(f"cannot reach QMP of {self.run_dir.name}: {e}") from e
            try:
                async with asyncio.timeout(QMP_TIMEOUT):
                    return await client.execute(command, arguments or None)
            except TimeoutError as e:
                raise QMPTimeout(f"QMP {command}: no answer within {QMP_TIMEOUT:.0f}s") from e
            except Exception as e:
                raise VMError(f"QMP {command} failed: {e}") from e
            finally:
                await client.disconnect()

    async def qmp_batch(self, commands: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Several commands on one QMP connection (each connection costs a
        round trip and QEMU's greeting)."""
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
                for command, arguments in commands:
                    try:
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
        the file, where clones map it. QEMU 7.2 has no file: URI; exec: is
        run once per template."""
        await self.qmp_batch([
            ("migrate-set-capabilities",
             {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}),
            ("migrate", {"uri": f"exec:cat > {shlex.quote(str(path))}"}),
        ])
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
        """Attach a disk to the running guest."""
        node = hot_disk_id(disk.serial)
        await self.qmp("blockdev-add", **blockdev(disk))
        try:
            await self.qmp("device_add", driver="scsi-hd", id=node, bus=SCSI_BUS, drive=node,
                           serial=disk.serial, **{"scsi-id": 0, "lun": disk.lun})
        except VMError:
            with contextlib.suppress(VMError):
                await self.qmp("blockdev-del", **{"node-name": node})
            raise

    async def remove_disk(self, serial: str) -> None:
        """Detach a disk (the guest has unmounted it)."""
        node = hot_disk_id(serial)
        with contextlib.suppress(VMError):
            await self.qmp("device_del", id=node)
        # The device lets go of its drive once it is unrealized.
        for _ in range(50):
            try:
                await self.qmp("blockdev-del", **{"node-name": node})
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

    @classmethod
    def find(cls, run_dir: Path) -> MicroVM | None:
        """Re-attach to the QEMU that owns `run_dir`, if it is still running."""
        try:
            pid = int((run_dir / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        argv = cmdline_of(pid)
        # The pid may have been reused by an unrelated process.
        if argv is None or f"file:{run_dir / 'console.log'}".encode() not in argv:
            return None
        return cls(run_dir, pid)


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


class QemuMicrovmDriver:
    def __init__(self, qemu: str = "qemu-system-x86_64") -> None:
        self.qemu = qemu
        # First processes of launches under way: asyncio waits for those.
        self._launching: set[int] = set()
        _disable_transparent_hugepages()

    async def launch(self, spec: VMSpec) -> MicroVM:
        run = spec.run_dir
        if len(str(run / "agent.sock")) > MAX_SOCKET_PATH:
            raise VMError(f"run directory {run} is too long for unix socket paths")
        run.mkdir(parents=True, exist_ok=True)
        for name in ("agent.sock", "qmp.sock", "qemu.pid"):
            (run / name).unlink(missing_ok=True)
        argv = pinned(build_argv(self.qemu, spec), spec.host_cpus)
        log.debug("launch %s", " ".join(argv))
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            pass_fds=[nic.fd for nic in spec.nics] + spec.extra_fds,
        )
        # With -daemonize the first process exits once the guest is set up
        # (sockets listening); its status and stderr tell whether QEMU started.
        self._launching.add(proc.pid)
        try:
            _, stderr = await proc.communicate()
        finally:
            self._launching.discard(proc.pid)
        reap_daemonize_intermediates(self._launching)
        if proc.returncode != 0:
            message = stderr.decode(errors="replace").strip().splitlines()
            raise VMError(message[-1] if message else f"qemu exited {proc.returncode}")
        pid = int((run / "qemu.pid").read_text().strip())
        return MicroVM(run, pid)
