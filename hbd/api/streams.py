"""Hijacked connections and Docker's stream framing.

`attach` and `exec start` take over the HTTP connection as dockerd does:
answer `101 UPGRADED` (the client asked `Upgrade: tcp`), then the socket is
a raw byte stream both ways. The client half-closes its side when its stdin
ends and keeps reading output, so the connection must survive an EOF from
the client: aiohttp's protocol would close on it, hence our own protocol.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from aiohttp import web

from hbd.api.app import version_at_least
from hbd.errors import InvalidParameter

RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3
READ_HIGH_WATER = 1024 * 1024


def frame(stream: int, data: bytes) -> bytes:
    """stdcopy framing: 1 byte stream, 3 zero bytes, big-endian u32 length."""
    return struct.pack(">BxxxL", stream, len(data)) + data


def stream_content_type(request: web.Request, tty: bool) -> str:
    if not tty and version_at_least(request, "1.42"):
        return MULTIPLEXED_STREAM
    return RAW_STREAM


DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


def parse_detach_keys(spec: str) -> bytes:
    """dockerd's term.ToBytes: "ctrl-p,ctrl-q" -> b"\\x10\\x11"."""
    out = bytearray()
    for raw in (spec or DEFAULT_DETACH_KEYS).split(","):
        key = raw.strip()
        if len(key) == 1:
            out.append(ord(key))
        elif key.lower().startswith("ctrl-") and len(key) == 6:
            c = key[5].lower()
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a") + 1)
            elif c in "@[\\]^_":
                out.append({"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}[c])
            else:
                raise InvalidParameter(f"Invalid escape keys ({spec}) provided")
        else:
            raise InvalidParameter(f"Invalid escape keys ({spec}) provided")
    return bytes(out)


class DetachDetector:
    """Watches stdin for the detach sequence; holds back a partial match."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to pass on, whether the sequence was typed)."""
        out = bytearray()
        for byte in data:
            candidate = self._held + bytes([byte])
            if self.keys.startswith(candidate):
                if candidate == self.keys:
                    self._held = b""
                    return bytes(out), True
                self._held = candidate
            else:
                out += candidate
                self._held = b""
        return bytes(out), False


class HijackedConnection(asyncio.Protocol):
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
    return response, hijacked
