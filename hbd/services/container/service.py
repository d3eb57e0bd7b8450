"""Containers with Docker's semantics; no HTTP here.

`ContainerService` is the one object the routers and the other services
talk to about containers. It wires the collaborators that do the work, each
in its own module (as moby's daemon/{create,start,stop,delete,...}.go):

    store     the registry of containers and their records (store.py)
    creator   create and rename (create.py)
    sandboxes the sandboxes (guests) and the containers in them (sandboxes.py)
    starter   start: which sandbox, what the container needs there (start.py)
    monitor   a run's health checks, its end, its teardown (monitor.py)
    restarts  the restart manager (restart.py)
    stopper   stop, kill, restart, pause, unpause, update, resize (stop.py)
    remover   rm and prune (delete.py)
    views     inspect, ps, network members (views.py)
    restorer  re-attach at daemon start, let go at daemon stop (restore.py)

One lock per container, `Container.lock`, and one rule for it: whatever
makes or ends a run, or changes a running one's state, holds it for the whole
operation:

    holds c.lock    start, restart (its stop and its start), the restart
                    manager's relaunch, rm (waits for an in-flight start, then
                    ends the run: no guest, tap or record is left behind),
                    pause, unpause, update, a maintenance boot for a stopped
                    container's files (cp, export, diff, commit)
    does not        kill and stop (signals: `docker kill` must get through
                    while a stop waits, and rm -f ends a run without them),
                    exec and cp into a running container, attach, logs,
                    stats, top, resize: they take the run as it is
                    (`Container.running_run`) and fail cleanly (Conflict, or
                    the guest's disconnection as an error) if it ends under
                    them

Whoever takes the lock checks again, once it has it, what it checked
before waiting (running, removing): another holder may have changed it. A
holder never waits for another container's lock, so holders cannot deadlock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

from hbd.config import Config
from hbd.drivers.guest import GuestDriver
from hbd.errors import HbdError
from hbd.events import EventBus
from hbd.services.container import attach as attaching
from hbd.services.container import config as cc
from hbd.services.container import links, stats, tenancy
from hbd.services.container.connect import Connections
from hbd.services.container.create import Creator
from hbd.services.container.delete import Remover
from hbd.services.container.logs import LogDriver, LogQuery, LogRecord
from hbd.services.container.model import Attachment, Container
from hbd.services.container.monitor import Monitor
from hbd.services.container.restart import RestartManager
from hbd.services.container.restore import Restorer
from hbd.services.container.sandbox import ContainerInGuest
from hbd.services.container.sandboxes import SandboxManager
from hbd.services.container.scratch import ScratchDisks
from hbd.services.container.start import Starter
from hbd.services.container.stop import Stopper
from hbd.services.container.store import ContainerStore
from hbd.services.container.views import ContainerViews
from hbd.services.image.store import ImageStore
from hbd.services.network.service import NetworkService, network_ref_in
from hbd.services.quota import QuotaGuard
from hbd.services.scope import OPERATOR, Scope
from hbd.services.volume.service import VolumeService
from hbd.store import StateStore


class ContainerService:
    def __init__(self, config: Config, state: StateStore, images: ImageStore,
                 networks: NetworkService, volumes: VolumeService, events: EventBus,
                 guests: GuestDriver, scratch: ScratchDisks, accel: str) -> None:
        # Container files (cp, commit) and the builder reach these through us.
        self.images = images
        self.volumes = volumes
        self.store = ContainerStore(state, events, config.data_root / "containers",
                                    config.exec_root)
        self.restarts = RestartManager(self.store, self._relaunch)
        self.sandboxes = SandboxManager(config, state, guests, accel, networks.tap_prefix,
                                        networks)
        self.remover = Remover(self.store, volumes, self.restarts, scratch)
        self.monitor = Monitor(self.store, networks, volumes, self.sandboxes, self.restarts,
                               self.remover)
        self.starter = Starter(config, self.store, images, networks, volumes, self.sandboxes,
                               self.monitor, self.restarts)
        self.quota = QuotaGuard(config.quotas, config.vm.vcpus, config.vm.memory_mib)
        self.creator = Creator(self.store, images, networks, volumes, scratch, self.quota,
                               tenancy.PublishPolicy.from_settings(config.tenants))
        self.stopper = Stopper(self.store, self.restarts, self.starter)
        self.views = ContainerViews(self.store, images, networks, volumes)
        self.connections = Connections(self.store, networks, self.sandboxes)
        self.restorer = Restorer(self.store, self.sandboxes, networks, self.monitor,
                                 self.restarts, self.starter)

    async def _relaunch(self, c: Container) -> None:
        # The restart manager boots containers again through the starter,
        # which is built after it (the starter cancels restarts).
        await self.starter.start_locked(c)

    # -- the registry --------------------------------------------------------------

    @property
    def containers(self) -> dict[str, Container]:
        return self.store.containers

    @property
    def on_stopped(self) -> list[Callable[[Container, bool], None]]:
        return self.store.on_stopped

    def get(self, ref: str) -> Container:
        return self.store.get(ref)

    def process_env(self, c: Container) -> list[str]:
        """The environment of the container's processes (its execs' too): its
        own, with what its legacy links set."""
        return cc.process_env(c.config, c.hostname, links.environment(c, self.store))

    def volume_users(self, name: str) -> list[str]:
        return self.store.volume_users(name)

    def configured_on(self, network_name: str) -> list[str]:
        return self.store.configured_on(network_name)

    def size_rw(self, c: Container) -> int:
        """The bytes the container wrote (its scratch disk's own)."""
        return self.creator.scratch.size_rw(self.store.dir(c))

    # -- lifecycle -------------------------------------------------------------------
    # Every call from the API names the asker (`scope`): a tenant's references
    # are qualified with its project, so it finds its own containers only.

    async def create(self, name: str | None, body: dict[str, Any],
                     api_version: str = "", scope: Scope = OPERATOR,
                     groups_strict: bool = False) -> dict[str, Any]:
        return await self.creator.create(name, body, api_version, scope, groups_strict)

    def rename(self, ref: str, new_name: str, scope: Scope = OPERATOR) -> None:
        self.creator.rename(scope.qualify(ref), new_name, scope)

    async def start(self, ref: str, scope: Scope = OPERATOR) -> None:
        await self.starter.start(scope.qualify(ref))

    async def boot_maintenance(self, c: Container) -> ContainerInGuest:
        return await self.starter.boot_maintenance(c)

    async def end_maintenance(self, c: Container, guest: ContainerInGuest) -> None:
        await self.starter.end_maintenance(c, guest)

    async def kill(self, ref: str, signal: str | int = "KILL",
                   scope: Scope = OPERATOR) -> None:
        await self.stopper.kill(scope.qualify(ref), signal)

    async def stop(self, ref: str, timeout: int | None = None, signal: str = "",
                   scope: Scope = OPERATOR) -> None:
        await self.stopper.stop(scope.qualify(ref), timeout, signal)

    async def restart(self, ref: str, timeout: int | None = None, signal: str = "",
                      scope: Scope = OPERATOR) -> None:
        await self.stopper.restart(scope.qualify(ref), timeout, signal)

    async def pause(self, ref: str, scope: Scope = OPERATOR) -> None:
        await self.stopper.pause(scope.qualify(ref))

    async def unpause(self, ref: str, scope: Scope = OPERATOR) -> None:
        await self.stopper.unpause(scope.qualify(ref))

    async def update(self, ref: str, body: dict[str, Any], scope: Scope = OPERATOR
                     ) -> list[str]:
        """`docker update`; a tenant's new limits within its project's quotas."""
        c = self.get(scope.qualify(ref))
        if scope.is_tenant and isinstance(body, dict):
            wanted = {**c.host_config, **{k: v for k, v in body.items()
                                          if k in ("Memory", "NanoCpus", "CpusetCpus")}}
            self.quota.check_container(scope, wanted, (
                other.host_config for other in self.store.visible(scope) if other is not c))
        return await self.stopper.update(c.id, body)

    async def resize(self, ref: str, height: int, width: int,
                     scope: Scope = OPERATOR) -> None:
        await self.stopper.resize(scope.qualify(ref), height, width)

    async def remove(self, ref: str, force: bool = False, volumes: bool = False,
                     link: bool = False, scope: Scope = OPERATOR) -> None:
        if link:  # /parent/alias: the parent is the asker's
            parent, slash, alias = ref.rpartition("/")
            ref = scope.qualify(parent) + slash + alias
        else:
            ref = scope.qualify(ref)
        await self.remover.remove(ref, force, volumes, link)

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]:
        return await self.remover.prune(filters, scope)

    # -- streams -----------------------------------------------------------------------

    def wait_future(self, ref: str, condition: str, scope: Scope = OPERATOR
                    ) -> asyncio.Future[int]:
        return attaching.wait_future(self.get(scope.qualify(ref)), condition)

    def attach(self, ref: str, stdout: bool, stderr: bool, scope: Scope = OPERATOR
               ) -> tuple[Container, Attachment]:
        c = self.get(scope.qualify(ref))
        attachment = attaching.attach(c, ref, stdout, stderr)
        self.store.event(c, "attach")
        return c, attachment

    def detached(self, c: Container) -> None:
        """The client typed the detach keys."""
        self.store.event(c, "detach")

    def detach(self, c: Container, attachment: Attachment) -> None:
        attaching.detach(c, attachment)

    async def write_stdin(self, c: Container, data: bytes) -> None:
        await attaching.write_stdin(c, data)

    async def close_stdin(self, c: Container) -> None:
        await attaching.close_stdin(c)

    def logs(self, ref: str, query: LogQuery, scope: Scope = OPERATOR
             ) -> tuple[Container, AsyncGenerator[LogRecord, None]]:
        """`docker logs`; errors (a driver that cannot read) come before any record."""
        c = self.get(scope.qualify(ref))
        driver = self.store.log_driver(c)
        driver.readable()
        return c, attaching.logs(c, driver, query)

    def attach_logs(self, c: Container, attachment: Attachment) -> AsyncGenerator[LogRecord, None]:
        """What `attach` with logs=1 replays: the log as it is now, so that with
        the attachment made at the same time no output is shown twice or lost;
        nothing where the driver keeps nothing."""
        query = LogQuery(stdout=attachment.stdout, stderr=attachment.stderr)
        try:
            driver = self.store.log_driver(c)
        except HbdError:
            driver = LogDriver("none", None)  # its logger never started: nothing logged
        return attaching.replay(c, driver, query)

    async def top(self, ref: str, ps_args: str = "", scope: Scope = OPERATOR
                  ) -> dict[str, Any]:
        return await stats.top(self.get(scope.qualify(ref)))

    def stats(self, ref: str, stream: bool, one_shot: bool, scope: Scope = OPERATOR
              ) -> AsyncGenerator[dict[str, Any], None]:
        """`docker stats` records; an unknown container fails here, before any record."""
        c = self.get(scope.qualify(ref))
        return stats.stats_records(c, self.store.containers.__contains__, stream, one_shot,
                                   scope.shown(c.name))

    # -- networks ------------------------------------------------------------------------

    async def connect(self, ref: str, network_ref: str, settings: dict[str, Any],
                      scope: Scope = OPERATOR) -> None:
        await self.connections.networks.ensure_default_bridge(scope)
        await self.connections.connect(scope.qualify(ref), network_ref_in(scope, network_ref),
                                       settings)

    async def disconnect(self, ref: str, network_ref: str, force: bool = False,
                         scope: Scope = OPERATOR) -> None:
        await self.connections.disconnect(scope.qualify(ref),
                                          network_ref_in(scope, network_ref), force)

    def network_members(self, network_name: str) -> dict[str, dict[str, Any]]:
        return self.views.network_members(network_name)

    # -- views ---------------------------------------------------------------------------

    def inspect(self, ref: str, scope: Scope = OPERATOR) -> dict[str, Any]:
        return self.views.inspect(ref, scope)

    def list_summaries(self, all_: bool = False, limit: int = -1,
                       filters: dict[str, list[str]] | None = None,
                       scope: Scope = OPERATOR) -> list[dict[str, Any]]:
        return self.views.list_summaries(all_, limit, filters, scope)

    # -- daemon lifecycle ------------------------------------------------------------------

    async def restore(self) -> None:
        await self.restorer.restore()

    async def shutdown(self) -> None:
        self.restorer.shutdown()


