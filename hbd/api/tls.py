"""TLS for tcp:// listeners, with half-closed connections as Go's TLS has them.

The docker CLI attaches to a container over a hijacked connection and, when
its stdin ends (at once, without -i), half-closes it: over TLS it sends a
close_notify and goes on reading the container's output. asyncio's TLS
transport cannot do that: the peer's close_notify closes the whole
connection, and the output is lost. So TLS is terminated here with an
`ssl.SSLObject` over memory BIOs, which keeps writing after the peer's
close_notify, and each connection is relayed in plain bytes to the API on a
private unix socket, whose half-close (write_eof) the hijack code already
handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
HANDSHAKE_TIMEOUT = 30.0


class TlsRelay(asyncio.Protocol):
    """One TLS connection from a client, relayed to `backend` (a unix socket)."""

    def __init__(self, context: ssl.SSLContext, backend: Path) -> None:
        self.backend = backend
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.transport: asyncio.Transport | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.handshaken = False
        self.pending: list[bytes] = []  # plaintext from the client before the backend answers
        self.tasks: set[asyncio.Task[None]] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    # -- from the client ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        if not self.handshaken and self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        try:
            if not self.handshaken:
                self.tls.do_handshake()
                self.handshaken = True
                if self.timer is not None:
                    self.timer.cancel()
                self._spawn(self._relay_backend())
            self._read_plaintext()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            # A bad or missing client certificate ends here, as in dockerd.
            log.info("TLS connection refused: %s", e.reason or e)
            self._flush()
            self._close()
            return
        self._flush()

    def _read_plaintext(self) -> None:
        while True:
            try:
                chunk = self.tls.read(CHUNK)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:
                self._client_eof()
                return
            self._to_backend(chunk)

    def eof_received(self) -> bool:
        # The client's socket closed without a close_notify: the same EOF.
        self._client_eof()
        return True

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if self.timer is not None:
            self.timer.cancel()
        if self.writer is not None:
            self.writer.close()
        for task in self.tasks:
            task.cancel()

    def _to_backend(self, chunk: bytes) -> None:
        if self.writer is None:
            self.pending.append(chunk)
        else:
            self.writer.write(chunk)

    def _client_eof(self) -> None:
        if self.writer is None:
            self.pending.append(b"")
        elif self.writer.can_write_eof():
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    # -- to and from the API -------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay_backend(self) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.backend))
        except OSError as e:
            log.warning("TLS relay cannot reach the API: %s", e)
            self._close()
            return
        self.writer = writer
        for chunk in self.pending:
            if chunk:
                writer.write(chunk)
            elif writer.can_write_eof():
                writer.write_eof()
        self.pending.clear()
        try:
            while data := await reader.read(CHUNK):
                self.tls.write(data)
                self._flush()
                # Backpressure: no more from the API while the client is slow.
                await self.writable.wait()
        except (OSError, ssl.SSLError):
            pass
        self._close()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()  # our close_notify
        self._flush()
        self.transport.close()


async def serve_tls(host: str, port: int, context: ssl.SSLContext,
                    backend: Path) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: TlsRelay(context, backend), host, port)
