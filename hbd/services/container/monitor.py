"""Watching a run: its health checks, the main process's exit (or the guest
vanishing), settling the container's state when the run ends, its leaving
its sandbox, and what comes next (auto-remove or the restart manager)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from hbd.drivers.agent import ExitStatus
from hbd.errors import HbdError
from hbd.services.container import config as cc
from hbd.services.container import links
from hbd.services.container.delete import Remover
from hbd.services.container.health import HealthMonitor
from hbd.services.container.model import Container, ContainerState, Run
from hbd.services.container.restart import RestartManager
from hbd.services.container.sandboxes import SandboxManager
from hbd.services.container.store import ContainerStore
from hbd.services.network.service import NetworkService
from hbd.services.timefmt import rfc3339_nano
from hbd.services.volume.service import VolumeService
from hbd.tasks import spawn

log = logging.getLogger(__name__)

# Exit code reported when the guest vanished without reporting its process's
# exit (QEMU killed): what dockerd reports for a SIGKILLed task.
VANISHED_EXIT_CODE = 137


@dataclass
class Monitor:
    store: ContainerStore
    networks: NetworkService
    volumes: VolumeService
    sandboxes: SandboxManager
    restarts: RestartManager
    remover: Remover

    def begin_health(self, c: Container, run: Run) -> None:
        healthcheck = c.config.get("Healthcheck")
        monitor = HealthMonitor(
            healthcheck or {}, run,
            cc.process_env(c.config, c.hostname, links.environment(c, self.store)),
            str(c.config.get("User") or ""), str(c.config.get("WorkingDir") or "/"),
            lambda status: self._health_changed(c, status))
        if not healthcheck or not monitor.enabled:
            c.health = None
            return
        c.health = monitor.state
        run.health = monitor
        monitor.start()

    def _health_changed(self, c: Container, status: str) -> None:
        self.store.save(c)
        self.store.event(c, f"health_status: {status}")

    def watch(self, c: Container, run: Run) -> None:
        """From now on, the run's end settles the container."""
        spawn(self._watch(c, run))

    async def _watch(self, c: Container, run: Run) -> None:
        """Wait for the main process to exit, or for the guest to vanish."""
        vanished: asyncio.Future[None] = asyncio.ensure_future(run.guest.wait_gone())
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
            if run.guest.failure:
                error = f"guest destroyed: {run.guest.failure}"
        await self._finish_run(c, run, status, error)

    async def _finish_run(self, c: Container, run: Run, status: ExitStatus, error: str) -> None:
        if run.health is not None:
            run.health.stop()
        run.log.close()
        c.run = None
        c.run_started.clear()
        c.run_network = None
        await self.sandboxes.release_network(run.guest)
        await self.networks.disconnect_run(c.id)
        c.state = ContainerState(
            status="exited", exit_code=status.exit_code, oom_killed=status.oom_killed,
            error=error, started_at=c.state.started_at, finished_at=rfc3339_nano(),
        )
        self.store.save(c)
        for attachment in list(c.attachments):
            attachment.end()
        c.attachments.clear()
        for hook in self.store.on_stopped:
            hook(c, False)
        waiters, c.exit_waiters = c.exit_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(status.exit_code)
        if status.oom_killed:
            self.store.event(c, "oom")
        self.store.event(c, "die", exitCode=str(status.exit_code))
        run.finished.set()
        going = c.removing or bool(c.host_config.get("AutoRemove"))
        # A container that is going keeps nothing in its scratch disk worth a
        # sync, but its volumes' data must reach their disks.
        clean = not going or any(m.type in ("volume", "bind") for m in c.mounts)
        c.teardown = spawn(self._teardown(c, run, clean))
        if going and not c.removing:
            await self.auto_remove(c)
        elif self.restarts.should_restart(c, status.exit_code):
            self.restarts.schedule(c)

    async def _teardown(self, c: Container, run: Run, clean: bool) -> None:
        try:
            hook, c.before_poweroff = c.before_poweroff, None
            if hook is not None:
                try:
                    await hook(run)
                except Exception:
                    log.exception("before-poweroff hook of %s failed", c.id[:12])
            await self.sandboxes.leave(run.guest, clean)
        finally:
            # Only now may another guest mount its block volumes.
            self.volumes.detach_all(c.id)

    async def auto_remove(self, c: Container) -> None:
        try:
            await self.remover.remove(c.id, force=True)
        except HbdError as e:
            log.warning("auto-remove of %s failed: %s", c.id[:12], e.message)
