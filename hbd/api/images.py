"""Image routes: HTTP in, ImageStore calls, HTTP out."""

from __future__ import annotations

import json

from aiohttp import web

from hbd.api.app import Router, json_response, query_bool, query_filters
from hbd.api.context import daemon_of
from hbd.services.image_filters import ImageFilter


async def list_images(request: web.Request) -> web.Response:
    store = daemon_of(request).images
    matches = ImageFilter(query_filters(request), store)
    # `all` would add intermediate build images; loaded and pulled images have
    # no parent chain, so every image is a top-level one.
    images = [img for img in store.all_images() if matches(img)]
    return json_response([store.summary(img) for img in images])


async def inspect(request: web.Request) -> web.Response:
    store = daemon_of(request).images
    return json_response(store.inspect(store.get(request.match_info["name"])))


async def tag(request: web.Request) -> web.Response:
    daemon_of(request).images.tag(request.match_info["name"], request.query.get("repo", ""),
                                  request.query.get("tag", ""))
    return web.Response(status=201)


async def remove(request: web.Request) -> web.Response:
    records = await daemon_of(request).images.delete(request.match_info["name"],
                                                     force=query_bool(request, "force"))
    return json_response(records)


async def load(request: web.Request) -> web.StreamResponse:
    # Errors before any output are HTTP errors, as dockerd answers them.
    messages = await daemon_of(request).images.load(request.content)
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    for message in messages:
        await response.write(json.dumps({"stream": message}).encode() + b"\n")
    return response


def register(router: Router) -> None:
    router.add("GET", "/images/json", list_images)
    router.add("POST", "/images/load", load)
    router.add("GET", "/images/{name:.+}/json", inspect)
    router.add("POST", "/images/{name:.+}/tag", tag)
    router.add("DELETE", "/images/{name:.+}", remove)
