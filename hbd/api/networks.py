"""Network routes: HTTP in, NetworkService/ContainerService calls, HTTP out."""

from __future__ import annotations

from aiohttp import web

from hbd.api.app import Router, json_response, query_filters, read_json
from hbd.api.context import daemon_of
from hbd.services.network.filters import NetworkFilter


async def list_networks(request: web.Request) -> web.Response:
    d = daemon_of(request)
    matches = NetworkFilter(query_filters(request), d.containers)
    return json_response([d.networks.inspect(n, {}) for n in
                          sorted(d.networks.networks.values(), key=lambda n: n.created)
                          if matches(n)])


async def inspect(request: web.Request) -> web.Response:
    d = daemon_of(request)
    n = d.networks.get(request.match_info["id"])
    return json_response(d.networks.inspect(n, d.containers.network_members(n.name)))


async def create(request: web.Request) -> web.Response:
    body = await read_json(request)
    return json_response(await daemon_of(request).networks.create(body), status=201)


async def remove(request: web.Request) -> web.Response:
    d = daemon_of(request)
    n = d.networks.get(request.match_info["id"])
    await d.networks.remove(n.id, d.containers.configured_on(n.name))
    return web.Response(status=204)


async def connect(request: web.Request) -> web.Response:
    body = await read_json(request)
    daemon_of(request).containers.connect(str(body.get("Container", "")),
                                          request.match_info["id"],
                                          body.get("EndpointConfig") or {})
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.Response:
    body = await read_json(request)
    daemon_of(request).containers.disconnect(str(body.get("Container", "")),
                                             request.match_info["id"],
                                             bool(body.get("Force")))
    return web.Response(status=200)


async def prune(request: web.Request) -> web.Response:
    d = daemon_of(request)
    matches = NetworkFilter(query_filters(request), d.containers, prune=True)
    deleted = []
    for n in list(d.networks.networks.values()):
        if n.builtin or not matches(n) or d.containers.configured_on(n.name) or \
                d.networks.in_use(n):
            continue
        await d.networks.remove(n.id, [])
        deleted.append(n.name)
    return json_response({"NetworksDeleted": deleted or None})


def register(router: Router) -> None:
    router.add("GET", "/networks", list_networks)
    router.add("POST", "/networks/create", create)
    router.add("POST", "/networks/prune", prune)
    router.add("GET", "/networks/{id}", inspect)
    router.add("DELETE", "/networks/{id}", remove)
    router.add("POST", "/networks/{id}/connect", connect)
    router.add("POST", "/networks/{id}/disconnect", disconnect)
