"""The streaming server kubelet, kubectl, crictl and critest reach for exec,
attach and port-forward: Kubernetes' remote command (channel.k8s.io, v2-v4)
and port-forward (portforward.k8s.io) protocols over SPDY/3.1 (hbd/api/spdy.py);
remote command over WebSocket too (v1-v5, hbd/api/wschannel.py), as kubelet's
streaming server serves it.

As kubelet's own streaming server (pkg/kubelet/cri/streaming) and
containerd's: a runtime call registers what the stream will do and gets a
URL with a token; the client then connects there once. Tokens are random,
single use and live `TOKEN_TTL` seconds; an unknown or expired one is a 404.

This module knows nothing of the CRI: a registered request carries how to
start its process (`Process`, which the pod service provides) or how to
reach a port of a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from hbd.api import spdy, wschannel
from hbd.errors import HbdError
from hbd.tasks import spawn

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0               # kubelet's and containerd's: one minute
MAX_PENDING = 1000             # requests registered and not yet used
STREAM_CREATION_TIMEOUT = 30.0  # for the client to open the streams it asked for
REMOTE_COMMAND_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
                            "channel.k8s.io")
PORT_FORWARD_PROTOCOLS = ("portforward.k8s.io",)
STDOUT, STDERR = 1, 2
PORT_FORWARD_BUFFER = 64 * 1024
# Port-forward requests with one of their two streams opened, at most, per connection.
MAX_HALF_PAIRS = 128


class Stream(Protocol):
    """One of a session's streams (a SPDY stream, a WebSocket channel)."""

    def header(self, name: str) -> str: ...
    async def read(self) -> bytes | None: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    def abandon(self) -> None: ...


class StreamSession(Protocol):
    """An upgraded connection carrying a remote command's streams."""

    closed: asyncio.Event

    async def accept(self) -> Stream | None: ...
    async def close(self) -> None: ...


class Process(Protocol):
    """A process whose streams a client is attached to (an exec, or a
    container's main process for attach)."""

    def output(self) -> AsyncIterator[tuple[int, bytes]]: ...
    async def write_stdin(self, data: bytes) -> None: ...
    async def end_stdin(self) -> bool:
        """The client's stdin ended: True if the process got EOF and its
        output flows on, False if the session ends here (the process running
        on), as docker's and containerd's attach without StdinOnce."""
    async def resize(self, height: int, width: int) -> None: ...
    async def wait(self) -> int | None:
        """Its exit code once its output ended; None where there is none to
        report (attach)."""
    async def close(self) -> None:
        """The session is over: its client has gone, or the process has
        ended. An exec still running then is killed, as kubelet expects of
        a runtime (containerd's), so no client leaves processes behind."""


@dataclass(frozen=True)
class StreamOptions:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


StartProcess = Callable[[], Awaitable[Process]]


@dataclass(frozen=True)
class RemoteCommand:
    options: StreamOptions
    start: StartProcess


class PodConnection(Protocol):
    """A connection to a port of a pod, made for one port-forward request."""

    async def read(self) -> bytes:
        """What the pod sent next; b"" once it has finished sending."""
    async def write(self, data: bytes) -> None: ...
    async def write_eof(self) -> None:
        """The client has finished sending."""
    async def failure(self) -> str:
        """Once read has returned b"": why the connection failed ("" if it did not)."""
    async def close(self) -> None:
        """Drop the connection (the client went away, or it is over)."""


@dataclass(frozen=True)
class PortForward:
    connect: Callable[[int], Awaitable[PodConnection]]


Pending = RemoteCommand | PortForward


class RequestCache:
    """Registered requests by token: single use, `TOKEN_TTL` seconds, at
    most `MAX_PENDING` (the oldest expires first when more come)."""

    def __init__(self, ttl: float = TOKEN_TTL, limit: int = MAX_PENDING) -> None:
        self.ttl = ttl
        self.limit = limit
        self._pending: OrderedDict[str, tuple[float, str, Pending]] = OrderedDict()

    def add(self, kind: str, request: Pending) -> str:
        self._expire()
        while len(self._pending) >= self.limit:
            self._pending.popitem(last=False)
        token = secrets.token_urlsafe(8)
        self._pending[token] = (time.monotonic() + self.ttl, kind, request)
        return token

    def consume(self, kind: str, token: str) -> Pending | None:
        self._expire()
        entry = self._pending.get(token)
        if entry is None or entry[1] != kind:
            return None
        del self._pending[token]
        return entry[2]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            token, (deadline, _, _) = next(iter(self._pending.items()))
            if deadline > now:
                break
            del self._pending[token]


def k8s_status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status, as Kubernetes' clients print errors from; its
    `message` is also the Docker-style error body."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _error(code: int, reason: str, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(k8s_status(code, reason, message), status=code, headers=headers)


def _offered_protocols(request: web.Request) -> list[str]:
    return [p.strip() for value in request.headers.getall("X-Stream-Protocol-Version", [])
            for p in value.split(",") if p.strip()]


def negotiate(request: web.Request, supported: tuple[str, ...]) -> str | web.Response:
    """The SPDY upgrade and subprotocol handshake (apimachinery's
    httpstream.Handshake): the first protocol of ours the client offers.
    A client that offers none gets "" (the legacy remote command protocol)."""
    connection = request.headers.get("Connection", "").lower()
    upgrade = request.headers.get("Upgrade", "").lower()
    if "upgrade" not in connection or upgrade != "spdy/3.1":
        return _error(400, "BadRequest",
                      "unable to upgrade: missing upgrade headers in request "
                      "(this streaming server speaks SPDY/3.1)")
    offered = _offered_protocols(request)
    if not offered:
        return ""
    for protocol in offered:
        if protocol in supported:
            return protocol
    return _error(403, "Forbidden",
                  f"unable to upgrade: unable to negotiate protocol: client supports "
                  f"{offered}, server supports {list(supported)}",
                  {"X-Accept-Protocol-Version": ", ".join(supported)})


async def upgrade(request: web.Request, protocol: str) -> tuple[web.StreamResponse,
                                                                spdy.Session]:
    """Answer 101 and run SPDY on the connection from here on."""
    response = web.StreamResponse(status=101, reason="Switching Protocols")
    response.headers["Connection"] = "Upgrade"
    response.headers["Upgrade"] = "SPDY/3.1"
    if protocol:
        response.headers["X-Stream-Protocol-Version"] = protocol
    response.force_close()
    await response.prepare(request)
    transport = request.transport
    assert transport is not None
    handler: Any = request.protocol
    # Bytes the client sent right behind the request belong to SPDY.
    initial = bytes(getattr(handler, "_message_tail", b"") or b"")
    if hasattr(handler, "_message_tail"):
        handler._message_tail = b""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 20, loop=loop)
    stream_protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(stream_protocol)
    stream_protocol.connection_made(transport)
    if initial:
        reader.feed_data(initial)
    writer = asyncio.StreamWriter(transport, stream_protocol, reader, loop)
    return response, spdy.Session(reader, writer)


# -- remote command (exec, attach) ----------------------------------------------------------

def _version(protocol: str) -> int:
    return 1 if protocol in ("", "channel.k8s.io") else int(protocol[1])


def _expected_streams(options: StreamOptions, version: int) -> set[str]:
    expected = {"error"}
    if options.stdin:
        expected.add("stdin")
    if options.stdout:
        expected.add("stdout")
    if options.stderr and not options.tty:
        expected.add("stderr")
    if options.tty and version >= 3:
        expected.add("resize")
    return expected


def exit_status(code: int | None) -> dict[str, Any]:
    """What v4's error stream says at the end: success, or the exit code."""
    if not code:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def _failure(message: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "message": message,
            "reason": "InternalError", "code": 500,
            "details": {"causes": [{"message": message}]}}


class RemoteCommandSession:
    """One exec or attach over an upgraded connection, kubelet's rules:
    wait for the streams the options call for, start the process, pump its
    streams, then report on the error stream and close."""

    def __init__(self, session: StreamSession, version: int, command: RemoteCommand) -> None:
        self.session = session
        self.version = version
        self.command = command
        self.streams: dict[str, Stream] = {}

    async def serve(self) -> None:
        try:
            await asyncio.wait_for(self._open_streams(), STREAM_CREATION_TIMEOUT)
        except TimeoutError:
            log.info("streaming client opened %s of the streams it asked for",
                     sorted(self.streams))
            return
        if "error" not in self.streams:
            return  # the client hung up before opening them
        try:
            process = await self.command.start()
        except HbdError as e:
            await self._report_error(e.message)
            return
        try:
            code = await self._pump(process)
        finally:
            await process.close()
        if code is not None or self.version >= 4:
            await self._report_exit(code)

    async def _open_streams(self) -> None:
        expected = _expected_streams(self.command.options, self.version)
        while not expected <= self.streams.keys():
            stream = await self.session.accept()
            if stream is None:
                return
            kind = stream.header("streamType")
            if kind in expected and kind not in self.streams:
                self.streams[kind] = stream
            else:
                await stream.close()

    async def _pump(self, process: Process) -> int | None:
        stdin = spawn(self._stdin(process))
        resizes = spawn(self._resizes(process))
        output = spawn(self._output(process))
        gone = spawn(self.session.closed.wait())
        try:
            await asyncio.wait([output, gone, stdin], return_when=asyncio.FIRST_COMPLETED)
            if stdin.done() and not stdin.cancelled() and stdin.result() is False:
                return None  # the session ended with the client's stdin
            if not output.done():
                await asyncio.wait([output, gone], return_when=asyncio.FIRST_COMPLETED)
            if not output.done():
                return None  # the client went away
            return await process.wait()
        finally:
            for task in [stdin, resizes, output, gone]:
                task.cancel()
            for stream in self.streams.values():
                stream.abandon()

    async def _output(self, process: Process) -> None:
        targets = {STDOUT: self.streams.get("stdout"), STDERR: self.streams.get("stderr")}
        if self.command.options.tty:
            targets[STDERR] = targets[STDOUT]
        async for stream, data in process.output():
            target = targets.get(stream)
            if target is not None:
                with contextlib.suppress(ConnectionError):
                    await target.write(data)

    async def _stdin(self, process: Process) -> bool | None:
        """The client's stdin to the process; what `end_stdin` said at its end."""
        stream = self.streams.get("stdin")
        if stream is None:
            await asyncio.Future()  # none: nothing ends here
            return None
        while (data := await stream.read()) is not None:
            await process.write_stdin(data)
        return await process.end_stdin()

    async def _resizes(self, process: Process) -> None:
        """Back-to-back JSON objects {"Width": w, "Height": h}."""
        stream, decoder, buffer = self.streams.get("resize"), json.JSONDecoder(), ""
        if stream is None:
            return
        while (data := await stream.read()) is not None:
            buffer += data.decode("utf-8", "replace")
            while buffer.strip():
                try:
                    size, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break
                buffer = buffer.lstrip()[end:]
                if isinstance(size, dict):
                    with contextlib.suppress(HbdError, TypeError, ValueError):
                        await process.resize(int(size.get("Height", 0)),
                                             int(size.get("Width", 0)))

    async def _report_exit(self, code: int | None) -> None:
        if self.version >= 4:
            await self._write_error_stream(json.dumps(exit_status(code)).encode())
        elif code:
            await self._write_error_stream(
                f"command terminated with non-zero exit code: exit status {code}".encode())

    async def _report_error(self, message: str) -> None:
        body = json.dumps(_failure(message)) if self.version >= 4 else message
        await self._write_error_stream(body.encode())

    async def _write_error_stream(self, body: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            await self.streams["error"].write(body)

    async def close(self) -> None:
        for stream in self.streams.values():
            await stream.close()
        await self.session.close()


# -- port forward ---------------------------------------------------------------------------

class PortForwardSession:
    """Data and error stream pairs by `requestID`, each forwarded to the
    `port` they name, until the client hangs up."""

    def __init__(self, session: spdy.Session, forward: PortForward) -> None:
        self.session = session
        self.forward = forward
        self._pairs: dict[str, dict[str, spdy.Stream]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        try:
            while (stream := await self.session.accept()) is not None:
                await self._add(stream)
        finally:
            for task in self._tasks:
                task.cancel()

    async def _add(self, stream: spdy.Stream) -> None:
        kind, request_id = stream.header("streamType"), stream.header("requestID")
        if kind not in ("data", "error"):
            await self.session.send(spdy.RstStream(stream.id, spdy.PROTOCOL_ERROR))
            return
        if request_id not in self._pairs and len(self._pairs) >= MAX_HALF_PAIRS:
            await self.session.send(spdy.RstStream(stream.id, spdy.REFUSED_STREAM))
            return
        pair = self._pairs.setdefault(request_id, {})
        if kind in pair:
            await self.session.send(spdy.RstStream(stream.id, spdy.PROTOCOL_ERROR))
            return
        pair[kind] = stream
        if len(pair) == 2:
            del self._pairs[request_id]
            task = spawn(self._forward(pair["data"], pair["error"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _forward(self, data: spdy.Stream, error: spdy.Stream) -> None:
        port_text = data.header("port")
        try:
            port = int(port_text)
            if not 0 < port < 65536:
                raise ValueError(port_text)
            connection = await self.forward.connect(port)
        except (ValueError, HbdError, OSError) as e:
            await self._fail(data, error, port_text, _reason(e))
            return
        error.abandon()  # the client says nothing on it
        to_pod = spawn(self._to_pod(data, connection))
        try:
            # The pod's end of the connection ends the request (containerd's
            # rule), whatever the client still sends.
            pod_ended = await self._from_pod(connection, data)
            # Why it ended, once the pod's end did (a client gone asks nothing).
            failure = await connection.failure() if pod_ended else ""
        finally:
            to_pod.cancel()
            await connection.close()
        if failure:
            await self._fail(data, error, port_text, failure)
            return
        data.abandon()
        await data.close()
        await error.close()

    @staticmethod
    async def _fail(data: spdy.Stream, error: spdy.Stream, port_text: str,
                    message: str) -> None:
        with contextlib.suppress(ConnectionError):
            await error.write(f"error forwarding port {port_text} to pod: {message}".encode())
        await error.close()
        data.abandon()
        await data.close()

    @staticmethod
    async def _to_pod(data: spdy.Stream, connection: PodConnection) -> None:
        with contextlib.suppress(ConnectionError):
            while (chunk := await data.read()) is not None:
                await connection.write(chunk)
            await connection.write_eof()

    @staticmethod
    async def _from_pod(connection: PodConnection, data: spdy.Stream) -> bool:
        """What the pod sends, to the client: True once the pod's end
        ended it, False if the client's did."""
        try:
            while chunk := await connection.read():
                await data.write(chunk)
        except ConnectionError:
            return False
        return True


def _reason(e: Exception) -> str:
    if isinstance(e, HbdError):
        return e.message
    if isinstance(e, OSError) and e.errno:
        return f"connect: {os.strerror(e.errno).lower()}"
    return f"invalid port: {e}"


# -- the server -----------------------------------------------------------------------------

class StreamingServer:
    """An HTTP server on `address:port` (0: any free port) serving the
    registered requests at /exec/TOKEN, /attach/TOKEN and /portforward/TOKEN."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.address = address
        self.port = port
        self.cache = RequestCache()
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        for kind in ("exec", "attach", "portforward"):
            app.router.add_route("*", f"/{kind}/{{token}}", self._handler(kind))
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.address, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        host, port = sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{host}:{port}"
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def register(self, kind: str, request: Pending) -> str:
        """The URL the client is to connect to, once, within TOKEN_TTL."""
        return f"{self.base_url}/{kind}/{self.cache.add(kind, request)}"

    def _handler(self, kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            pending = self.cache.consume(kind, request.match_info["token"])
            if pending is None:
                return _error(404, "NotFound", "unknown or expired streaming token")
            if isinstance(pending, PortForward):
                return await self._port_forward(request, pending)
            return await self._remote_command(request, pending)
        return handle

    async def _remote_command(self, request: web.Request,
                              command: RemoteCommand) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._remote_command_over_websocket(request, command)
        protocol = negotiate(request, REMOTE_COMMAND_PROTOCOLS)
        if isinstance(protocol, web.Response):
            return protocol
        response, session = await upgrade(request, protocol)
        remote = RemoteCommandSession(session, _version(protocol), command)
        try:
            await remote.serve()
        finally:
            await remote.close()
        return response

    @staticmethod
    async def _remote_command_over_websocket(request: web.Request,
                                             command: RemoteCommand) -> web.StreamResponse:
        """As kubelet's wsstream: the channels the options call for, all open
        from the start; an empty message on the first one we write to says
        the connection is up."""
        ws = web.WebSocketResponse(protocols=wschannel.PROTOCOLS)
        await ws.prepare(request)
        protocol = ws.ws_protocol or ""
        version = wschannel.version(protocol)
        kinds = sorted(_expected_streams(command.options, version),
                       key=lambda kind: wschannel.CHANNELS[kind])
        session = wschannel.Session(ws, protocol, kinds)
        first = next(kind for kind in ("stdout", "stderr", "error") if kind in kinds)
        remote = RemoteCommandSession(session, version, command)
        try:
            await session.channels[wschannel.CHANNELS[first]].write(b"")
            await remote.serve()
        except ConnectionError:
            pass
        finally:
            await remote.close()
        return ws

    async def _port_forward(self, request: web.Request,
                            forward: PortForward) -> web.StreamResponse:
        protocol = negotiate(request, PORT_FORWARD_PROTOCOLS)
        if isinstance(protocol, web.Response):
            return protocol
        response, session = await upgrade(request, protocol or PORT_FORWARD_PROTOCOLS[0])
        try:
            await PortForwardSession(session, forward).serve()
        finally:
            await session.close()
        return response
