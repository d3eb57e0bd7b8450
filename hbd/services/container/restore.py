"""The daemon's start and stop, as containers see them: guests outlive hbd.
At start hbd re-attaches the running ones and settles the rest; at stop it
leaves them running and only stops watching."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hbd.drivers.agent import ExitStatus
from hbd.drivers.sandbox import SandboxDriver
from hbd.errors import HbdError
from hbd.services.container.logs import JsonFileWriter
from hbd.services.container.model import Container, ContainerState, Run
from hbd.services.container.monitor import VANISHED_EXIT_CODE, Monitor
from hbd.services.container.restart import RestartManager
from hbd.services.container.start import Starter
from hbd.services.container.store import ContainerStore
from hbd.services.network.service import NetworkService
from hbd.services.timefmt import rfc3339_nano
from hbd.tasks import cancel_all, spawn

log = logging.getLogger(__name__)


@dataclass
class Restorer:
    store: ContainerStore
    sandboxes: SandboxDriver
    networks: NetworkService
    monitor: Monitor
    restarts: RestartManager
    starter: Starter

    async def restore(self) -> None:
        """After an hbd restart: re-attach running guests, settle the rest."""
        for c in list(self.store.containers.values()):
            if c.state.running:
                await self._reattach(c)
        await self.networks.remove_leaked_taps()
        for c in list(self.store.containers.values()):
            if not c.state.running and self.restarts.restart_on_daemon_start(c):
                spawn(self._start_on_daemon_start(c))

    async def _reattach(self, c: Container) -> None:
        sandbox = await self.sandboxes.reattach(self.store.run_dir(c))
        if sandbox is None:
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
        writer = JsonFileWriter(self.store.log_path(c))
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
        for c in self.store.containers.values():
            if c.run is not None:
                c.run.sandbox.detach()
                c.run.log.close()
