"""Volume routes: HTTP in, VolumeBackend calls, HTTP out."""

from __future__ import annotations

from aiohttp import web

from hbd.api.app import Router, json_response, query_bool, query_filters, read_json_object
from hbd.api.auth import scope_of
from hbd.api.backends import VOLUMES
from hbd.api.gotypes import field


async def list_volumes(request: web.Request) -> web.Response:
    volumes = request.app[VOLUMES].list_views(query_filters(request), scope_of(request))
    return json_response({"Volumes": volumes, "Warnings": None})


async def create(request: web.Request) -> web.Response:
    body = await read_json_object(request, "volume.CreateOptions", allow_empty=True)
    volumes = request.app[VOLUMES]
    v = await volumes.create(field(body, "Name") or "", field(body, "Driver") or "",
                             field(body, "Labels") or {}, field(body, "DriverOpts") or {},
                             scope=scope_of(request))
    return json_response(volumes.inspect(v, scope_of(request)), status=201)


async def inspect(request: web.Request) -> web.Response:
    volumes = request.app[VOLUMES]
    scope = scope_of(request)
    return json_response(volumes.inspect(volumes.get(request.match_info["name"], scope), scope))


async def remove(request: web.Request) -> web.Response:
    await request.app[VOLUMES].remove(request.match_info["name"],
                                      force=query_bool(request, "force"),
                                      scope=scope_of(request))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    return json_response(await request.app[VOLUMES].prune(query_filters(request),
                                                                scope_of(request)))


def register(router: Router) -> None:
    router.add("GET", "/volumes", list_volumes)
    router.add("POST", "/volumes/create", create)
    router.add("POST", "/volumes/prune", prune)
    router.add("GET", "/volumes/{name}", inspect)
    router.add("DELETE", "/volumes/{name}", remove)
