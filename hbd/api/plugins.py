"""Plugin routes: HTTP in, PluginBackend calls, HTTP out.

Statuses and texts are dockerd 20.10's, including its 500s for bad
references and bodies on these routes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hbd.api.app import Router, json_response, query_bool, query_filters
from hbd.api.backends import PLUGINS
from hbd.api.images import stream_messages
from hbd.errors import InvalidParameter, SystemError_
from hbd.services import goparse
from hbd.services.goparse import json_kind
from hbd.services.image.registry import Credentials
from hbd.services.plugin.service import remote_reference


def _credentials(request: web.Request) -> Credentials:
    return Credentials.from_header(request.headers.get("X-Registry-Auth"))


async def _privileges(request: web.Request) -> list[dict[str, Any]]:
    """The privileges a client grants (a JSON array of PluginPrivilege)."""
    body = await request.read()
    if not body.strip():
        raise SystemError_("failed to parse privileges: EOF")
    try:
        value = goparse.json_loads(body)
    except ValueError as e:
        raise SystemError_(f"failed to parse privileges: {e}") from None
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        kind = json_kind(value if not isinstance(value, list) else
                         next(p for p in value if not isinstance(p, dict)))
        raise SystemError_(f"failed to parse privileges: json: cannot unmarshal {kind} into "
                           "Go value of type types.PluginPrivileges")
    return value


async def list_plugins(request: web.Request) -> web.Response:
    return json_response(request.app[PLUGINS].list_views(query_filters(request)))


async def inspect(request: web.Request) -> web.Response:
    return json_response(request.app[PLUGINS].inspect(request.match_info["name"]))


async def privileges(request: web.Request) -> web.Response:
    remote = remote_reference(request.query.get("remote", ""))
    return json_response(await request.app[PLUGINS].privileges(remote, _credentials(request)))


async def create(request: web.Request) -> web.Response:
    await request.app[PLUGINS].create(request.query.get("name", ""),
                                      request.content.iter_chunked(1024 * 1024))
    return web.Response(status=204)


async def remove(request: web.Request) -> web.Response:
    await request.app[PLUGINS].remove(request.match_info["name"],
                                      force=query_bool(request, "force"))
    return web.Response(status=200)


async def enable(request: web.Request) -> web.Response:
    try:
        goparse.atoi(request.query.get("timeout", ""))
    except ValueError as e:
        raise SystemError_(str(e)) from None
    request.app[PLUGINS].enable(request.match_info["name"])
    return web.Response(status=200)


async def disable(request: web.Request) -> web.Response:
    request.app[PLUGINS].disable(request.match_info["name"], force=query_bool(request, "force"))
    return web.Response(status=200)


async def set_(request: web.Request) -> web.Response:
    body = await request.read()
    if not body.strip():
        raise InvalidParameter("got EOF while reading request body")
    try:
        args = goparse.json_decode_first(body)
    except ValueError as e:
        raise InvalidParameter(str(e)) from None
    if args is None:
        args = []
    if not isinstance(args, list):
        raise InvalidParameter(f"json: cannot unmarshal {json_kind(args)} into Go value of "
                               "type []string")
    for arg in args:
        if not isinstance(arg, str):
            raise InvalidParameter(f"json: cannot unmarshal {json_kind(arg)} into Go value of "
                                   "type string")
    request.app[PLUGINS].set(request.match_info["name"], args)
    return web.Response(status=204)


# dockerd reads the body's privileges before it looks at `remote`.
async def pull(request: web.Request) -> web.StreamResponse:
    granted = await _privileges(request)
    remote = remote_reference(request.query.get("remote", ""))
    return await stream_messages(request, request.app[PLUGINS].pull(
        remote, request.query.get("name", ""), granted, _credentials(request)))


async def upgrade(request: web.Request) -> web.StreamResponse:
    granted = await _privileges(request)
    remote = remote_reference(request.query.get("remote", ""))
    return await stream_messages(request, request.app[PLUGINS].upgrade(
        request.match_info["name"], remote, granted, _credentials(request)))


async def push(request: web.Request) -> web.StreamResponse:
    return await stream_messages(request, request.app[PLUGINS].push(
        request.match_info["name"], _credentials(request)))


def register(router: Router) -> None:
    router.add("GET", "/plugins", list_plugins)
    router.add("GET", "/plugins/privileges", privileges)
    router.add("POST", "/plugins/pull", pull)
    router.add("POST", "/plugins/create", create)
    router.add("GET", "/plugins/{name:.+}/json", inspect)
    router.add("POST", "/plugins/{name:.+}/enable", enable)
    router.add("POST", "/plugins/{name:.+}/disable", disable)
    router.add("POST", "/plugins/{name:.+}/push", push)
    router.add("POST", "/plugins/{name:.+}/upgrade", upgrade)
    router.add("POST", "/plugins/{name:.+}/set", set_)
    router.add("DELETE", "/plugins/{name:.+}", remove)
