"""SPDY/3.1 framing (hbd/api/spdy.py) against frames written by Go's
spdystream framer (the one client-go, kubelet, crictl and critest use), and
a server session over a real socket pair."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import zlib

import pytest

from hbd.api import spdy

# Written by github.com/moby/spdystream/spdy's Framer (as vendored by cri-tools),
# in this order through one Framer: header blocks share its zlib stream.
GO_FRAMES = [
    ("800300010000002a0000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c2"
     "9a5a54945f04000000ffff",
     spdy.SynStream(1, {"streamtype": ["error"]})),
    ("80030001000000340000000300000000400062606060c6906249492c498414d8452520dac2c0c2"
     "80818181b30812c199290c0c0c8c0600000000ffff",
     spdy.SynStream(3, {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]},
                    priority=2)),
    ("800300020000000e000000016260606000000000ffff", spdy.SynReply(1, {})),
    ("000000030100000568656c6c6f", spdy.Data(3, b"hello", fin=True)),
    ("80030003000000080000000500000005", spdy.RstStream(5, spdy.CANCEL)),
    ("800300060000000400000001", spdy.Ping(1)),
    ("80030007000000080000000700000000", spdy.GoAway(7, spdy.GOAWAY_OK)),
    ("80030009000000080000000300010000", spdy.WindowUpdate(3, 65536)),
    ("800300040000000c000000010000000700010000", spdy.Settings([(0, 7, 65536)])),
]


def test_the_dictionary_is_the_spdy3_one() -> None:
    # sha256 of spdystream's headerDictionary (the spec's 1423 bytes).
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")


def test_frames_written_by_go_decode_one_by_one() -> None:
    decoder = spdy.Decoder()
    for raw, expected in GO_FRAMES:
        decoder.feed(bytes.fromhex(raw))
        assert list(decoder.frames()) == [expected]


def test_frames_split_anywhere_decode_the_same() -> None:
    stream = b"".join(bytes.fromhex(raw) for raw, _ in GO_FRAMES)
    decoder = spdy.Decoder()
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i:i + 1])
        got += list(decoder.frames())
    assert got == [frame for _, frame in GO_FRAMES]


@pytest.mark.parametrize("raw,frame", [(r, f) for r, f in GO_FRAMES
                                       if not isinstance(f, spdy.SynStream | spdy.SynReply)])
def test_frames_without_headers_encode_as_go_writes_them(raw: str, frame: spdy.Frame) -> None:
    assert spdy.Encoder().encode(frame).hex() == raw


def test_header_frames_round_trip_through_one_compression_context() -> None:
    frames: list[spdy.Frame] = [
        spdy.SynReply(1, {}),
        spdy.SynReply(3, {"x-stream-protocol-version": ["v4.channel.k8s.io"]}),
        spdy.HeadersFrame(3, {"k": ["v1", "v2"]}, fin=True),
        spdy.SynStream(2, {"streamtype": ["stdout"]}, fin=True, unidirectional=True),
    ]
    encoder, decoder = spdy.Encoder(), spdy.Decoder()
    for frame in frames:
        decoder.feed(encoder.encode(frame))
    assert list(decoder.frames()) == frames


def test_header_block_layout() -> None:
    # §2.6.10: count, then length-prefixed name and NUL-joined values.
    assert spdy.header_block({"Port": ["80", "81"]}) == (
        b"\0\0\0\1" b"\0\0\0\4port" b"\0\0\0\x0580\x0081")


def _compressed(block: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    return z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize("payload", [
    b"\0\0\0\1\0\0\0\0\0\0\0\0" + b"garbage",                   # not zlib
    b"\0\0\0\1\0\0\0\0\0\0" + _compressed(b"\0\0\0\5\0\0\0\1a"),  # truncated block
    b"\0\0\0\1\0\0\0\0\0\0" + _compressed(b"\0\0\0\1\0\0\0\1A\0\0\0\0"),  # upper case
    b"\0\0\0\1\0\0\0\0\0\0" + _compressed(b"\0" * (spdy.MAX_HEADER_BLOCK + 10)),  # a bomb
    b"\0\0",                                                     # no stream id
])
def test_bad_syn_streams_are_protocol_errors(payload: bytes) -> None:
    decoder = spdy.Decoder()
    decoder.feed(bytes.fromhex("80030001") + len(payload).to_bytes(4, "big") + payload)
    with pytest.raises(spdy.ProtocolError):
        list(decoder.frames())


def test_other_versions_and_unknown_types() -> None:
    decoder = spdy.Decoder()
    decoder.feed(bytes.fromhex("80030063" "00000000"))  # type 99: ignored
    assert list(decoder.frames()) == []
    decoder.feed(bytes.fromhex("80020006" "00000004" "00000001"))  # SPDY/2 PING
    with pytest.raises(spdy.ProtocolError):
        list(decoder.frames())


class Peer:
    """The client side, by hand: frames to the server, frames back."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.encoder, self.decoder = spdy.Encoder(), spdy.Decoder()
        self.pending: list[spdy.Frame] = []

    async def send(self, *frames: spdy.Frame) -> None:
        data = b"".join(self.encoder.encode(f) for f in frames)
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def receive(self) -> spdy.Frame:
        loop = asyncio.get_running_loop()
        while not self.pending:
            data = await loop.sock_recv(self.sock, 65536)
            if not data:
                raise EOFError
            self.decoder.feed(data)
            self.pending += list(self.decoder.frames())
        return self.pending.pop(0)

    async def receive_skipping_window_updates(self) -> spdy.Frame:
        while isinstance(frame := await self.receive(), spdy.WindowUpdate):
            pass
        return frame


@pytest.fixture
async def pair() -> tuple[spdy.Session, Peer]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=ours)
    return spdy.Session(reader, writer), Peer(theirs)


async def test_session_answers_streams_and_carries_data_both_ways(
        pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.send(spdy.SynStream(1, {"streamtype": ["stdin"]}),
                    spdy.Data(1, b"abc"), spdy.Data(1, b"", fin=True))
    stream = await session.accept()
    assert stream is not None and stream.header("streamType") == "stdin"
    assert await peer.receive() == spdy.SynReply(1, {})
    assert await stream.read() == b"abc"
    assert await stream.read() is None
    # What it read is announced, per stream and for the session (3.1).
    assert await peer.receive() == spdy.WindowUpdate(1, 3)
    assert await peer.receive() == spdy.WindowUpdate(0, 3)
    await stream.write(b"x" * (spdy.DATA_CHUNK + 1))
    await stream.close()
    assert await peer.receive() == spdy.Data(1, b"x" * spdy.DATA_CHUNK)
    assert await peer.receive() == spdy.Data(1, b"x")
    assert await peer.receive() == spdy.Data(1, b"", fin=True)
    await session.close()
    assert await peer.receive() == spdy.GoAway(1)


async def test_session_echoes_client_pings_only(pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.send(spdy.Ping(2), spdy.Ping(5))
    assert await peer.receive() == spdy.Ping(5)
    await session.close()


async def test_a_reused_stream_id_ends_the_session(pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.send(spdy.SynStream(3, {}), spdy.SynStream(1, {}))
    first = await session.accept()
    assert first is not None
    assert await peer.receive() == spdy.SynReply(3, {})
    assert await peer.receive() == spdy.GoAway(3, spdy.GOAWAY_PROTOCOL_ERROR)
    assert await session.accept() is None
    assert await first.read() is None
    await session.close()


async def test_reset_and_unknown_streams(pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.send(spdy.SynStream(1, {}), spdy.RstStream(1, spdy.CANCEL), spdy.Data(9, b"?"))
    stream = await session.accept()
    assert stream is not None and await stream.read() is None and stream.reset
    assert await peer.receive() == spdy.SynReply(1, {})
    assert await peer.receive() == spdy.RstStream(9, spdy.INVALID_STREAM)
    with pytest.raises(ConnectionResetError):
        await stream.write(b"late")
    await session.close()


async def test_a_slow_reader_holds_the_client_back_without_losing_data(
        pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    frames = 4 * spdy.STREAM_BUFFER_FRAMES
    await peer.send(spdy.SynStream(1, {}), spdy.SynStream(3, {}),
                    *(spdy.Data(1, bytes([i])) for i in range(frames)),
                    spdy.Ping(7))
    one, three = await session.accept(), await session.accept()
    assert one is not None and three is not None
    # Stream 1's reader is far behind: the session stops reading at its buffer
    # and goes on (to the PING behind that data) as the reader catches up.
    for _ in range(2):
        assert isinstance(await peer.receive(), spdy.SynReply)
    got = b""
    while len(got) < frames:
        got += await one.read() or b""
    assert got == bytes(range(frames))
    assert await peer.receive_skipping_window_updates() == spdy.Ping(7)
    one.abandon()
    await peer.send(spdy.Data(1, b"dropped"), spdy.Data(3, b"kept", fin=True))
    assert await three.read() == b"kept"
    await session.close()
