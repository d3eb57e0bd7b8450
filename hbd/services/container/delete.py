"""Removing containers: `docker rm` (with -f and -v) and `container prune`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass
from typing import Any

from hbd.errors import Conflict, HbdError
from hbd.services.container import links
from hbd.services.container.model import Container
from hbd.services.container.restart import RestartManager
from hbd.services.container.scratch import ScratchDisks
from hbd.services.container.store import ContainerStore
from hbd.services.filters import PruneFilter
from hbd.services.scope import OPERATOR, Scope
from hbd.services.volume.service import VolumeService

log = logging.getLogger(__name__)

# Seconds a guest has to sync its volumes and power off at `rm -f` before
# it is killed: a sync of a few MiB takes well under a second under TCG.
RM_SYNC_TIMEOUT = 10.0


def _check_removable(c: Container, force: bool) -> None:
    if c.state.running and not force:
        raise Conflict(
            f"You cannot remove a running container {c.id}. Stop the container "
            "before attempting removal or force remove")


@dataclass
class Remover:
    store: ContainerStore
    volumes: VolumeService
    restarts: RestartManager
    scratch: ScratchDisks

    async def remove(self, ref: str, force: bool = False, volumes: bool = False,
                     link: bool = False) -> None:
        if link:
            self.store.save(links.remove(ref, self.store))
            return
        c = self.store.get(ref)
        if c.removing:
            raise Conflict(f"removal of container {c.id[:12]} is already in progress")
        _check_removable(c, force)
        # Marked before the lock is waited for: a start, restart or
        # maintenance boot waiting behind us sees it and gives up.
        c.removing = True
        self.restarts.cancel(c)
        try:
            async with c.lock:
                # An in-flight start we waited for may have left it running.
                _check_removable(c, force)
                await self._end_run(c)
                c.state.status = "removing"
                if c.teardown is not None:
                    with contextlib.suppress(Exception):
                        await c.teardown
        except BaseException:
            c.removing = False
            raise
        self.store.forget(c)
        if volumes or c.host_config.get("AutoRemove"):
            await self._remove_anonymous_volumes(c)
        await asyncio.to_thread(shutil.rmtree, self.store.dir(c), True)
        for hook in self.store.on_stopped:
            hook(c, True)
        self.store.event(c, "destroy")
        waiters, c.remove_waiters = c.remove_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(c.state.exit_code)

    @staticmethod
    async def _end_run(c: Container) -> None:
        """Force the run down. A container with volumes gets its guest's
        filesystems synced first (its init kills every process, syncs, powers
        off): a write made just before `rm -f` reaches the volume."""
        run = c.run
        if run is None:
            return
        has_volumes = any(m.type in ("volume", "bind") for m in c.mounts)
        await run.guest.kill(sync_timeout=RM_SYNC_TIMEOUT if has_volumes else 0.0)
        await run.finished.wait()

    async def _remove_anonymous_volumes(self, c: Container) -> None:
        """The container's anonymous volumes that no other container uses."""
        for mp in c.mounts:
            v = self.volumes.volumes.get(mp.source) if mp.type == "volume" else None
            if v is not None and v.anonymous and not self.store.volume_users(v.name):
                with contextlib.suppress(HbdError):
                    await self.volumes.remove(v.name)

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]:
        matches = PruneFilter(filters)
        deleted = []
        reclaimed = 0
        for c in self.store.visible(scope):
            if c.state.running or c.removing or not matches(c.created, c.config):
                continue
            size = self.scratch.size_rw(self.store.dir(c))  # dockerd counts SizeRw
            try:
                await self.remove(c.id)
            except HbdError as e:
                log.warning("prune: cannot remove %s: %s", c.id[:12], e.message)
                continue
            deleted.append(c.id)
            reclaimed += size
        self.store.events.publish("container", "prune", "", {"reclaimed": str(reclaimed)})
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}
