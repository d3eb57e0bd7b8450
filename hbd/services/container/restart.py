"""The restart manager: whether a container whose run ended starts again
(dockerd's restartmanager), after which delay, and cancelling that."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hbd.errors import HbdError
from hbd.services.container.model import Container
from hbd.services.container.store import ContainerStore
from hbd.services.timefmt import parse_rfc3339
from hbd.tasks import spawn

log = logging.getLogger(__name__)

RESTART_FIRST_DELAY = 0.1
RESTART_MAX_DELAY = 60.0
RESTART_RESET_AFTER = 10.0


@dataclass
class RestartManager:
    store: ContainerStore
    # Boots the container again, its lock held. Handed in rather than
    # imported: starting sits above this module (it cancels restarts).
    relaunch: Callable[[Container], Awaitable[None]]

    def should_restart(self, c: Container, exit_code: int) -> bool:
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

    def restart_on_daemon_start(self, c: Container) -> bool:
        """dockerd restarts these when it starts: `always` even if stopped by hand."""
        policy = (c.host_config.get("RestartPolicy") or {}).get("Name") or "no"
        if policy == "always":
            return True
        return not c.manually_stopped and self.should_restart(c, c.state.exit_code) and \
            policy != "no"

    def schedule(self, c: Container) -> None:
        """Restart after a doubling delay (100 ms .. 1 min), reset by a 10 s run."""
        ran = parse_rfc3339(c.state.finished_at) - parse_rfc3339(c.state.started_at)
        if ran >= RESTART_RESET_AFTER or not c.restart_delay:
            c.restart_delay = RESTART_FIRST_DELAY
        else:
            c.restart_delay = min(c.restart_delay * 2, RESTART_MAX_DELAY)
        c.state.restarting = True
        c.state.running = True
        c.state.status = "restarting"
        self.store.save(c)
        c.restart_task = spawn(self._restart_later(c, c.restart_delay))

    async def _restart_later(self, c: Container, delay: float) -> None:
        await asyncio.sleep(delay)
        async with c.lock:
            if not c.state.restarting or c.removing:
                return
            c.restart_count += 1
            try:
                await self.relaunch(c)
            except HbdError as e:
                log.warning("restart of %s failed: %s", c.id[:12], e.message)
                c.state.restarting = False
                c.state.running = False
                c.state.status = "exited"
                c.state.error = e.message
                self.store.save(c)

    def cancel(self, c: Container) -> bool:
        """Stop a pending restart; True if there was one."""
        task, c.restart_task = c.restart_task, None
        if task is not None and not task.done():
            task.cancel()
        if not c.state.restarting:
            return False
        c.state.restarting = False
        c.state.running = False
        c.state.status = "exited"
        self.store.save(c)
        return True
