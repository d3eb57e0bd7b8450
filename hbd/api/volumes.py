"""Volume routes: HTTP in, VolumeService calls, HTTP out."""

from __future__ import annotations

from aiohttp import web

from hbd.api.app import Router, json_response, query_bool, query_filters, read_json
from hbd.api.context import daemon_of
from hbd.errors import InvalidParameter
from hbd.services.filters import PruneFilter, labels_match

LIST_FILTERS = {"dangling", "driver", "label", "name"}


async def list_volumes(request: web.Request) -> web.Response:
    d = daemon_of(request)
    filters = query_filters(request)
    for key in filters:
        if key not in LIST_FILTERS:
            raise InvalidParameter(f"invalid filter '{key}'")
    out = []
    for v in sorted(d.volumes.volumes.values(), key=lambda v: v.name):
        if "name" in filters and not any(n in v.name for n in filters["name"]):
            continue
        if "driver" in filters and "local" not in filters["driver"]:
            continue
        if not labels_match(filters.get("label", []), v.labels):
            continue
        if "dangling" in filters:
            dangling = filters["dangling"][0].lower() in ("true", "1")
            if dangling == bool(d.containers.volume_users(v.name)):
                continue
        out.append(d.volumes.inspect(v))
    return json_response({"Volumes": out, "Warnings": None})


async def create(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True) or {}
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON: volume config must be an object")
    d = daemon_of(request)
    v = await d.volumes.create(str(body.get("Name") or ""), str(body.get("Driver") or ""),
                               body.get("Labels") or {}, body.get("DriverOpts") or {})
    return json_response(d.volumes.inspect(v), status=201)


async def inspect(request: web.Request) -> web.Response:
    d = daemon_of(request)
    return json_response(d.volumes.inspect(d.volumes.get(request.match_info["name"])))


async def remove(request: web.Request) -> web.Response:
    d = daemon_of(request)
    name = request.match_info["name"]
    await d.volumes.remove(name, force=query_bool(request, "force"),
                           users=d.containers.volume_users(name))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    d = daemon_of(request)
    filters = query_filters(request)
    # Since API 1.42 prune removes only anonymous volumes unless all=true.
    prune_all = filters.pop("all", ["false"])[0].lower() in ("true", "1")
    matches = PruneFilter(filters)
    deleted = []
    for v in list(d.volumes.volumes.values()):
        if (not prune_all and not v.anonymous) or d.containers.volume_users(v.name):
            continue
        if not matches(v.created, {"Labels": v.labels}):
            continue
        await d.volumes.remove(v.name)
        deleted.append(v.name)
    return json_response({"VolumesDeleted": deleted or None, "SpaceReclaimed": 0})


def register(router: Router) -> None:
    router.add("GET", "/volumes", list_volumes)
    router.add("POST", "/volumes/create", create)
    router.add("POST", "/volumes/prune", prune)
    router.add("GET", "/volumes/{name}", inspect)
    router.add("DELETE", "/volumes/{name}", remove)
