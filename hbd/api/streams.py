"""Hijacked connections and Docker's stream framing.

`attach` and `exec start` take over the HTTP connection as dockerd does:
answer `101 UPGRADED` (the client asked `Upgrade: tcp`), then the socket is
a raw byte stream both ways. The client half-closes its side when its stdin
ends and keeps reading output, so the connection must survive an EOF from
the client: aiohttp's protocol would close on it, hence our own protocol.

`serve_stdio` then runs one client's session with a process, with dockerd's
rules for how it ends (container/stream/attach.go): when the output ends;
when the client goes; when it types the detach keys (tty only); and when its
stdin ends: a process that closes stdin then (exec, `StdinOnce` attach, no
tty) gets EOF and its output flows on to its end, any other session ends
there, the process still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import socket
import struct
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hbd.api.app import version_at_least
from hbd.services.container.detach import DetachDetector

RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3
READ_HIGH_WATER = 1024 * 1024
# How long the stream waits for the client to read the 101 headers.
HEADERS_READ_WAIT = 0.5


def frame(stream: int, data: bytes) -> bytes:
    """stdcopy framing: 1 byte stream, 3 zero bytes, big-endian u32 length."""
    return struct.pack(">BxxxL", stream, len(data)) + data


def stream_content_type(request: web.Request, tty: bool) -> str:
    if not tty and version_at_least(request, "1.42"):
        return MULTIPLEXED_STREAM
    return RAW_STREAM


class HijackedConnection(asyncio.Protocol):
    carries_stdin = True

    def __init__(self, transport: asyncio.Transport, initial: bytes) -> None:
        self.transport = transport
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._buffered = 0
        self._reading_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost = asyncio.Event()
        if initial:
            self._push(initial)

    def _push(self, data: bytes) -> None:
        self._incoming.put_nowait(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self._push(data)

    def eof_received(self) -> bool:
        self._incoming.put_nowait(None)
        return True  # keep the write side open: output still flows

    def connection_lost(self, exc: Exception | None) -> None:
        self._incoming.put_nowait(None)
        self.lost.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def read(self) -> bytes | None:
        """The next bytes from the client; None once it closed its side."""
        data = await self._incoming.get()
        if data is not None:
            self._buffered -= len(data)
            if self._reading_paused and self._buffered <= READ_HIGH_WATER // 2:
                self._reading_paused = False
                self.transport.resume_reading()
        else:
            self._incoming.put_nowait(None)  # stay at EOF for later readers
        return data

    async def write(self, data: bytes) -> None:
        if self.lost.is_set():
            raise ConnectionResetError("client went away")
        self.transport.write(data)
        await self._writable.wait()

    def close(self) -> None:
        self.transport.close()


class ResponseChannel:
    """The same interface over a plain HTTP response, for a client that did not
    ask to upgrade: output is the (chunked) response body, and there is no
    stdin."""

    carries_stdin = False

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.lost = asyncio.Event()

    async def read(self) -> bytes | None:
        return None

    async def write(self, data: bytes) -> None:
        try:
            await self.response.write(data)
        except ConnectionError:
            self.lost.set()
            raise

    def close(self) -> None:
        pass


Channel = HijackedConnection | ResponseChannel


async def hijack(request: web.Request, content_type: str) -> tuple[web.StreamResponse, Channel]:
    """Answer the request and take over its connection (when the client asked)."""
    connection = request.headers.get("Connection", "").lower()
    upgrade = "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "tcp"
    if not upgrade:
        response = web.StreamResponse(status=200)
        response.content_type = content_type
        await response.prepare(request)
        return response, ResponseChannel(response)
    response = web.StreamResponse(status=101, reason="UPGRADED")
    response.headers["Connection"] = "Upgrade"
    response.headers["Upgrade"] = "tcp"
    response.content_type = content_type
    response.force_close()
    await response.prepare(request)
    transport = request.transport
    assert transport is not None
    protocol: Any = request.protocol
    # Bytes the client sent right behind the request (e.g. stdin) are held by
    # aiohttp's protocol as the upgraded connection's first data.
    initial = bytes(getattr(protocol, "_message_tail", b"") or b"")
    if hasattr(protocol, "_message_tail"):
        protocol._message_tail = b""
    hijacked = HijackedConnection(transport, initial)
    transport.set_protocol(hijacked)
    await _headers_read(transport)
    return response, hijacked


async def _headers_read(transport: asyncio.Transport) -> None:
    """docker-py reads a hijacked stream from the raw socket, past the buffer
    its HTTP parser filled: bytes that arrive together with the 101 headers are
    lost to it. So the stream starts once the client has read the headers. On
    a unix socket the kernel counts what the peer has not read yet (SIOCOUTQ);
    a client that does not read within HEADERS_READ_WAIT gets the stream anyway."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEADERS_READ_WAIT
    while loop.time() < deadline:
        if transport.get_write_buffer_size() == 0 and _unread_by_peer(sock.fileno()) == 0:
            return
        await asyncio.sleep(0.001)


def _unread_by_peer(fd: int) -> int:
    try:
        raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


# -- one client's session with a process ------------------------------------------------


class _StdinEnd(enum.Enum):
    CLOSED = "closed"  # the process's stdin was closed; its output flows on
    ENDED = "ended"  # the client's stdin ended: the session ends with it
    DETACHED = "detached"  # the client typed the detach keys


@dataclass
class StdinPlan:
    """Where a session's stdin goes, and what ends it."""

    write: Callable[[bytes], Awaitable[None]]
    close: Callable[[], Awaitable[None]]
    close_on_eof: bool  # dockerd's CloseStdin and no tty
    detect: DetachDetector | None  # tty only


async def serve_stdio(channel: Channel, output: AsyncIterator[bytes],
                      stdin: StdinPlan | None) -> bool:
    """Copy `output` to the client and (with a plan) its stdin to the process,
    until the session ends; True when the client detached with the keys."""
    sending = asyncio.ensure_future(_send(channel, output))
    lost = asyncio.ensure_future(channel.lost.wait())
    tasks: set[asyncio.Future[Any]] = {sending, lost}
    reading: asyncio.Future[_StdinEnd] | None = None
    if stdin is not None and channel.carries_stdin:
        reading = asyncio.ensure_future(_copy_stdin(channel, stdin))
        tasks.add(reading)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if reading in done and reading.result() is _StdinEnd.CLOSED:
            await asyncio.wait({sending, lost}, return_when=asyncio.FIRST_COMPLETED)
        return reading in done and reading.result() is _StdinEnd.DETACHED
    finally:
        for task in tasks:
            task.cancel()


async def _send(channel: Channel, output: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(ConnectionError):
        async for data in output:
            await channel.write(data)


async def _copy_stdin(channel: Channel, stdin: StdinPlan) -> _StdinEnd:
    while (data := await channel.read()) is not None:
        detached = False
        if stdin.detect is not None:
            data, detached = stdin.detect.feed(data)
        if data:
            await stdin.write(data)
        if detached:
            return _StdinEnd.DETACHED
    if stdin.detect is not None and (held := stdin.detect.flush()):
        await stdin.write(held)
    if not stdin.close_on_eof:
        return _StdinEnd.ENDED
    await stdin.close()
    return _StdinEnd.CLOSED
