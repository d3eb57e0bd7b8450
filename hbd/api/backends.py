"""What each router needs of the services: one small protocol per backend
(cf. moby's api/server/router/*/backend.go), and the key under which
server.py puts the object that provides it into the aiohttp application.

A router depends on these protocols only, never on the Daemon: it sees the
calls it makes and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from aiohttp import web

from hbd.services.build.builder import BuildOptions
from hbd.services.container.execs import ExecInstance
from hbd.services.container.logs import LogQuery, LogRecord
from hbd.services.container.model import Attachment, Container
from hbd.services.image.distribution import Platform
from hbd.services.image.model import Image
from hbd.services.image.reference import Reference
from hbd.services.image.registry import Credentials
from hbd.services.scope import OPERATOR, Scope
from hbd.services.system.service import EventSubscription
from hbd.services.volume.service import Volume

# -- containers ----------------------------------------------------------------


class ContainerBackend(Protocol):
    """Every call that names or lists containers takes the asker's scope
    (hbd.services.scope): a tenant finds its own containers only."""

    def list_summaries(self, all_: bool = False, limit: int = -1,
                       filters: dict[str, list[str]] | None = None,
                       scope: Scope = OPERATOR) -> list[dict[str, Any]]: ...

    async def create(self, name: str | None, body: dict[str, Any],
                     api_version: str = "", scope: Scope = OPERATOR) -> dict[str, Any]: ...

    def inspect(self, ref: str, scope: Scope = OPERATOR) -> dict[str, Any]: ...

    async def start(self, ref: str, scope: Scope = OPERATOR) -> None: ...

    async def kill(self, ref: str, signal: str | int = "KILL",
                   scope: Scope = OPERATOR) -> None: ...

    async def stop(self, ref: str, timeout: int | None = None, signal: str = "",
                   scope: Scope = OPERATOR) -> None: ...

    async def restart(self, ref: str, timeout: int | None = None, signal: str = "",
                      scope: Scope = OPERATOR) -> None: ...

    def rename(self, ref: str, new_name: str, scope: Scope = OPERATOR) -> None: ...

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]: ...

    async def remove(self, ref: str, force: bool = False, volumes: bool = False,
                     link: bool = False, scope: Scope = OPERATOR) -> None: ...

    def wait_future(self, ref: str, condition: str, scope: Scope = OPERATOR
                    ) -> asyncio.Future[int]: ...

    def logs(self, ref: str, query: LogQuery, scope: Scope = OPERATOR
             ) -> tuple[Container, AsyncGenerator[LogRecord, None]]: ...

    def attach(self, ref: str, stdout: bool, stderr: bool, scope: Scope = OPERATOR
               ) -> tuple[Container, Attachment]: ...

    def attach_logs(self, c: Container, attachment: Attachment
                    ) -> AsyncGenerator[LogRecord, None]: ...

    def detach(self, c: Container, attachment: Attachment) -> None: ...

    def detached(self, c: Container) -> None: ...

    async def write_stdin(self, c: Container, data: bytes) -> None: ...

    async def close_stdin(self, c: Container) -> None: ...

    async def pause(self, ref: str, scope: Scope = OPERATOR) -> None: ...

    async def unpause(self, ref: str, scope: Scope = OPERATOR) -> None: ...

    async def top(self, ref: str, ps_args: str = "", scope: Scope = OPERATOR
                  ) -> dict[str, Any]: ...

    async def update(self, ref: str, body: dict[str, Any], scope: Scope = OPERATOR
                     ) -> list[str]: ...

    def stats(self, ref: str, stream: bool, one_shot: bool, scope: Scope = OPERATOR
              ) -> AsyncGenerator[dict[str, Any], None]: ...

    async def resize(self, ref: str, height: int, width: int,
                     scope: Scope = OPERATOR) -> None: ...


class ContainerFilesBackend(Protocol):
    """cp, export, diff and commit: a container's files, through its guest."""

    async def stat(self, ref: str, path: str, scope: Scope = OPERATOR) -> dict[str, Any]: ...

    def stat_header(self, stat: dict[str, Any]) -> str: ...

    async def get_archive(self, ref: str, path: str, dir_contents: bool = False,
                          scope: Scope = OPERATOR
                          ) -> tuple[dict[str, Any], AsyncIterator[bytes]]: ...

    async def put_archive(self, ref: str, path: str, body: AsyncIterator[bytes],
                          copy_uid_gid: bool, no_overwrite_dir_non_dir: bool,
                          scope: Scope = OPERATOR) -> None: ...

    def export(self, ref: str, scope: Scope = OPERATOR) -> AsyncIterator[bytes]: ...

    async def changes(self, ref: str, scope: Scope = OPERATOR) -> list[dict[str, Any]]: ...

    async def commit(self, ref: str, repo: str, tag: str, comment: str, author: str,
                     pause: bool, config_overrides: dict[str, Any] | None,
                     changes: list[str], scope: Scope = OPERATOR) -> str: ...


class ExecBackend(Protocol):
    def create(self, ref: str, body: dict[str, Any], scope: Scope = OPERATOR) -> str: ...

    def get(self, exec_id: str, scope: Scope = OPERATOR) -> ExecInstance: ...

    async def start(self, exec_id: str, detach: bool,
                    console: tuple[int, int] | None = None, scope: Scope = OPERATOR
                    ) -> ExecInstance: ...

    async def write_stdin(self, instance: ExecInstance, data: bytes) -> None: ...

    async def close_stdin(self, instance: ExecInstance) -> None: ...

    async def resize(self, exec_id: str, height: int, width: int,
                     scope: Scope = OPERATOR) -> None: ...


# -- images ------------------------------------------------------------------------


class ImageBackend(Protocol):
    """Every call takes the asker's scope: a tenant's tags are its own, the
    operator's images a catalogue it reads (hbd.services.image.owners)."""

    tmp_dir: Path  # where a `docker save` archive is spooled before it streams

    def list_summaries(self, filters: dict[str, list[str]], all_: bool = False,
                       scope: Scope = OPERATOR) -> list[dict[str, Any]]: ...

    def get(self, ref_or_id: str, scope: Scope = OPERATOR) -> Image: ...

    def inspect(self, img: Image, scope: Scope = OPERATOR) -> dict[str, Any]: ...

    def tag(self, source: str, repo: str, tag: str, scope: Scope = OPERATOR) -> None: ...

    async def delete(self, ref_or_id: str, force: bool = False, scope: Scope = OPERATOR
                     ) -> list[dict[str, str]]: ...

    async def load(self, body: Any, scope: Scope = OPERATOR) -> list[str]: ...

    async def import_tarball(self, body: Any, ref: Reference | None, message: str,
                             changes: list[str], scope: Scope = OPERATOR) -> str: ...

    def save(self, names: list[str], out: BinaryIO, scope: Scope = OPERATOR) -> None: ...

    def history(self, ref: str, scope: Scope = OPERATOR) -> list[dict[str, Any]]: ...

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]: ...


class DistributionBackend(Protocol):
    """Pull and push: jsonmessage streams that raise before their first message."""

    def pull(self, ref: Reference, platform: Platform, credentials: Credentials,
             scope: Scope = OPERATOR) -> AsyncIterator[dict[str, Any]]: ...

    def push(self, name: str, tag: str, credentials: Credentials, scope: Scope = OPERATOR
             ) -> AsyncIterator[dict[str, Any]]: ...


class BuildBackend(Protocol):
    async def build(self, body: AsyncIterator[bytes], options: BuildOptions
                    ) -> AsyncGenerator[dict[str, Any], None]: ...

    async def prune_cache(self, scope: Scope = OPERATOR) -> dict[str, Any]: ...


# -- networks and volumes ------------------------------------------------------------


class NetworkBackend(Protocol):
    def list_views(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                   ) -> list[dict[str, Any]]: ...

    def inspect(self, ref: str, scope: Scope = OPERATOR) -> dict[str, Any]: ...

    async def create(self, body: dict[str, Any], scope: Scope = OPERATOR) -> dict[str, str]: ...

    async def remove(self, ref: str, scope: Scope = OPERATOR) -> None: ...

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]: ...


class ContainerNetworkBackend(Protocol):
    """Connecting containers to networks: a change to the container."""

    async def connect(self, ref: str, network_ref: str, settings: dict[str, Any],
                      scope: Scope = OPERATOR) -> None: ...

    async def disconnect(self, ref: str, network_ref: str, force: bool = False,
                         scope: Scope = OPERATOR) -> None: ...


class VolumeBackend(Protocol):
    def list_views(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                   ) -> list[dict[str, Any]]: ...

    async def create(self, name: str = "", driver: str = "",
                     labels: dict[str, str] | None = None,
                     options: dict[str, str] | None = None,
                     anonymous: bool = False, scope: Scope = OPERATOR) -> Volume: ...

    def get(self, name: str, scope: Scope = OPERATOR) -> Volume: ...

    def inspect(self, v: Volume, scope: Scope = OPERATOR) -> dict[str, Any]: ...

    async def remove(self, name: str, force: bool = False, scope: Scope = OPERATOR
                     ) -> None: ...

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]: ...


# -- plugins -------------------------------------------------------------------------


class PluginBackend(Protocol):
    """Managed plugins: installed and configured, never run."""

    def list_views(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]: ...

    def inspect(self, ref: str) -> dict[str, Any]: ...

    async def privileges(self, remote: Reference, credentials: Credentials
                         ) -> list[dict[str, Any]]: ...

    async def create(self, name: str, context: AsyncIterator[bytes]) -> None: ...

    async def remove(self, ref: str, force: bool = False) -> None: ...

    def enable(self, ref: str) -> None: ...

    def disable(self, ref: str, force: bool = False) -> None: ...

    def set(self, ref: str, args: list[str]) -> None: ...

    def pull(self, remote: Reference, name: str, granted: list[dict[str, Any]],
             credentials: Credentials) -> AsyncIterator[dict[str, Any]]: ...

    def upgrade(self, name: str, remote: Reference, granted: list[dict[str, Any]],
                credentials: Credentials) -> AsyncIterator[dict[str, Any]]: ...

    def push(self, ref: str, credentials: Credentials) -> AsyncIterator[dict[str, Any]]: ...


# -- system --------------------------------------------------------------------------


class SystemBackend(Protocol):
    def version(self) -> dict[str, Any]: ...

    def info(self, scope: Scope = OPERATOR) -> dict[str, Any]: ...

    def subscribe_events(self, since: float, until: float, filters: dict[str, list[str]],
                         scope: Scope = OPERATOR) -> EventSubscription: ...


class DiskUsageBackend(Protocol):
    """`system df`: the space each kind of object takes."""

    async def report(self, kinds: list[str], scope: Scope = OPERATOR) -> dict[str, Any]: ...


class AuthBackend(Protocol):
    """`docker login`: credentials checked against a registry."""

    async def login(self, server: str, credentials: Credentials) -> None: ...


CONTAINERS = web.AppKey[ContainerBackend]("containers")
CONTAINER_FILES = web.AppKey[ContainerFilesBackend]("container_files")
CONTAINER_NETWORKS = web.AppKey[ContainerNetworkBackend]("container_networks")
EXECS = web.AppKey[ExecBackend]("execs")
IMAGES = web.AppKey[ImageBackend]("images")
DISTRIBUTION = web.AppKey[DistributionBackend]("distribution")
BUILDER = web.AppKey[BuildBackend]("builder")
NETWORKS = web.AppKey[NetworkBackend]("networks")
VOLUMES = web.AppKey[VolumeBackend]("volumes")
PLUGINS = web.AppKey[PluginBackend]("plugins")
SYSTEM = web.AppKey[SystemBackend]("system")
DISK_USAGE = web.AppKey[DiskUsageBackend]("disk_usage")
AUTH = web.AppKey[AuthBackend]("auth")
