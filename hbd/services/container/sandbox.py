"""A sandbox: one guest and the containers in it, as gVisor's runsc separates
sandbox and container.

`docker run` makes a sandbox with one container, its owner. Containers that
share the owner's network, pid or ipc namespaces (`--network/--pid/--ipc
container:X`, a Kubernetes pod) join its sandbox while it runs. A sandbox
lives until its last container has gone.

microvm has no hotplug, so what a running sandbox gains later comes through
what it was given at boot: NIC slots (spare taps and virtio-net devices,
handed to a container's network namespace on demand), a virtio-scsi bus
(disks of containers that join), and a shared filesystem (virtiofs: volumes
and bind mounts of any container).

What a sandbox holds is persisted (the state store's `sandboxes`), so that
an hbd restart re-attaches every container in it.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hbd.drivers.agent import (
    ExitStatus,
    FileSpec,
    ProcessOutput,
    ProcessSpec,
    ResourceUpdate,
    Started,
)
from hbd.drivers.guest import Guest
from hbd.drivers.vm import SCSI_LUNS
from hbd.errors import Conflict


@dataclass
class Slot:
    """A NIC the guest booted with, and the network namespace using it."""

    index: int
    tap: str
    boot_mac: str
    netns: str = ""      # "" while spare
    ifname: str = ""     # its name in that namespace (eth0, eth1…)
    network: str = ""    # the network whose bridge its tap is plugged into
    gateway: str = ""
    internal: bool = False
    gateway6: str = ""   # "" on a network without IPv6
    # The host network namespace its tap is in while plugged ("": the
    # host's); kept by release() until the tap is back in the host's.
    namespace: str = ""

    @property
    def name(self) -> str:
        """Its name in the guest's own namespace while spare."""
        return f"slot{self.index}"

    def release(self) -> None:
        self.netns = self.ifname = self.network = self.gateway = self.gateway6 = ""
        self.internal = False


@dataclass
class Member:
    """A container in a sandbox."""

    container_id: str
    guest_id: str        # its id inside the guest (PROTOCOL §3)
    netns: str           # the guest network namespace it lives in
    owns_netns: bool     # made that namespace (False: --network container:X)
    main_proc: int = 0
    disks: list[str] = field(default_factory=list)    # serials it uses
    shares: list[str] = field(default_factory=list)   # shared-filesystem entries it holds


@dataclass
class SandboxRecord:
    id: str
    owner: str
    shared_fs: bool
    members: dict[str, Member] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    # Disks attached to the guest: serial -> SCSI LUN.
    disks: dict[str, int] = field(default_factory=dict)
    image_serials: dict[str, str] = field(default_factory=dict)  # image id -> serial
    # Host block devices attached (raw devices, direct volumes): their
    # number (major:minor) -> serial, one disk per device however many
    # containers use it; and the serials attached read-only.
    devices: dict[str, str] = field(default_factory=dict)
    readonly_disks: list[str] = field(default_factory=list)
    counter: int = 0
    next_proc: int = 1
    # The template the guest was cloned from ("" for a booted guest).
    template: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, rec: dict[str, Any]) -> SandboxRecord:
        return cls(
            id=rec["id"], owner=rec["owner"], shared_fs=bool(rec.get("shared_fs")),
            members={k: Member(**v) for k, v in rec.get("members", {}).items()},
            slots=[Slot(**s) for s in rec.get("slots", [])],
            disks=dict(rec.get("disks", {})),
            image_serials=dict(rec.get("image_serials", {})),
            devices=dict(rec.get("devices", {})),
            readonly_disks=list(rec.get("readonly_disks", [])),
            counter=int(rec.get("counter", 0)), next_proc=int(rec.get("next_proc", 1)),
            template=str(rec.get("template", "")),
        )

    def new_name(self, prefix: str) -> str:
        """A name unique in this guest: container ids, netns ids, disk serials, shares."""
        self.counter += 1
        return f"{prefix}{self.counter}"

    def take_proc(self) -> int:
        proc = self.next_proc
        self.next_proc += 1
        return proc

    def netns_slots(self, netns: str) -> list[Slot]:
        return sorted((s for s in self.slots if s.netns == netns), key=lambda s: s.ifname)

    def spare_slots(self) -> list[Slot]:
        return [s for s in self.slots if not s.netns]

    def disk_users(self, serial: str) -> list[str]:
        return [cid for cid, m in self.members.items() if serial in m.disks]

    def forget_disk(self, serial: str) -> None:
        """A disk detached from the guest."""
        self.disks.pop(serial, None)
        self.devices = {n: s for n, s in self.devices.items() if s != serial}
        if serial in self.readonly_disks:
            self.readonly_disks.remove(serial)

    def free_lun(self) -> int:
        taken = set(self.disks.values())
        for lun in range(1, SCSI_LUNS + 1):
            if lun not in taken:
                return lun
        raise Conflict(f"the guest holds {SCSI_LUNS} disks, its most")


class Sandbox:
    """A running guest and what it holds. Changes to it (members, disks,
    slots) are made under `lock`."""

    def __init__(self, record: SandboxRecord, run_dir: Path, guest: Guest) -> None:
        self.record = record
        self.run_dir = run_dir
        self.guest = guest
        self.lock = asyncio.Lock()
        # Set when the guest has powered off (or been killed) for good.
        self.gone = asyncio.Event()

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def export_dir(self) -> Path:
        """The host directory its virtiofsd exports."""
        return self.run_dir / "fs"

    def member(self, container_id: str) -> Member | None:
        return self.record.members.get(container_id)


class ContainerInGuest:
    """One container's calls into its sandbox's guest: every request names
    the container by its id in the guest, every process gets an id unique in
    the guest."""

    def __init__(self, sandbox: Sandbox, member: Member) -> None:
        self.sandbox = sandbox
        self.member = member

    @property
    def guest_id(self) -> str:
        return self.member.guest_id

    @property
    def main_proc(self) -> int:
        return self.member.main_proc

    @property
    def pid(self) -> int:
        return self.sandbox.guest.pid

    def take_proc(self) -> int:
        return self.sandbox.record.take_proc()

    @property
    def features(self) -> frozenset[str]:
        """What the guest's init can do beyond the protocol's basics."""
        return self.sandbox.guest.features

    def process(self, spec: ProcessSpec) -> ProcessSpec:
        spec.container = self.member.guest_id
        return spec

    async def start(self, spec: ProcessSpec, output: ProcessOutput) -> Started:
        return await self.sandbox.guest.start(self.process(spec), output)

    def attach_output(self, proc: int, output: ProcessOutput) -> None:
        self.sandbox.guest.attach_output(proc, output)

    def output_from(self, proc: int) -> int:
        return self.sandbox.guest.output_from(proc)

    async def write_stdin(self, proc: int, data: bytes) -> None:
        await self.sandbox.guest.write_stdin(proc, data)

    async def close_stdin(self, proc: int) -> None:
        await self.sandbox.guest.close_stdin(proc)

    async def signal(self, proc: int, signum: int) -> None:
        await self.sandbox.guest.signal(proc, signum)

    async def resize(self, proc: int, height: int, width: int) -> None:
        await self.sandbox.guest.resize(proc, height, width)

    async def release(self, proc: int) -> None:
        await self.sandbox.guest.release(proc)

    async def stats(self) -> dict[str, Any]:
        return await self.sandbox.guest.stats(self.member.guest_id)

    async def ps(self) -> dict[str, Any]:
        return await self.sandbox.guest.ps(self.member.guest_id)

    async def update(self, resources: ResourceUpdate) -> None:
        await self.sandbox.guest.update(self.member.guest_id, resources)

    async def freeze(self, frozen: bool) -> None:
        await self.sandbox.guest.freeze(self.member.guest_id, frozen)

    async def rewrite_files(self, files: list[FileSpec]) -> None:
        await self.sandbox.guest.rewrite_files(self.member.guest_id, files)

    async def kill(self, sync_timeout: float = 0.0) -> None:
        """Force the container down: the whole guest when it is its only
        container, else its processes (its main one's exit takes the rest,
        and its leaving the sandbox syncs its disks).

        With `sync_timeout`, a guest of its own is asked to power off instead
        of being killed outright: its init SIGKILLs every process, unmounts
        and syncs its filesystems, then powers off, so that what the container
        just wrote to a volume reaches the host (`rm -f` right after a
        write). A guest that does not manage it within the time is killed."""
        if self.alone:
            if sync_timeout > 0:
                await self.sandbox.guest.poweroff(sync_timeout)
            else:
                await self.sandbox.guest.kill()
        else:
            await self.sandbox.guest.signal(self.member.main_proc, 9)

    @property
    def alone(self) -> bool:
        """The only container of its sandbox (the guest is all its own)."""
        return len(self.sandbox.record.members) == 1

    async def set_memory(self, mib: int) -> None:
        await self.sandbox.guest.set_memory(mib)

    def set_host_cpus(self, host_cpus: list[int]) -> None:
        self.sandbox.guest.set_host_cpus(host_cpus)

    @property
    def failure(self) -> str:
        """Why hbd destroyed the guest ("" if it did not)."""
        return self.sandbox.guest.failure

    async def wait_gone(self) -> None:
        """Until the guest itself is gone (killed, crashed, powered off)."""
        await self.sandbox.guest.wait_exit()

    def main_exit_status(self) -> ExitStatus | None:
        """After a re-attach: how the main process ended while nobody listened."""
        for p in self.sandbox.guest.processes:
            if p.proc == self.member.main_proc and not p.running:
                return ExitStatus(p.exit_code, p.signal, p.oom_killed)
        return None
