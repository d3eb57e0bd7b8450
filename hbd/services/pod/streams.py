"""A client's streams with a process of a pod's container: an exec started
for it, or the container's main process (attach); and a connection to a
port of a pod (port-forward). The streaming server (hbd/api/kubestream.py)
drives these; they only call the container and exec services, as `docker
exec` and `docker attach` do, and the pod's guest for its connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hbd.drivers.agent import FEATURE_CONNECT, AgentError, ExitStatus, ProcessSpec
from hbd.drivers.flow import Drain, StreamQueue
from hbd.errors import HbdError, SystemError_
from hbd.services.container.execs import ExecInstance, ExecService
from hbd.services.container.model import Attachment, Container
from hbd.services.container.sandbox import ContainerInGuest
from hbd.services.container.service import ContainerService
from hbd.tasks import spawn

# What one read of a port-forward connection by the pod's address takes at most.
TCP_READ = 64 * 1024
# Of a failed in-guest connection's stderr, the reason: this much is kept.
FAILURE_TEXT_LIMIT = 4096


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

    async def close(self) -> None:
        """The exec dies with its client's session (containerd kills it
        when the stream's context ends)."""
        self.instance.stop_output()
        await self.execs.kill(self.instance)


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

    async def close(self) -> None:
        """The container runs on: only its client has gone."""
        self.containers.detach(self.container, self.attachment)


class GuestPortConnection:
    """A connection to a port on the pod's own loopback, opened by the pod's
    guest inside the pod's network namespace (the init's `connect` builtin,
    kernels/init/PROTOCOL.md §4), as containerd dials inside the pod's
    netns: the builtin's stdin and stdout are the connection. Its output
    queue is bounded, so a client that reads slowly slows the pod down."""

    def __init__(self, guest: ContainerInGuest, proc: int) -> None:
        self.guest = guest
        self.proc = proc
        self._received: StreamQueue[bytes] = StreamQueue()
        self._stderr = bytearray()
        self._status: ExitStatus | None = None
        self._exited = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, guest: ContainerInGuest, port: int) -> GuestPortConnection:
        connection = cls(guest, guest.take_proc())
        spec = ProcessSpec(proc=connection.proc, args=[str(port)], env=[],
                           builtin=FEATURE_CONNECT, stdin=True)
        try:
            await guest.start(spec, connection)
        except AgentError as e:
            raise SystemError_(f"cannot connect to port {port} in the pod: {e.message}") from e
        connection._watch = spawn(connection._end_when_guest_goes())
        return connection

    # -- ProcessOutput ------------------------------------------------------------

    def on_output(self, stream: int, data: bytes) -> Drain:
        if stream == 1:
            return self._received.put(data, len(data))
        if len(self._stderr) < FAILURE_TEXT_LIMIT:
            self._stderr += data[:FAILURE_TEXT_LIMIT - len(self._stderr)]
        return None

    def on_output_eof(self, stream: int) -> None:
        if stream == 1:
            self._received.end()

    def on_exit(self, status: ExitStatus) -> None:
        self._received.end()
        if self._status is None:
            self._status = status
        self._exited.set()

    async def _end_when_guest_goes(self) -> None:
        await self.guest.wait_gone()
        if not self._exited.is_set():
            self._stderr[:] = b"the pod's guest went away"
            self.on_exit(ExitStatus(137, 9, False))

    # -- PodConnection ------------------------------------------------------------

    async def read(self) -> bytes:
        return await self._received.get() or b""

    async def write(self, data: bytes) -> None:
        try:
            await self.guest.write_stdin(self.proc, data)
        except AgentError as e:
            raise ConnectionResetError(e.message) from e

    async def write_eof(self) -> None:
        with contextlib.suppress(AgentError):
            await self.guest.close_stdin(self.proc)

    async def failure(self) -> str:
        await self._exited.wait()
        if self._status is None or self._status.exit_code == 0:
            return ""
        return (self._stderr.decode(errors="replace").strip() or
                f"the connection ended with status {self._status.exit_code}")

    async def close(self) -> None:
        """Drops the connection if it is still open; the guest forgets the
        builtin once it has ended."""
        self._received.close()
        if not self._exited.is_set():
            with contextlib.suppress(AgentError):
                await self.guest.signal(self.proc, 9)
        spawn(self._release())

    async def _release(self) -> None:
        await self._exited.wait()
        if self._watch is not None:
            self._watch.cancel()
        with contextlib.suppress(AgentError):
            await self.guest.release(self.proc)


class TcpPortConnection:
    """A connection to a port of the pod by its address, for a guest whose
    init cannot connect from inside (one booted before hbd was upgraded):
    that reaches what listens on the pod's address, not on its loopback."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, address: str, port: int) -> TcpPortConnection:
        return cls(*await asyncio.open_connection(address, port))

    async def read(self) -> bytes:
        try:
            return await self.reader.read(TCP_READ)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_eof(self) -> None:
        if self.writer.can_write_eof():
            self.writer.write_eof()

    async def failure(self) -> str:
        return ""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
