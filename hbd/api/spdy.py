"""SPDY/3.1, the server side: the framing Kubernetes' streaming protocols
(exec, attach, port-forward) run over after an HTTP `Upgrade: SPDY/3.1`.

Frames are encoded and parsed here (draft-mbelshe-httpbis-spdy-00 §2.6, with
3.1's session-level WINDOW_UPDATE), header blocks compressed with zlib and the
SPDY/3 dictionary, one compression context per direction for the whole
connection. `Session` runs one upgraded connection: it answers every stream
the client opens (SYN_REPLY), echoes the client's PINGs and hands the streams
to its owner. This module knows nothing of Kubernetes.

Flow control: the only SPDY peers in this world are Go's spdystream (client-go,
kubelet, crictl, critest), which neither sends WINDOW_UPDATE nor honours it.
So a session does not stop sending at the peer's window, and what a slow
reader is sent back up: each stream buffers a few frames, then the session
stops reading the socket (TCP's window then holds the peer back). It still
announces what it consumed with WINDOW_UPDATE, so that a peer that does
count windows is not stalled at 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from hbd.api.inbox import Inbox

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
MAX_FRAME_LENGTH = (1 << 24) - 1
# RST_STREAM status codes (§2.6.3) and GOAWAY status codes (§2.6.6).
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL = 1, 2, 3, 5
STREAM_IN_USE = 8
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR = 0, 1
# A header block that inflates past this is an attack, not headers.
MAX_HEADER_BLOCK = 256 * 1024
# The largest DATA frame a session sends (spdystream sends at most 32 KiB too).
DATA_CHUNK = 32 * 1024
# Frames a stream buffers for its reader before the session stops reading.
STREAM_BUFFER_FRAMES = 16

Headers = dict[str, list[str]]


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (§2.6.10.1): common header
    names, each with its 32-bit length, then common values run together."""
    names = (
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
        "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
        "cache-control", "connection", "content-base", "content-encoding", "content-language",
        "content-length", "content-location", "content-md5", "content-range", "content-type",
        "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
        "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
        "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range",
        "referer", "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade",
        "user-agent", "vary", "via", "warning", "www-authenticate", "method", "get", "status",
        "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
    )
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0.")
    return b"".join(struct.pack(">L", len(n)) + n.encode() for n in names) + tail.encode()


DICTIONARY = _dictionary()


class ProtocolError(Exception):
    """The peer broke SPDY framing; the session ends with GOAWAY(PROTOCOL_ERROR)."""


# -- frames ---------------------------------------------------------------------------------

@dataclass
class SynStream:
    stream_id: int
    headers: Headers
    associated_id: int = 0
    priority: int = 0
    slot: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass
class SynReply:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass
class RstStream:
    stream_id: int
    status: int


@dataclass
class Settings:
    # (flags, id, value) per entry
    entries: list[tuple[int, int, int]] = field(default_factory=list)
    clear: bool = False


@dataclass
class Ping:
    ping_id: int


@dataclass
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass
class Data:
    stream_id: int
    data: bytes
    fin: bool = False


Frame = (SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame
         | WindowUpdate | Data)


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError("SPDY frame too long")
    return struct.pack(">HHL", 0x8000 | VERSION, frame_type,
                       (flags << 24) | len(payload)) + payload


def header_block(headers: Headers) -> bytes:
    """An uncompressed name/value block: names lower-case, a name's values
    joined by NUL (§2.6.10)."""
    out = [struct.pack(">L", len(headers))]
    for name, values in headers.items():
        key, value = name.lower().encode(), "\0".join(values).encode()
        out += [struct.pack(">L", len(key)), key, struct.pack(">L", len(value)), value]
    return b"".join(out)


def parse_header_block(block: bytes) -> Headers:
    headers: Headers = {}
    try:
        (count,), offset = struct.unpack_from(">L", block), 4
        for _ in range(count):
            (n,) = struct.unpack_from(">L", block, offset)
            name = block[offset + 4:offset + 4 + n]
            offset += 4 + n
            (v,) = struct.unpack_from(">L", block, offset)
            value = block[offset + 4:offset + 4 + v]
            offset += 4 + v
            if offset > len(block) or not name:
                raise ProtocolError("truncated or empty header name")
            if name.lower() != name or name.decode("latin-1") in headers:
                raise ProtocolError(f"header name {name!r} not lower-case or repeated")
            headers[name.decode("latin-1")] = value.decode("latin-1").split("\0")
    except struct.error as e:
        raise ProtocolError(f"truncated header block: {e}") from None
    return headers


class Encoder:
    """Frames to bytes, for one direction of one connection (its header
    compression context lives as long as the connection)."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY,
                                      DICTIONARY)

    def _headers(self, headers: Headers) -> bytes:
        block = header_block(headers)
        return self._zlib.compress(block) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case Data(stream_id, data, fin):
                if len(data) > MAX_FRAME_LENGTH:
                    raise ValueError("SPDY frame too long")
                return struct.pack(">LL", stream_id & 0x7FFFFFFF,
                                   (FLAG_FIN if fin else 0) << 24 | len(data)) + data
            case SynStream():
                flags = (FLAG_FIN if frame.fin else 0) | (
                    FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
                return _control(SYN_STREAM, flags, struct.pack(
                    ">LLBB", frame.stream_id, frame.associated_id, frame.priority << 5,
                    frame.slot) + self._headers(frame.headers))
            case SynReply(stream_id, headers, fin):
                return _control(SYN_REPLY, FLAG_FIN if fin else 0,
                                struct.pack(">L", stream_id) + self._headers(headers))
            case HeadersFrame(stream_id, headers, fin):
                return _control(HEADERS, FLAG_FIN if fin else 0,
                                struct.pack(">L", stream_id) + self._headers(headers))
            case RstStream(stream_id, status):
                return _control(RST_STREAM, 0, struct.pack(">LL", stream_id, status))
            case Settings(entries, clear):
                body = struct.pack(">L", len(entries)) + b"".join(
                    struct.pack(">LL", f << 24 | i, v) for f, i, v in entries)
                return _control(SETTINGS, 1 if clear else 0, body)
            case Ping(ping_id):
                return _control(PING, 0, struct.pack(">L", ping_id))
            case GoAway(last_good, status):
                return _control(GOAWAY, 0, struct.pack(">LL", last_good, status))
            case WindowUpdate(stream_id, delta):
                return _control(WINDOW_UPDATE, 0, struct.pack(">LL", stream_id, delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")


class Decoder:
    """Bytes to frames, for the other direction: `feed` what arrived, then
    take the whole frames it completed from `frames`."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(15, DICTIONARY)
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> Iterator[Frame]:
        while len(self._buffer) >= 8:
            word, flags_length = struct.unpack_from(">LL", self._buffer)
            length = flags_length & 0xFFFFFF
            if len(self._buffer) < 8 + length:
                return
            payload = bytes(self._buffer[8:8 + length])
            del self._buffer[:8 + length]
            flags = flags_length >> 24
            if word & 0x80000000:
                frame = self._control(word >> 16 & 0x7FFF, word & 0xFFFF, flags, payload)
                if frame is not None:
                    yield frame
            else:
                yield Data(word, payload, bool(flags & FLAG_FIN))

    def _headers(self, compressed: bytes) -> Headers:
        try:
            block = self._zlib.decompress(compressed, MAX_HEADER_BLOCK)
        except zlib.error as e:
            raise ProtocolError(f"bad header compression: {e}") from None
        if self._zlib.unconsumed_tail:
            raise ProtocolError("header block too large")
        return parse_header_block(block)

    def _control(self, version: int, kind: int, flags: int,
                 payload: bytes) -> Frame | None:
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        fin = bool(flags & FLAG_FIN)
        try:
            match kind:
                case 1:  # SYN_STREAM
                    sid, assoc, pri, slot = struct.unpack_from(">LLBB", payload)
                    return SynStream(sid & 0x7FFFFFFF, self._headers(payload[10:]),
                                     assoc & 0x7FFFFFFF, pri >> 5, slot, fin,
                                     bool(flags & FLAG_UNIDIRECTIONAL))
                case 2:  # SYN_REPLY
                    (sid,) = struct.unpack_from(">L", payload)
                    return SynReply(sid & 0x7FFFFFFF, self._headers(payload[4:]), fin)
                case 8:  # HEADERS
                    (sid,) = struct.unpack_from(">L", payload)
                    return HeadersFrame(sid & 0x7FFFFFFF, self._headers(payload[4:]), fin)
                case 3:  # RST_STREAM
                    sid, status = struct.unpack(">LL", payload)
                    return RstStream(sid & 0x7FFFFFFF, status)
                case 4:  # SETTINGS
                    (count,) = struct.unpack_from(">L", payload)
                    if len(payload) != 4 + 8 * count:
                        raise ProtocolError("SETTINGS length does not match its entries")
                    entries = [(fid >> 24, fid & 0xFFFFFF, value) for fid, value in
                               struct.iter_unpack(">LL", payload[4:])]
                    return Settings(entries, bool(flags & 1))
                case 6:  # PING
                    (ping_id,) = struct.unpack(">L", payload)
                    return Ping(ping_id)
                case 7:  # GOAWAY
                    last, status = struct.unpack(">LL", payload)
                    return GoAway(last & 0x7FFFFFFF, status)
                case 9:  # WINDOW_UPDATE
                    sid, delta = struct.unpack(">LL", payload)
                    return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        except struct.error as e:
            raise ProtocolError(f"bad control frame of type {kind}: {e}") from None
        return None  # unknown control frames are ignored (§2.2.1)


# -- a server session -----------------------------------------------------------------------

class Stream:
    """One stream the client opened: its headers, what it sends (until its
    FIN or a reset), and our half of it."""

    def __init__(self, session: Session, stream_id: int, headers: Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self.inbox = Inbox()  # closed by the client's FIN or RST (or the session's end)
        self.local_closed = False
        self.reset = False

    def header(self, name: str) -> str:
        return (self.headers.get(name.lower()) or [""])[0]

    async def read(self) -> bytes | None:
        """The next bytes the client sent; None once it finished (or reset) the stream."""
        data = await self.inbox.take()
        if data is not None:
            self.session.consumed(self, len(data))
        return data

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.reset:
            raise ConnectionResetError(f"SPDY stream {self.id} is closed")
        for start in range(0, len(data), DATA_CHUNK):
            await self.session.send(Data(self.id, data[start:start + DATA_CHUNK]))

    async def close(self) -> None:
        """Our half is done (FIN); the client may still send."""
        if not (self.local_closed or self.reset):
            self.local_closed = True
            with contextlib.suppress(ConnectionError):
                await self.session.send(Data(self.id, b"", fin=True))

    def abandon(self) -> None:
        """Its reader has gone: what the client still sends on it is dropped."""
        self.inbox.abandon()

    def finish(self) -> None:
        """The client sends no more on it."""
        self.inbox.close()

    async def deliver(self, data: bytes) -> None:
        """What the client sent, held for the reader; the session waits (and
        so stops reading the socket) while the reader is this far behind."""
        await self.inbox.put_within(data, STREAM_BUFFER_FRAMES)


class Session:
    """One upgraded connection, server side. `accept` yields the streams
    the client opens, already answered; `close` says GOAWAY and hangs up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._encoder = Encoder()
        self._decoder = Decoder()
        self._write_lock = asyncio.Lock()
        self.streams: dict[int, Stream] = {}
        self._new: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._last_stream_id = 0
        self.closed = asyncio.Event()
        self._reading = asyncio.ensure_future(self._read_loop())

    async def send(self, frame: Frame) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("SPDY session closed")
        async with self._write_lock:
            self._writer.write(self._encoder.encode(frame))
            await self._writer.drain()

    async def accept(self) -> Stream | None:
        """The next stream the client opened; None once it can open no more."""
        stream = await self._new.get()
        if stream is None:
            self._new.put_nowait(None)
        return stream

    def consumed(self, stream: Stream, size: int) -> None:
        if size and not self.closed.is_set():
            self._writer.write(self._encoder.encode(WindowUpdate(stream.id, size))
                               + self._encoder.encode(WindowUpdate(0, size)))

    async def close(self) -> None:
        if not self.closed.is_set():
            with contextlib.suppress(ConnectionError):
                await self.send(GoAway(self._last_stream_id))
            self._end()
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        self._reading.cancel()

    def _end(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._new.put_nowait(None)
        for stream in self.streams.values():
            stream.reset = True
            stream.finish()

    async def _read_loop(self) -> None:
        try:
            while data := await self._reader.read(64 * 1024):
                self._decoder.feed(data)
                for frame in self._decoder.frames():
                    await self._handle(frame)
        except ProtocolError:
            with contextlib.suppress(ConnectionError):
                await self.send(GoAway(self._last_stream_id, GOAWAY_PROTOCOL_ERROR))
        except ConnectionError:
            pass
        finally:
            self._end()

    async def _handle(self, frame: Frame) -> None:
        match frame:
            case SynStream():
                await self._open(frame)
            case Data(stream_id, data, fin):
                stream = self.streams.get(stream_id)
                if stream is None:
                    await self.send(RstStream(stream_id, INVALID_STREAM))
                    return
                if data:
                    await stream.deliver(data)
                if fin:
                    stream.finish()
            case RstStream(stream_id, _):
                stream = self.streams.pop(stream_id, None)
                if stream is not None:
                    stream.reset = True
                    stream.finish()
            case Ping(ping_id) if ping_id % 2 == 1:  # the client's: echo it
                await self.send(frame)
            case GoAway():
                self._new.put_nowait(None)
            case _:
                pass  # SETTINGS, WINDOW_UPDATE, HEADERS, our own PINGs' answers

    async def _open(self, frame: SynStream) -> None:
        sid = frame.stream_id
        if sid % 2 == 0 or sid <= self._last_stream_id:
            raise ProtocolError(f"stream id {sid} is not a new client stream")
        self._last_stream_id = sid
        stream = Stream(self, sid, frame.headers)
        self.streams[sid] = stream
        await self.send(SynReply(sid, {}))
        if frame.fin:
            stream.finish()
        self._new.put_nowait(stream)
