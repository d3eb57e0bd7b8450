"""System routes: _ping, version, info, events, df, auth."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from hbd import API_VERSION
from hbd.api import gotypes
from hbd.api.app import Router, json_response, query_filters
from hbd.api.auth import scope_of
from hbd.api.backends import AUTH, DISK_USAGE, SYSTEM
from hbd.errors import InvalidParameter, SystemError_
from hbd.services.image.registry import Credentials
from hbd.services.timefmt import parse_timestamp_ns


def _ping_headers() -> dict[str, str]:
    return {
        "Api-Version": API_VERSION,
        "Builder-Version": "1",
        "Docker-Experimental": "false",
        "Ostype": "linux",
        "Swarm": "inactive",
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
    }


async def ping(request: web.Request) -> web.Response:
    if request.method == "HEAD":
        return web.Response(headers={**_ping_headers(), "Content-Type": "text/plain; "
                                                                        "charset=utf-8",
                                     "Content-Length": "0"})
    return web.Response(text="OK", headers=_ping_headers())


async def version(request: web.Request) -> web.Response:
    return json_response(request.app[SYSTEM].version())


async def info(request: web.Request) -> web.Response:
    return json_response(request.app[SYSTEM].info(scope_of(request)))


def _time_param(request: web.Request, key: str) -> float:
    """`since`/`until`: unix seconds (with fraction) or an RFC 3339 time."""
    raw = request.query.get(key, "")
    if not raw:
        return 0.0
    value = parse_timestamp_ns(raw)
    if not value and raw.strip("0.") != "":
        raise InvalidParameter(f"invalid value for {key}: {raw}")
    return value / 1e9


async def events(request: web.Request) -> web.StreamResponse:
    since = _time_param(request, "since")
    until = _time_param(request, "until")
    subscription = request.app[SYSTEM].subscribe_events(since, until, query_filters(request),
                                                          scope_of(request))
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    try:
        for message in subscription.history:
            await response.write(json.dumps(message).encode() + b"\n")
        if until and until <= time.time():
            return response
        timeout = (until - time.time()) if until else None
        async with asyncio.timeout(timeout):
            async for message in subscription.live:
                await response.write(json.dumps(message).encode() + b"\n")
    except TimeoutError:
        pass
    finally:
        await subscription.live.aclose()
    return response


async def disk_usage(request: web.Request) -> web.Response:
    """GET /system/df (`docker system df`); `type` picks what to count (API 1.42)."""
    return json_response(await request.app[DISK_USAGE].report(request.query.getall("type", []),
                                                               scope_of(request)))


async def auth(request: web.Request) -> web.Response:
    """POST /auth: check credentials against a registry (docker login)."""
    try:
        body = gotypes.decode(await request.read(), "registry.AuthConfig")
    except ValueError as e:  # postAuth returns its decoder's error as it is: a 500
        raise SystemError_(str(e)) from None
    def text(name: str) -> str:
        return gotypes.field(body, name) or ""

    credentials = Credentials(text("username"), text("password"), text("identitytoken"))
    await request.app[AUTH].login(text("serveraddress"), credentials)
    return json_response({"Status": "Login Succeeded", "IdentityToken": ""})


def register(router: Router) -> None:
    router.add("GET", "/_ping", ping)
    router.add("HEAD", "/_ping", ping)
    router.add("GET", "/version", version)
    router.add("GET", "/info", info)
    router.add("GET", "/events", events)
    router.add("GET", "/system/df", disk_usage)
    router.add("POST", "/auth", auth)
