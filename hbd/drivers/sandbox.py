"""A sandbox: one booted guest plus its agent channel. Knows nothing of Docker.

`Sandbox` is what the container service drives. `QemuSandboxDriver` boots
real microvms (with a boot watchdog and retry: boots can stall on a loaded
host); `hbd.drivers.fake.FakeSandboxDriver` runs processes on the host for
fast tests of the layers above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hbd.drivers.agent import (
    AgentClient,
    AgentDisconnected,
    AgentError,
    ProcessOutput,
    ProcessSpec,
    ProcState,
    ResourceUpdate,
    SetupSpec,
)
from hbd.drivers.vm import MicroVM, QemuMicrovmDriver, VMError, VMSpec

log = logging.getLogger(__name__)


class BootError(Exception):
    """The guest did not come up (QEMU refused, or the agent never answered)."""


@dataclass
class SandboxSpec:
    vm: VMSpec
    setup: SetupSpec


class Sandbox(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def processes(self) -> list[ProcState]: ...

    async def start(self, spec: ProcessSpec, output: ProcessOutput) -> int: ...

    def attach_output(self, proc: int, output: ProcessOutput) -> None: ...

    async def write_stdin(self, proc: int, data: bytes) -> None: ...

    async def close_stdin(self, proc: int) -> None: ...

    async def signal(self, proc: int, signum: int) -> None: ...

    async def resize(self, proc: int, height: int, width: int) -> None: ...

    async def release(self, proc: int) -> None: ...

    async def stats(self) -> dict[str, Any]: ...

    async def ps(self) -> dict[str, Any]: ...

    async def update(self, resources: ResourceUpdate) -> None: ...

    async def set_memory(self, mib: int) -> None: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def poweroff(self, timeout: float) -> None: ...

    async def destroy(self) -> None: ...

    async def wait_exit(self) -> None: ...

    def detach(self) -> None: ...


class SandboxDriver(Protocol):
    async def boot(self, spec: SandboxSpec) -> Sandbox: ...

    async def reattach(self, run_dir: Path) -> Sandbox | None: ...


class QemuSandbox:
    def __init__(self, vm: MicroVM, agent: AgentClient) -> None:
        self.vm = vm
        self.agent = agent

    @property
    def pid(self) -> int:
        return self.vm.pid

    @property
    def processes(self) -> list[ProcState]:
        return self.agent.processes

    async def start(self, spec: ProcessSpec, output: ProcessOutput) -> int:
        return await self.agent.start(spec, output)

    def attach_output(self, proc: int, output: ProcessOutput) -> None:
        self.agent.attach_output(proc, output)

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

    async def stats(self) -> dict[str, Any]:
        return await self.agent.stats()

    async def ps(self) -> dict[str, Any]:
        return await self.agent.ps()

    async def update(self, resources: ResourceUpdate) -> None:
        await self.agent.update(resources)

    async def set_memory(self, mib: int) -> None:
        """Balloon the guest to `mib` of RAM (at most what it booted with)."""
        await self.vm.qmp("balloon", value=mib * 1024 * 1024)

    async def pause(self) -> None:
        await self.vm.pause()

    async def resume(self) -> None:
        await self.vm.resume()

    async def poweroff(self, timeout: float) -> None:
        """Let the guest sync its disks and power off; force it after `timeout`."""
        with contextlib.suppress(AgentError, OSError):
            await asyncio.wait_for(self.agent.poweroff(), timeout)
        try:
            await asyncio.wait_for(self.vm.wait_exit(), timeout)
        except TimeoutError:
            log.warning("guest %s did not power off in %.0fs; killing it",
                        self.vm.run_dir.name, timeout)
        await self.destroy()

    async def destroy(self) -> None:
        await self.agent.close()
        await self.vm.destroy()

    async def wait_exit(self) -> None:
        await self.vm.wait_exit()

    def detach(self) -> None:
        self.vm.close()


class QemuSandboxDriver:
    def __init__(self, vm_driver: QemuMicrovmDriver, boot_timeout: float,
                 boot_retries: int) -> None:
        self.vm_driver = vm_driver
        self.boot_timeout = boot_timeout
        self.boot_retries = boot_retries

    async def boot(self, spec: SandboxSpec) -> Sandbox:
        last_error = ""
        for attempt in range(self.boot_retries + 1):
            try:
                vm = await self.vm_driver.launch(spec.vm)
            except VMError as e:
                raise BootError(str(e)) from e
            try:
                agent = await self._connect(vm, spec.setup)
                return QemuSandbox(vm, agent)
            except AgentDisconnected as e:
                last_error = f"{type(e).__name__}: {e}"
                log.warning("guest %s failed to boot (attempt %d): %s\n%s",
                            spec.vm.run_dir.name, attempt + 1, last_error,
                            _tail(vm.console_log))
                await vm.destroy()
            except AgentError as e:
                # The guest answered and refused the sandbox: retrying cannot help.
                await vm.destroy()
                raise BootError(f"guest setup failed: {e.message}") from e
            except (TimeoutError, OSError) as e:
                last_error = f"{type(e).__name__}: {e}"
                console = _tail(vm.console_log)
                log.warning("guest %s failed to boot (attempt %d): %s\n%s",
                            spec.vm.run_dir.name, attempt + 1, last_error, console)
                await vm.destroy()
            except BaseException:
                await vm.destroy()
                raise
        raise BootError(f"guest did not boot: {last_error}")

    async def _connect(self, vm: MicroVM, setup: SetupSpec) -> AgentClient:
        connect = asyncio.ensure_future(AgentClient.connect(vm.agent_socket,
                                                            timeout=self.boot_timeout,
                                                            setup=setup))
        died = asyncio.ensure_future(vm.wait_exit())
        try:
            done, _ = await asyncio.wait({connect, died}, return_when=asyncio.FIRST_COMPLETED)
            if connect in done:
                return connect.result()
            raise AgentDisconnected("QEMU exited during boot")
        finally:
            died.cancel()
            if not connect.done():
                connect.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await connect

    async def reattach(self, run_dir: Path) -> Sandbox | None:
        vm = MicroVM.find(run_dir)
        if vm is None:
            return None
        try:
            agent = await AgentClient.connect(vm.agent_socket, timeout=self.boot_timeout)
        except (TimeoutError, AgentError, OSError) as e:
            log.warning("cannot reattach to guest %s: %s", run_dir.name, e)
            await vm.destroy()
            return None
        return QemuSandbox(vm, agent)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace")
    except OSError:
        return "(no console log)"
