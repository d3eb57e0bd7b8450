"""A guest driver that runs container processes directly on the host.

For fast tests of the API and service layers only: no VM, no isolation, the
image's filesystem is ignored (commands resolve against the host's PATH). It
speaks the same `Guest` interface as the QEMU driver, errors included, so
the state machine above it is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from hbd.drivers.agent import (
    DOCKER_INIT,
    AgentError,
    ContainerSetup,
    ExitStatus,
    FileSpec,
    NetworkUpdate,
    OutputResume,
    ProcessOutput,
    ProcessSpec,
    ProcState,
    ResourceUpdate,
    Started,
)
from hbd.drivers.guest import Guest, GuestSpec
from hbd.drivers.vm import DiskSpec, VMSpec
from hbd.tasks import spawn


def _exec_error(message: str) -> AgentError:
    return AgentError("exec", message, 2)


class FakeGuest:
    def __init__(self, spec: GuestSpec, cloned: bool = False) -> None:
        self.spec = spec
        # "Cloned from a template" (FakeGuestDriver(clones=True)): as a
        # clone, without a shared filesystem.
        self.cloned = cloned
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._states: dict[int, ProcState] = {}
        self._exited = asyncio.Event()
        self._args: dict[int, list[str]] = {}
        self.containers: dict[str, ContainerSetup] = {}
        self.networks: list[NetworkUpdate] = []
        self.disks: dict[str, DiskSpec] = {}
        self.frozen: set[str] = set()
        self.files: dict[str, list[FileSpec]] = {}
        self.resources: dict[str, ResourceUpdate] = {}
        self.memory_mib = spec.vm.memory_mib
        # Every START, as sent.
        self.started: list[ProcessSpec] = []
        self.host_cpus = list(spec.vm.host_cpus)
        # Held as QEMU holds them: the taps exist while the guest does.
        self._taps = [os.dup(nic.fd) for nic in spec.vm.nics]
        if spec.network is not None:
            self.networks.append(spec.network)
        if spec.container is not None:
            self.containers[spec.container.container] = spec.container
            self.files[spec.container.container] = list(spec.container.files)

    def _container(self, container: str) -> ContainerSetup:
        if container not in self.containers:
            raise AgentError("notfound", "no such container", 0)
        return self.containers[container]

    async def create(self, spec: ContainerSetup) -> None:
        if spec.container in self.containers:
            raise AgentError("state", f"container {spec.container} exists", 0)
        self.containers[spec.container] = spec
        self.files[spec.container] = list(spec.files)

    async def destroy_container(self, container: str) -> None:
        self._container(container)
        for proc, state in list(self._states.items()):
            if state.container == container and state.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._procs[proc].pid, signal.SIGKILL)
        del self.containers[container]

    async def network(self, update: NetworkUpdate) -> None:
        self.networks.append(update)

    async def add_disk(self, disk: DiskSpec) -> None:
        self.disks[disk.serial] = disk

    async def remove_disk(self, serial: str) -> None:
        self.disks.pop(serial, None)

    async def freeze(self, container: str, frozen: bool) -> None:
        self._container(container)
        for proc, state in self._states.items():
            if state.container == container and state.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._procs[proc].pid,
                              signal.SIGSTOP if frozen else signal.SIGCONT)
        if frozen:
            self.frozen.add(container)
        else:
            self.frozen.discard(container)

    async def rewrite_files(self, container: str, files: list[FileSpec]) -> None:
        self._container(container)
        held = {f.path: f for f in self.files[container]}
        for f in files:
            if f.path not in held:
                raise AgentError("notfound", f"hbd owns no file {f.path}", 0)
            held[f.path] = f
        self.files[container] = list(held.values())

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def template(self) -> str:
        return "fake-template" if self.cloned else ""

    @property
    def shared_fs(self) -> bool:
        return self.spec.shared_dir is not None and not self.cloned

    @property
    def features(self) -> frozenset[str]:
        return frozenset()  # it has none of the init's builtins

    @property
    def processes(self) -> list[ProcState]:
        return list(self._states.values())

    @property
    def failure(self) -> str:
        return ""

    async def start(self, spec: ProcessSpec, output: ProcessOutput) -> Started:
        if self._exited.is_set():
            raise AgentError("state", "the guest is gone", 0)
        self.started.append(spec)
        if spec.builtin:
            # cp, diff, export and commit run the guest init's own code, which a
            # host process cannot stand in for: refused as an init without it would.
            raise AgentError("builtin", f"the fake guest has no builtin {spec.builtin}", 0)
        args = self._without_init(spec)
        env = dict(e.split("=", 1) for e in spec.env if "=" in e)
        program = args[0]
        if "/" not in program:
            found = shutil.which(program, path=env.get("PATH", os.defpath))
            if found is None:
                raise _exec_error(f'exec: "{program}": executable file not found in $PATH')
        elif not Path(program).exists():
            raise _exec_error(f'exec: "{program}": stat {program}: no such file or directory')
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if spec.tty else asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._procs[spec.proc] = proc
        self._args[spec.proc] = spec.args
        self._states[spec.proc] = ProcState(spec.proc, spec.container, proc.pid, spec.main, True,
                                            0, 0, False)
        spawn(self._pump(spec, proc, output))
        # A host process: the identity a guest would resolve is not known.
        return Started(proc.pid)

    def _without_init(self, spec: ProcessSpec) -> list[str]:
        """The command a guest's docker-init (bound for `init`) would run: the
        host has no /sbin/docker-init, so the fake runs the command itself."""
        setup = self._container(spec.container)
        if setup.init and spec.main and spec.args[:2] == [DOCKER_INIT, "--"]:
            return spec.args[2:]
        return spec.args

    async def _pump(self, spec: ProcessSpec, proc: asyncio.subprocess.Process,
                    output: ProcessOutput) -> None:
        async def copy(reader: asyncio.StreamReader | None, stream: int) -> None:
            if reader is None:
                return
            while chunk := await reader.read(65536):
                # A slow consumer slows the process down, as with a real guest.
                drain = output.on_output(stream, chunk)
                if drain is not None:
                    await drain
            output.on_output_eof(stream)

        await asyncio.gather(copy(proc.stdout, 1), copy(proc.stderr, 2))
        code = await proc.wait()
        signum = -code if code < 0 else 0
        status = ExitStatus(128 + signum if signum else code, signum, False)
        self._states[spec.proc] = ProcState(spec.proc, spec.container, proc.pid, spec.main,
                                            False, status.exit_code, signum, False)
        if spec.main:
            # Every process of the container dies with its main one.
            for other, state in self._states.items():
                if state.container == spec.container and state.running:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self._procs[other].pid, signal.SIGKILL)
        output.on_exit(status)

    def attach_output(self, proc: int, output: ProcessOutput) -> None:
        raise AgentError("notfound", "the fake driver cannot reattach", 0)

    def output_from(self, proc: int) -> int:
        return 0

    def output_claimed(self) -> None:
        pass

    def _proc(self, proc: int) -> asyncio.subprocess.Process:
        if proc not in self._procs:
            raise AgentError("notfound", f"no such process {proc}", 0)
        return self._procs[proc]

    async def write_stdin(self, proc: int, data: bytes) -> None:
        stdin = self._proc(proc).stdin
        if stdin is not None:
            stdin.write(data)
            with contextlib.suppress(ConnectionError):
                await stdin.drain()

    async def close_stdin(self, proc: int) -> None:
        stdin = self._proc(proc).stdin
        if stdin is not None:
            stdin.close()

    async def signal(self, proc: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc(proc).pid, signum)

    async def resize(self, proc: int, height: int, width: int) -> None:
        self._proc(proc)

    async def release(self, proc: int) -> None:
        self._states.pop(proc, None)

    async def stats(self, container: str) -> dict[str, Any]:
        self._container(container)
        return {"memory": {"total": 0, "free": 0, "available": 0, "usage": 0, "limit": 0,
                           "cache": 0}, "cpu": {"usage_ns": 0, "system_ns": 0, "online": 1},
                "pids": len([s for s in self._states.values()
                             if s.running and s.container == container])}

    async def ps(self, container: str) -> dict[str, Any]:
        self._container(container)
        procs = [{"pid": p.pid, "ppid": os.getpid(), "user": "root", "tty": 0, "cpu_ticks": 0,
                  "start_ticks": 0, "cmd": " ".join(self._args[i])}
                 for i, p in self._procs.items()
                 if p.returncode is None and self._states[i].container == container]
        return {"hz": 100, "processes": procs, "uptime_ms": 0}

    async def update(self, container: str, resources: ResourceUpdate) -> None:
        self._container(container)
        self.resources[container] = resources

    async def set_memory(self, mib: int) -> None:
        self.memory_mib = mib

    def set_host_cpus(self, host_cpus: list[int]) -> None:
        self.host_cpus = list(host_cpus)

    async def poweroff(self, timeout: float) -> None:
        await self.kill()

    async def kill(self) -> None:
        for fd in self._taps:
            os.close(fd)
        self._taps = []
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        self._exited.set()

    async def wait_exit(self) -> None:
        await self._exited.wait()

    def detach(self) -> None:
        pass


class FakeGuestDriver:
    def __init__(self, clones: bool = False) -> None:
        self.booted: list[FakeGuest] = []
        self.clones = clones
        self.prepared: list[VMSpec] = []

    async def prepare(self, vm: VMSpec) -> None:
        self.prepared.append(vm)

    async def boot(self, spec: GuestSpec) -> Guest:
        guest = FakeGuest(spec, cloned=self.clones and spec.may_clone)
        self.booted.append(guest)
        return guest

    async def reattach(self, run_dir: Path, resume: list[OutputResume]) -> Guest | None:
        return None

    async def discard(self, run_dir: Path) -> None:
        pass
