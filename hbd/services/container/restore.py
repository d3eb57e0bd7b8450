"""The daemon's start and stop, as containers see them: guests outlive hbd.
At start hbd re-attaches the sandboxes that still run and the containers in
them (their networks and their taps' anti-spoofing pins with them), and
settles the rest; at stop it leaves them running and only stops watching."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hbd.errors import HbdError
from hbd.services.container.model import Container, ContainerState, Run
from hbd.services.container.monitor import VANISHED_EXIT_CODE, Monitor
from hbd.services.container.outputmark import OutputMark
from hbd.services.container.restart import RestartManager
from hbd.services.container.sandbox import ContainerInGuest
from hbd.services.container.sandboxes import SandboxManager
from hbd.services.container.start import Starter
from hbd.services.container.store import ContainerStore
from hbd.services.network.service import NetworkService
from hbd.services.timefmt import rfc3339_nano
from hbd.tasks import cancel_all, spawn

log = logging.getLogger(__name__)


@dataclass
class Restorer:
    store: ContainerStore
    sandboxes: SandboxManager
    networks: NetworkService
    monitor: Monitor
    restarts: RestartManager
    starter: Starter

    async def restore(self) -> None:
        """After an hbd restart: re-attach running containers, settle the rest."""
        marks = {c.id: mark for c in self.store.containers.values()
                 if c.state.running and (mark := self.store.output_mark(c)) is not None}
        found = await self.sandboxes.restore(marks)
        for c in list(self.store.containers.values()):
            if c.state.running:
                await self._reattach(c, found.get(c.id), marks.get(c.id))
        self.sandboxes.output_claimed()
        self._leave_unclaimed(found)
        await self.networks.settle_rules()
        for c in list(self.store.containers.values()):
            if not c.state.running and self.restarts.restart_on_daemon_start(c):
                spawn(self._start_on_daemon_start(c))

    def _leave_unclaimed(self, found: dict[str, ContainerInGuest]) -> None:
        """Members of a sandbox whose container is not running (an hbd killed
        between booting a guest and recording the start, or during a
        maintenance boot for cp): out of the guest, which then powers off."""
        for cid, view in found.items():
            c = self.store.containers.get(cid)
            if c is None or not c.state.running:
                log.warning("container %s is in a guest but not running: taking it out",
                            cid[:12])
                spawn(self.sandboxes.leave(view, clean=True))

    async def _reattach(self, c: Container, guest: ContainerInGuest | None,
                        mark: OutputMark | None) -> None:
        if guest is None:
            log.info("container %s stopped while hbd was down", c.id[:12])
            c.restart_task = None
            c.state = ContainerState(
                status="exited", exit_code=VANISHED_EXIT_CODE,
                error="guest exited while hbd was down", started_at=c.state.started_at,
                finished_at=rfc3339_nano())
            c.run_network = None
            self.store.save(c)
            return
        if c.run_network is not None:
            await self.networks.adopt_run(c.id, c.run_network)
            await self.sandboxes.pin_again(guest, c.run_network.endpoints)
        writer = self.store.log_driver(c).open(self.store.output_marks(c, fresh=False))
        frames = guest.output_from(guest.main_proc)
        if mark is not None and (mark.proc, mark.frames) == (guest.main_proc, frames):
            writer.resume(mark)
        run = Run(c, guest, writer, frames)
        # Output and exit the guest queued while nobody listened arrive
        # (in order) before STATE's answer; the agent holds them for us.
        guest.attach_output(guest.main_proc, run)
        status = guest.main_exit_status()
        if status is not None:
            run.on_exit(status)
        c.run = run
        c.run_started.set()
        if c.config.get("Healthcheck"):
            self.monitor.begin_health(c, run)
        self.monitor.watch(c, run)

    async def _start_on_daemon_start(self, c: Container) -> None:
        try:
            await self.starter.start(c.id)
        except HbdError as e:
            log.warning("could not restart %s: %s", c.id[:12], e.message)

    def shutdown(self) -> None:
        """hbd is stopping: leave guests running, stop watching them."""
        cancel_all()
        self.sandboxes.detach_all()
        for c in self.store.containers.values():
            if c.run is not None:
                c.run.log.close()
