"""The sandboxes: booting one for a container, adding containers to a running
one, taking them out, networks joined and left while running, and finding
them all again after an hbd restart.

What goes where in a guest:
- every disk (image, scratch, block volumes) is on its SCSI bus: a
  container's disks come with it (on the command line for the container a
  guest boots with, hot-added for one that joins) and leave with it, but
  for an image disk another container of the image still uses;
- host block devices (a Kubernetes raw block volume, a direct-assigned
  volume: hbd/services/volume/direct.py) are disks too, attached once per
  guest however many of its containers use them, and to one guest at a
  time: hbd opens them exclusively (O_EXCL), so the host cannot mount one
  while a guest has it;
- volumes and bind mounts of every container are entries of the sandbox's
  shared filesystem: host directories (or files) mounted into the directory
  its virtiofsd exports;
- each network a container is on takes one of the guest's NIC slots: the
  slot's tap is plugged into the network's bridge and the guest moves the
  NIC into the container's network namespace. A plugged tap is pinned to its
  endpoint (the network service's anti-spoofing rules: the guest sends on
  it only with the endpoint's MAC and addresses) from before it is plugged
  until after it is unplugged, and its pin goes with the guest. A tenant's
  bridge is in its own host network namespace: the tap moves there to be
  plugged (its descriptors in QEMU stay good) and back when unplugged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from hbd.config import Config
from hbd.drivers import disks, hostmount, net
from hbd.drivers.agent import (
    AgentError,
    ContainerSetup,
    FileSpec,
    InterfaceRemoval,
    InterfaceSpec,
    MountSpec,
    NetworkUpdate,
    NicSlot,
    OutputResume,
    RouteSpec,
    SandboxSetup,
)
from hbd.drivers.guest import Guest, GuestDriver, GuestSpec
from hbd.drivers.vm import DiskSpec, NicSpec, VMError, VMSpec
from hbd.errors import Conflict, HbdError, InvalidParameter, NotFound, SystemError_
from hbd.services.container.outputmark import OutputMark
from hbd.services.container.sandbox import ContainerInGuest, Member, Sandbox, SandboxRecord, Slot
from hbd.services.network.model import Endpoint
from hbd.store import StateStore

log = logging.getLogger(__name__)

# A sandbox's id, which names its run directory under the exec root.
SANDBOX_ID = re.compile(r"[0-9a-f]{32}")
MS_RDONLY = 0x1  # mount(2)'s, for a disk the guest mounts read-only
# Under the exec root beside the sandboxes' run directories: the share
# space's holder (hbd.drivers.hostmount).
SHARE_SPACE_DIR = "shares"

# How long a guest may take to sync and power off before it is killed.
POWEROFF_TIMEOUT = 10.0


@dataclass
class MountPlan:
    """One of a container's mounts, as the sandbox provides it."""

    kind: Literal["block", "dir", "tmpfs", "device", "image"]
    target: str
    # block: the disk image (or host block device); dir: a host directory or
    # file; device: a host block device whose node the container gets;
    # image: an image's disk (read-only, one per guest however many use it).
    source: Path | None = None
    readonly: bool = False
    copy_up: bool = False
    options: str = ""
    # A read-only bind mount is read-only on the host too; a volume is not
    # (an empty one takes the image's content first, read-only mount or not).
    host_readonly: bool = False
    # A volume's subdirectory to mount instead of its root.
    subpath: str = ""
    # block: the source is a host block device (raw), not an image file;
    # attached read-only to the guest with `device_readonly`.
    host_device: bool = False
    device_readonly: bool = False
    # block: the filesystem the guest mounts ("": ext4), MS_* flags, options.
    fstype: str = ""
    fs_flags: int = 0
    fs_options: str = ""
    # device: its node's permission bits.
    mode: int = 0o660
    # Read-only at its top only: the host's writable mounts beneath stay so
    # (BindOptions.ReadOnlyNonRecursive; the CRI's readonly without recursion).
    readonly_non_recursive: bool = False
    # Takes the host's later mounts beneath its source (rslave propagation).
    follow_host: bool = False
    # image: the image's id.
    image_id: str = ""

    @property
    def disk(self) -> bool:
        """Whether it is a disk of the guest (a block volume, a host device
        or an image's disk)."""
        return self.kind in ("block", "device", "image")


@dataclass
class EndpointPlan:
    """A network endpoint of the container, with what its slot needs."""

    network: str
    endpoint: Endpoint
    bridge: str
    internal: bool
    namespace: str = ""  # the host network namespace the bridge is in ("": the host's)


@dataclass
class ContainerPlan:
    """Everything the sandbox needs to know of a container to run it."""

    container_id: str
    image_id: str
    image_disk: Path
    scratch_disk: Path
    setup: ContainerSetup  # ids, disks and mounts are filled in by the sandbox
    mounts: list[MountPlan] = field(default_factory=list)
    endpoints: list[EndpointPlan] = field(default_factory=list)
    # --network/--pid/--ipc container:X: X's container id.
    netns_of: str = ""
    pid_of: str = ""
    ipc_of: str = ""
    memory_mib: int = 256
    vcpus: int = 1
    # Containers that join this one's guest may bring bind mounts, though it
    # has none: its guest is booted with a shared filesystem, never cloned
    # (a clone can never have one). `--ipc shareable`: made to be joined, as
    # a Kubernetes pod's infrastructure container is.
    joiners_share_fs: bool = False
    # Host CPUs the guest runs on and host NUMA nodes its RAM comes from ([]: any).
    host_cpus: list[int] = field(default_factory=list)
    host_nodes: list[int] = field(default_factory=list)


def device_number(mount: MountPlan) -> str:
    """major:minor of a mount's host block device (InvalidParameter if it is not one)."""
    assert mount.source is not None
    try:
        return disks.block_device(str(mount.source)).number
    except disks.NotBlockDevice as e:
        raise InvalidParameter(str(e)) from None


def refused_setup(e: AgentError) -> HbdError | None:
    """dockerd's error when a guest refuses a container's setup for what the
    user asked (a volume subpath that is missing or leaves its volume): 404 or
    400; None for the guest's own failures."""
    if e.kind == "notfound":
        return NotFound(e.message)
    if e.kind == "invalid":
        return InvalidParameter(e.message)
    return None


class PortPins(Protocol):
    """What a guest may send on each of its taps (the network service's
    anti-spoofing pins): one pin per plugged tap."""

    async def pin_ports(self, ports: dict[str, Endpoint]) -> None: ...

    async def unpin_ports(self, taps: list[str]) -> None: ...


class SandboxManager:
    def __init__(self, config: Config, state: StateStore, driver: GuestDriver, accel: str,
                 tap_prefix: str, pins: PortPins) -> None:
        self.config = config
        self.state = state
        self.driver = driver
        self.accel = accel
        self.tap_prefix = tap_prefix
        self.pins = pins
        self.sandboxes: dict[str, Sandbox] = {}
        self.shares = hostmount.ShareSpace(config.exec_root / SHARE_SPACE_DIR)

    def _save(self, sb: Sandbox) -> None:
        self.state.put("sandboxes", sb.id, sb.record.to_dict())

    def holding(self, container_id: str) -> Sandbox | None:
        """The live sandbox a container is a member of (running or not)."""
        for sb in self.sandboxes.values():
            if container_id in sb.record.members and not sb.gone.is_set():
                return sb
        return None

    # -- boot --------------------------------------------------------------------------

    async def boot(self, plan: ContainerPlan, maintenance: bool = False) -> ContainerInGuest:
        """A new guest with `plan`'s container in it (created, not started).

        A maintenance guest (for cp, export, diff and commit of a stopped
        container) has no network and small RAM."""
        sid = secrets.token_hex(16)
        run_dir = self.config.exec_root / sid
        run_dir.mkdir(parents=True)
        shares = plan.joiners_share_fs or any(m.kind == "dir" for m in plan.mounts)
        record = SandboxRecord(id=sid, owner=plan.container_id,
                               shared_fs=not maintenance or shares)
        member = Member(plan.container_id, record.new_name("c"), record.new_name("n"), True)
        tap_fds: list[int] = []
        try:
            nics = self._make_slots(record, sid, 0 if maintenance else self.config.vm.nic_slots,
                                    plan.endpoints, tap_fds)
            disks = self._boot_disks(record, member, plan)
            self._claim_devices(record, plan)
            if record.shared_fs:
                self.shares.make_export_dir(run_dir / "fs")
            setup = self._container_setup(record, member, plan, run_dir / "fs", hot=False)
            taken = [self._take_slot(record, member.netns, e) for e in plan.endpoints]
            await self._plug([(slot, e) for (slot, _), e in zip(taken, plan.endpoints,
                                                               strict=True)])
            attach = [interface for _, interface in taken]
            spec = GuestSpec(
                vm=self._vm_spec(run_dir, plan.memory_mib, plan.vcpus, disks, nics,
                                 plan.host_cpus, plan.host_nodes),
                setup=SandboxSetup(nics=[NicSlot(s.boot_mac, s.name) for s in record.slots],
                                   shared_fs="hbdfs" if record.shared_fs else "",
                                   scan=[d.lun for d in disks if d.lun > 2],
                                   entropy=secrets.token_bytes(64)),
                network=NetworkUpdate(member.netns, attach=attach,
                                      routes=self._routes(record, member.netns)),
                container=setup,
                shared_dir=run_dir / "fs" if record.shared_fs else None,
                shared_dir_namespace=self.shares.namespace if record.shared_fs else None,
                # A clone has no shared filesystem: only for a container that
                # needs none at start (block volumes are disks, fine), and not
                # bound to NUMA nodes (a template's RAM is not).
                may_clone=(self.config.vm.templates and not maintenance and not shares
                           and not plan.host_nodes),
            )
            guest = await self.driver.boot(spec)
            if record.shared_fs and not guest.shared_fs:
                record.shared_fs = False
                self.shares.remove_export_dir(run_dir / "fs")
            record.template = guest.template
        except net.NetError as e:
            await self._unpin_quietly(record.slots)
            self.shares.remove_export_dir(run_dir / "fs")
            shutil.rmtree(run_dir, ignore_errors=True)
            raise SystemError_(f"failed to create task for container: {e}") from e
        except BaseException:
            await self._unpin_quietly(record.slots)
            self.shares.remove_export_dir(run_dir / "fs")
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            for fd in tap_fds:
                os.close(fd)  # QEMU holds its own: the taps go when it goes
        member.main_proc = record.take_proc()
        record.members[plan.container_id] = member
        sb = Sandbox(record, run_dir, guest)
        self.sandboxes[sid] = sb
        self._save(sb)
        return ContainerInGuest(sb, member)

    def _vm_spec(self, run_dir: Path, memory_mib: int, vcpus: int, disks: list[DiskSpec],
                 nics: list[NicSpec], host_cpus: list[int],
                 host_nodes: list[int]) -> VMSpec:
        return VMSpec(
            run_dir=run_dir, kernel=self.config.vm.kernel_path(),
            initrd=self.config.vm.initrd_path(), accel=self.accel,
            memory_mib=memory_mib, vcpus=vcpus, disks=disks, nics=nics,
            host_cpus=host_cpus, host_nodes=host_nodes,
            tcg_tb_size_mib=self.config.vm.tcg_tb_size_mib,
            cmdline="hbd.trace" if self.config.vm.guest_trace else "")

    async def prepare(self) -> None:
        """Have the template of the guests most containers get built, in the
        background (hbd.toml's memory, vCPUs and NIC slots)."""
        if not self.config.vm.templates:
            return
        vm = self._vm_spec(self.config.exec_root / "template", self.config.vm.memory_mib,
                           self.config.vm.vcpus, [],
                           [NicSpec("", "", -1)] * self.config.vm.nic_slots, [], [])
        try:
            await self.driver.prepare(vm)
        except OSError as e:
            log.warning("no guest template: %s", e)

    def _make_slots(self, record: SandboxRecord, sid: str, count: int,
                    endpoints: list[EndpointPlan], fds: list[int]) -> list[NicSpec]:
        if len(endpoints) > count:
            raise InvalidParameter(
                f"a container can be on at most {count} networks (hbd.toml: vm.nic_slots)")
        nics = []
        for i in range(count):
            # The slots a container starts on get its endpoints' MACs at once.
            mac = endpoints[i].endpoint.mac if i < len(endpoints) else \
                "02:68:62:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
            tap = f"{self.tap_prefix}{sid[:8]}{i:x}"
            fds.append(net.open_tap(tap))
            record.slots.append(Slot(i, tap, mac))
            nics.append(NicSpec(tap, mac, fds[-1]))
        return nics

    @staticmethod
    def _boot_disks(record: SandboxRecord, member: Member,
                    plan: ContainerPlan) -> list[DiskSpec]:
        """The disks of the container a guest boots with: image and scratch
        with their conventional serials and LUNs (the guest mounts those
        before it is even asked), then its block volumes and host devices
        (each device once)."""
        disks = [DiskSpec(plan.image_disk, "image", 1, readonly=True),
                 DiskSpec(plan.scratch_disk, "scratch", 2, format="qcow2")]
        record.image_serials[plan.image_id] = "image"
        serials = ["image", "scratch"]
        for mount in plan.mounts:
            if not mount.disk:
                continue
            assert mount.source is not None
            if mount.kind == "image":
                serial = record.image_serials.get(mount.image_id)
                if serial is None:
                    serial = record.new_name("d")
                    disks.append(DiskSpec(mount.source, serial, len(disks) + 1,
                                          readonly=True))
                    record.image_serials[mount.image_id] = serial
                serials.append(serial)
                continue
            number = device_number(mount) if mount.host_device else ""
            if number in record.devices:
                serials.append(record.devices[number])
                continue
            disk = DiskSpec(mount.source, record.new_name("d"), len(disks) + 1,
                            readonly=mount.device_readonly,
                            format="raw" if mount.host_device else "qcow2",
                            host_device=mount.host_device)
            disks.append(disk)
            serials.append(disk.serial)
            if number:
                record.devices[number] = disk.serial
                if disk.readonly:
                    record.readonly_disks.append(disk.serial)
        for disk in disks:
            record.disks[disk.serial] = disk.lun
        member.disks.extend(serials)
        return disks

    def _claim_devices(self, record: SandboxRecord, plan: ContainerPlan) -> None:
        """The host devices a container brings are this guest's alone, and
        never mounted on the host while it has them."""
        for mount in plan.mounts:
            if mount.host_device:
                assert mount.source is not None
                self._check_device_free(record, mount, device_number(mount))

    def _check_device_free(self, record: SandboxRecord, mount: MountPlan,
                           number: str) -> None:
        for other in self.sandboxes.values():
            if other.record is not record and not other.gone.is_set() and \
                    number in other.record.devices:
                raise Conflict(f"device {mount.source} is attached to another guest "
                               f"(container {other.record.owner[:12]}): a block device "
                               "is one guest's at a time")
        assert mount.source is not None
        mounted = disks.host_mounts_of(disks.block_device(str(mount.source)))
        if mounted:
            raise Conflict(f"device {mount.source} is mounted on the host at "
                           f"{', '.join(mounted)}: a guest cannot have it at the same time")

    # -- what a container is in the guest ---------------------------------------------------

    def _container_setup(self, record: SandboxRecord, member: Member, plan: ContainerPlan,
                         export_dir: Path, hot: bool) -> ContainerSetup:
        """CREATE for the container: its ids, disks, mounts. Shares are mounted
        into the export directory here; `hot` disks have been added already."""
        setup = plan.setup
        setup.container = member.guest_id
        setup.netns = member.netns
        setup.pidns = self._guest_id(record, plan.pid_of)
        setup.ipcns = self._guest_id(record, plan.ipc_of)
        serials = [s for s in member.disks]
        setup.image_disk, setup.scratch_disk = serials[0], serials[1]
        volumes = iter(serials[2:])
        setup.mounts = []
        for mount in plan.mounts:
            if mount.kind == "tmpfs":
                setup.mounts.append(MountSpec("tmpfs", mount.target, options=mount.options,
                                              readonly=mount.readonly))
            elif mount.kind == "device":
                setup.mounts.append(MountSpec("device", mount.target, next(volumes),
                                              mode=mount.mode))
            elif mount.kind == "image":
                # Mounted read-only itself: the guest's disk is read-only.
                setup.mounts.append(MountSpec("disk", mount.target, next(volumes),
                                              readonly=True, subpath=mount.subpath,
                                              fs_flags=MS_RDONLY))
            elif mount.kind == "block":
                # The guest resolves a block volume's subpath: only it reads that disk.
                setup.mounts.append(MountSpec("disk", mount.target, next(volumes),
                                              readonly=mount.readonly, copy_up=mount.copy_up,
                                              subpath=mount.subpath, fstype=mount.fstype,
                                              fs_flags=mount.fs_flags,
                                              fs_options=mount.fs_options))
            else:
                assert mount.source is not None
                entry = record.new_name("s")
                try:
                    writable = self.shares.attach_share(
                        mount.source, export_dir / entry, mount.host_readonly, mount.subpath,
                        recursive=not mount.readonly_non_recursive,
                        follow_host=mount.follow_host)
                except OSError as e:
                    raise InvalidParameter(f"cannot mount {mount.source}: {e.strerror}") from e
                except hostmount.NotAccessible as e:
                    raise NotFound(str(e)) from e
                except hostmount.EscapesBase as e:
                    raise InvalidParameter(str(e)) from e
                member.shares.append(entry)
                setup.mounts.append(MountSpec("share", mount.target, entry,
                                              readonly=mount.readonly, copy_up=mount.copy_up,
                                              writable=writable))
        return setup

    @staticmethod
    def _guest_id(record: SandboxRecord, container_id: str) -> str:
        if not container_id:
            return ""
        peer = record.members.get(container_id)
        if peer is None:
            raise Conflict(f"container {container_id} is not running")
        return peer.guest_id

    @staticmethod
    def _take_slot(record: SandboxRecord, netns: str,
                   plan: EndpointPlan) -> tuple[Slot, InterfaceSpec]:
        """A spare slot for the endpoint, and the interface the guest makes of it."""
        spare = record.spare_slots()
        if not spare:
            raise Conflict(f"no free network slot in the guest: each holds "
                           f"{len(record.slots)} NICs (hbd.toml: vm.nic_slots)")
        slot = spare[0]
        slot.netns, slot.ifname = netns, plan.endpoint.ifname
        e = plan.endpoint
        slot.network, slot.gateway, slot.gateway6 = plan.network, e.gateway, e.gateway6
        slot.internal, slot.namespace = plan.internal, plan.namespace
        return slot, InterfaceSpec(nic=slot.name, name=e.ifname, mac=e.mac, addresses=e.cidrs)

    async def _plug(self, slots: list[tuple[Slot, EndpointPlan]]) -> None:
        """The slots' taps pinned to their endpoints (one transaction), then
        plugged into their bridges: no moment on a bridge without the pin."""
        await self.pins.pin_ports({slot.tap: plan.endpoint for slot, plan in slots})
        for slot, plan in slots:
            await net.plug_tap(slot.tap, plan.bridge, namespace=plan.namespace)

    async def _unplug(self, slots: list[Slot]) -> None:
        """The slots' taps off their bridges, then unpinned; spare slots again."""
        for slot in slots:
            await net.unplug_tap(slot.tap, slot.namespace)
            slot.release()
            slot.namespace = ""
        await self._unpin_quietly(slots)

    async def _unpin_quietly(self, slots: list[Slot]) -> None:
        """The slots' pins dropped, on paths that must go on whatever nftables
        says (leaving, undoing): a pin that stays is the next rule change's
        to drop (the network service rebuilds its tables after a failure)."""
        if not slots:
            return
        try:
            await self.pins.unpin_ports([slot.tap for slot in slots])
        except HbdError as e:
            log.warning("cannot unpin taps %s: %s", [slot.tap for slot in slots], e.message)

    @staticmethod
    def _routes(record: SandboxRecord, netns: str) -> list[RouteSpec]:
        """Each family's default route goes through the first network (in the
        order the container joined them) that is not internal and has a
        gateway of that family."""
        slots = [s for s in record.netns_slots(netns) if not s.internal]
        routes = [RouteSpec("0.0.0.0/0", s.gateway) for s in slots if s.gateway][:1]
        return routes + [RouteSpec("::/0", s.gateway6) for s in slots if s.gateway6][:1]

    # -- joining a running sandbox ---------------------------------------------------------------

    async def join(self, sb: Sandbox, plan: ContainerPlan) -> ContainerInGuest:
        """Add `plan`'s container to a running sandbox (created, not started)."""
        async with sb.lock:
            record = sb.record
            if sb.gone.is_set():
                # Its last container left while this one waited for the lock.
                raise Conflict("the containers this one shares namespaces with have stopped")
            if plan.container_id in record.members:
                raise Conflict(f"container {plan.container_id[:12]} is in its sandbox already")
            if not record.shared_fs and any(m.kind == "dir" for m in plan.mounts):
                # The guest is a clone of a template: no shared filesystem
                # (see GuestSpec.may_clone), and none can come while it runs.
                raise Conflict(
                    f"container {record.owner[:12]} runs in a guest started without a shared "
                    "filesystem (it had no bind mounts or shared volumes), so a container "
                    "joining it cannot have any: give it block volumes, or give "
                    f"{record.owner[:12]} a bind mount or shared volume too")
            if plan.netns_of:
                peer = record.members.get(plan.netns_of)
                if peer is None:
                    raise Conflict(f"cannot join network of a non running container: "
                                   f"{plan.netns_of}")
                member = Member(plan.container_id, record.new_name("c"), peer.netns, False)
            else:
                member = Member(plan.container_id, record.new_name("c"), record.new_name("n"),
                                True)
            added: list[str] = []
            plugged: list[Slot] = []
            try:
                await self._add_disks(sb, member, plan, added)
                setup = self._container_setup(record, member, plan, sb.export_dir, hot=True)
                if member.owns_netns:
                    update = NetworkUpdate(member.netns)
                    for endpoint in plan.endpoints:
                        slot, interface = self._take_slot(record, member.netns, endpoint)
                        plugged.append(slot)
                        update.attach.append(interface)
                    await self._plug(list(zip(plugged, plan.endpoints, strict=True)))
                    update.routes = self._routes(record, member.netns)
                    await sb.guest.network(update)
                await sb.guest.create(setup)
            except AgentError as e:
                await self._undo_join(sb, member, added, plugged)
                raise (refused_setup(e) or
                       SystemError_(f"failed to create task for container: {e}")) from e
            except net.NetError as e:
                await self._undo_join(sb, member, added, plugged)
                raise SystemError_(f"failed to create task for container: {e}") from e
            except BaseException:
                await self._undo_join(sb, member, added, plugged)
                raise
            member.main_proc = record.take_proc()
            record.members[plan.container_id] = member
            self._save(sb)
            return ContainerInGuest(sb, member)

    async def _add_disks(self, sb: Sandbox, member: Member, plan: ContainerPlan,
                         added: list[str]) -> None:
        """The image disk (shared with a container of the same image), the
        scratch disk and block volumes."""
        record = sb.record
        member.disks.append(await self._add_image(sb, plan.image_id, plan.image_disk, added))
        scratch = record.new_name("d")
        await self._hot_add(sb, plan.scratch_disk, scratch, added)
        member.disks.append(scratch)
        for mount in plan.mounts:
            if mount.host_device:
                member.disks.append(await self._add_host_device(sb, mount, added))
            elif mount.kind == "image":
                assert mount.source is not None
                member.disks.append(await self._add_image(sb, mount.image_id, mount.source,
                                                          added))
            elif mount.disk:
                assert mount.source is not None
                serial = record.new_name("d")
                await self._hot_add(sb, mount.source, serial, added)
                member.disks.append(serial)

    async def _add_image(self, sb: Sandbox, image_id: str, disk: Path,
                         added: list[str]) -> str:
        """The serial of an image's disk in the guest: the one there (a
        container of that image, an image mount), or attached now."""
        record = sb.record
        serial = record.image_serials.get(image_id)
        if serial is None or serial not in record.disks:
            serial = record.new_name("d")
            await self._hot_add(sb, disk, serial, added, readonly=True, fmt="raw")
            record.image_serials[image_id] = serial
        return serial

    async def _add_host_device(self, sb: Sandbox, mount: MountPlan, added: list[str]) -> str:
        """The serial of a host block device in the guest: attached now, or
        already, for another container of the guest."""
        record = sb.record
        number = device_number(mount)
        serial = record.devices.get(number)
        if serial is not None and serial in record.disks:
            if serial in record.readonly_disks and not mount.device_readonly:
                raise Conflict(f"device {mount.source} is attached read-only to the guest "
                               "for another of its containers: it cannot be written here")
            return serial
        self._check_device_free(record, mount, number)
        assert mount.source is not None
        serial = record.new_name("d")
        record.devices[number] = serial  # claimed before the attach awaits
        try:
            await self._hot_add(sb, mount.source, serial, added,
                                readonly=mount.device_readonly, fmt="raw", host_device=True)
        except BaseException:
            record.devices.pop(number, None)
            raise
        if mount.device_readonly:
            record.readonly_disks.append(serial)
        return serial

    @staticmethod
    async def _hot_add(sb: Sandbox, path: Path, serial: str, added: list[str],
                       readonly: bool = False, fmt: str = "qcow2",
                       host_device: bool = False) -> None:
        disk = DiskSpec(path, serial, sb.record.free_lun(), readonly=readonly, format=fmt,
                        host_device=host_device)
        try:
            await sb.guest.add_disk(disk)
        except VMError as e:
            raise SystemError_(f"cannot attach {path.name} to the guest: {e}") from e
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise Conflict(f"device {path} is in use on the host (mounted, or held "
                               "by another guest)") from e
            raise SystemError_(f"cannot open {path}: {e.strerror}") from e
        sb.record.disks[serial] = disk.lun
        added.append(serial)

    async def _undo_join(self, sb: Sandbox, member: Member, added: list[str],
                         plugged: list[Slot]) -> None:
        await self._unplug(plugged)
        for serial in added:
            with contextlib.suppress(VMError):
                await sb.guest.remove_disk(serial)
            sb.record.forget_disk(serial)
        for entry in member.shares:
            self.shares.detach_share(sb.export_dir / entry)

    # -- leaving ------------------------------------------------------------------------------

    async def leave(self, view: ContainerInGuest, clean: bool) -> None:
        """The container's main process has exited: take it out of its sandbox.
        The last one out powers the guest off (`clean`: syncing its disks
        first), or kills it."""
        sb, member = view.sandbox, view.member
        async with sb.lock:
            record = sb.record
            if member.container_id not in record.members:
                return
            if len(record.members) == 1:
                await self._end(sb, clean)
                return
            try:
                await sb.guest.destroy_container(member.guest_id)
            except AgentError as e:
                log.warning("guest of sandbox %s could not destroy %s: %s", sb.id[:12],
                            member.container_id[:12], e.message)
            del record.members[member.container_id]
            await self._release(sb, member)
            self._save(sb)

    async def release_network(self, view: ContainerInGuest) -> None:
        """A container whose main process has exited leaves its networks at once,
        ahead of the rest of its leaving: when `docker stop` returns, the
        containers sharing its network namespace have lost its interfaces, as
        in dockerd. (A guest's only container takes them along when it powers
        off.)"""
        sb, member = view.sandbox, view.member
        if view.alone or not member.owns_netns:
            return
        async with sb.lock:
            if member.container_id in sb.record.members:
                await self._release_netns(sb, member)
                self._save(sb)

    async def _release_netns(self, sb: Sandbox, leaving: Member) -> None:
        """The slots of the network namespace the leaving container made go back
        to spare; the namespace itself goes once no other container lives in
        it (one that shares it keeps it, with only `lo`)."""
        record = sb.record
        slots = record.netns_slots(leaving.netns) if leaving.owns_netns else []
        still_used = any(m.netns == leaving.netns and m.container_id != leaving.container_id
                         for m in record.members.values())
        if not slots and still_used:
            return
        update = NetworkUpdate(leaving.netns, delete=not still_used,
                               detach=[InterfaceRemoval(s.ifname, s.name) for s in slots])
        with contextlib.suppress(AgentError):
            await sb.guest.network(update)
        await self._unplug(slots)

    async def _release(self, sb: Sandbox, member: Member) -> None:
        """What a container that left held: its network namespace's slots (if it
        made it) and the namespace (if nobody else is in it), its disks no other
        container uses, its shares."""
        record = sb.record
        await self._release_netns(sb, member)
        for serial in member.disks:
            if serial in record.disks and not record.disk_users(serial):
                try:
                    await sb.guest.remove_disk(serial)
                except VMError as e:
                    log.warning("cannot detach disk %s: %s", serial, e)
                    continue
                record.forget_disk(serial)
        for entry in member.shares:
            self.shares.detach_share(sb.export_dir / entry)

    async def _end(self, sb: Sandbox, clean: bool) -> None:
        if clean:
            await sb.guest.poweroff(POWEROFF_TIMEOUT)
        else:
            await sb.guest.kill()
        # Its taps went with its QEMU; their pins go now.
        await self._unpin_quietly([slot for slot in sb.record.slots if slot.network])
        self._forget(sb)

    def _forget(self, sb: Sandbox) -> None:
        sb.gone.set()
        self.sandboxes.pop(sb.id, None)
        self.state.delete("sandboxes", sb.id)
        self.shares.remove_export_dir(sb.export_dir)
        shutil.rmtree(sb.run_dir, ignore_errors=True)

    # -- networks joined and left while running ---------------------------------------------------

    async def connect(self, view: ContainerInGuest, endpoint: EndpointPlan) -> None:
        sb, member = view.sandbox, view.member
        async with sb.lock:
            record = sb.record
            slot, interface = self._take_slot(record, member.netns, endpoint)
            update = NetworkUpdate(member.netns, attach=[interface])
            try:
                await self._plug([(slot, endpoint)])
                update.routes = self._routes(record, member.netns)
                await sb.guest.network(update)
            except (AgentError, net.NetError) as e:
                await self._unplug([slot])
                raise SystemError_(f"cannot connect the container to {endpoint.network}: "
                                   f"{e}") from e
            except BaseException:
                await self._unplug([slot])
                raise
            self._save(sb)

    async def disconnect(self, view: ContainerInGuest, network: str) -> None:
        sb, member = view.sandbox, view.member
        async with sb.lock:
            record = sb.record
            slot = next((s for s in record.slots if s.netns == member.netns and
                         s.network == network), None)
            if slot is None:
                return
            removal = InterfaceRemoval(slot.ifname, slot.name)
            slot.release()
            update = NetworkUpdate(member.netns, detach=[removal],
                                   routes=self._routes(record, member.netns))
            try:
                await sb.guest.network(update)
            finally:
                await self._unplug([slot])
                self._save(sb)

    def netns_members(self, view: ContainerInGuest) -> list[str]:
        """Containers sharing the view's network namespace (itself included)."""
        return [cid for cid, m in view.sandbox.record.members.items()
                if m.netns == view.member.netns]

    async def rewrite_files(self, view: ContainerInGuest, files: list[FileSpec]) -> None:
        with contextlib.suppress(AgentError):
            await view.rewrite_files(files)

    # -- after an hbd restart -------------------------------------------------------------

    async def restore(self, marks: Mapping[str, OutputMark]
                      ) -> dict[str, ContainerInGuest]:
        """Re-attach every sandbox that still runs; the containers in them, by id.
        Their main processes' output resumes from `marks` (by container id)."""
        found: dict[str, ContainerInGuest] = {}
        for key, rec in self.state.load("sandboxes"):
            try:
                record = SandboxRecord.from_dict(rec)
            except (KeyError, TypeError, ValueError) as e:
                log.error("dropping unreadable sandbox record %s: %s", key, e)
                self.state.delete("sandboxes", key)
                continue
            run_dir = self.config.exec_root / record.id
            guest: Guest | None = await self.driver.reattach(
                run_dir, _output_resume(record, marks))
            if guest is None:
                log.info("sandbox %s ended while hbd was down", record.id[:12])
                self.state.delete("sandboxes", record.id)
                self.shares.remove_export_dir(run_dir / "fs")
                shutil.rmtree(run_dir, ignore_errors=True)
                continue
            sb = Sandbox(record, run_dir, guest)
            # Process ids go on from the highest the guest has seen.
            record.next_proc = max([record.next_proc] + [p.proc + 1 for p in guest.processes])
            self.sandboxes[record.id] = sb
            for cid, member in record.members.items():
                found[cid] = ContainerInGuest(sb, member)
        await self._discard_orphans()
        return found

    def output_claimed(self) -> None:
        """After a restore, every container's output is attached again."""
        for sb in self.sandboxes.values():
            sb.guest.output_claimed()

    async def pin_again(self, view: ContainerInGuest, endpoints: dict[str, Endpoint]) -> None:
        """After an hbd restart: the taps of the network namespace the container
        made, pinned to its endpoints (by network) again."""
        if not view.member.owns_netns:
            return
        slots = view.sandbox.record.netns_slots(view.member.netns)
        await self.pins.pin_ports({slot.tap: endpoints[slot.network] for slot in slots
                                   if slot.network in endpoints})

    async def _discard_orphans(self) -> None:
        """Run directories of sandboxes never recorded: boots an earlier hbd
        died in the middle of (kill -9 during a start). Their QEMU would hold
        the container's disks; their taps go with it."""
        if not self.config.exec_root.is_dir():
            return
        for run_dir in self.config.exec_root.iterdir():
            if not SANDBOX_ID.fullmatch(run_dir.name) or run_dir.name in self.sandboxes \
                    or not run_dir.is_dir():
                continue
            log.warning("discarding sandbox %s, whose boot hbd did not finish",
                        run_dir.name[:12])
            await self.driver.discard(run_dir)
            self.shares.remove_export_dir(run_dir / "fs")
            shutil.rmtree(run_dir, ignore_errors=True)

    def detach_all(self) -> None:
        """hbd is stopping: guests keep running, we stop watching them."""
        for sb in self.sandboxes.values():
            sb.guest.detach()
        # Guests that run on keep their shares; with none, nothing is left.
        self.shares.close(end=not self.sandboxes)


def _output_resume(record: SandboxRecord, marks: Mapping[str, OutputMark]) -> list[OutputResume]:
    """Where the sandbox's members' main processes' output is wanted from."""
    return [OutputResume(member.guest_id, member.main_proc, mark.frames)
            for cid, member in record.members.items()
            if (mark := marks.get(cid)) is not None and mark.proc == member.main_proc]
