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
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

log = logging.getLogger(__name__)

TCG_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt"
# Unix socket paths are limited by sun_path (108 bytes, one for the NUL).
MAX_SOCKET_PATH = 107


class VMError(Exception):
    """QEMU refused to start, or a guest could not be controlled."""


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    serial: str
    readonly: bool = False
    format: str = "raw"


@dataclass(frozen=True)
class NicSpec:
    tap: str
    mac: str


@dataclass(frozen=True)
class ShareSpec:
    """A host directory exported to the guest over virtio-9p."""

    path: Path
    tag: str
    readonly: bool = False


@dataclass
class VMSpec:
    run_dir: Path
    kernel: Path
    initrd: Path
    accel: str = "tcg"
    memory_mib: int = 256
    vcpus: int = 1
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    shares: list[ShareSpec] = field(default_factory=list)
    cmdline: str = ""
    tcg_tb_size_mib: int = 32
    balloon: bool = True


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
    parts = ["console=ttyS0", "reboot=t", "panic=-1", "quiet"]
    if accel == "tcg":
        # Under TCG the APIC timer calibration and TSC calibration each spin
        # for a measurable share of the boot.
        parts += ["noapictimer", "tsc=reliable"]
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
    argv = [
        qemu,
        "-name", run.name,
        "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off",
        "-accel", accel,
        "-cpu", cpu,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-no-reboot",
        "-display", "none",
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
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-device,rng=rng0",
    ]
    if spec.balloon:
        argv += ["-device", "virtio-balloon-device,free-page-reporting=on"]
    for i, disk in enumerate(spec.disks):
        ro = ",readonly=on" if disk.readonly else ""
        argv += [
            "-drive",
            f"id=disk{i},file={disk.path},format={disk.format},if=none,"
            f"cache=writeback,aio=threads,discard=unmap{ro}",
            "-device", f"virtio-blk-device,drive=disk{i},serial={disk.serial}",
        ]
    for i, nic in enumerate(spec.nics):
        argv += [
            "-netdev", f"tap,id=net{i},ifname={nic.tap},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net{i},mac={nic.mac}",
        ]
    for i, share in enumerate(spec.shares):
        ro = ",readonly=on" if share.readonly else ""
        argv += [
            "-fsdev", f"local,id=fs{i},path={share.path},security_model=passthrough{ro}",
            "-device", f"virtio-9p-device,fsdev=fs{i},mount_tag={share.tag}",
        ]
    return argv


class MicroVM:
    """A running (or exited) QEMU process and its sockets."""

    def __init__(self, run_dir: Path, pid: int) -> None:
        self.run_dir = run_dir
        self.pid = pid
        self._exited = asyncio.Event()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._exited.set()
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_pidfd)

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    def _on_pidfd(self) -> None:
        assert self._pidfd is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        # hbd is a child subreaper, so a QEMU it launched is its child once
        # -daemonize's intermediate parent exits: reap it. After an hbd
        # restart it is somebody else's child, and waitid says so.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        os.close(self._pidfd)
        self._pidfd = None
        self._exited.set()

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    async def wait_exit(self) -> None:
        await self._exited.wait()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def destroy(self, timeout: float = 5.0) -> None:
        """Make sure QEMU is gone: SIGTERM, then SIGKILL after `timeout`."""
        if not self.running:
            return
        self.kill(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait_exit(), timeout)
        except TimeoutError:
            self.kill(signal.SIGKILL)
            await self.wait_exit()

    async def qmp(self, command: str, **arguments: Any) -> Any:
        client = QMPClient(self.run_dir.name)
        try:
            await client.connect(str(self.qmp_socket))
        except Exception as e:  # qemu.qmp raises its own ConnectError hierarchy
            raise VMError(f"cannot reach QMP of {self.run_dir.name}: {e}") from e
        try:
            return await client.execute(command, arguments or None)
        except Exception as e:
            raise VMError(f"QMP {command} failed: {e}") from e
        finally:
            await client.disconnect()

    async def pause(self) -> None:
        await self.qmp("stop")

    async def resume(self) -> None:
        await self.qmp("cont")

    def close(self) -> None:
        """Stop watching the process (hbd is shutting down; QEMU keeps running)."""
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    @classmethod
    def find(cls, run_dir: Path) -> MicroVM | None:
        """Re-attach to the QEMU that owns `run_dir`, if it is still running."""
        try:
            pid = int((run_dir / "qemu.pid").read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            return None
        # The pid may have been reused by an unrelated process.
        if f"file:{run_dir / 'console.log'}".encode() not in argv:
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
    that no asyncio launch is waiting for are taken."""
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
            if state == "Z" and comm.startswith("qemu-system"):
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
        argv = build_argv(self.qemu, spec)
        log.debug("launch %s", " ".join(argv))
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
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
