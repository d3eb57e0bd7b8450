"""The streaming server's own rules (hbd/api/kubestream.py), with a process
of our own behind it: tokens, the remote command protocol's streams and
resizes, and the v4 error stream's statuses."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from hbd.api import kubestream, spdy
from hbd.api.kubestream import RemoteCommand, RequestCache, StreamingServer, StreamOptions
from hbd.errors import Conflict
from hbd.services.pod.streams import TcpPortConnection
from tests import kubestream_client as ks


@pytest.fixture
async def server() -> AsyncIterator[StreamingServer]:
    """A streaming server, started; stopped after the test."""
    streaming = StreamingServer()
    await streaming.start()
    yield streaming
    await streaming.stop()


def test_tokens_are_single_use_and_of_one_kind() -> None:
    cache = RequestCache()
    command = RemoteCommand(StreamOptions(False, True, False, False), FakeProcess.starter())
    token = cache.add("exec", command)
    assert cache.consume("attach", token) is None     # an exec token is no attach token
    assert cache.consume("exec", token) is command
    assert cache.consume("exec", token) is None
    assert len(token) >= 11 and cache.add("exec", command) != token


def test_expired_and_surplus_tokens_are_gone() -> None:
    command = RemoteCommand(StreamOptions(False, True, False, False), FakeProcess.starter())
    expired = RequestCache(ttl=0)
    assert expired.consume("exec", expired.add("exec", command)) is None
    small = RequestCache(limit=2)
    first, second, third = (small.add("exec", command) for _ in range(3))
    assert small.consume("exec", first) is None  # the oldest made room
    assert small.consume("exec", second) is command
    assert small.consume("exec", third) is command


def test_exit_statuses_as_client_go_reads_them() -> None:
    assert kubestream.exit_status(0) == {"metadata": {}, "status": "Success"}
    failed = kubestream.exit_status(42)
    assert failed["status"] == "Failure" and failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "42"}]


class FakeProcess:
    """Echoes its stdin to stdout, upper-cased, and exits 5 at its EOF."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.resizes: list[tuple[int, int]] = []
        self.closed = False

    @classmethod
    def starter(cls, into: list[FakeProcess] | None = None) -> kubestream.StartProcess:
        async def start() -> kubestream.Process:
            process = cls()
            if into is not None:
                into.append(process)
            return process
        return start

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def write_stdin(self, data: bytes) -> None:
        self.queue.put_nowait((1, data.upper()))

    async def end_stdin(self) -> bool:
        self.queue.put_nowait((2, b"eof"))
        self.queue.put_nowait(None)
        return True

    async def resize(self, height: int, width: int) -> None:
        self.resizes.append((height, width))

    async def wait(self) -> int | None:
        return 5

    async def close(self) -> None:
        self.closed = True


async def test_a_remote_command_session_end_to_end(server: StreamingServer) -> None:
    started: list[FakeProcess] = []
    url = server.register("exec", RemoteCommand(StreamOptions(True, True, True, False),
                                                FakeProcess.starter(started)))
    result = await ks.remote_command(url, stdin=b"abc")
    assert (result.stdout, result.stderr, result.exit_code) == (b"ABC", b"eof", 5)
    assert started[0].closed


async def test_resizes_split_and_joined_across_frames(server: StreamingServer) -> None:
    started: list[FakeProcess] = []
    url = server.register("exec", RemoteCommand(StreamOptions(True, True, False, True),
                                                FakeProcess.starter(started)))
    client, answer = await ks.Client.open(url, ["v4.channel.k8s.io"])
    assert answer.status == 101
    error = await client.create(streamType="error")
    stdin = await client.create(streamType="stdin")
    stdout = await client.create(streamType="stdout")
    resize = await client.create(streamType="resize")
    sizes = [{"Width": 80, "Height": 24}, {"Width": 101, "Height": 33},
             {"Width": 120, "Height": 40}]
    wire = "".join(json.dumps(s) for s in sizes).encode()
    await client.write(resize, wire[:10])
    await client.write(resize, wire[10:])
    await client.write(stdin, b"x", fin=True)
    assert await stdout.read_all() == b"X" + b"eof"  # a tty: stderr goes to stdout
    assert json.loads(await error.read_all())["details"]["causes"][0]["message"] == "5"
    await client.close()
    assert started[0].resizes == [(24, 80), (33, 101), (40, 120)]


async def test_a_process_that_cannot_start_is_reported_on_the_error_stream(
        server: StreamingServer) -> None:
    async def refuse() -> kubestream.Process:
        raise Conflict("container abc is not running")
    url = server.register("attach", RemoteCommand(StreamOptions(False, True, False, False),
                                                  refuse))
    result = await ks.remote_command(url, stderr=False)
    assert result.status["status"] == "Failure"
    assert result.status["message"] == "container abc is not running"
    url = server.register("attach", RemoteCommand(StreamOptions(False, True, False, False),
                                                  refuse))
    old = await ks.remote_command(url, stderr=False, protocol="v2.channel.k8s.io")
    assert old.error == b"container abc is not running"


async def test_requests_that_are_no_spdy_upgrade(server: StreamingServer) -> None:
    url = server.register("exec", RemoteCommand(StreamOptions(False, True, False, False),
                                                FakeProcess.starter()))
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.split(":")[2]
                                                                     .split("/")[0]))
    path = url.split(":", 2)[2].split("/", 1)[1]
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"missing upgrade headers" in answer


async def test_port_forward_pairs_streams_by_request_id(server: StreamingServer) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.read())  # all of it, to the client's EOF
        await writer.drain()
        writer.close()
    pod = await asyncio.start_server(echo, "127.0.0.1", 0)
    pod_port = pod.sockets[0].getsockname()[1]
    asked: list[int] = []

    async def connect(port: int) -> kubestream.PodConnection:
        asked.append(port)
        return await TcpPortConnection.open("127.0.0.1", pod_port)
    try:
        url = server.register("portforward", kubestream.PortForward(connect))
        client, answer = await ks.Client.open(url, ["portforward.k8s.io"])
        assert answer.status == 101
        assert answer.headers["x-stream-protocol-version"] == "portforward.k8s.io"
        # Two requests interleaved: each data stream goes with its own error stream.
        streams = {}
        for request_id, port in (("1", "8080"), ("2", "9090")):
            streams[request_id, "error"] = await client.create(
                streamType="error", port=port, requestID=request_id)
        for request_id, port in (("2", "9090"), ("1", "8080")):
            streams[request_id, "data"] = await client.create(
                streamType="data", port=port, requestID=request_id)
        await client.write(streams["1", "data"], b"one", fin=True)
        await client.write(streams["2", "data"], b"two", fin=True)
        assert await streams["1", "data"].read_all() == b"echo:one"
        assert await streams["2", "data"].read_all() == b"echo:two"
        assert await streams["1", "error"].read_all() == b""
        assert sorted(asked) == [8080, 9090]
        # A port that is no port: said on that request's error stream.
        error = await client.create(streamType="error", port="http", requestID="3")
        data = await client.create(streamType="data", port="http", requestID="3")
        assert await data.read_all() == b""
        assert b"invalid port" in await error.read_all()
        await client.close()
    finally:
        pod.close()


class ScriptedConnection:
    """A pod connection that answers `reply` at once, then ends as told
    (`failure`), or holds until dropped (`hold`). Why it failed is known
    only once its pod's end came, as with the guest's."""

    def __init__(self, reply: bytes, failure: str = "", hold: bool = False) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.replies.put_nowait(reply)
        if not hold:
            self.replies.put_nowait(b"")
        self._failure = failure
        self.closed = asyncio.Event()
        self.ended = asyncio.Event()

    async def read(self) -> bytes:
        reply = await self.replies.get()
        if not reply:
            self.ended.set()
        return reply

    async def write(self, data: bytes) -> None:
        pass

    async def write_eof(self) -> None:
        pass

    async def failure(self) -> str:
        await self.ended.wait()
        return self._failure

    async def close(self) -> None:
        self.closed.set()
        self.replies.put_nowait(b"")


async def _forward_once(server: StreamingServer, connection: ScriptedConnection, send: bytes,
                        fin: bool) -> tuple[ks.Client, ks.ClientStream, ks.ClientStream]:
    async def connect(port: int) -> kubestream.PodConnection:
        return connection
    url = server.register("portforward", kubestream.PortForward(connect))
    client, answer = await ks.Client.open(url, ["portforward.k8s.io"])
    assert answer.status == 101
    error = await client.create(streamType="error", port="80", requestID="0")
    data = await client.create(streamType="data", port="80", requestID="0")
    await client.write(data, send, fin=fin)
    return client, data, error


async def test_port_forward_says_why_the_pod_connection_failed(server: StreamingServer) -> None:
    connection = ScriptedConnection(b"", failure="dial tcp4 127.0.0.1:80: connect: "
                                                "connection refused")
    client, data, error = await _forward_once(server, connection, b"hello", fin=True)
    try:
        assert await data.read_all() == b""
        assert await error.read_all() == (b"error forwarding port 80 to pod: dial tcp4 "
                                          b"127.0.0.1:80: connect: connection refused")
        await connection.closed.wait()
    finally:
        await client.close()


async def test_port_forward_ends_with_the_pods_end_of_the_connection(
        server: StreamingServer) -> None:
    # The client keeps its data stream open: the pod's EOF ends the request.
    connection = ScriptedConnection(b"bye")
    client, data, error = await _forward_once(server, connection, b"hi", fin=False)
    try:
        assert await data.read_all() == b"bye"
        assert await error.read_all() == b""
        await connection.closed.wait()
    finally:
        await client.close()


async def test_port_forward_drops_the_pod_connection_when_the_client_goes(
        server: StreamingServer) -> None:
    connection = ScriptedConnection(b"first", hold=True)
    client, data, _ = await _forward_once(server, connection, b"hi", fin=False)
    assert await data.data.get() == b"first"
    assert not connection.closed.is_set()
    await client.close()
    await connection.closed.wait()


async def _websocket_exec(url: str, protocol: str, messages: list[bytes | str]
                          ) -> tuple[str, list[bytes | str]]:
    """A WebSocket client of kubectl's kind: `messages` sent, then every
    message received until the server closes."""
    ws_url = url.replace("http://", "ws://")
    async with aiohttp.ClientSession() as client, \
            client.ws_connect(ws_url, protocols=[protocol]) as ws:
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
        received: list[bytes | str] = []
        async for answer in ws:
            if answer.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                received.append(answer.data)
        return ws.protocol or "", received


async def test_a_remote_command_over_websocket_v5(server: StreamingServer) -> None:
    started: list[FakeProcess] = []
    url = server.register("exec", RemoteCommand(StreamOptions(True, True, True, False),
                                                FakeProcess.starter(started)))
    # stdin "abc", then v5's close of stdin (channel 255, then the channel).
    protocol, received = await _websocket_exec(url, "v5.channel.k8s.io",
                                               [b"\x00abc", b"\xff\x00"])
    assert protocol == "v5.channel.k8s.io"
    assert received[0] == b"\x01"  # the empty message: the connection is up
    by_channel: dict[int, bytes] = {}
    for message in received:
        assert isinstance(message, bytes)
        if message[0] != 255:
            by_channel[message[0]] = by_channel.get(message[0], b"") + message[1:]
    assert (by_channel[1], by_channel[2]) == (b"ABC", b"eof")
    status = json.loads(by_channel[3])
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "5"}]
    assert started[0].closed


async def test_a_remote_command_over_base64_websocket(server: StreamingServer) -> None:
    url = server.register("exec", RemoteCommand(StreamOptions(True, True, False, False),
                                                FakeProcess.starter()))
    stdin = "0" + base64.b64encode(b"hi").decode()
    # Before v5 a client cannot close stdin: it hangs up, and the process goes.
    async with aiohttp.ClientSession() as client, client.ws_connect(
            url.replace("http://", "ws://"), protocols=["base64.channel.k8s.io"]) as ws:
        await ws.send_str(stdin)
        texts = []
        while len(texts) < 2:
            answer = await ws.receive()
            assert answer.type == aiohttp.WSMsgType.TEXT
            texts.append(answer.data)
    assert texts == ["1", "1" + base64.b64encode(b"HI").decode()]


async def test_port_forward_drops_the_pod_connection_when_its_data_stream_is_reset(
        server: StreamingServer) -> None:
    # The client resets the data stream while the pod still sends: the
    # request ends there, without waiting for the pod's end.
    connection = ScriptedConnection(b"first", hold=True)
    client, data, _ = await _forward_once(server, connection, b"hi", fin=False)
    try:
        assert await data.data.get() == b"first"
        await client.send(spdy.RstStream(data.id, spdy.CANCEL))

        async def pod_sends_until_dropped() -> None:
            while not connection.closed.is_set():
                connection.replies.put_nowait(b"more")
                await asyncio.sleep(0.05)
        await asyncio.wait_for(pod_sends_until_dropped(), 60)  # a guard, not a measure
        assert not connection.ended.is_set()
    finally:
        await client.close()
