"""Network routes: HTTP in, NetworkBackend/ContainerNetworkBackend calls, HTTP out."""

from __future__ import annotations

from aiohttp import web

from hbd.api import gotypes
from hbd.api.app import (
    Router,
    json_response,
    query_filters,
    read_json_object,
)
from hbd.api.auth import scope_of
from hbd.api.backends import CONTAINER_NETWORKS, NETWORKS


async def list_networks(request: web.Request) -> web.Response:
    return json_response(request.app[NETWORKS].list_views(query_filters(request),
                                                          scope_of(request)))


async def inspect(request: web.Request) -> web.Response:
    return json_response(request.app[NETWORKS].inspect(request.match_info["id"],
                                                       scope_of(request)))


async def create(request: web.Request) -> web.Response:
    body = await read_json_object(request, "network.CreateRequest")
    return json_response(await request.app[NETWORKS].create(body, scope_of(request)),
                         status=201)


async def remove(request: web.Request) -> web.Response:
    await request.app[NETWORKS].remove(request.match_info["id"], scope_of(request))
    return web.Response(status=204)


async def connect(request: web.Request) -> web.Response:
    body = await read_json_object(request, "types.NetworkConnect")
    container = gotypes.field(body, "Container") or ""
    settings = gotypes.field(body, "EndpointConfig") or {}
    await request.app[CONTAINER_NETWORKS].connect(container, request.match_info["id"], settings,
                                                  scope=scope_of(request))
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.Response:
    body = await read_json_object(request, "types.NetworkDisconnect")
    container = gotypes.field(body, "Container") or ""
    force = bool(gotypes.field(body, "Force"))
    await request.app[CONTAINER_NETWORKS].disconnect(container, request.match_info["id"], force,
                                                     scope=scope_of(request))
    return web.Response(status=200)


async def prune(request: web.Request) -> web.Response:
    return json_response(await request.app[NETWORKS].prune(query_filters(request),
                                                                 scope_of(request)))


def register(router: Router) -> None:
    router.add("GET", "/networks", list_networks)
    router.add("POST", "/networks/create", create)
    router.add("POST", "/networks/prune", prune)
    router.add("GET", "/networks/{id}", inspect)
    router.add("DELETE", "/networks/{id}", remove)
    router.add("POST", "/networks/{id}/connect", connect)
    router.add("POST", "/networks/{id}/disconnect", disconnect)
