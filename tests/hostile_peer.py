"""A guest side of the agent channel, in process, that a test scripts: it
answers the handshake as an honest init would, then floods, lies or stays
silent as told. For tests of what hbd's host side does with a hostile guest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from pathlib import Path
from typing import Any

from hbd.drivers.agent import (
    HEADER,
    SYNC_MAGIC,
    T_ACK,
    T_EVENT,
    T_HELLO,
    T_OUTPUT_ACK,
    T_STATE,
    T_SYNC,
    FrameDecoder,
)


def frame(type_: int, ident: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), type_, 0, ident) + payload


class HostilePeer:
    """Serves `socket_path` as QEMU's chardev would; one host at a time."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.processes: list[dict[str, Any]] = []
        # Request types it never answers (a guest stuck, or malicious).
        self.silent: set[int] = set()
        self.requests: list[tuple[int, int, dict[str, Any]]] = []
        # HELLO's reply: where each process's output resumes (PROTOCOL.md §6).
        self.output_from: list[dict[str, int]] = []
        # HELLO's reply: its `features`, left out while None (an older init).
        self.features: Any = None
        # The last OUTPUT_ACK count per process, and a wake-up for each.
        self.acks: dict[int, int] = {}
        self.acked = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(self.socket_path))

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def drain(self) -> None:
        assert self.writer is not None
        await self.writer.drain()

    def event(self, body: dict[str, Any]) -> None:
        self.send(frame(T_EVENT, 0, json.dumps(body).encode()))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.connected.set()
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while chunk := await reader.read(65536):
                for f in decoder.feed(chunk):
                    self._answer(f.type, f.ident, f.payload)

    def _answer(self, type_: int, ident: int, payload: bytes) -> None:
        if type_ == T_OUTPUT_ACK:
            (self.acks[ident],) = struct.unpack("<Q", payload)
            self.acked.set()
            return
        body = json.loads(payload) if payload[:1] == b"{" else {}
        self.requests.append((type_, ident, body))
        if type_ in self.silent:
            return
        if type_ == T_HELLO:
            self.send(frame(T_SYNC, 0, SYNC_MAGIC + body["nonce"].encode()))
            reply: dict[str, Any] = {"version": 2, "kernel": "hostile", "boot_ms": 1,
                                     "output": self.output_from}
            if self.features is not None:
                reply["features"] = self.features
        elif type_ == T_STATE:
            reply = {"processes": self.processes}
        elif type_ < 0x20:
            reply = {}
        else:
            return  # stream frames (STDIN) are not answered
        self.send(frame(T_ACK, ident, json.dumps(reply).encode()))
