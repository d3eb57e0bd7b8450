"""A client's streams with a process of a pod's container: an exec started
for it, or the container's main process (attach). The streaming server
(hbd/api/kubestream.py) drives these; they only call the container and exec
services, as `docker exec` and `docker attach` do."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from hbd.errors import HbdError
from hbd.services.container.execs import ExecInstance, ExecService
from hbd.services.container.model import Attachment, Container
from hbd.services.container.service import ContainerService


class ExecStreams:
    def __init__(self, execs: ExecService, instance: ExecInstance) -> None:
        self.execs = execs
        self.instance = instance

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        return self.instance.output()

    async def write_stdin(self, data: bytes) -> None:
        await self.execs.write_stdin(self.instance, data)

    async def end_stdin(self) -> bool:
        await self.execs.close_stdin(self.instance)
        return True

    async def resize(self, height: int, width: int) -> None:
        with contextlib.suppress(HbdError):  # it may have just ended
            await self.execs.resize(self.instance.id, height, width)

    async def wait(self) -> int | None:
        await self.instance.done.wait()
        return self.instance.exit_code

    def close(self) -> None:
        self.instance.stop_output()


class AttachStreams:
    def __init__(self, containers: ContainerService, c: Container,
                 attachment: Attachment) -> None:
        self.containers = containers
        self.container = c
        self.attachment = attachment

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        return self.attachment.output()

    async def write_stdin(self, data: bytes) -> None:
        await self.containers.write_stdin(self.container, data)

    async def end_stdin(self) -> bool:
        """EOF to a container that closes stdin with its client's (StdinOnce,
        no tty); any other attach ends here, the container running on."""
        config = self.container.config
        if config.get("StdinOnce") and not config.get("Tty"):
            await self.containers.close_stdin(self.container)
            return True
        return False

    async def resize(self, height: int, width: int) -> None:
        with contextlib.suppress(HbdError):
            await self.containers.resize(self.container.id, height, width)

    async def wait(self) -> int | None:
        return None  # an attach reports no exit code: the container's status does

    def close(self) -> None:
        self.containers.detach(self.container, self.attachment)
