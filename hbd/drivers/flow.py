"""Backpressure between a guest's output and the host's consumers of it.

The agent's channel reader hands every chunk a guest sends to the
consumers of its process (the log writer, attached clients, an exec's
client, a `docker cp` stream) without waiting: it must never lose output.
A consumer that cannot keep up answers with a `Drain`, an awaitable the
reader waits on before it reads the channel again. While it waits the
guest's queue to the host fills (1 MiB, PROTOCOL §6) and the guest stops
reading the process's pipes: a flooding process is slowed down to the pace
of its slowest consumer, as dockerd's attach pipes slow down a container,
and hbd's memory stays bounded by the queues' limits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Generic, TypeVar

# What a consumer answers a chunk with: None (taken), or what to wait for.
Drain = Awaitable[None] | None

# Bytes a queue holds before its producer is asked to wait (dockerd's
# bytespipe holds 1 MiB per attached stream).
QUEUE_LIMIT = 1024 * 1024
# Seconds a consumer may keep its producer waiting before it is cut off. The
# channel of a guest carries every process's output and the replies to hbd's
# requests (dockerd's containerd has a channel for each): one client that
# stopped reading must not hold all of them for ever.
STALL_LIMIT = 60.0

T = TypeVar("T")

log = logging.getLogger(__name__)


class StreamQueue(Generic[T]):
    """A FIFO of chunks bounded by their total size, for one consumer.

    `put` never refuses (the producer is the channel reader, which must not
    drop output), but once more than `limit` bytes wait it returns a future
    that resolves when the consumer has taken the queue back under half the
    limit, or has gone (`close`). A consumer that keeps the producer waiting
    `stall_limit` seconds is cut off: the queue closes, its iteration ends.
    The consumer iterates `items()` until `end()`."""

    def __init__(self, limit: int = QUEUE_LIMIT, stall_limit: float = STALL_LIMIT) -> None:
        self.limit = limit
        self.stall_limit = stall_limit
        # Set when the consumer was cut off for keeping the producer waiting.
        self.overrun = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self._size = 0
        self._ended = False
        self._closed = False
        self._readable = asyncio.Event()
        self._drained: asyncio.Future[None] | None = None

    @property
    def size(self) -> int:
        """Bytes queued and not yet taken."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, size: int) -> asyncio.Future[None] | None:
        if self._closed or self._ended:
            return None
        self._items.append((item, size))
        self._size += size
        self._readable.set()
        if self._size <= self.limit:
            return None
        if self._drained is None or self._drained.done():
            loop = asyncio.get_running_loop()
            self._drained = loop.create_future()
            self._stall_timer = loop.call_later(self.stall_limit, self._cut_off)
        return self._drained

    def _cut_off(self) -> None:
        log.warning("an output consumer took nothing for %.0fs: cut off, %d bytes dropped",
                    self.stall_limit, self._size)
        self.overrun = True
        self.close()

    def end(self) -> None:
        """No more items: the consumer's iteration ends once it has taken all."""
        self._ended = True
        self._readable.set()

    def close(self) -> None:
        """The consumer has gone: forget what is queued, release the producer."""
        self._closed = True
        self._items.clear()
        self._size = 0
        self._readable.set()
        self._release()

    def _release(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def get(self) -> T | None:
        """The next item; None at the end (or once closed)."""
        while not self._items:
            if self._ended or self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item, size = self._items.popleft()
        self._size -= size
        if self._size <= self.limit // 2:
            # Hysteresis: the producer resumes once half the limit is free,
            # not after every chunk taken.
            self._release()
        return item

    async def items(self) -> AsyncIterator[T]:
        while (item := await self.get()) is not None:
            yield item


async def drain_all(drains: Sequence[Drain]) -> None:
    """Wait for every consumer that asked to be waited for."""
    pending = [d for d in drains if d is not None]
    if pending:
        await asyncio.gather(*pending)


def combine(drains: Sequence[Drain]) -> Drain:
    """One Drain for several consumers of the same chunk."""
    pending = [d for d in drains if d is not None]
    if not pending:
        return None
    if len(pending) == 1:
        return pending[0]
    return drain_all(pending)
