"""Tokens to identities, with a bounded cache.

Every request on a tenant listener carries a token. Asking the identity
service (Keystone) each time would cost 150-270 ms a request; a cached
answer costs nothing, so answers are kept for at most `ttl` seconds (and
never past the token's own expiry): a revoked token stops working within
that time. The cache is a bounded LRU, so a client sending random tokens
cannot grow hbd's memory, and concurrent requests with one token make one
call (the others wait for its answer). Only good answers are kept: a bad
token is asked about again, and an identity service that is down means
no new identity at all (Unavailable), while cached ones last their time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from hbd.errors import Unauthorized


@dataclass(frozen=True)
class Identity:
    """A validated token: the project (tenant) and what the user may do there."""

    project_id: str
    project_name: str
    user_id: str
    user_name: str
    roles: frozenset[str] = field(default_factory=frozenset)
    expires_at: float = 0.0  # epoch seconds; 0: no expiry given


class TokenSource(Protocol):
    async def validate(self, token: str) -> Identity:
        """The token's identity; Unauthorized if it is bad, expired or revoked,
        Unavailable if the identity service cannot be reached."""
        ...


@dataclass
class _Entry:
    identity: Identity
    until: float  # monotonic


class TokenValidator:
    def __init__(self, source: TokenSource, ttl: float = 60.0, size: int = 1024) -> None:
        self.source = source
        self.ttl = ttl
        self.size = size
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Identity]] = {}
        self.lookups = 0  # calls made to the source (for tests and metrics)

    @staticmethod
    def _key(token: str) -> str:
        # Tokens are secrets: the cache keeps their hashes only.
        return hashlib.sha256(token.encode()).hexdigest()

    async def identify(self, token: str) -> Identity:
        if not token:
            raise Unauthorized("authentication required: no X-Auth-Token header")
        key = self._key(token)
        entry = self._cache.get(key)
        now = time.monotonic()
        if entry is not None:
            if entry.until > now:
                self._cache.move_to_end(key)
                return entry.identity
            del self._cache[key]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            self.lookups += 1
            identity = await self.source.validate(token)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # retrieved: the waiters re-raise it, nobody else must
            raise
        finally:
            del self._pending[key]
        future.set_result(identity)
        self._remember(key, identity)
        return identity

    def _remember(self, key: str, identity: Identity) -> None:
        until = time.monotonic() + self.ttl
        if identity.expires_at:
            until = min(until, time.monotonic() + identity.expires_at - time.time())
        self._cache[key] = _Entry(identity, until)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)
