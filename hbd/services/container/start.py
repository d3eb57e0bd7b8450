"""Starting a container: its sandbox spec (guest, disks, mounts, network,
the files hbd writes into it), the boot, the main process; and maintenance
boots, which give cp, export, diff and commit a stopped container's files."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from hbd.config import Config
from hbd.drivers.agent import AgentError, FileSpec, ProcessSpec, SetupSpec
from hbd.drivers.sandbox import BootError, Sandbox, SandboxDriver, SandboxSpec
from hbd.drivers.vm import DiskSpec, VMSpec
from hbd.errors import Conflict, HbdError, InvalidParameter, NotModified, SystemError_
from hbd.services.container import config as cc
from hbd.services.container import network as cn
from hbd.services.container.logs import JsonFileWriter
from hbd.services.container.model import Container, ContainerState, Run
from hbd.services.container.monitor import POWEROFF_TIMEOUT, Monitor
from hbd.services.container.mounts import guest_mounts, release_host_resources
from hbd.services.container.restart import RestartManager
from hbd.services.container.stats import cpu_quota
from hbd.services.container.store import ContainerStore
from hbd.services.image.store import ImageStore
from hbd.services.network.dns import host_resolvers
from hbd.services.network.model import RunNetworking
from hbd.services.network.service import NetworkService
from hbd.services.timefmt import rfc3339_nano
from hbd.services.volume.service import VolumeService
from hbd.tasks import spawn

MIN_GUEST_MIB = 64
# What the guest kernel keeps of its RAM (code, memmap, reserves) at these sizes.
GUEST_KERNEL_MIB = 14


def guest_memory_mib(limit: int) -> int:
    """Guest RAM for a memory limit (bytes), so that MemTotal inside is about the limit."""
    return max(MIN_GUEST_MIB, math.ceil(limit / (1024 * 1024)) + GUEST_KERNEL_MIB)


@dataclass
class Starter:
    config: Config
    store: ContainerStore
    images: ImageStore
    networks: NetworkService
    volumes: VolumeService
    sandboxes: SandboxDriver
    accel: str
    monitor: Monitor
    restarts: RestartManager

    async def start(self, ref: str) -> None:
        c = self.store.get(ref)
        async with c.lock:
            if c.state.status == "removing":
                raise Conflict(f"container {c.id[:12]} is marked for removal and cannot be "
                               "started")
            if c.state.running and not c.state.restarting:
                raise NotModified("container already started")
            self.restarts.cancel(c)
            c.manually_stopped = False
            try:
                await self.start_locked(c)
            except HbdError as e:
                if not c.state.error:
                    c.state.error = e.message
                    self.store.save(c)
                # dockerd removes an --rm container whose start failed, which is
                # what `docker run --rm` waits for.
                if c.host_config.get("AutoRemove"):
                    spawn(self.monitor.auto_remove(c))
                raise

    async def start_locked(self, c: Container) -> None:
        """Boot the container's guest and run its main process; the caller holds c.lock."""
        disk = await self._image_disk(c)
        await self._volumes_released(c)
        self._claim_mounts(c)
        network = await self.networks.connect_run(
            c.id, c.networks, [c.name.lstrip("/"), c.id[:12]],
            cn.published_ports(c.config, c.host_config))
        try:
            spec = self._sandbox_spec(c, disk, network)
            sandbox = await self.sandboxes.boot(spec)
        except BootError as e:
            await self._undo_run_resources(c)
            self._start_failed(c, f"failed to boot guest: {e}", 128)
            raise SystemError_(f"failed to create task for container: {e}") from e
        except BaseException:
            await self._undo_run_resources(c)
            raise
        writer = JsonFileWriter(self.store.log_path(c))
        run = Run(c, sandbox, writer)
        run.memory_mib = spec.vm.memory_mib
        try:
            await sandbox.start(self._main_process(c), run)
        except AgentError as e:
            writer.close()
            await sandbox.destroy()
            await self._undo_run_resources(c)
            self._main_process_failed(c, e)
        c.run = run
        c.run_network = network
        c.state = ContainerState(
            status="running", running=True, pid=sandbox.pid, started_at=rfc3339_nano(),
        )
        self.monitor.begin_health(c, run)
        self.store.save(c)
        c.run_started.set()
        self.store.event(c, "start")
        self.monitor.watch(c, run)

    async def _image_disk(self, c: Container) -> Path:
        if c.teardown is not None:
            await c.teardown  # the last run's guest still has the disks
        img = self.images.images.get(c.image_id)
        if img is None:
            raise SystemError_(f"image {c.image_id} of container {c.id[:12]} is gone")
        return await self.images.ensure_disk(img)

    async def _volumes_released(self, c: Container) -> None:
        """A container that just exited may still be syncing a volume we need:
        wait for its guest to be gone rather than refuse the volume."""
        for mp in c.mounts:
            holder_id = self.volumes.attached.get(mp.source) if mp.type == "volume" else None
            holder = self.store.containers.get(holder_id) if holder_id else None
            if holder is not None and holder is not c and not holder.state.running and \
                    holder.teardown is not None:
                await holder.teardown

    def _claim_mounts(self, c: Container) -> None:
        """Attach the container's volumes to it; every bind source must exist."""
        for mp in c.mounts:
            if mp.type == "volume":
                try:
                    self.volumes.attach(mp.source, c.id)
                except HbdError:
                    self.volumes.detach_all(c.id)
                    raise
            elif mp.type == "bind" and not os.path.exists(mp.source):
                self.volumes.detach_all(c.id)
                raise InvalidParameter(f"invalid mount config for type \"bind\": bind source "
                                       f"path does not exist: {mp.source}")

    async def _undo_run_resources(self, c: Container) -> None:
        """A start that failed gives back its network and host resources."""
        await self.networks.disconnect_run(c.id)
        self._release_host_resources(c)

    def _release_host_resources(self, c: Container) -> None:
        release_host_resources(self.volumes, c.id, self.store.file_binds(c))

    def _main_process_failed(self, c: Container, e: AgentError) -> NoReturn:
        """Record why the main process did not start, and raise dockerd's error for it."""
        message = ("failed to create task for container: unable to start container "
                   f"process: {e.message}: unknown")
        exit_code = 126 if "permission denied" in e.message or \
            "is a directory" in e.message else 127
        if e.kind in ("exec", "user"):
            self._start_failed(c, message, exit_code if e.kind == "exec" else 128)
            raise InvalidParameter(message) from e
        self._start_failed(c, message, 128)
        raise SystemError_(message) from e

    def _start_failed(self, c: Container, message: str, exit_code: int) -> None:
        c.state.error = message
        c.state.exit_code = exit_code
        self.store.save(c)

    def _sandbox_spec(self, c: Container, image_disk: Path,
                      network: RunNetworking) -> SandboxSpec:
        hc = c.host_config
        guest = guest_mounts(c.mounts, self.volumes, self.store.file_binds(c))
        memory_mib = self.config.vm.memory_mib
        if hc.get("Memory"):
            # The guest is the limit: `free` inside shows it (the guest
            # kernel keeps GUEST_KERNEL_MIB for itself), and the cgroup
            # enforces it exactly.
            memory_mib = guest_memory_mib(int(hc["Memory"]))
        vcpus = self.config.vm.vcpus
        if hc.get("NanoCpus"):
            vcpus = max(1, math.ceil(hc["NanoCpus"] / 1e9))
        vm = VMSpec(
            run_dir=self.store.run_dir(c),
            kernel=self.config.vm.kernel_path(),
            initrd=self.config.vm.initrd_path(),
            accel=self.accel,
            memory_mib=memory_mib,
            vcpus=vcpus,
            disks=[
                DiskSpec(image_disk, "image", readonly=True),
                DiskSpec(self.store.dir(c) / "scratch.qcow2", "scratch", format="qcow2"),
                *guest.disks,
            ],
            nics=network.nics,
            shares=guest.shares,
            tcg_tb_size_mib=self.config.vm.tcg_tb_size_mib,
            cmdline="hbd.trace" if self.config.vm.guest_trace else "",
        )
        setup = SetupSpec(
            hostname=c.hostname,
            domainname=str(c.config.get("Domainname") or ""),
            readonly_rootfs=bool(hc.get("ReadonlyRootfs")),
            files=self._guest_files(c, network),
            mounts=guest.mounts,
            interfaces=network.interfaces,
            routes=network.routes,
            sysctls={str(k): str(v) for k, v in (hc.get("Sysctls") or {}).items()},
            memory_limit=int(hc.get("Memory") or 0),
            shm_size=int(hc.get("ShmSize") or cc.DEFAULT_SHM_SIZE),
            pids_limit=int(hc.get("PidsLimit") or -1) if (hc.get("PidsLimit") or 0) > 0 else -1,
        )
        setup.cpu_quota, setup.cpu_period = cpu_quota(hc)
        return SandboxSpec(vm=vm, setup=setup)

    @staticmethod
    def _guest_files(c: Container, network: RunNetworking) -> list[FileSpec]:
        """/etc/hostname, /etc/hosts and /etc/resolv.conf, as hbd writes them."""
        hc = c.host_config
        files = [
            FileSpec("/etc/hostname", f"{c.hostname}\n".encode()),
            FileSpec("/etc/hosts", cn.hosts_file(c.hostname, network,
                                                 list(hc.get("ExtraHosts") or []))),
            FileSpec("/etc/resolv.conf", cn.resolv_conf(network, hc, host_resolvers())),
        ]
        # A file the user mounts there himself is his, as in dockerd.
        mounted = {mp.destination for mp in c.mounts}
        return [f for f in files if f.path not in mounted]

    @staticmethod
    def _main_process(c: Container) -> ProcessSpec:
        console = c.host_config.get("ConsoleSize") or [0, 0]
        return ProcessSpec(
            proc=1,
            main=True,
            args=[c.path, *c.args],
            env=cc.process_env(c.config, c.hostname),
            cwd=str(c.config.get("WorkingDir") or "/"),
            user=str(c.config.get("User") or ""),
            tty=c.tty,
            stdin=bool(c.config.get("OpenStdin")),
            height=int(console[0]),
            width=int(console[1]),
        )

    # -- maintenance boots -----------------------------------------------------------

    async def boot_maintenance(self, c: Container) -> Sandbox:
        """Boot a stopped container's guest with its disks and mounts but no
        network and no main process, for work on its files (cp, export,
        diff, commit). The caller holds c.lock and calls end_maintenance after."""
        disk = await self._image_disk(c)
        for mp in c.mounts:
            if mp.type == "volume":
                self.volumes.attach(mp.source, c.id)
        try:
            spec = self._sandbox_spec(c, disk, RunNetworking([], [], [], "", {}, []))
            spec.vm.memory_mib = MIN_GUEST_MIB * 2
            spec.vm.run_dir = self.store.maintenance_dir(c)
            sandbox = await self.sandboxes.boot(spec)
        except BootError as e:
            self._release_host_resources(c)
            raise SystemError_(f"cannot reach the files of {c.id[:12]}: {e}") from e
        except BaseException:
            self._release_host_resources(c)
            raise
        return sandbox

    async def end_maintenance(self, c: Container, sandbox: Sandbox) -> None:
        try:
            await sandbox.poweroff(POWEROFF_TIMEOUT)
        finally:
            self._release_host_resources(c)
            await asyncio.to_thread(shutil.rmtree, self.store.maintenance_dir(c), True)
