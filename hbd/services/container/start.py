"""Starting a container: which sandbox it runs in (a new one, or the one of
the containers whose namespaces it shares), what it needs there (disks,
mounts, network endpoints, the files hbd writes into it), its main process;
and maintenance guests, which give cp, export, diff and commit a stopped
container's files."""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from hbd.config import Config
from hbd.drivers import disks, hostmount
from hbd.drivers.agent import (
    DOCKER_INIT,
    AgentError,
    ContainerSetup,
    FileSpec,
    ProcessSpec,
    Rlimit,
    SecuritySpec,
)
from hbd.drivers.guest import BootError
from hbd.errors import (
    Conflict,
    HbdError,
    InvalidParameter,
    NotFound,
    NotModified,
    SystemError_,
)
from hbd.services.container import config as cc
from hbd.services.container import hostconfig, links, security
from hbd.services.container import network as cn
from hbd.services.container.logs import LogDriver
from hbd.services.container.model import Container, ContainerState, Run
from hbd.services.container.monitor import Monitor
from hbd.services.container.mounts import MountPoint
from hbd.services.container.namespaces import SharedNamespaces, shared_namespaces
from hbd.services.container.restart import RestartManager
from hbd.services.container.sandbox import ContainerInGuest, Sandbox
from hbd.services.container.sandboxes import (
    ContainerPlan,
    EndpointPlan,
    MountPlan,
    SandboxManager,
    refused_setup,
)
from hbd.services.container.stats import cpu_quota
from hbd.services.container.store import ContainerStore
from hbd.services.image.store import ImageStore
from hbd.services.network.dns import host_resolvers
from hbd.services.network.model import RunNetworking
from hbd.services.network.service import NetworkService
from hbd.services.timefmt import rfc3339_nano
from hbd.services.volume import direct
from hbd.services.volume.service import VolumeService
from hbd.tasks import spawn

MIN_GUEST_MIB = 64
# What the guest kernel keeps of its RAM (code, memmap, reserves) at these sizes.
GUEST_KERNEL_MIB = 14


def device_plan(device: dict[str, str]) -> MountPlan:
    """A host block device of HostConfig.Devices (checked at create): its
    node in the container, the device read-only in the guest when it may
    not be written."""
    try:
        host = disks.block_device(device["PathOnHost"])
    except disks.NotBlockDevice as e:
        raise InvalidParameter(str(e)) from None
    permissions = device["CgroupPermissions"]
    return MountPlan("device", device["PathInContainer"], host.path, "w" not in permissions,
                     host_device=True, device_readonly="w" not in permissions,
                     mode=hostconfig.device_node_mode(host.mode, permissions))


def guest_memory_mib(limit: int) -> int:
    """Guest RAM for a memory limit (bytes), so that MemTotal inside is about the limit."""
    return max(MIN_GUEST_MIB, math.ceil(limit / (1024 * 1024)) + GUEST_KERNEL_MIB)


def guest_files(c: Container, network: RunNetworking | None,
                link_lines: list[str], netns_owner: Container | None = None) -> list[FileSpec]:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf, as hbd writes them. A
    container in another's network namespace gets that one's, as in dockerd."""
    owner = netns_owner or c
    hc = owner.host_config
    files = [
        FileSpec("/etc/hostname", f"{owner.hostname}\n".encode()),
        FileSpec("/etc/hosts", cn.hosts_file(owner.hostname, network,
                                             list(hc.get("ExtraHosts") or []), link_lines)),
        FileSpec("/etc/resolv.conf", cn.resolv_conf(network, hc, host_resolvers())),
    ]
    # A file the user mounts there himself is his, as in dockerd.
    mounted = {mp.destination for mp in c.mounts}
    return [f for f in files if f.path not in mounted]


async def rewrite_hosts(store: ContainerStore, sandboxes: SandboxManager,
                        owner: Container) -> None:
    """/etc/hosts of every container in the owner's network namespace lists
    the owner's addresses on all its networks and its links, as dockerd's."""
    if owner.run is None:
        return
    link_lines = links.hosts_lines(owner, store)
    for cid in sandboxes.netns_members(owner.run.guest):
        member = store.containers.get(cid)
        if member is None or member.run is None:
            continue
        hosts = [f for f in guest_files(member, owner.run_network, link_lines, owner)
                 if f.path == "/etc/hosts"]
        if hosts:
            await sandboxes.rewrite_files(member.run.guest, hosts)


@dataclass
class Starter:
    config: Config
    store: ContainerStore
    images: ImageStore
    networks: NetworkService
    volumes: VolumeService
    sandboxes: SandboxManager
    monitor: Monitor
    restarts: RestartManager

    async def start(self, ref: str) -> None:
        c = self.store.get(ref)
        async with c.lock:
            await self.start_held(c)

    async def start_held(self, c: Container) -> None:
        """`docker start` of a container whose lock the caller holds."""
        if c.removing or c.state.status == "removing":
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
                # dockerd's exitUnknown unless the failure set its own.
                c.state.error = e.message
                c.state.exit_code = c.state.exit_code or 128
                self.store.save(c)
            # dockerd removes an --rm container whose start failed, which is
            # what `docker run --rm` waits for.
            if c.host_config.get("AutoRemove"):
                spawn(self.monitor.auto_remove(c))
            raise

    async def start_locked(self, c: Container) -> None:
        """Put the container in its sandbox and run its main process; the caller
        holds c.lock."""
        log = self._log_driver(c)
        disk = await self._image_disk(c)
        shared = shared_namespaces(c, self.store)
        target = self._sandbox_for(c, shared)
        links.check_children(c, self.store)
        hostconfig.check_at_start(c.host_config, own_guest=target is None)
        # A profile other than a cached one takes tens of ms to compile.
        guest_security = await asyncio.to_thread(security.for_guest, c.host_config)
        await self._volumes_released(c)
        self._claim_mounts(c)
        network = None
        if shared.network is None:
            network = await self.networks.connect_run(
                c.id, c.networks, [c.own_name, c.id[:12]],
                cn.published_ports(c.config, c.host_config))
        else:
            # dockerd: the container takes the hostname of the one whose
            # network it shares.
            c.config["Hostname"] = shared.network.hostname
        try:
            plan = self._plan(c, disk, network, shared, guest_security)
            if target is None:
                view = await self.sandboxes.boot(plan)
            else:
                view = await self.sandboxes.join(target, plan)
        except BootError as e:
            await self._undo_run_resources(c)
            refused = refused_setup(e.refusal) if e.refusal is not None else None
            if refused is not None:
                raise refused from e
            self._start_failed(c, f"failed to boot guest: {e}", 128)
            raise SystemError_(f"failed to create task for container: {e}") from e
        except BaseException:
            await self._undo_run_resources(c)
            raise
        writer = log.open(self.store.output_marks(c, fresh=True))
        run = Run(c, view, writer)
        run.memory_mib = plan.memory_mib if target is None else 0
        try:
            started = await view.start(self._main_process(c, view), run)
        except AgentError as e:
            writer.close()
            await self.sandboxes.leave(view, clean=True)
            await self._undo_run_resources(c)
            self._main_process_failed(c, e)
        c.run = run
        c.run_network = network
        c.state = ContainerState(
            status="running", running=True, pid=view.pid, started_at=rfc3339_nano(),
        )
        if started.user is not None:
            c.state.uid, c.state.gid = started.user.uid, started.user.gid
            c.state.groups = list(started.user.groups)
        self.monitor.begin_health(c, run)
        self.store.save(c)
        c.run_started.set()
        self.store.event(c, "start")
        self.monitor.watch(c, run)
        # dockerd's parent update: containers linking to this one see its new address.
        for parent in links.parents(c, self.store):
            await rewrite_hosts(self.store, self.sandboxes, parent)

    def _log_driver(self, c: Container) -> LogDriver:
        """The logger first, as dockerd: bad option values fail the start."""
        try:
            return self.store.log_driver(c)
        except HbdError as e:
            self._start_failed(c, e.message, 128)
            raise

    def _sandbox_for(self, c: Container, shared: SharedNamespaces) -> Sandbox | None:
        """The running sandbox the container must join (that of the containers
        whose namespaces it shares), or None for a new one."""
        sandboxes = {}
        for peer in shared.peers:
            sb = self.sandboxes.holding(peer.id)
            if sb is None:
                raise Conflict(f"container {peer.id} is not running")
            sandboxes[sb.id] = sb
        if len(sandboxes) > 1:
            raise InvalidParameter("hbd runs each group of containers that share namespaces "
                                   "in one virtual machine: the containers named in "
                                   "--network, --pid and --ipc run in different ones")
        return next(iter(sandboxes.values()), None)

    async def _image_disk(self, c: Container) -> Path:
        """The disk of the container's image; those of the images it mounts
        are built too (_mount_plans names them)."""
        if c.teardown is not None:
            await c.teardown  # the last run may still be leaving its sandbox
        for image_id in [c.image_id] + [mp.source for mp in c.mounts if mp.type == "image"]:
            img = self.images.images.get(image_id)
            if img is None:
                raise SystemError_(f"image {image_id} of container {c.id[:12]} is gone")
            await self.images.ensure_disk(img)
        return self.images.disk_path(self.images.images[c.image_id])

    async def _volumes_released(self, c: Container) -> None:
        """A container that just exited may still be syncing a block volume we
        need: wait for it to leave its sandbox rather than refuse the volume."""
        for mp in c.mounts:
            holder_id = self.volumes.attached.get(mp.source) if mp.type == "volume" else None
            holder = self.store.containers.get(holder_id) if holder_id else None
            if holder is not None and holder is not c and not holder.state.running and \
                    holder.teardown is not None:
                await holder.teardown

    def _claim_mounts(self, c: Container) -> None:
        """Block volumes are the container's alone while it runs; every bind
        source must exist."""
        for mp in c.mounts:
            if mp.type == "volume":
                try:
                    self.volumes.attach(mp.source, c.id)
                    self._check_subpath(mp)
                except HbdError:
                    self.volumes.detach_all(c.id)
                    raise
            elif mp.type == "bind" and not os.path.exists(mp.source) and \
                    self.volumes.direct.lookup(mp.source) is None:
                self.volumes.detach_all(c.id)
                raise InvalidParameter(f"invalid mount config for type \"bind\": bind source "
                                       f"path does not exist: {mp.source}")

    def _check_subpath(self, mp: MountPoint) -> None:
        """A volume subpath must exist when the container starts (dockerd's
        safepath errors). A block volume's is checked by its guest."""
        v = self.volumes.get(mp.source)
        if not mp.subpath or v.block:
            return
        try:
            hostmount.resolve_beneath(self.volumes.data_dir(v), mp.subpath)
        except hostmount.EscapesBase as e:
            raise InvalidParameter(str(e)) from None
        except hostmount.NotAccessible as e:
            raise NotFound(str(e)) from None

    async def _undo_run_resources(self, c: Container) -> None:
        """A start that failed gives back its network and volumes."""
        await self.networks.disconnect_run(c.id)
        self.volumes.detach_all(c.id)

    def _main_process_failed(self, c: Container, e: AgentError) -> NoReturn:
        """Record why the main process did not start, and raise dockerd's error
        for it: dockerd resolves the user itself (500, its own words); runc's
        errors are sorted as dockerd's translateContainerdStartErr sorts them."""
        if e.kind == "user":
            self._start_failed(c, e.message, 128)
            raise SystemError_(e.message) from e
        message = ("failed to create task for container: unable to start container "
                   f"process: {e.message}: unknown")
        if "permission denied" in e.message or "is a directory" in e.message:
            self._start_failed(c, message, 126)
            raise InvalidParameter(message) from e
        if e.kind == "exec" or "no such file or directory" in e.message:
            self._start_failed(c, message, 127)
            raise InvalidParameter(message) from e
        self._start_failed(c, message, 128)
        raise SystemError_(message) from e

    def _start_failed(self, c: Container, message: str, exit_code: int) -> None:
        c.state.error = message
        c.state.exit_code = exit_code
        self.store.save(c)

    # -- what the sandbox needs to know ------------------------------------------------

    def _plan(self, c: Container, image_disk: Path, network: RunNetworking | None,
              shared: SharedNamespaces,
              guest_security: SecuritySpec | None = None) -> ContainerPlan:
        """What the sandbox needs; a maintenance guest runs only the init's
        builtins, so it takes no security settings (SecuritySpec())."""
        hc = c.host_config
        memory_mib = self.config.vm.memory_mib
        if hc.get("Memory"):
            # The guest is the limit: `free` inside shows it (the guest
            # kernel keeps GUEST_KERNEL_MIB for itself), and the cgroup
            # enforces it exactly.
            memory_mib = guest_memory_mib(int(hc["Memory"]))
        vcpus = hostconfig.vcpus_for(hc, self.config.vm.vcpus)
        # Sharing another's network namespace, it shares its /etc/hosts.
        hosts_owner = c if shared.network is None else shared.network
        files_network = network if shared.network is None else shared.network.run_network
        setup = ContainerSetup(
            container="", netns="",
            hostname=hosts_owner.hostname,
            domainname=str(c.config.get("Domainname") or ""),
            readonly_rootfs=bool(hc.get("ReadonlyRootfs")),
            files=guest_files(c, files_network, links.hosts_lines(hosts_owner, self.store),
                              hosts_owner),
            sysctls={str(k): str(v) for k, v in (hc.get("Sysctls") or {}).items()},
            memory_limit=int(hc.get("Memory") or 0),
            shm_size=int(hc.get("ShmSize") or cc.DEFAULT_SHM_SIZE),
            pids_limit=int(hc.get("PidsLimit") or -1) if (hc.get("PidsLimit") or 0) > 0 else -1,
            cpu_weight=hostconfig.cpu_weight(int(hc.get("CpuShares") or 0)),
            memory_low=int(hc.get("MemoryReservation") or 0),
            group_add=[str(g) for g in hc.get("GroupAdd") or []],
            groups_strict=c.groups_strict,
            rlimits=[Rlimit(str(u["Name"]).lower(), int(u.get("Soft") or 0),
                            int(u.get("Hard") or 0)) for u in hc.get("Ulimits") or []],
            oom_score_adj=int(hc.get("OomScoreAdj") or 0),
            init=bool(hc.get("Init")),
            security=guest_security or SecuritySpec(),
        )
        setup.cpu_quota, setup.cpu_period = cpu_quota(hc)
        return ContainerPlan(
            container_id=c.id, image_id=c.image_id, image_disk=image_disk,
            scratch_disk=self.store.dir(c) / "scratch.qcow2", setup=setup,
            mounts=self._mount_plans(c),
            endpoints=self._endpoint_plans(network),
            netns_of=shared.network.id if shared.network else "",
            pid_of=shared.pid.id if shared.pid else "",
            ipc_of=shared.ipc.id if shared.ipc else "",
            memory_mib=memory_mib, vcpus=vcpus, host_cpus=hostconfig.host_cpus(hc),
            host_nodes=hostconfig.host_nodes(hc),
            joiners_share_fs=hc.get("IpcMode") == "shareable",
        )

    def _mount_plans(self, c: Container) -> list[MountPlan]:
        plans = []
        for mp in c.mounts:
            if mp.type == "volume":
                v = self.volumes.get(mp.source)
                if v.block:
                    plans.append(MountPlan("block", mp.destination, self.volumes.disk(v),
                                           not mp.rw, not mp.nocopy, subpath=mp.subpath))
                else:
                    plans.append(MountPlan("dir", mp.destination, self.volumes.data_dir(v),
                                           not mp.rw, not mp.nocopy, subpath=mp.subpath))
            elif mp.type == "bind":
                plans.append(self._bind_plan(mp))
            elif mp.type == "image":
                disk = self.images.disk_path(self.images.images[mp.source])
                plans.append(MountPlan("image", mp.destination, disk, True,
                                       subpath=mp.subpath, image_id=mp.source))
            else:
                plans.append(MountPlan("tmpfs", mp.destination, None, not mp.rw,
                                       options=mp.options))
        plans += [device_plan(d) for d in c.host_config.get("Devices") or []]
        return plans

    def _bind_plan(self, mp: MountPoint) -> MountPlan:
        """A bind mount as the sandbox provides it: a host directory or file
        shared; a direct-assigned volume's device attached and mounted in the
        guest; a host block device (a hostPath of type BlockDevice) as a
        device node."""
        info = self.volumes.direct.lookup(mp.source)
        if info is not None:
            flags, options = direct.mount_flags(info.options)
            return MountPlan("block", mp.destination, Path(info.device), not mp.rw,
                             host_device=True, device_readonly=info.readonly,
                             fstype=info.fstype, fs_flags=flags, fs_options=options)
        try:
            device = disks.block_device(mp.source)
        except disks.NotBlockDevice:
            return MountPlan("dir", mp.destination, Path(mp.source), not mp.rw,
                             host_readonly=not mp.rw,
                             readonly_non_recursive=mp.readonly_non_recursive,
                             follow_host=mp.follows_host)
        permissions = "r" if not mp.rw else "rw"
        return MountPlan("device", mp.destination, device.path, not mp.rw, host_device=True,
                         device_readonly=not mp.rw,
                         mode=hostconfig.device_node_mode(device.mode, permissions))

    def _endpoint_plans(self, network: RunNetworking | None) -> list[EndpointPlan]:
        if network is None:
            return []
        plans = []
        for name, endpoint in network.endpoints.items():
            n = self.networks.get(name)
            plans.append(EndpointPlan(name, endpoint, n.bridge, n.internal,
                                      n.namespace))
        return plans

    def _main_process(self, c: Container, view: ContainerInGuest) -> ProcessSpec:
        console = c.host_config.get("ConsoleSize") or [0, 0]
        args = [c.path, *c.args]
        if c.host_config.get("Init"):
            # As dockerd: its docker-init runs the command (the guest binds it there).
            args = [DOCKER_INIT, "--", *args]
        return ProcessSpec(
            proc=view.main_proc,
            container=view.guest_id,
            main=True,
            args=args,
            env=cc.process_env(c.config, c.hostname, links.environment(c, self.store)),
            cwd=str(c.config.get("WorkingDir") or "/"),
            user=str(c.config.get("User") or ""),
            tty=c.tty,
            stdin=bool(c.config.get("OpenStdin")),
            height=int(console[0]),
            width=int(console[1]),
        )

    # -- maintenance guests -----------------------------------------------------------

    async def boot_maintenance(self, c: Container) -> ContainerInGuest:
        """A stopped container's files, with its disks and mounts but no
        network and no main process, for cp, export, diff and commit, in a
        small guest booted for this. The caller holds c.lock and calls
        end_maintenance after."""
        disk = await self._image_disk(c)
        for mp in c.mounts:
            if mp.type == "volume":
                self.volumes.attach(mp.source, c.id)
        try:
            plan = self._plan(c, disk, None, SharedNamespaces())
            plan.memory_mib = MIN_GUEST_MIB * 2
            plan.vcpus = 1
            return await self.sandboxes.boot(plan, maintenance=True)
        except BootError as e:
            self.volumes.detach_all(c.id)
            raise SystemError_(f"cannot reach the files of {c.id[:12]}: {e}") from e
        except BaseException:
            self.volumes.detach_all(c.id)
            raise

    async def end_maintenance(self, c: Container, view: ContainerInGuest) -> None:
        try:
            await self.sandboxes.leave(view, clean=True)
        finally:
            self.volumes.detach_all(c.id)
