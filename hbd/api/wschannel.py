"""Kubernetes' channel protocols over WebSocket, the server side: what
kubelet's streaming server (apimachinery's wsstream) serves besides SPDY, and
what kubectl 1.29+ speaks first for exec and attach (v5.channel.k8s.io).

Every WebSocket message carries one channel's bytes, the channel number
first: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize. The base64 protocols
send text messages instead, the channel as an ASCII digit and the bytes in
base64. v5 adds a close signal, channel 255 followed by the channel closed
(the client's stdin ending); before v5 a client cannot half-close.

`Session` offers the channels as streams, shaped as hbd/api/spdy.py's, so
the remote command session (hbd/api/kubestream.py) runs over either
transport. This module knows nothing of processes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib

from aiohttp import WSMsgType, web

from hbd.api.inbox import Inbox

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CHANNELS = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR,
            "resize": RESIZE}
CLOSE_SIGNAL = 255
# Newest first, as wsstream picks the first it knows of those offered.
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io",
             "channel.k8s.io", "base64.channel.k8s.io")
# Messages a channel holds for a reader that has not taken them; past that
# the session stops reading the socket (TCP then holds the client back).
CHANNEL_BACKLOG = 16


def version(protocol: str) -> int:
    """The remote command protocol version a WebSocket protocol speaks."""
    if protocol.startswith("v5."):
        return 5
    return 4 if protocol.startswith("v4.") else 1


class Channel:
    """One channel of the session, as a stream: what the client sent on it
    (read), and what we send on it (write)."""

    def __init__(self, session: Session, kind: str) -> None:
        self.session = session
        self.kind = kind
        self.number = CHANNELS[kind]
        self.inbox = Inbox()

    def header(self, name: str) -> str:
        return self.kind if name == "streamType" else ""

    async def read(self) -> bytes | None:
        """The next bytes the client sent; None once it closed the channel (or the session)."""
        data = await self.inbox.take()
        if data is not None:
            self.session.taken()
        return data

    async def write(self, data: bytes) -> None:
        await self.session.send(self.number, data)

    async def close(self) -> None:
        """Our half is done: v5 says so; older protocols cannot."""
        if self.session.version >= 5:
            with contextlib.suppress(ConnectionError):
                await self.session.send(CLOSE_SIGNAL, bytes([self.number]))

    def abandon(self) -> None:
        self.inbox.abandon()
        self.session.taken()

    def deliver(self, data: bytes) -> None:
        if data:
            self.inbox.put(data)

    def finish(self) -> None:
        self.inbox.close()

    @property
    def backlog(self) -> int:
        return len(self.inbox)


class Session:
    """One upgraded WebSocket connection with the channels `kinds`."""

    def __init__(self, ws: web.WebSocketResponse, protocol: str, kinds: list[str]) -> None:
        self.ws = ws
        self.version = version(protocol)
        self.binary = "base64" not in protocol
        self.channels = {CHANNELS[k]: Channel(self, k) for k in kinds}
        self._unaccepted = [self.channels[CHANNELS[k]] for k in kinds]
        self.closed = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._send_lock = asyncio.Lock()
        self._reading = asyncio.ensure_future(self._read_loop())

    async def accept(self) -> Channel | None:
        """Each channel once (they all exist from the start), then None."""
        return self._unaccepted.pop(0) if self._unaccepted else None

    async def send(self, channel: int, data: bytes) -> None:
        if self.closed.is_set() or self.ws.closed:
            raise ConnectionResetError("WebSocket session closed")
        async with self._send_lock:
            if self.binary:
                await self.ws.send_bytes(bytes([channel]) + data)
            else:
                await self.ws.send_str(str(channel) + base64.b64encode(data).decode())

    def taken(self) -> None:
        if all(c.backlog < CHANNEL_BACKLOG for c in self.channels.values()):
            self._room.set()

    async def _read_loop(self) -> None:
        try:
            async for message in self.ws:
                if message.type == WSMsgType.BINARY:
                    data = bytes(message.data)
                elif message.type == WSMsgType.TEXT and not self.binary:
                    data = self._decode(str(message.data))
                else:
                    continue
                if data:
                    self._dispatch(data[0], data[1:])
                    await self._room.wait()
        finally:
            self._end()

    @staticmethod
    def _decode(text: str) -> bytes:
        if not text or not text[0].isdigit():
            return b""
        with contextlib.suppress(binascii.Error, ValueError):
            return bytes([int(text[0])]) + base64.b64decode(text[1:], validate=True)
        return b""

    def _dispatch(self, number: int, payload: bytes) -> None:
        if number == CLOSE_SIGNAL and self.version >= 5:
            if payload and (closing := self.channels.get(payload[0])) is not None:
                closing.finish()
            return
        channel = self.channels.get(number)
        if channel is None:
            return  # a channel the options did not open: dropped, as wsstream does
        channel.deliver(payload)
        if channel.backlog >= CHANNEL_BACKLOG:
            self._room.clear()

    def _end(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            for channel in self.channels.values():
                channel.finish()

    async def close(self) -> None:
        self._end()
        with contextlib.suppress(ConnectionError):
            await self.ws.close()
        self._reading.cancel()
