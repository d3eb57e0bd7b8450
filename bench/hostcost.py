"""What containers cost the host: memory (PSS, RSS), CPU and wakeups of the
processes that make each one, for hbd and for dockerd's runtimes alike.

A container's processes:
  hbd    its QEMU and its virtiofsd (the process and the child it forks
         into its own namespaces)
  runc   the containerd-shim it runs under and everything below it
  runsc  the same: the shim, runsc's sandbox and gofer, and the container's
         processes (gVisor with --platform=ptrace runs them as ptraced stubs)
and, apart, the engine's daemon (hbd; dockerd and its containerd).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import DOCKER_CLI, run

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Memory:
    """Host memory of some processes, MiB."""

    rss: float = 0.0
    pss: float = 0.0
    processes: int = 0
    # PSS split by kind (smaps_rollup): anonymous, shmem (hbd: guest RAM on
    # its memfd), file-backed (binaries and libraries; the guest kernel file).
    anon: float = 0.0
    shmem: float = 0.0
    file: float = 0.0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss,
                      self.processes + other.processes, self.anon + other.anon,
                      self.shmem + other.shmem, self.file + other.file)


def process_memory(pids: list[int]) -> Memory:
    """RSS and PSS of `pids` (those still running), from smaps_rollup."""
    total = Memory()
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:]}
        total += Memory(fields["Rss"] / 1024, fields["Pss"] / 1024, 1,
                        fields.get("Pss_Anon", 0) / 1024, fields.get("Pss_Shmem", 0) / 1024,
                        fields.get("Pss_File", 0) / 1024)
    return total


def with_children(pid: int) -> list[int]:
    """`pid` and every process below it."""
    pids = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            for child in children.read_text().split():
                pids += with_children(int(child))
        except OSError:
            pass
    return pids


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[1])


@dataclass
class CpuSample:
    """CPU time (ns, as the scheduler counts it) and context switches (each
    a wakeup or a preemption) of some processes, thread by thread."""

    threads: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def cpu_ns(self) -> int:
        return sum(ns for ns, _ in self.threads.values())

    @property
    def switches(self) -> int:
        return sum(sw for _, sw in self.threads.values())

    def __add__(self, other: CpuSample) -> CpuSample:
        return CpuSample({**self.threads, **other.threads})

    def __sub__(self, earlier: CpuSample) -> CpuSample:
        """What happened between `earlier` and this sample: threads born in
        between count whole; threads that ended in between are lost (QEMU's
        and virtiofsd's idle worker threads, which did next to nothing)."""
        return CpuSample({tid: (ns - earlier.threads.get(tid, (0, 0))[0],
                                sw - earlier.threads.get(tid, (0, 0))[1])
                          for tid, (ns, sw) in self.threads.items()})


def cpu_sample(pids: list[int]) -> CpuSample:
    threads: dict[int, tuple[int, int]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    ns = int((task / "schedstat").read_text().split()[0])
                    status = (task / "status").read_text()
                    switches = sum(int(line.split()[1]) for line in status.splitlines()
                                   if "ctxt_switches:" in line)
                    threads[int(task.name)] = (ns, switches)
    return CpuSample(threads)


def hbd_guest_pids(qemu_pid: int) -> tuple[list[int], list[int]]:
    """([QEMU], [virtiofsd and its child]) of the hbd guest whose QEMU is `qemu_pid`."""
    # QEMU's stderr is its run directory's qemu.log (hbd.drivers.vm).
    run_dir = Path(os.readlink(f"/proc/{qemu_pid}/fd/2")).parent
    try:
        virtiofsd = int((run_dir / "virtiofsd.pid").read_text())
    except (OSError, ValueError):
        return [qemu_pid], []
    return [qemu_pid], with_children(virtiofsd)


def container_pid(env: dict[str, str], cid: str) -> int:
    return int(run([DOCKER_CLI, "inspect", "-f", "{{.State.Pid}}", cid], env=env).stdout)


def container_parts(engine: str, env: dict[str, str], cid: str) -> dict[str, list[int]]:
    """The host processes of one container, by part."""
    pid = container_pid(env, cid)
    if engine == "hbd":
        qemu, virtiofsd = hbd_guest_pids(pid)
        return {"QEMU": qemu, "virtiofsd": virtiofsd}
    # dockerd: the container's shim and everything under it (runsc's sandbox
    # and gofer are the shim's children; the container's process is below).
    shim = pid
    while True:
        parent = parent_pid(shim)
        if parent <= 1:
            break
        comm = Path(f"/proc/{parent}/comm").read_text().strip()
        if comm.startswith("containerd-shim"):
            shim = parent
            break
        if comm in ("containerd", "dockerd"):
            break
        shim = parent
    return {"shim and below": with_children(shim)}
