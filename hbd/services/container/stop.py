"""A running container's state changes: stop, kill, restart, pause, unpause,
and `docker update` and tty resizes, which reach into its guest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from hbd.drivers.agent import AgentError, ResourceUpdate
from hbd.errors import Conflict, HbdError, InvalidParameter, NotModified, SystemError_
from hbd.services.container import config as cc
from hbd.services.container import hostconfig, signals
from hbd.services.container.model import Container, Run
from hbd.services.container.restart import RestartManager
from hbd.services.container.start import Starter, guest_memory_mib
from hbd.services.container.stats import cpu_quota
from hbd.services.container.store import ContainerStore

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 10


def _update_host_cpus(run: Run, merged: dict[str, Any]) -> list[str]:
    """`docker update --cpuset-cpus`: a guest of its own moves to those host
    CPUs now (its vCPU count changes at the next start); a shared one waits."""
    cpus = hostconfig.host_cpus(merged)
    if not run.guest.alone:
        return ["the container shares its guest with others: its CPU set takes effect "
                "at its next start in a guest of its own"]
    run.guest.set_host_cpus(cpus)
    return []


def _stop_signal(c: Container) -> int:
    """The container's StopSignal, SIGTERM when it has none or none that parses
    (dockerd's Container.StopSignal)."""
    try:
        return signals.parse_signal(c.config.get("StopSignal") or "SIGTERM")
    except InvalidParameter:
        return signals.SIGNAL_MAP["TERM"]


@dataclass
class Stopper:
    store: ContainerStore
    restarts: RestartManager
    starter: Starter

    async def kill(self, ref: str, signal: str | int = "KILL") -> None:
        """dockerd's kill: the signal parsed first (400), then every other
        error worded "Cannot kill container: REF: …"."""
        signum = signals.parse_signal(signal)
        try:
            await self._kill(ref, signum)
        except HbdError as e:
            raise type(e)(f"Cannot kill container: {ref}: {e.message}") from e

    async def _kill(self, ref: str, signum: int) -> None:
        c = self.store.get(ref)
        if not signals.valid_for_platform(signum):
            raise SystemError_("The linux daemon does not support signal "
                               f"{signals.as_go_uint64(signum)}")
        run = c.run
        if run is None or not c.state.running:
            raise Conflict(f"Container {c.id} is not running")
        await self._resume_if_paused(c, run)
        try:
            await run.guest.signal(run.guest.main_proc, signum)
        except AgentError as e:
            if signum != 9:
                raise SystemError_(e.message) from e
            await run.guest.kill()
        self.store.event(c, "kill", signal=str(signum))
        if signum == 9:
            # As dockerd's Kill: SIGKILL returns once the container has
            # stopped, so `docker kill` then `docker rm` never meets it running.
            try:
                await asyncio.wait_for(asyncio.shield(run.finished.wait()), 10)
            except TimeoutError:
                await run.guest.kill()
                await run.finished.wait()

    async def stop(self, ref: str, timeout: int | None = None, signal: str = "") -> None:
        """dockerd's containerStop: the stop signal, then SIGKILL after the timeout."""
        c = self.store.get(ref)
        if self.restarts.cancel(c):
            c.manually_stopped = True
            self.store.save(c)
            self.store.event(c, "stop")
            return
        if not c.state.running or c.run is None:
            raise NotModified("container already stopped")
        run = c.run
        signum = signals.parse_signal(signal) if signal else _stop_signal(c)
        if timeout is None:
            timeout = c.config.get("StopTimeout")
            if timeout is None:
                timeout = DEFAULT_STOP_TIMEOUT
        c.manually_stopped = True
        self.store.save(c)
        await self._resume_if_paused(c, run)
        wait: float | None = None if timeout < 0 else float(timeout)
        try:
            await run.guest.signal(run.guest.main_proc, signum)
            self.store.event(c, "kill", signal=str(signum))
        except AgentError:
            wait = 2.0
        try:
            await asyncio.wait_for(asyncio.shield(run.finished.wait()), wait)
        except TimeoutError:
            log.info("container %s did not exit within %ss of signal %d; killing it",
                     c.id[:12], timeout, signum)
            await self._kill_run(c, run)
        self.store.event(c, "stop")

    async def _kill_run(self, c: Container, run: Run) -> None:
        """SIGKILL the main process; if the guest does not answer, the guest goes."""
        try:
            await asyncio.wait_for(run.guest.signal(run.guest.main_proc, 9), 5)
            self.store.event(c, "kill", signal="9")
            await asyncio.wait_for(asyncio.shield(run.finished.wait()), 10)
        except (AgentError, TimeoutError):
            await run.guest.kill()
            await run.finished.wait()

    async def restart(self, ref: str, timeout: int | None = None, signal: str = "") -> None:
        """Stop and start as one operation under the container's lock: no rm,
        start or other restart gets in between."""
        c = self.store.get(ref)
        async with c.lock:
            if c.state.running:
                with contextlib.suppress(NotModified):
                    await self.stop(c.id, timeout, signal)
            await self.starter.start_held(c)
        self.store.event(c, "restart")

    async def pause(self, ref: str) -> None:
        """Freeze the container's cgroup in its guest, as runc freezes it."""
        c = self.store.get(ref)
        async with c.lock:
            run = c.running_run()
            if c.state.paused:
                raise Conflict(f"Container {c.id} is already paused")
            try:
                await run.guest.freeze(True)
            except AgentError as e:
                raise SystemError_(f"Cannot pause container {c.id}: {e.message}") from e
            if c.run is not run:
                return  # it ended while freezing: nothing is paused
            c.state.paused = True
            c.state.status = "paused"
            self.store.save(c)
            self.store.event(c, "pause")

    async def unpause(self, ref: str) -> None:
        c = self.store.get(ref)
        async with c.lock:
            run = c.running_run()
            if not c.state.paused:
                raise Conflict(f"Container {c.id} is not paused")
            try:
                await run.guest.freeze(False)
            except AgentError as e:
                raise SystemError_(f"Cannot unpause container {c.id}: {e.message}") from e
            if c.run is not run:
                return
            c.state.paused = False
            c.state.status = "running"
            self.store.save(c)
            self.store.event(c, "unpause")

    async def _resume_if_paused(self, c: Container, run: Run) -> None:
        """A frozen container cannot take a signal: thaw it first, as dockerd does."""
        if c.state.paused:
            with contextlib.suppress(AgentError):
                await run.guest.freeze(False)
            c.state.paused = False
            c.state.status = "running"
            self.store.save(c)
            self.store.event(c, "unpause")

    async def update(self, ref: str, body: dict[str, Any]) -> list[str]:
        """`docker update`: resources now (in the guest), policy for later."""
        c = self.store.get(ref)
        async with c.lock:
            return await self._update_held(c, body)

    async def _update_held(self, c: Container, body: dict[str, Any]) -> list[str]:
        if not isinstance(body, dict):
            raise InvalidParameter("invalid JSON: update config must be an object")
        merged = cc.normalize_host_config({**c.host_config, **{
            k: v for k, v in body.items() if k in cc.HOST_CONFIG_TYPES}})
        if merged.get("AutoRemove") and (body.get("RestartPolicy") or {}).get("Name", "no") \
                not in ("", "no"):
            raise InvalidParameter("Restart policy cannot be updated because AutoRemove is "
                                   "enabled for the container")
        warnings: list[str] = []
        run = c.run
        if run is not None and c.state.running:
            warnings = await self._update_guest(c, run, body, merged)
        c.host_config = merged
        self.store.save(c)
        self.store.event(c, "update")
        return warnings

    @staticmethod
    async def _update_guest(c: Container, run: Run, body: dict[str, Any],
                            merged: dict[str, Any]) -> list[str]:
        """Apply the updated limits inside the running guest; the warnings for the client."""
        warnings: list[str] = []
        resources = ResourceUpdate()
        if "Memory" in body:
            resources.memory_limit = int(merged.get("Memory") or 0)
            if run.memory_mib and guest_memory_mib(resources.memory_limit) > run.memory_mib:
                warnings.append(
                    f"the guest booted with {run.memory_mib} MiB of RAM and cannot grow "
                    "while it runs: the new limit takes full effect at the next start")
        if "NanoCpus" in body or "CpuQuota" in body or "CpuPeriod" in body:
            quota, period = cpu_quota(merged)
            resources.cpu_quota = quota
            resources.cpu_period = period
        if "PidsLimit" in body:
            resources.pids_limit = max(0, int(merged.get("PidsLimit") or 0))
        if "CpuShares" in body:
            resources.cpu_weight = hostconfig.cpu_weight(int(merged.get("CpuShares") or 0))
        if "MemoryReservation" in body:
            resources.memory_low = int(merged.get("MemoryReservation") or 0)
        if "CpusetCpus" in body:
            warnings += _update_host_cpus(run, merged)
        try:
            await run.guest.update(resources)
            if resources.memory_limit > 0 and run.guest.alone and \
                    guest_memory_mib(resources.memory_limit) < run.memory_mib:
                # Shrinking the guest too, so that `free` inside agrees.
                await run.guest.set_memory(guest_memory_mib(resources.memory_limit))
        except AgentError as e:
            raise SystemError_(f"Cannot update container {c.id}: {e}") from e
        return warnings

    async def resize(self, ref: str, height: int, width: int) -> None:
        c = self.store.get(ref)
        run = c.run
        if run is None:
            raise Conflict(f"Container {c.id} is not running")
        try:
            await run.guest.resize(run.guest.main_proc, height, width)
        except AgentError as e:
            raise SystemError_(f"Cannot resize container {c.id}: {e.message}") from e
