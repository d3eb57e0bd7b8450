"""What a client sent on one stream of an upgraded connection, held until the
stream's reader takes it: the receiving half of an SPDY stream (spdy.py) and
of a WebSocket channel (wschannel.py) alike."""

from __future__ import annotations

import asyncio
from collections import deque


class Inbox:
    def __init__(self) -> None:
        self._held: deque[bytes] = deque()
        self._changed = asyncio.Event()  # data came, or was taken, or the inbox ended
        self.closed = False      # the client sends no more
        self.abandoned = False   # the reader has gone: what still comes is dropped

    def __len__(self) -> int:
        return len(self._held)

    async def take(self) -> bytes | None:
        """The next bytes held; None once the client closed and all was taken."""
        while not self._held:
            if self.closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        data = self._held.popleft()
        self._changed.set()  # room for a writer waiting in put_within
        return data

    def put(self, data: bytes) -> None:
        if not self.abandoned:
            self._held.append(data)
            self._changed.set()

    async def put_within(self, data: bytes, limit: int) -> None:
        """`data` held once fewer than `limit` pieces are (the caller waits,
        and so stops reading its socket, while the reader is that far behind);
        dropped once the client closed or the reader went."""
        if self.abandoned or self.closed:
            return
        while len(self._held) >= limit and not self.abandoned:
            self._changed.clear()
            await self._changed.wait()
        self.put(data)

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def abandon(self) -> None:
        self.abandoned = True
        self._held.clear()
        self._changed.set()
