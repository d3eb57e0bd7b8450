"""Container lifecycle with Docker's semantics; no HTTP here.

A container is a record in the state store plus, while it runs, a `Run`: one
boot of its sandbox (guest), the json-file log writer and the streams of
clients attached to it. The guest's lifetime is the container's running
lifetime: start boots it, the main process's exit powers it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hbd.config import Config
from hbd.drivers import hostmount
from hbd.drivers.agent import (
    AgentError,
    ExitStatus,
    FileSpec,
    ProcessSpec,
    ResourceUpdate,
    SetupSpec,
)
from hbd.drivers.sandbox import BootError, Sandbox, SandboxDriver, SandboxSpec
from hbd.drivers.vm import DiskSpec, VMError, VMSpec
from hbd.errors import (
    Conflict,
    Forbidden,
    HbdError,
    InvalidParameter,
    NotFound,
    NotModified,
    SystemError_,
    no_such_container,
    no_such_image,
)
from hbd.events import EventBus
from hbd.services.container import config as cc
from hbd.services.container import network as cn
from hbd.services.container.filters import ContainerFilter, PruneFilter
from hbd.services.container.health import HealthMonitor, HealthState
from hbd.services.container.logs import JsonFileWriter, LogQuery, LogRecord, query_logs
from hbd.services.container.mounts import MountPoint, guest_mounts, resolve_mounts
from hbd.services.container.network import run_from_record, run_record
from hbd.services.container.scratch import ScratchDisks
from hbd.services.container.stats import cpu_quota, top_view
from hbd.services.image.reference import parse_reference
from hbd.services.image.store import ImageStore
from hbd.services.network.dns import host_resolvers
from hbd.services.network.service import NetworkService, RunNetworking
from hbd.services.timefmt import ZERO_TIME, human_duration, parse_rfc3339, rfc3339_nano
from hbd.services.volume.service import VolumeService
from hbd.store import StateStore
from hbd.tasks import cancel_all, spawn

log = logging.getLogger(__name__)

# How long a guest may take to sync and power off before it is killed.
POWEROFF_TIMEOUT = 10.0
# Exit code reported when the guest vanished without reporting its process's
# exit (QEMU killed): what dockerd reports for a SIGKILLed task.
VANISHED_EXIT_CODE = 137
MIN_GUEST_MIB = 64
# What the guest kernel keeps of its RAM (code, memmap, reserves) at these sizes.
GUEST_KERNEL_MIB = 14


def guest_memory_mib(limit: int) -> int:
    """Guest RAM for a memory limit (bytes), so that MemTotal inside is about the limit."""
    return max(MIN_GUEST_MIB, math.ceil(limit / (1024 * 1024)) + GUEST_KERNEL_MIB)
DEFAULT_STOP_TIMEOUT = 10
RESTART_FIRST_DELAY = 0.1
RESTART_MAX_DELAY = 60.0
RESTART_RESET_AFTER = 10.0


@dataclass
class ContainerState:
    status: str = "created"
    running: bool = False
    paused: bool = False
    restarting: bool = False
    oom_killed: bool = False
    dead: bool = False
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME

    def view(self, health: HealthState | None = None) -> dict[str, Any]:
        out = {
            "Status": self.status, "Running": self.running, "Paused": self.paused,
            "Restarting": self.restarting, "OOMKilled": self.oom_killed, "Dead": self.dead,
            "Pid": self.pid, "ExitCode": self.exit_code, "Error": self.error,
            "StartedAt": self.started_at, "FinishedAt": self.finished_at,
        }
        if health is not None:
            out["Health"] = health.view()
        return out

    def describe(self, health: str = "none") -> str:
        """`docker ps` STATUS (dockerd's State.String)."""
        now = time.time()
        if self.running:
            if self.restarting:
                ago = human_duration(now - parse_rfc3339(self.finished_at))
                return f"Restarting ({self.exit_code}) {ago} ago"
            up = human_duration(now - parse_rfc3339(self.started_at))
            if self.paused:
                return f"Up {up} (Paused)"
            if health != "none":
                return f"Up {up} ({health})"
            return f"Up {up}"
        if self.status == "removing":
            return "Removal In Progress"
        if self.dead:
            return "Dead"
        if self.started_at == ZERO_TIME:
            return "Created"
        if self.finished_at == ZERO_TIME:
            return ""
        ago = human_duration(now - parse_rfc3339(self.finished_at))
        return f"Exited ({self.exit_code}) {ago} ago"


class Attachment:
    """One client attached to a container's streams (`attach`, `run` without -d)."""

    def __init__(self, stdout: bool, stderr: bool) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()

    def feed(self, stream: int, data: bytes) -> None:
        if (stream == 1 and self.stdout) or (stream == 2 and self.stderr):
            self._queue.put_nowait((stream, data))

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        while (item := await self._queue.get()) is not None:
            yield item


class Run:
    """One boot of a container: implements the agent's ProcessOutput for the main process."""

    def __init__(self, container: Container, sandbox: Sandbox, log_writer: JsonFileWriter) -> None:
        self.container = container
        self.sandbox = sandbox
        self.log = log_writer
        self.exited: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        # Set once the container's state says the run is over.
        self.finished = asyncio.Event()
        self.next_proc = 2
        self.health: HealthMonitor | None = None
        self.memory_mib = 0

    def on_output(self, stream: int, data: bytes) -> None:
        self.log.write(stream, data)
        for attachment in list(self.container.attachments):
            attachment.feed(stream, data)

    def on_output_eof(self, stream: int) -> None:
        self.log.end_stream(stream)

    def on_exit(self, status: ExitStatus) -> None:
        if not self.exited.done():
            self.exited.set_result(status)


@dataclass
class Container:
    id: str
    name: str
    created: str
    image_id: str
    config: dict[str, Any]
    host_config: dict[str, Any]
    path: str
    args: list[str]
    state: ContainerState = field(default_factory=ContainerState)
    restart_count: int = 0
    # Network name -> EndpointSettings, as configured at create/connect.
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # While running: endpoints and published ports (persisted for re-attach).
    run_network: RunNetworking | None = None
    mounts: list[MountPoint] = field(default_factory=list)
    health: HealthState | None = None
    # Runtime only, never persisted.
    run: Run | None = field(default=None, repr=False)
    attachments: set[Attachment] = field(default_factory=set, repr=False)
    exit_waiters: list[asyncio.Future[int]] = field(default_factory=list, repr=False)
    remove_waiters: list[asyncio.Future[int]] = field(default_factory=list, repr=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    teardown: asyncio.Task[None] | None = field(default=None, repr=False)
    removing: bool = field(default=False, repr=False)
    # Stopped through the API: the restart policy leaves it be (dockerd's
    # HasBeenManuallyStopped).
    manually_stopped: bool = field(default=False, repr=False)
    restart_delay: float = field(default=0.0, repr=False)
    restart_task: asyncio.Task[None] | None = field(default=None, repr=False)
    run_started: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Called with the finished run while its guest is still up, once (a
    # build's RUN step takes the container's changes from it then).
    before_poweroff: Callable[[Run], Awaitable[None]] | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "created": self.created,
            "image_id": self.image_id, "config": self.config, "host_config": self.host_config,
            "path": self.path, "args": self.args, "state": asdict(self.state),
            "restart_count": self.restart_count, "networks": self.networks,
            "run_network": run_record(self.run_network) if self.run_network else None,
            "mounts": [asdict(m) for m in self.mounts],
            "health": asdict(self.health) if self.health else None,
            "manually_stopped": self.manually_stopped,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Container:
        return cls(
            id=rec["id"], name=rec["name"], created=rec["created"], image_id=rec["image_id"],
            config=rec["config"], host_config=rec["host_config"], path=rec["path"],
            args=rec["args"], state=ContainerState(**rec["state"]),
            restart_count=rec.get("restart_count", 0), networks=rec.get("networks", {}),
            run_network=run_from_record(rec["run_network"]) if rec.get("run_network")
            else None,
            mounts=[MountPoint(**m) for m in rec.get("mounts", [])],
            health=HealthState(**rec["health"]) if rec.get("health") else None,
            manually_stopped=rec.get("manually_stopped", False),
        )

    def health_status(self) -> str:
        """none | starting | healthy | unhealthy."""
        return self.health.status if self.health is not None else "none"

    @property
    def hostname(self) -> str:
        return str(self.config.get("Hostname") or self.id[:12])

    @property
    def tty(self) -> bool:
        return bool(self.config.get("Tty"))

    def event_attributes(self) -> dict[str, str]:
        attrs = {"image": str(self.config.get("Image", "")), "name": self.name.lstrip("/")}
        attrs.update({str(k): str(v) for k, v in (self.config.get("Labels") or {}).items()})
        return attrs


class ContainerService:
    def __init__(self, config: Config, state: StateStore, images: ImageStore,
                 networks: NetworkService, volumes: VolumeService, events: EventBus,
                 sandboxes: SandboxDriver, scratch: ScratchDisks, accel: str) -> None:
        self.config = config
        self.networks = networks
        self.volumes = volumes
        self.accel = accel
        self.state = state
        self.images = images
        self.events = events
        self.sandboxes = sandboxes
        self.scratch = scratch
        self.root = config.data_root / "containers"
        self.root.mkdir(parents=True, exist_ok=True)
        self.containers: dict[str, Container] = {}
        self.names: dict[str, str] = {}
        # Told when a container's run ends (removed=False) and when it is
        # removed (removed=True); exec instances use it to settle and forget.
        self.on_stopped: list[Callable[[Container, bool], None]] = []
        images.container_usage = self._image_usage
        for key, rec in state.load("containers"):
            try:
                c = Container.from_record(rec)
            except (KeyError, TypeError) as e:
                log.error("dropping unreadable container record %s: %s", key, e)
                continue
            self.containers[c.id] = c
            self.names[c.name] = c.id

    # -- helpers ---------------------------------------------------------------

    def _image_usage(self, image_id: str) -> list[tuple[str, bool]]:
        return [(c.id, c.state.running) for c in self.containers.values()
                if c.image_id == image_id]

    def get(self, ref: str) -> Container:
        """By full ID, name, or unique ID prefix (dockerd's GetContainer order)."""
        if not ref:
            raise no_such_container(ref)
        if ref in self.containers:
            return self.containers[ref]
        name = ref if ref.startswith("/") else "/" + ref
        if name in self.names:
            return self.containers[self.names[name]]
        matches = [cid for cid in self.containers if cid.startswith(ref)]
        if len(matches) == 1:
            return self.containers[matches[0]]
        if len(matches) > 1:
            raise InvalidParameter(f"Multiple IDs found with provided prefix: {ref}")
        raise no_such_container(ref)

    def _save(self, c: Container) -> None:
        self.state.put("containers", c.id, c.record())

    def _dir(self, c: Container) -> Path:
        return self.root / c.id

    def log_path(self, c: Container) -> Path:
        return self._dir(c) / f"{c.id}-json.log"

    def _run_dir(self, c: Container) -> Path:
        return self.config.exec_root / c.id

    def _maintenance_dir(self, c: Container) -> Path:
        return self.config.exec_root / f"{c.id[:48]}-mnt"

    def _file_binds(self, c: Container) -> Path:
        return self.config.exec_root / f"{c.id[:48]}-binds"

    def _release_host_resources(self, c: Container) -> None:
        """What a run held on the host beyond its guest: volumes, file binds."""
        self.volumes.detach_all(c.id)
        hostmount.unbind_all(self._file_binds(c))

    def _event(self, c: Container, action: str, **extra: str) -> None:
        self.events.publish("container", action, c.id, {**c.event_attributes(), **extra})

    # -- create ----------------------------------------------------------------

    async def create(self, name: str | None, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidParameter("invalid JSON: container config must be an object")
        config = cc.normalize_config(body)
        host_config = cc.normalize_host_config(body.get("HostConfig"))
        if not config["Image"]:
            raise InvalidParameter("No image was specified")
        try:
            img = self.images.get(config["Image"])
        except NotFound:
            raise no_such_image(_familiar_or_raw(config["Image"])) from None
        if name:
            name = cc.validate_name(name)
            if name in self.names:
                other = self.names[name]
                raise Conflict(
                    f'Conflict. The container name "{name}" is already in use by container '
                    f'"{other}". You have to remove (or rename) that container to be able to '
                    "reuse that name.")
        else:
            name = "/" + cc.generate_name({n.lstrip("/") for n in self.names})
        cc.merge_image_config(config, img.container_config)
        args = cc.command_of(config)
        attachments = cn.attachments_for_create(host_config, body.get("NetworkingConfig"),
                                                self.networks)
        cn.published_ports(config, host_config)  # reject bad port specs now, not at start
        volumes_from = [self._volumes_from(spec) for spec in
                        host_config.get("VolumesFrom") or []]
        mounts = await resolve_mounts(config, host_config, self.volumes, volumes_from)
        cid = secrets.token_hex(32)
        if not config["Hostname"]:
            config["Hostname"] = cid[:12]
        c = Container(
            id=cid, name=name, created=rfc3339_nano(), image_id=img.id, config=config,
            host_config=host_config, path=args[0], args=args[1:], networks=attachments,
            mounts=mounts,
        )
        directory = self._dir(c)
        directory.mkdir(parents=True)
        try:
            await self.scratch.create(directory / "scratch.qcow2")
            self.names[name] = cid
            self.containers[cid] = c
            self._save(c)
        except BaseException:
            self.names.pop(name, None)
            self.containers.pop(cid, None)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._event(c, "create")
        return {"Id": cid, "Warnings": []}

    def _volumes_from(self, spec: str) -> list[MountPoint]:
        ref, _, mode = spec.partition(":")
        if mode not in ("", "ro", "rw"):
            raise InvalidParameter(f"invalid mode for volumes-from: {mode}")
        source = self.get(ref)
        out = []
        for mp in source.mounts:
            if mp.type == "tmpfs":
                continue
            copy = MountPoint(**asdict(mp))
            if mode:
                copy.rw = mode == "rw"
            out.append(copy)
        return out

    def volume_users(self, name: str) -> list[str]:
        return [c.id for c in self.containers.values()
                if any(m.type == "volume" and m.source == name for m in c.mounts)]

    # -- start -----------------------------------------------------------------

    def _sandbox_spec(self, c: Container, image_disk: Path,
                      network: RunNetworking) -> SandboxSpec:
        hc = c.host_config
        guest = guest_mounts(c.mounts, self.volumes, self._file_binds(c))
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
            run_dir=self._run_dir(c),
            kernel=self.config.vm.kernel_path(),
            initrd=self.config.vm.initrd_path(),
            accel=self.accel,
            memory_mib=memory_mib,
            vcpus=vcpus,
            disks=[
                DiskSpec(image_disk, "image", readonly=True),
                DiskSpec(self._dir(c) / "scratch.qcow2", "scratch", format="qcow2"),
                *guest.disks,
            ],
            nics=network.nics,
            shares=guest.shares,
            tcg_tb_size_mib=self.config.vm.tcg_tb_size_mib,
            cmdline="hbd.trace" if self.config.vm.guest_trace else "",
        )
        files = [
            FileSpec("/etc/hostname", f"{c.hostname}\n".encode()),
            FileSpec("/etc/hosts", cn.hosts_file(c.hostname, network,
                                                 list(hc.get("ExtraHosts") or []))),
            FileSpec("/etc/resolv.conf", cn.resolv_conf(network, hc, host_resolvers())),
        ]
        # A file the user mounts there himself is his, as in dockerd.
        mounted = {mp.destination for mp in c.mounts}
        files = [f for f in files if f.path not in mounted]
        setup = SetupSpec(
            hostname=c.hostname,
            domainname=str(c.config.get("Domainname") or ""),
            readonly_rootfs=bool(hc.get("ReadonlyRootfs")),
            files=files,
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

    def _main_process(self, c: Container) -> ProcessSpec:
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

    async def start(self, ref: str) -> None:
        c = self.get(ref)
        async with c.lock:
            if c.state.status == "removing":
                raise Conflict(f"container {c.id[:12]} is marked for removal and cannot be "
                               "started")
            if c.state.running and not c.state.restarting:
                raise NotModified("container already started")
            self._cancel_restart(c)
            c.manually_stopped = False
            try:
                await self._start_locked(c)
            except HbdError as e:
                if not c.state.error:
                    c.state.error = e.message
                    self._save(c)
                # dockerd removes an --rm container whose start failed, which is
                # what `docker run --rm` waits for.
                if c.host_config.get("AutoRemove"):
                    spawn(self._auto_remove(c))
                raise

    async def boot_maintenance(self, c: Container) -> Sandbox:
        """Boot a stopped container's guest with its disks and mounts but no
        network and no main process, for work on its files (cp, export,
        diff, commit). The caller holds c.lock and calls end_maintenance after."""
        if c.teardown is not None:
            await c.teardown  # the last run's guest still has the disks
        img = self.images.images.get(c.image_id)
        if img is None:
            raise SystemError_(f"image {c.image_id} of container {c.id[:12]} is gone")
        disk = await self.images.ensure_disk(img)
        for mp in c.mounts:
            if mp.type == "volume":
                self.volumes.attach(mp.source, c.id)
        try:
            spec = self._sandbox_spec(c, disk, RunNetworking([], [], [], "", {}, []))
            spec.vm.memory_mib = MIN_GUEST_MIB * 2
            spec.vm.run_dir = self._maintenance_dir(c)
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
            await asyncio.to_thread(shutil.rmtree, self._maintenance_dir(c), True)

    async def _start_locked(self, c: Container) -> None:
        if c.teardown is not None:
            await c.teardown
        img = self.images.images.get(c.image_id)
        if img is None:
            raise SystemError_(f"image {c.image_id} of container {c.id[:12]} is gone")
        disk = await self.images.ensure_disk(img)
        await self._volumes_released(c)
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
        network = await self.networks.connect_run(
            c.id, c.networks, [c.name.lstrip("/"), c.id[:12]],
            cn.published_ports(c.config, c.host_config))
        try:
            spec = self._sandbox_spec(c, disk, network)
            sandbox = await self.sandboxes.boot(spec)
        except BootError as e:
            await self.networks.disconnect_run(c.id)
            self._release_host_resources(c)
            self._start_failed(c, f"failed to boot guest: {e}", 128)
            raise SystemError_(f"failed to create task for container: {e}") from e
        except BaseException:
            await self.networks.disconnect_run(c.id)
            self._release_host_resources(c)
            raise
        writer = JsonFileWriter(self.log_path(c))
        run = Run(c, sandbox, writer)
        run.memory_mib = spec.vm.memory_mib
        try:
            await sandbox.start(self._main_process(c), run)
        except AgentError as e:
            writer.close()
            await sandbox.destroy()
            await self.networks.disconnect_run(c.id)
            self._release_host_resources(c)
            message = ("failed to create task for container: unable to start container "
                       f"process: {e.message}: unknown")
            exit_code = 126 if "permission denied" in e.message or \
                "is a directory" in e.message else 127
            if e.kind in ("exec", "user"):
                self._start_failed(c, message, exit_code if e.kind == "exec" else 128)
                raise InvalidParameter(message) from e
            self._start_failed(c, message, 128)
            raise SystemError_(message) from e
        c.run = run
        c.run_network = network
        c.state = ContainerState(
            status="running", running=True, pid=sandbox.pid, started_at=rfc3339_nano(),
        )
        self._begin_health(c, run)
        self._save(c)
        c.run_started.set()
        self._event(c, "start")
        spawn(self._watch(c, run))

    def _begin_health(self, c: Container, run: Run) -> None:
        healthcheck = c.config.get("Healthcheck")
        monitor = HealthMonitor(
            healthcheck or {}, run, cc.process_env(c.config, c.hostname),
            str(c.config.get("User") or ""), str(c.config.get("WorkingDir") or "/"),
            lambda status: self._health_changed(c, status))
        if not healthcheck or not monitor.enabled:
            c.health = None
            return
        c.health = monitor.state
        run.health = monitor
        monitor.start()

    def _health_changed(self, c: Container, status: str) -> None:
        self._save(c)
        self._event(c, f"health_status: {status}")

    async def _volumes_released(self, c: Container) -> None:
        """A container that just exited may still be syncing a volume we need:
        wait for its guest to be gone rather than refuse the volume."""
        for mp in c.mounts:
            holder_id = self.volumes.attached.get(mp.source) if mp.type == "volume" else None
            holder = self.containers.get(holder_id) if holder_id else None
            if holder is not None and holder is not c and not holder.state.running and \
                    holder.teardown is not None:
                await holder.teardown

    def _start_failed(self, c: Container, message: str, exit_code: int) -> None:
        c.state.error = message
        c.state.exit_code = exit_code
        self._save(c)

    async def _watch(self, c: Container, run: Run) -> None:
        """Wait for the main process to exit, or for the guest to vanish."""
        vanished: asyncio.Future[None] = asyncio.ensure_future(run.sandbox.wait_exit())
        waiting: set[asyncio.Future[Any]] = {run.exited, vanished}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            vanished.cancel()
        if run.exited.done():
            status = run.exited.result()
            error = ""
        else:
            status = ExitStatus(exit_code=VANISHED_EXIT_CODE, signal=9, oom_killed=False)
            error = "guest exited unexpectedly"
        await self._finish_run(c, run, status, error)

    async def _finish_run(self, c: Container, run: Run, status: ExitStatus, error: str) -> None:
        if run.health is not None:
            run.health.stop()
        run.log.close()
        c.run = None
        c.run_started.clear()
        c.run_network = None
        await self.networks.disconnect_run(c.id)
        c.state = ContainerState(
            status="exited", exit_code=status.exit_code, oom_killed=status.oom_killed,
            error=error, started_at=c.state.started_at, finished_at=rfc3339_nano(),
        )
        self._save(c)
        for attachment in list(c.attachments):
            attachment.end()
        c.attachments.clear()
        for hook in self.on_stopped:
            hook(c, False)
        waiters, c.exit_waiters = c.exit_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(status.exit_code)
        if status.oom_killed:
            self._event(c, "oom")
        self._event(c, "die", exitCode=str(status.exit_code))
        run.finished.set()
        going = c.removing or bool(c.host_config.get("AutoRemove"))
        # A container that is going keeps nothing in its scratch disk worth a
        # sync, but its volumes' data must reach their disks.
        clean = not going or any(m.type == "volume" for m in c.mounts)
        c.teardown = spawn(self._teardown(c, run, clean))
        if going and not c.removing:
            await self._auto_remove(c)
        elif self._should_restart(c, status.exit_code):
            self._schedule_restart(c)

    def _should_restart(self, c: Container, exit_code: int) -> bool:
        """dockerd's restart manager decision."""
        if c.removing or c.manually_stopped or c.host_config.get("AutoRemove"):
            return False
        policy = c.host_config.get("RestartPolicy") or {}
        name = policy.get("Name") or "no"
        if name in ("always", "unless-stopped"):
            return True
        if name == "on-failure":
            limit = int(policy.get("MaximumRetryCount") or 0)
            return exit_code != 0 and (limit == 0 or c.restart_count < limit)
        return False

    def _schedule_restart(self, c: Container) -> None:
        """Restart after a doubling delay (100 ms .. 1 min), reset by a 10 s run."""
        ran = parse_rfc3339(c.state.finished_at) - parse_rfc3339(c.state.started_at)
        if ran >= RESTART_RESET_AFTER or not c.restart_delay:
            c.restart_delay = RESTART_FIRST_DELAY
        else:
            c.restart_delay = min(c.restart_delay * 2, RESTART_MAX_DELAY)
        c.state.restarting = True
        c.state.running = True
        c.state.status = "restarting"
        self._save(c)
        c.restart_task = spawn(self._restart_later(c, c.restart_delay))

    async def _restart_later(self, c: Container, delay: float) -> None:
        await asyncio.sleep(delay)
        async with c.lock:
            if not c.state.restarting or c.removing:
                return
            c.restart_count += 1
            try:
                await self._start_locked(c)
            except HbdError as e:
                log.warning("restart of %s failed: %s", c.id[:12], e.message)
                c.state.restarting = False
                c.state.running = False
                c.state.status = "exited"
                c.state.error = e.message
                self._save(c)

    def _cancel_restart(self, c: Container) -> bool:
        """Stop a pending restart; True if there was one."""
        task, c.restart_task = c.restart_task, None
        if task is not None and not task.done():
            task.cancel()
        if not c.state.restarting:
            return False
        c.state.restarting = False
        c.state.running = False
        c.state.status = "exited"
        self._save(c)
        return True

    async def _teardown(self, c: Container, run: Run, clean: bool) -> None:
        try:
            hook, c.before_poweroff = c.before_poweroff, None
            if hook is not None:
                try:
                    await hook(run)
                except Exception:
                    log.exception("before-poweroff hook of %s failed", c.id[:12])
            if clean:
                await run.sandbox.poweroff(POWEROFF_TIMEOUT)
            else:
                await run.sandbox.destroy()
        finally:
            # Only now may another guest mount these volumes.
            self._release_host_resources(c)

    async def _auto_remove(self, c: Container) -> None:
        try:
            await self.remove(c.id, force=True)
        except HbdError as e:
            log.warning("auto-remove of %s failed: %s", c.id[:12], e.message)

    # -- stop / kill -------------------------------------------------------------

    async def kill(self, ref: str, signal: str | int = "KILL") -> None:
        c = self.get(ref)
        signum = cc.parse_signal(signal)
        run = c.run
        if run is None or not c.state.running:
            raise Conflict(f"Container {c.id} is not running")
        await self._resume_if_paused(c, run)
        try:
            await run.sandbox.signal(1, signum)
        except AgentError as e:
            if signum != 9:
                raise SystemError_(f"Cannot kill container {c.id}: {e.message}") from e
            await run.sandbox.destroy()
        self._event(c, "kill", signal=str(signum))

    async def stop(self, ref: str, timeout: int | None = None, signal: str = "") -> None:
        """dockerd's containerStop: the stop signal, then SIGKILL after the timeout."""
        c = self.get(ref)
        if self._cancel_restart(c):
            c.manually_stopped = True
            self._save(c)
            self._event(c, "stop")
            return
        if not c.state.running or c.run is None:
            raise NotModified("container already stopped")
        run = c.run
        signum = cc.parse_signal(signal or c.config.get("StopSignal") or "SIGTERM")
        if timeout is None:
            timeout = c.config.get("StopTimeout")
            if timeout is None:
                timeout = DEFAULT_STOP_TIMEOUT
        c.manually_stopped = True
        self._save(c)
        await self._resume_if_paused(c, run)
        wait: float | None = None if timeout < 0 else float(timeout)
        try:
            await run.sandbox.signal(1, signum)
            self._event(c, "kill", signal=str(signum))
        except AgentError:
            wait = 2.0
        try:
            await asyncio.wait_for(asyncio.shield(run.finished.wait()), wait)
        except TimeoutError:
            log.info("container %s did not exit within %ss of signal %d; killing it",
                     c.id[:12], timeout, signum)
            await self._kill_run(c, run)
        self._event(c, "stop")

    async def _kill_run(self, c: Container, run: Run) -> None:
        """SIGKILL the main process; if the guest does not answer, the guest goes."""
        try:
            await asyncio.wait_for(run.sandbox.signal(1, 9), 5)
            self._event(c, "kill", signal="9")
            await asyncio.wait_for(asyncio.shield(run.finished.wait()), 10)
        except (AgentError, TimeoutError):
            await run.sandbox.destroy()
            await run.finished.wait()

    async def restart(self, ref: str, timeout: int | None = None, signal: str = "") -> None:
        c = self.get(ref)
        if c.state.running:
            with contextlib.suppress(NotModified):
                await self.stop(c.id, timeout, signal)
        await self.start(c.id)
        self._event(c, "restart")

    def rename(self, ref: str, new_name: str) -> None:
        c = self.get(ref)
        if not new_name:
            raise InvalidParameter("Neither old nor new names may be empty")
        name = cc.validate_name(new_name)
        if name == c.name:
            raise InvalidParameter("Renaming a container with the same name as its current "
                                   "name")
        if name in self.names:
            raise Conflict(
                f'Conflict. The container name "{name}" is already in use by container '
                f'"{self.names[name]}". You have to remove (or rename) that container to be '
                "able to reuse that name.")
        old = c.name
        del self.names[old]
        self.names[name] = c.id
        c.name = name
        self._save(c)
        self._event(c, "rename", oldName=old)

    def _running(self, ref: str) -> tuple[Container, Run]:
        c = self.get(ref)
        if c.run is None or not c.state.running or c.state.restarting:
            raise Conflict(f"Container {c.id} is not running")
        return c, c.run

    async def pause(self, ref: str) -> None:
        """Freeze the whole guest (QMP stop): every vCPU, hence every process."""
        c, run = self._running(ref)
        if c.state.paused:
            raise Conflict(f"Container {c.id} is already paused")
        try:
            await run.sandbox.pause()
        except VMError as e:
            raise SystemError_(f"Cannot pause container {c.id}: {e}") from e
        c.state.paused = True
        c.state.status = "paused"
        self._save(c)
        self._event(c, "pause")

    async def unpause(self, ref: str) -> None:
        c, run = self._running(ref)
        if not c.state.paused:
            raise Conflict(f"Container {c.id} is not paused")
        try:
            await run.sandbox.resume()
        except VMError as e:
            raise SystemError_(f"Cannot unpause container {c.id}: {e}") from e
        c.state.paused = False
        c.state.status = "running"
        self._save(c)
        self._event(c, "unpause")

    async def _resume_if_paused(self, c: Container, run: Run) -> None:
        """A frozen guest cannot take a signal: thaw it first, as dockerd does."""
        if c.state.paused:
            with contextlib.suppress(VMError):
                await run.sandbox.resume()
            c.state.paused = False
            c.state.status = "running"
            self._save(c)
            self._event(c, "unpause")

    async def top(self, ref: str, ps_args: str = "") -> dict[str, Any]:
        c, run = self._running(ref)
        if c.state.paused:
            raise Conflict(f"Container {c.id} is paused, unpause the container before top")
        try:
            snapshot = await run.sandbox.ps()
        except AgentError as e:
            raise SystemError_(f"Cannot top container {c.id}: {e.message}") from e
        return top_view(snapshot, time.time())

    async def stats_sample(self, ref: str) -> dict[str, Any] | None:
        """One reading of the guest's figures, or None when it is not running."""
        c = self.get(ref)
        run = c.run
        if run is None or not c.state.running or c.state.paused:
            return None
        try:
            return await run.sandbox.stats()
        except AgentError:
            return None

    async def update(self, ref: str, body: dict[str, Any]) -> list[str]:
        """`docker update`: resources now (in the guest), policy for later."""
        c = self.get(ref)
        if not isinstance(body, dict):
            raise InvalidParameter("invalid JSON: update config must be an object")
        warnings: list[str] = []
        merged = cc.normalize_host_config({**c.host_config, **{
            k: v for k, v in body.items() if k in cc.HOST_CONFIG_TYPES}})
        if merged.get("AutoRemove") and (body.get("RestartPolicy") or {}).get("Name", "no") \
                not in ("", "no"):
            raise InvalidParameter("Restart policy cannot be updated because AutoRemove is "
                                   "enabled for the container")
        run = c.run
        if run is not None and c.state.running:
            resources = ResourceUpdate()
            if "Memory" in body:
                resources.memory_limit = int(merged.get("Memory") or 0)
                if guest_memory_mib(resources.memory_limit) > run.memory_mib:
                    warnings.append(
                        f"the guest booted with {run.memory_mib} MiB of RAM and cannot grow "
                        "while it runs: the new limit takes full effect at the next start")
            if "NanoCpus" in body or "CpuQuota" in body or "CpuPeriod" in body:
                quota, period = cpu_quota(merged)
                resources.cpu_quota = quota
                resources.cpu_period = period
            if "PidsLimit" in body:
                resources.pids_limit = max(0, int(merged.get("PidsLimit") or 0))
            try:
                await run.sandbox.update(resources)
                if resources.memory_limit > 0 and \
                        guest_memory_mib(resources.memory_limit) < run.memory_mib:
                    # Shrinking the guest too, so that `free` inside agrees.
                    await run.sandbox.set_memory(guest_memory_mib(resources.memory_limit))
            except (AgentError, VMError) as e:
                raise SystemError_(f"Cannot update container {c.id}: {e}") from e
        c.host_config = merged
        self._save(c)
        self._event(c, "update")
        return warnings

    async def resize(self, ref: str, height: int, width: int) -> None:
        c = self.get(ref)
        run = c.run
        if run is None:
            raise Conflict(f"Container {c.id} is not running")
        try:
            await run.sandbox.resize(1, height, width)
        except AgentError as e:
            raise SystemError_(f"Cannot resize container {c.id}: {e.message}") from e

    # -- wait --------------------------------------------------------------------

    def wait_future(self, ref: str, condition: str) -> asyncio.Future[int]:
        """A future for `POST /wait`, registered before the response headers go out."""
        c = self.get(ref)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        if condition in ("", "not-running"):
            if not c.state.running:
                fut.set_result(c.state.exit_code)
            else:
                c.exit_waiters.append(fut)
        elif condition == "next-exit":
            c.exit_waiters.append(fut)
        elif condition == "removed":
            c.remove_waiters.append(fut)
        else:
            raise InvalidParameter(f"invalid condition: {condition!r}")
        return fut

    # -- attach / logs -----------------------------------------------------------

    def attach(self, ref: str, stdout: bool, stderr: bool) -> tuple[Container, Attachment]:
        c = self.get(ref)
        attachment = Attachment(stdout, stderr)
        c.attachments.add(attachment)
        return c, attachment

    def detach(self, c: Container, attachment: Attachment) -> None:
        c.attachments.discard(attachment)

    async def write_stdin(self, c: Container, data: bytes) -> None:
        """Attached stdin: held until the container runs, as dockerd's stdin pipe does."""
        if not c.config.get("OpenStdin"):
            return
        await c.run_started.wait()
        run = c.run
        if run is not None:
            with contextlib.suppress(AgentError):
                await run.sandbox.write_stdin(1, data)

    async def close_stdin(self, c: Container) -> None:
        if not (c.config.get("OpenStdin") and c.config.get("StdinOnce")):
            return
        await c.run_started.wait()
        run = c.run
        if run is not None:
            with contextlib.suppress(AgentError):
                await run.sandbox.close_stdin(1)

    def logs(self, ref: str, query: LogQuery) -> tuple[Container, AsyncIterator[LogRecord]]:
        c = self.get(ref)
        writer = c.run.log if c.run is not None else None
        return c, query_logs(self.log_path(c), query, writer)

    # -- remove ------------------------------------------------------------------

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        c = self.get(ref)
        if c.removing:
            raise Conflict(f"removal of container {c.id[:12]} is already in progress")
        if c.state.running and not force:
            raise Conflict(
                f"You cannot remove a running container {c.id}. Stop the container "
                "before attempting removal or force remove")
        c.removing = True
        self._cancel_restart(c)
        try:
            run = c.run
            if run is not None:
                await run.sandbox.destroy()
                await run.finished.wait()
            c.state.status = "removing"
            if c.teardown is not None:
                with contextlib.suppress(Exception):
                    await c.teardown
        except BaseException:
            c.removing = False
            raise
        self.names.pop(c.name, None)
        self.containers.pop(c.id, None)
        self.state.delete("containers", c.id)
        if volumes or c.host_config.get("AutoRemove"):
            for mp in c.mounts:
                v = self.volumes.volumes.get(mp.source) if mp.type == "volume" else None
                if v is not None and v.anonymous and not self.volume_users(v.name):
                    with contextlib.suppress(HbdError):
                        await self.volumes.remove(v.name)
        await asyncio.to_thread(shutil.rmtree, self._dir(c), True)
        await asyncio.to_thread(shutil.rmtree, self._run_dir(c), True)
        for hook in self.on_stopped:
            hook(c, True)
        self._event(c, "destroy")
        waiters, c.remove_waiters = c.remove_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(c.state.exit_code)

    # -- networks ----------------------------------------------------------------

    def network_members(self, network_name: str) -> dict[str, dict[str, Any]]:
        """`network inspect` Containers: running members with their endpoints."""
        out = {}
        for c in self.containers.values():
            run = c.run_network
            endpoint = run.endpoints.get(network_name) if run is not None else None
            if endpoint is None:
                continue
            out[c.id] = {"Name": c.name.lstrip("/"), "EndpointID": endpoint.endpoint_id,
                         "MacAddress": endpoint.mac,
                         "IPv4Address": f"{endpoint.ip}/{endpoint.prefix}",
                         "IPv6Address": ""}
        return out

    def configured_on(self, network_name: str) -> list[str]:
        return [c.id for c in self.containers.values() if network_name in c.networks]

    def connect(self, ref: str, network_ref: str, settings: dict[str, Any]) -> None:
        c = self.get(ref)
        n = self.networks.get(network_ref)
        if c.state.running:
            raise Conflict(
                f"cannot connect running container {c.name.lstrip('/')} to network {n.name}: "
                "a microvm has no hotplug; stop the container, connect it, start it again")
        if n.name in c.networks:
            raise Forbidden(f"endpoint with name {c.name.lstrip('/')} already exists in "
                            f"network {n.name}")
        if not c.networks and c.host_config.get("NetworkMode") == "none":
            raise Forbidden("container cannot be disconnected from host network or "
                            "connected to host network")
        attach = cn.attachments_for_create({"NetworkMode": n.name},
                                           {"EndpointsConfig": {n.name: settings or {}}},
                                           self.networks)
        c.networks.update(attach)
        self._save(c)
        self.events.publish("network", "connect", n.id,
                            {"container": c.id, "name": n.name, "type": n.driver})

    def disconnect(self, ref: str, network_ref: str, force: bool = False) -> None:
        c = self.get(ref)
        n = self.networks.get(network_ref)
        if c.state.running and not force:
            raise Conflict(
                f"cannot disconnect running container {c.name.lstrip('/')} from network "
                f"{n.name}: a microvm has no hotplug; stop the container first")
        if n.name not in c.networks:
            raise Forbidden(f"container {c.id} is not connected to network {n.name}")
        del c.networks[n.name]
        self._save(c)
        self.events.publish("network", "disconnect", n.id,
                            {"container": c.id, "name": n.name, "type": n.driver})

    # -- views -------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any]:
        c = self.get(ref)
        hc = dict(c.host_config)
        return {
            "Id": c.id,
            "Created": c.created,
            "Path": c.path,
            "Args": c.args,
            "State": c.state.view(c.health),
            "Image": c.image_id,
            "ResolvConfPath": "",
            "HostnamePath": "",
            "HostsPath": "",
            "LogPath": str(self.log_path(c)),
            "Name": c.name,
            "RestartCount": c.restart_count,
            "Driver": "hbd-ext4",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": None,
            "HostConfig": hc,
            "GraphDriver": {"Name": "hbd-ext4", "Data": {
                "ImageDisk": str(self.images.disk_path(self.images.images[c.image_id]))
                if c.image_id in self.images.images else "",
                "ScratchDisk": str(self._dir(c) / "scratch.qcow2"),
            }},
            "Mounts": [m.view(self.volumes) for m in c.mounts],
            "Config": c.config,
            "NetworkSettings": cn.network_settings(self.networks, c.networks, c.config,
                                                   c.run_network),
        }

    def summary(self, c: Container) -> dict[str, Any]:
        command = " ".join([c.path, *c.args]) if c.args else c.path
        return {
            "Id": c.id,
            "Names": [c.name],
            "Image": c.config.get("Image", ""),
            "ImageID": c.image_id,
            "Command": command,
            "Created": int(parse_rfc3339(c.created)),
            "Ports": cn.summary_ports(c.run_network, c.config),
            "Labels": c.config.get("Labels") or {},
            "State": c.state.status,
            "Status": c.state.describe(c.health_status()),
            "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode", "default")},
            "Mounts": [m.view(self.volumes) for m in c.mounts],
            "NetworkSettings": {"Networks": cn.network_settings(
                self.networks, c.networks, c.config, c.run_network)["Networks"]},
        }

    def list_summaries(self, all_: bool = False, limit: int = -1,
             filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        matches = ContainerFilter(filters or {}, self)
        items = sorted(self.containers.values(), key=lambda c: c.created, reverse=True)
        # A status or exited filter implies --all, as in dockerd.
        show_all = all_ or limit > 0 or "status" in matches.filters or \
            "exited" in matches.filters
        items = [c for c in items if (show_all or c.state.running) and matches(c)]
        if limit > 0:
            items = items[:limit]
        return [self.summary(c) for c in items]

    async def prune(self, filters: dict[str, list[str]]) -> dict[str, Any]:
        matches = PruneFilter(filters)
        deleted = []
        for c in list(self.containers.values()):
            if c.state.running or c.removing or not matches(c.created, c.config):
                continue
            try:
                await self.remove(c.id)
            except HbdError as e:
                log.warning("prune: cannot remove %s: %s", c.id[:12], e.message)
                continue
            deleted.append(c.id)
        self.events.publish("container", "prune", "", {"reclaimed": "0"})
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": 0}

    # -- daemon lifecycle ----------------------------------------------------------

    async def restore(self) -> None:
        """After an hbd restart: re-attach running guests, settle the rest."""
        for c in list(self.containers.values()):
            if not c.state.running:
                continue
            sandbox = await self.sandboxes.reattach(self._run_dir(c))
            if sandbox is None:
                log.info("container %s stopped while hbd was down", c.id[:12])
                c.restart_task = None
                c.state = ContainerState(
                    status="exited", exit_code=VANISHED_EXIT_CODE,
                    error="guest exited while hbd was down", started_at=c.state.started_at,
                    finished_at=rfc3339_nano())
                c.run_network = None
                self._save(c)
                continue
            if c.run_network is not None:
                await self.networks.adopt_run(c.id, c.run_network)
            writer = JsonFileWriter(self.log_path(c))
            run = Run(c, sandbox, writer)
            # Output and exit the guest queued while nobody listened arrive
            # (in order) before STATE's answer; the agent holds them for us.
            sandbox.attach_output(1, run)
            main = [p for p in sandbox.processes if p.main]
            if main and not main[0].running:
                run.on_exit(ExitStatus(main[0].exit_code, main[0].signal, main[0].oom_killed))
            run.next_proc = max([p.proc for p in sandbox.processes] + [1]) + 1
            c.run = run
            c.run_started.set()
            if c.config.get("Healthcheck"):
                self._begin_health(c, run)
            spawn(self._watch(c, run))
        await self.networks.remove_leaked_taps()
        for c in list(self.containers.values()):
            if not c.state.running and self._restart_on_daemon_start(c):
                spawn(self._start_on_daemon_start(c))

    def _restart_on_daemon_start(self, c: Container) -> bool:
        """dockerd restarts these when it starts: `always` even if stopped by hand."""
        policy = (c.host_config.get("RestartPolicy") or {}).get("Name") or "no"
        if policy == "always":
            return True
        return not c.manually_stopped and self._should_restart(c, c.state.exit_code) and \
            policy != "no"

    async def _start_on_daemon_start(self, c: Container) -> None:
        try:
            await self.start(c.id)
        except HbdError as e:
            log.warning("could not restart %s: %s", c.id[:12], e.message)

    async def shutdown(self) -> None:
        """hbd is stopping: leave guests running, stop watching them."""
        cancel_all()
        for c in self.containers.values():
            if c.run is not None:
                c.run.sandbox.detach()
                c.run.log.close()


def _familiar_or_raw(ref: str) -> str:
    try:
        return parse_reference(ref).with_default_tag().familiar
    except HbdError:
        return ref


