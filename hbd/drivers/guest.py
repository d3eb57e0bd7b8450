"""A guest: one booted microvm, its agent channel and, when it shares host
directories, its virtiofsd. Knows nothing of Docker.

The container service's `Sandbox` drives a `Guest`: it boots it with the
container it starts with, adds containers, disks and network interfaces to
it while it runs, and powers it off when its last container has gone.
`QemuGuestDriver` boots real microvms (with a boot watchdog and retry: boots
can stall on a loaded host); `hbd.drivers.fake.FakeGuestDriver` runs
processes on the host for fast tests of the layers above.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hbd.drivers.agent import (
    T_CREATE,
    T_NETWORK,
    T_SANDBOX,
    AgentClient,
    AgentDisconnected,
    AgentError,
    ContainerSetup,
    FileSpec,
    NetworkUpdate,
    OutputResume,
    ProcessOutput,
    ProcessSpec,
    ProcState,
    ResourceUpdate,
    SandboxSetup,
    Started,
    connect_unless,
)
from hbd.drivers.cgroups import Cgroups
from hbd.drivers.template import TEMPLATE_CMDLINE, Template, TemplateShape, TemplateStore
from hbd.drivers.virtiofs import Virtiofsd, VirtiofsdError
from hbd.drivers.vm import (
    DiskSpec,
    MicroVM,
    NicSpec,
    QemuMicrovmDriver,
    QMPTimeout,
    VMError,
    VMSpec,
    set_affinity,
)
from hbd.tasks import spawn

log = logging.getLogger(__name__)

# console.log is what QEMU writes of the guest's serial console, which a
# hostile guest can flood: past this many bytes on disk, its last
# CONSOLE_KEPT bytes are moved to console.log.1 and it is emptied. (QEMU
# writes on at its own offset, so the file becomes sparse: its blocks, not
# its size, are what is bounded.)
CONSOLE_LIMIT = 1024 * 1024
CONSOLE_KEPT = 64 * 1024
CONSOLE_CHECK_INTERVAL = 5.0


class BootError(Exception):
    """The guest did not come up (QEMU refused, or the agent never answered),
    or refused its setup: `refusal` is then the guest's ERROR."""

    def __init__(self, message: str, refusal: AgentError | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclass
class GuestSpec:
    vm: VMSpec
    setup: SandboxSetup
    # The container the guest boots with, and its network namespace: sent
    # with the handshake, so the guest sets them up as soon as it can.
    network: NetworkUpdate | None = None
    container: ContainerSetup | None = None
    # Exported to the guest by a virtiofsd of its own (its shared filesystem),
    # a path of the mount namespace pinned at `shared_dir_namespace` (None:
    # hbd's own), which virtiofsd is started in.
    shared_dir: Path | None = None
    shared_dir_namespace: Path | None = None
    # The guest may be a clone of a template (of the shape of `vm`) instead
    # of a boot: it then has no shared filesystem (`Guest.shared_fs`), since
    # a vhost-user-fs device cannot be migrated nor use a clone's private
    # RAM. The caller allows it when nothing needs one at start.
    may_clone: bool = False


class Guest(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def template(self) -> str:
        """The key of the template it was cloned from; "" for a boot."""
        ...

    @property
    def shared_fs(self) -> bool:
        """Whether it has the shared filesystem its spec asked for."""
        ...

    @property
    def features(self) -> frozenset[str]:
        """What its init does beyond the protocol's first version 2 (HELLO)."""
        ...

    @property
    def processes(self) -> list[ProcState]: ...

    @property
    def failure(self) -> str:
        """Why hbd destroyed the guest (it broke the protocol, missed a
        deadline); "" while it has not."""
        ...

    async def create(self, spec: ContainerSetup) -> None: ...

    async def destroy_container(self, container: str) -> None: ...

    async def network(self, update: NetworkUpdate) -> None: ...

    async def add_disk(self, disk: DiskSpec) -> None: ...

    async def remove_disk(self, serial: str) -> None: ...

    async def start(self, spec: ProcessSpec, output: ProcessOutput) -> Started: ...

    def attach_output(self, proc: int, output: ProcessOutput) -> None: ...

    def output_from(self, proc: int) -> int:
        """After a re-attach: the number of the next output frame of `proc`
        (where the guest resumed it, agent.OutputResume)."""
        ...

    def output_claimed(self) -> None:
        """After a re-attach, every process whose output hbd wants is
        attached: the rest's output is dropped, not held."""
        ...

    async def write_stdin(self, proc: int, data: bytes) -> None: ...

    async def close_stdin(self, proc: int) -> None: ...

    async def signal(self, proc: int, signum: int) -> None: ...

    async def resize(self, proc: int, height: int, width: int) -> None: ...

    async def release(self, proc: int) -> None: ...

    async def stats(self, container: str) -> dict[str, Any]: ...

    async def ps(self, container: str) -> dict[str, Any]: ...

    async def update(self, container: str, resources: ResourceUpdate) -> None: ...

    async def freeze(self, container: str, frozen: bool) -> None: ...

    async def rewrite_files(self, container: str, files: list[FileSpec]) -> None: ...

    async def set_memory(self, mib: int) -> None: ...

    def set_host_cpus(self, host_cpus: list[int]) -> None: ...

    async def poweroff(self, timeout: float) -> None: ...

    async def kill(self) -> None: ...

    async def wait_exit(self) -> None: ...

    def detach(self) -> None: ...


class GuestDriver(Protocol):
    async def boot(self, spec: GuestSpec) -> Guest: ...

    async def prepare(self, vm: VMSpec) -> None:
        """Get ready to start guests of `vm`'s shape fast: build its template
        in the background. Only its shape counts (not its paths, taps or
        disks)."""
        ...

    async def reattach(self, run_dir: Path, resume: list[OutputResume]) -> Guest | None:
        """The guest of `run_dir` if it still runs, its processes' output
        resumed from where `resume` says."""
        ...

    async def discard(self, run_dir: Path) -> None:
        """End whatever still runs for `run_dir` without talking to it: a
        guest whose boot an earlier hbd did not live to finish."""
        ...


# How long after its virtiofsd a guest's QEMU may take to exit of its own
# before the virtiofsd's exit is taken for its own failure (_watch_shared_fs).
VIRTIOFSD_EXIT_GRACE = 2.0


class QemuGuest:
    def __init__(self, vm: MicroVM, agent: AgentClient, virtiofsd: Virtiofsd | None,
                 template: str = "") -> None:
        self.vm = vm
        self.agent = agent
        self.virtiofsd = virtiofsd
        self._template = template
        self._failure = ""
        # Set once hbd itself ends the guest (its virtiofsd exits then too).
        self._ending = False
        agent.on_broken = self._broken
        self._console_cap = spawn(cap_console_log(vm))
        self._shared_fs_watch = spawn(self._watch_shared_fs(virtiofsd)) \
            if virtiofsd is not None else None

    async def _watch_shared_fs(self, virtiofsd: Virtiofsd) -> None:
        """A virtiofsd that dies while its guest runs takes the guest's shared
        filesystem with it for good: QEMU's vhost-user-fs does not reconnect,
        and every request the guest sends it waits forever, with the
        container process that made it (uninterruptible, so not even SIGKILL
        ends it). The guest is destroyed instead, with the reason.

        QEMU ending first (a crash, a poweroff) lets go of virtiofsd, which
        then exits a moment before QEMU is seen gone: that is not virtiofsd's
        doing, hence the grace."""
        await virtiofsd.wait_exit()
        if self._ending:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.vm.wait_exit()),
                                   VIRTIOFSD_EXIT_GRACE)
        except TimeoutError:
            if not self._ending:
                self._broken("its virtiofsd (the server of its shared filesystem) exited")

    def _broken(self, reason: str) -> None:
        """The guest is not to be trusted with another call: destroy it. Its
        containers end as QEMU's exit is noticed (monitor), as if it had died."""
        if not self._failure:
            self._failure = reason
            log.warning("guest %s destroyed: %s", self.vm.run_dir.name, reason)
            spawn(self.kill())

    @property
    def failure(self) -> str:
        return self._failure

    async def _qmp(self, call: Any) -> Any:
        """A QMP call: QEMU not answering in time is a guest to destroy."""
        try:
            return await call
        except QMPTimeout as e:
            self._broken(str(e))
            raise

    @property
    def pid(self) -> int:
        return self.vm.pid

    @property
    def template(self) -> str:
        return self._template

    @property
    def shared_fs(self) -> bool:
        return self.virtiofsd is not None

    @property
    def features(self) -> frozenset[str]:
        return self.agent.guest_info.features

    @property
    def processes(self) -> list[ProcState]:
        return self.agent.processes

    async def create(self, spec: ContainerSetup) -> None:
        await self.agent.create(spec)

    async def destroy_container(self, container: str) -> None:
        await self.agent.destroy(container)

    async def network(self, update: NetworkUpdate) -> None:
        await self.agent.network(update)

    async def add_disk(self, disk: DiskSpec) -> None:
        await self._qmp(self.vm.add_disk(disk))

    async def remove_disk(self, serial: str) -> None:
        await self._qmp(self.vm.remove_disk(serial))

    async def start(self, spec: ProcessSpec, output: ProcessOutput) -> Started:
        return await self.agent.start(spec, output)

    def attach_output(self, proc: int, output: ProcessOutput) -> None:
        self.agent.attach_output(proc, output)

    def output_from(self, proc: int) -> int:
        return self.agent.output_from(proc)

    def output_claimed(self) -> None:
        self.agent.output_claimed()

    async def write_stdin(self, proc: int, data: bytes) -> None:
        await self.agent.write_stdin(proc, data)

    async def close_stdin(self, proc: int) -> None:
        await self.agent.close_stdin(proc)

    async def signal(self, proc: int, signum: int) -> None:
        await self.agent.signal(proc, signum)

    async def resize(self, proc: int, height: int, width: int) -> None:
        await self.agent.resize(proc, height, width)

    async def release(self, proc: int) -> None:
        await self.agent.release(proc)

    async def stats(self, container: str) -> dict[str, Any]:
        return await self.agent.stats(container)

    async def ps(self, container: str) -> dict[str, Any]:
        return await self.agent.ps(container)

    async def update(self, container: str, resources: ResourceUpdate) -> None:
        await self.agent.update(container, resources)

    async def freeze(self, container: str, frozen: bool) -> None:
        await self.agent.freeze(container, frozen)

    async def rewrite_files(self, container: str, files: list[FileSpec]) -> None:
        await self.agent.rewrite_files(container, files)

    async def set_memory(self, mib: int) -> None:
        """Balloon the guest to `mib` of RAM (at most what it booted with)."""
        await self._qmp(self.vm.qmp("balloon", value=mib * 1024 * 1024))

    def set_host_cpus(self, host_cpus: list[int]) -> None:
        """Run the guest's vCPUs on those host CPUs only ([] for any)."""
        set_affinity(self.vm.pid, host_cpus)

    async def poweroff(self, timeout: float) -> None:
        """Let the guest sync its disks and power off; force it after `timeout`."""
        self._ending = True
        try:
            await asyncio.wait_for(self.agent.poweroff(), timeout)
            await asyncio.wait_for(self.vm.wait_exit(), timeout)
        except (AgentError, OSError):
            pass  # no channel to ask through: nothing to wait for
        except TimeoutError:
            log.warning("guest %s did not power off in %.0fs; killing it",
                        self.vm.run_dir.name, timeout)
        await self.kill()

    async def kill(self) -> None:
        self._ending = True
        self._console_cap.cancel()
        await self.agent.close()
        await self.vm.destroy()
        if self.virtiofsd is not None:
            # It exits when QEMU lets go of it; this is for one that hangs.
            await self.virtiofsd.stop()

    async def wait_exit(self) -> None:
        await self.vm.wait_exit()

    def detach(self) -> None:
        self._console_cap.cancel()
        if self._shared_fs_watch is not None:
            self._shared_fs_watch.cancel()
        self.vm.close()
        if self.virtiofsd is not None:
            self.virtiofsd.close()


class QemuGuestDriver:
    def __init__(self, vm_driver: QemuMicrovmDriver, boot_timeout: float,
                 boot_retries: int, templates: TemplateStore | None = None) -> None:
        self.vm_driver = vm_driver
        self.boot_timeout = boot_timeout
        self.boot_retries = boot_retries
        self.templates = templates

    async def prepare(self, vm: VMSpec) -> None:
        if self.templates is not None:
            await self.templates.prepare(TemplateShape.of(vm))

    async def boot(self, spec: GuestSpec) -> Guest:
        if spec.may_clone and self.templates is not None:
            template = await self.templates.get(TemplateShape.of(spec.vm))
            if template is not None:
                try:
                    return await self._clone(spec, template)
                except BootError as e:
                    if e.refusal is not None:
                        raise
                    # A template is an optimisation: boot as if there were none.
                    log.warning("guest %s could not be cloned from template %s, booting "
                                "it: %s", spec.vm.run_dir.name, template.key[:12], e)
        return await self._boot(spec)

    async def _clone(self, spec: GuestSpec, template: Template) -> Guest:
        """A guest restored from `template`, then given its disks (on QEMU's
        command line: the guest scans their LUNs, told by SANDBOX), its taps,
        and its own identity (SANDBOX: clock, entropy; NETWORK: MACs and
        addresses) before its first container is created."""
        started = time.monotonic()
        state_fd = os.open(template.state, os.O_RDONLY | os.O_CLOEXEC)
        vm_spec = dataclasses.replace(
            spec.vm, cmdline=f"{template.shape.cmdline} {TEMPLATE_CMDLINE}".strip(),
            nics=[NicSpec(nic.tap, mac, nic.fd)
                  for nic, mac in zip(spec.vm.nics, template.macs, strict=True)],
            shared_fs_socket=None, ram_file=f"/proc/self/fd/{template.ram_fd}",
            ram_shared=False, incoming=True, extra_fds=[template.ram_fd, state_fd])
        try:
            vm = await self.vm_driver.launch(vm_spec)
        except VMError as e:
            raise BootError(str(e)) from e
        finally:
            os.close(state_fd)  # QEMU has its own (the same number in it)
        # Its NICs have their slot names already; every disk needs a scan.
        setup = dataclasses.replace(spec.setup, nics=[], shared_fs="",
                                    scan=sorted({d.lun for d in spec.vm.disks}))
        try:
            await vm.restore(state_fd)
            agent = await self._connect(vm, dataclasses.replace(spec, setup=setup))
        except AgentError as e:
            await vm.destroy()
            if isinstance(e, AgentDisconnected):
                raise BootError(f"{type(e).__name__}: {e}\n{_tail(vm.console_log)}") from e
            raise BootError(f"guest setup failed: {e.message}", e) from e
        except (VMError, TimeoutError, OSError) as e:
            await vm.destroy()
            raise BootError(f"{type(e).__name__}: {e}\n{_tail(vm.console_log)}") from e
        except BaseException:
            await vm.destroy()
            raise
        log.info("guest %s: clone of template %s, set up in %.0f ms", spec.vm.run_dir.name,
                 template.key[:12], (time.monotonic() - started) * 1000)
        return QemuGuest(vm, agent, None, template.key)

    async def _boot(self, spec: GuestSpec) -> Guest:
        last_error = ""
        for attempt in range(self.boot_retries + 1):
            virtiofsd = await self._start_virtiofsd(spec, self.vm_driver.confinement.cgroups)
            try:
                vm = await self.vm_driver.launch(spec.vm)
            except (VMError, OSError) as e:
                # OSError: a socket or disk hbd opens for QEMU (the virtiofsd
                # left running by such a failure was leaked).
                if virtiofsd is not None:
                    await virtiofsd.stop()
                raise BootError(str(e)) from e
            guest = None
            try:
                guest = QemuGuest(vm, await self._connect(vm, spec), virtiofsd)
                return guest
            except AgentDisconnected as e:
                last_error = f"{type(e).__name__}: {e}"
            except AgentError as e:
                # The guest answered and refused: retrying cannot help.
                await self._abandon(vm, virtiofsd)
                raise BootError(f"guest setup failed: {e.message}", e) from e
            except (TimeoutError, OSError) as e:
                last_error = f"{type(e).__name__}: {e}"
            except BaseException:
                await self._abandon(vm, virtiofsd)
                raise
            log.warning("guest %s failed to boot (attempt %d): %s\n%s", spec.vm.run_dir.name,
                        attempt + 1, last_error, _tail(vm.console_log))
            await self._abandon(vm, virtiofsd)
        raise BootError(f"guest did not boot: {last_error}")

    @staticmethod
    async def _start_virtiofsd(spec: GuestSpec, cgroups: Cgroups | None) -> Virtiofsd | None:
        if spec.shared_dir is None:
            spec.vm.shared_fs_socket = None
            return None
        try:
            virtiofsd = await Virtiofsd.start(spec.vm.run_dir, spec.shared_dir,
                                              cgroups=cgroups,
                                              mount_namespace=spec.shared_dir_namespace)
        except (VirtiofsdError, OSError, TimeoutError) as e:
            raise BootError(f"cannot share files with the guest: {e}") from e
        spec.vm.shared_fs_socket = virtiofsd.socket
        return virtiofsd

    @staticmethod
    async def _abandon(vm: MicroVM, virtiofsd: Virtiofsd | None) -> None:
        await vm.destroy()
        if virtiofsd is not None:
            await virtiofsd.stop()

    async def _connect(self, vm: MicroVM, spec: GuestSpec) -> AgentClient:
        spec.setup.time_ns = time.time_ns()
        boot = [(T_SANDBOX, spec.setup.payload())]
        if spec.network is not None:
            boot.append((T_NETWORK, spec.network.payload()))
        if spec.container is not None:
            boot.append((T_CREATE, spec.container.payload()))
        client = await connect_unless(vm.wait_exit(), vm.agent_socket,
                                      timeout=self.boot_timeout, boot=boot)
        if client is None:
            raise AgentDisconnected("QEMU exited during boot")
        return client

    async def reattach(self, run_dir: Path, resume: list[OutputResume]) -> Guest | None:
        vm = self.vm_driver.find(run_dir)
        if vm is None:
            return None
        try:
            agent = await AgentClient.connect(vm.agent_socket, timeout=self.boot_timeout,
                                              resume=resume)
        except (TimeoutError, AgentError, OSError) as e:
            log.warning("cannot reattach to guest %s: %s", run_dir.name, e)
            await vm.destroy()
            return None
        return QemuGuest(vm, agent,
                         Virtiofsd.find(run_dir, self.vm_driver.confinement.cgroups))

    async def discard(self, run_dir: Path) -> None:
        vm = MicroVM.find(run_dir)
        if vm is not None:
            await vm.destroy()
        virtiofsd = Virtiofsd.find(run_dir)
        if virtiofsd is not None:
            await virtiofsd.stop()


def _tail(path: Path, limit: int = 4000) -> str:
    """The end of a log a guest wrote (read from its end: it may be huge)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read(limit).replace(b"\0", b"").decode(errors="replace")
    except OSError:
        return "(no console log)"


def trim_console_log(path: Path) -> bool:
    """Keep a flooded console.log's last CONSOLE_KEPT bytes in console.log.1
    and empty it; True if it was over CONSOLE_LIMIT."""
    try:
        if os.stat(path).st_blocks * 512 <= CONSOLE_LIMIT:
            return False
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - CONSOLE_KEPT))
            kept = f.read(CONSOLE_KEPT).replace(b"\0", b"")
        path.with_name(path.name + ".1").write_bytes(kept)
        os.truncate(path, 0)
    except OSError:
        return False
    return True


async def cap_console_log(vm: MicroVM) -> None:
    """While the guest runs, keep its console.log under CONSOLE_LIMIT."""
    while vm.running:
        await asyncio.to_thread(trim_console_log, vm.console_log)
        await asyncio.sleep(CONSOLE_CHECK_INTERVAL)
