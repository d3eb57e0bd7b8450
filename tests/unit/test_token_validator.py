"""The token cache in front of Keystone: one lookup per token however many
requests wait for it, bounded size, expiry, and failures never cached."""

from __future__ import annotations

import asyncio
import time

import pytest

from hbd.errors import Unauthorized, Unavailable
from hbd.services.identity.validator import Identity, TokenValidator


class Source:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.down = False
        self.delay = 0.0
        self.expires_in = 3600.0

    async def validate(self, token: str) -> Identity:
        self.calls.append(token)
        await asyncio.sleep(self.delay)
        if self.down:
            raise Unavailable("identity service unreachable")
        if not token.startswith("good"):
            raise Unauthorized("authentication failed")
        return Identity("p1", "tenant-a", "u1", "alice", frozenset({"member"}),
                        time.time() + self.expires_in)


async def test_concurrent_requests_make_one_lookup() -> None:
    source = Source()
    source.delay = 0.05
    validator = TokenValidator(source)
    found = await asyncio.gather(*(validator.identify("good-1") for _ in range(20)))
    assert {i.project_id for i in found} == {"p1"} and source.calls == ["good-1"]
    await validator.identify("good-1")
    assert source.calls == ["good-1"]


async def test_bad_tokens_and_outages_are_not_cached() -> None:
    source = Source()
    validator = TokenValidator(source)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await validator.identify("bad")
    assert source.calls == ["bad", "bad"]
    with pytest.raises(Unauthorized, match="no X-Auth-Token"):
        await validator.identify("")
    source.down = True
    with pytest.raises(Unavailable):
        await validator.identify("good-2")
    source.down = False
    assert (await validator.identify("good-2")).user_name == "alice"


async def test_cache_is_bounded_and_expires() -> None:
    source = Source()
    validator = TokenValidator(source, ttl=0.2, size=3)
    for n in range(10):
        await validator.identify(f"good-{n}")
    assert len(validator) == 3
    await validator.identify("good-9")
    assert source.calls.count("good-9") == 1
    await asyncio.sleep(0.25)
    source.down = True  # past the cache's lifetime nothing is accepted unasked
    with pytest.raises(Unavailable):
        await validator.identify("good-9")


async def test_a_token_is_not_trusted_past_its_own_expiry() -> None:
    source = Source()
    source.expires_in = 0.1
    validator = TokenValidator(source, ttl=60)
    await validator.identify("good-short")
    await asyncio.sleep(0.15)
    await validator.identify("good-short")
    assert source.calls == ["good-short", "good-short"]
