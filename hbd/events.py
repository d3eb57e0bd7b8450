"""The one event bus: services publish, `/events`, `wait` and policies listen.

Messages have dockerd's shape (events.Message), so `/events` serialises them
as they are. The last `HISTORY` events are kept for `since` queries, as
dockerd keeps them.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator
from typing import Any

HISTORY = 1024


class EventBus:
    def __init__(self) -> None:
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, type_: str, action: str, actor_id: str,
                attributes: dict[str, str] | None = None, scope: str = "local") -> dict[str, Any]:
        now = time.time_ns()
        attrs = dict(attributes or {})
        message: dict[str, Any] = {
            "Type": type_,
            "Action": action,
            "Actor": {"ID": actor_id, "Attributes": attrs},
            "scope": scope,
            "time": now // 1_000_000_000,
            "timeNano": now,
        }
        if type_ in ("container", "image"):
            # Deprecated fields that older clients (and docker-py) still read.
            message["status"] = action
            message["id"] = actor_id
            if "image" in attrs:
                message["from"] = attrs["image"]
        self._history.append(message)
        for queue in self._subscribers:
            queue.put_nowait(message)
        return message

    def subscribe_with_history(
            self) -> tuple[list[dict[str, Any]], AsyncGenerator[dict[str, Any], None]]:
        """The kept history and a live stream that starts right after it."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.add(queue)
        return list(self._history), self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[dict[str, Any]]
                     ) -> AsyncGenerator[dict[str, Any], None]:
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)
