"""A client of hbd's streaming server (tests' own, as kubectl's would be):
the SPDY/3.1 upgrade, then remote command or port-forward streams, with the
frames of hbd/api/spdy.py on the client's side of the connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hbd.api import spdy


@dataclass
class Upgrade:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class ClientStream:
    id: int
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    data: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)

    async def read_all(self) -> bytes:
        out = b""
        while (chunk := await self.data.get()) is not None:
            out += chunk
        return out


class Client:
    """One connection: `upgrade`, then open streams and exchange data."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = spdy.Encoder(), spdy.Decoder()
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.goaway = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, protocols: list[str], method: str = "POST"
                   ) -> tuple[Client, Upgrade]:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        offered = "".join(f"X-Stream-Protocol-Version: {p}\r\n" for p in protocols)
        writer.write(f"{method} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n{offered}"
                     "Content-Length: 0\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        body = b""
        if status != 101:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        client = cls(reader, writer)
        if status == 101:
            client._task = asyncio.ensure_future(client._read_loop())
        return client, Upgrade(status, headers, body)

    async def _read_loop(self) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await self.reader.read(65536):
                self.decoder.feed(data)
                for frame in self.decoder.frames():
                    self._handle(frame)
        self.goaway.set()
        for stream in self.streams.values():
            stream.replied.set()
            stream.data.put_nowait(None)

    def _handle(self, frame: spdy.Frame) -> None:
        match frame:
            case spdy.SynReply(sid, _, fin):
                self.streams[sid].replied.set()
                if fin:
                    self.streams[sid].data.put_nowait(None)
            case spdy.Data(sid, data, fin):
                stream = self.streams[sid]
                if data:
                    stream.data.put_nowait(data)
                if fin:
                    stream.data.put_nowait(None)
            case spdy.RstStream(sid, _):
                self.streams[sid].data.put_nowait(None)
            case spdy.GoAway():
                self.goaway.set()

    async def send(self, frame: spdy.Frame) -> None:
        self.writer.write(self.encoder.encode(frame))
        await self.writer.drain()

    async def create(self, **headers: str) -> ClientStream:
        stream = ClientStream(self.next_id)
        self.next_id += 2
        self.streams[stream.id] = stream
        await self.send(spdy.SynStream(stream.id, {k.lower(): [v] for k, v in headers.items()}))
        await stream.replied.wait()
        return stream

    async def write(self, stream: ClientStream, data: bytes, fin: bool = False) -> None:
        await self.send(spdy.Data(stream.id, data, fin))

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.send(spdy.GoAway(0))
        self.writer.close()
        if self._task is not None:
            self._task.cancel()


@dataclass
class CommandResult:
    stdout: bytes
    stderr: bytes
    error: bytes

    @property
    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.error))

    @property
    def exit_code(self) -> int:
        status = self.status
        if status["status"] == "Success":
            return 0
        causes = status["details"]["causes"]
        return int(next(c["message"] for c in causes if c.get("reason") == "ExitCode"))


async def remote_command(url: str, stdin: bytes | None = None, stdout: bool = True,
                         stderr: bool = True, tty: bool = False,
                         resizes: list[tuple[int, int]] | None = None,
                         protocol: str = "v4.channel.k8s.io") -> CommandResult:
    """kubectl exec / attach: streams as client-go's v4 makes them (error
    first), stdin sent then closed, resizes (width, height) sent first."""
    client, answer = await Client.open(url, [protocol])
    if answer.status != 101:
        raise RuntimeError(f"upgrade refused: {answer.status} {answer.body!r}")
    assert answer.headers.get("x-stream-protocol-version") == protocol
    try:
        error = await client.create(streamType="error")
        streams = {}
        if stdin is not None:
            streams["stdin"] = await client.create(streamType="stdin")
        if stdout:
            streams["stdout"] = await client.create(streamType="stdout")
        if stderr and not tty:
            streams["stderr"] = await client.create(streamType="stderr")
        if tty:
            streams["resize"] = await client.create(streamType="resize")
            for width, height in resizes or []:
                await client.write(streams["resize"],
                                   json.dumps({"Width": width, "Height": height}).encode())
        if stdin is not None:
            await client.write(streams["stdin"], stdin, fin=True)
        out = await streams["stdout"].read_all() if "stdout" in streams else b""
        err = await streams["stderr"].read_all() if "stderr" in streams else b""
        return CommandResult(out, err, await error.read_all())
    finally:
        await client.close()


async def port_forward(url: str, port: int, request: bytes) -> tuple[bytes, bytes]:
    """kubectl port-forward of one connection: `request` sent to the pod's
    port, then (what came back, what the error stream said)."""
    client, answer = await Client.open(url, ["portforward.k8s.io"])
    if answer.status != 101:
        raise RuntimeError(f"upgrade refused: {answer.status} {answer.body!r}")
    try:
        error = await client.create(streamType="error", port=str(port), requestID="0")
        await client.write(error, b"", fin=True)   # client-go closes its half at once
        data = await client.create(streamType="data", port=str(port), requestID="0")
        await client.write(data, request, fin=True)
        return await data.read_all(), await error.read_all()
    finally:
        await client.close()


async def attach_and_say(url: str, line: bytes) -> bytes:
    """kubectl attach -i over v4: `line` to the container's stdin, then the
    first chunk its stdout sends back."""
    client, answer = await Client.open(url, ["v4.channel.k8s.io"])
    assert answer.status == 101, (answer.status, answer.body)
    try:
        await client.create(streamType="error")
        stdin = await client.create(streamType="stdin")
        stdout = await client.create(streamType="stdout")
        await client.create(streamType="stderr")
        await client.write(stdin, line)
        return await stdout.data.get() or b""
    finally:
        await client.close()


async def exec_and_hang_up(url: str) -> bytes:
    """kubectl exec whose user hits ^C: the first chunk of stdout, then the
    connection is dropped with the process still running."""
    client, answer = await Client.open(url, ["v4.channel.k8s.io"])
    assert answer.status == 101, (answer.status, answer.body)
    try:
        await client.create(streamType="error")
        stdout = await client.create(streamType="stdout")
        await client.create(streamType="stderr")
        return await stdout.data.get() or b""
    finally:
        await client.close()
