"""The registry client keeps no cookies: what a registry sets for one
tenant's request is not sent with the next one (another tenant's)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from hbd.services.image.registry import RegistryClient, RegistrySettings


def test_a_registry_cookie_is_not_sent_back() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie", ""))
        response = web.Response(text="{}")
        response.set_cookie("session", "tenant-a-secret")
        return response

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/v2/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        client = RegistryClient(RegistrySettings())
        try:
            # By name: aiohttp's jar would ignore a cookie of an IP address anyway.
            for _ in range(2):
                async with client.http.get(f"http://localhost:{port}/v2/") as resp:
                    assert resp.status == 200
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(scenario())
    assert seen == ["", ""]
