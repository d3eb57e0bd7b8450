"""Image routes: HTTP in, ImageBackend/DistributionBackend calls, HTTP out."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from hbd.api.app import Router, json_response, query_bool, query_filters
from hbd.api.auth import scope_of
from hbd.api.backends import DISTRIBUTION, IMAGES
from hbd.errors import HbdError, InvalidParameter
from hbd.services.image.distribution import Platform
from hbd.services.image.reference import Reference, parse_reference, validate_tag
from hbd.services.image.registry import Credentials


async def list_images(request: web.Request) -> web.Response:
    return json_response(request.app[IMAGES].list_summaries(
        query_filters(request), all_=query_bool(request, "all"), scope=scope_of(request)))


async def inspect(request: web.Request) -> web.Response:
    store = request.app[IMAGES]
    scope = scope_of(request)
    return json_response(store.inspect(store.get(request.match_info["name"], scope), scope))


async def tag(request: web.Request) -> web.Response:
    request.app[IMAGES].tag(request.match_info["name"], request.query.get("repo", ""),
                            request.query.get("tag", ""), scope_of(request))
    return web.Response(status=201)


async def remove(request: web.Request) -> web.Response:
    records = await request.app[IMAGES].delete(request.match_info["name"],
                                               force=query_bool(request, "force"),
                                               scope=scope_of(request))
    return json_response(records)


async def load(request: web.Request) -> web.StreamResponse:
    # dockerd answers 200 whatever happens and puts a failure in the stream.
    try:
        messages = [{"stream": m} for m in await request.app[IMAGES].load(request.content,
                                                                          scope_of(request))]
    except HbdError as e:
        messages = [_error_record(e.message)]
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    for message in messages:
        await response.write(json.dumps(message).encode() + b"\n")
    return response


def _error_record(message: str) -> dict[str, Any]:
    return {"errorDetail": {"message": message}, "error": message}


async def stream_messages(request: web.Request,
                          messages: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    """A jsonmessage stream. An error before the first message is an HTTP error
    (dockerd answers so while nothing is flushed); later ones go in the stream."""
    first = await anext(messages, None)
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(json.dumps(first).encode() + b"\n")
        async for message in messages:
            await response.write(json.dumps(message).encode() + b"\n")
    except HbdError as e:
        await response.write(json.dumps(_error_record(e.message)).encode() + b"\n")
    except ConnectionResetError:
        pass
    return response


async def create(request: web.Request) -> web.StreamResponse:
    """POST /images/create: pull (fromImage)."""
    from_image = request.query.get("fromImage", "")
    if request.query.get("fromSrc"):
        return await import_image(request)
    if not from_image:
        raise InvalidParameter("fromImage or fromSrc is required")
    ref = parse_reference(from_image)
    tag = request.query.get("tag", "")
    if tag.startswith("sha256:"):
        ref = Reference(ref.domain, ref.path, digest=tag)
    elif tag:
        validate_tag(tag)
        ref = ref.with_tag(tag)
    credentials = Credentials.from_header(request.headers.get("X-Registry-Auth"))
    platform = Platform.parse(request.query.get("platform", ""))
    return await stream_messages(request, request.app[DISTRIBUTION].pull(
        ref, platform, credentials, scope_of(request)))


async def import_image(request: web.Request) -> web.Response:
    """POST /images/create?fromSrc=-: the body is a filesystem tarball."""
    if request.query.get("fromSrc") != "-":
        raise InvalidParameter("hbd imports from the request body only (fromSrc=-)")
    repo = request.query.get("repo", "")
    ref = None
    if repo:
        ref = parse_reference(repo)
        tag = request.query.get("tag", "")
        if tag:
            validate_tag(tag)
            ref = ref.with_tag(tag)
        ref = ref.with_default_tag()
    image_id = await request.app[IMAGES].import_tarball(
        request.content, ref, request.query.get("message", ""),
        request.query.getall("changes", []), scope_of(request))
    return web.Response(body=json.dumps({"status": image_id}).encode() + b"\n",
                        content_type="application/json")


async def push(request: web.Request) -> web.StreamResponse:
    credentials = Credentials.from_header(request.headers.get("X-Registry-Auth"))
    return await stream_messages(request, request.app[DISTRIBUTION].push(
        request.match_info["name"], request.query.get("tag", ""), credentials,
        scope_of(request)))


async def save(request: web.Request) -> web.StreamResponse:
    """GET /images/get?names=… and GET /images/{name}/get: an image archive."""
    store = request.app[IMAGES]
    names = [request.match_info["name"]] if "name" in request.match_info else \
        request.query.getall("names", [])
    with tempfile.TemporaryFile(dir=store.tmp_dir) as spool:
        await asyncio.to_thread(store.save, names, spool, scope_of(request))
        spool.seek(0)
        response = web.StreamResponse()
        response.content_type = "application/x-tar"
        await response.prepare(request)
        while chunk := await asyncio.to_thread(spool.read, 1024 * 1024):
            await response.write(chunk)
        return response


async def history(request: web.Request) -> web.Response:
    return json_response(request.app[IMAGES].history(request.match_info["name"],
                                                     scope_of(request)))


async def prune(request: web.Request) -> web.Response:
    return json_response(await request.app[IMAGES].prune(query_filters(request),
                                                         scope_of(request)))


def register(router: Router) -> None:
    router.add("GET", "/images/json", list_images)
    router.add("POST", "/images/load", load)
    router.add("POST", "/images/create", create)
    router.add("GET", "/images/get", save)
    router.add("POST", "/images/prune", prune)
    router.add("GET", "/images/{name:.+}/get", save)
    router.add("GET", "/images/{name:.+}/history", history)
    router.add("POST", "/images/{name:.+}/push", push)
    router.add("GET", "/images/{name:.+}/json", inspect)
    router.add("POST", "/images/{name:.+}/tag", tag)
    router.add("DELETE", "/images/{name:.+}", remove)
