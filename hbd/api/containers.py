"""Container routes: HTTP in, ContainerBackend and ContainerFilesBackend calls, HTTP out."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from aiohttp import web

from hbd.api import gotypes
from hbd.api.app import (
    Router,
    json_response,
    query_bool,
    query_filters,
    query_int,
    read_json,
    request_version,
)
from hbd.api.auth import scope_of
from hbd.api.backends import CONTAINER_FILES, CONTAINERS
from hbd.api.streams import StdinPlan, frame, hijack, serve_stdio, stream_content_type
from hbd.errors import InvalidParameter
from hbd.services import goparse
from hbd.services.container.detach import DetachDetector, parse_detach_keys
from hbd.services.container.logs import LogQuery, LogRecord
from hbd.services.container.model import Attachment, Container
from hbd.services.timefmt import parse_timestamp_ns, rfc3339_nano


async def list_containers(request: web.Request) -> web.Response:
    containers = request.app[CONTAINERS]
    return json_response(containers.list_summaries(all_=query_bool(request, "all"),
                                         limit=query_int(request, "limit", -1),
                                         filters=query_filters(request),
                                         scope=scope_of(request)))


async def create(request: web.Request) -> web.Response:
    body = await read_json(request)
    if isinstance(body, dict):  # anything else: the service's own text
        gotypes.check_body(body, "container.CreateRequest")
    result = await request.app[CONTAINERS].create(request.query.get("name"), body,
                                                  request_version(request), scope_of(request))
    return json_response(result, status=201)


async def inspect(request: web.Request) -> web.Response:
    return json_response(request.app[CONTAINERS].inspect(request.match_info["id"],
                                                              scope_of(request)))


async def start(request: web.Request) -> web.Response:
    await request.app[CONTAINERS].start(request.match_info["id"], scope_of(request))
    return web.Response(status=204)


async def kill(request: web.Request) -> web.Response:
    await request.app[CONTAINERS].kill(request.match_info["id"],
                                       request.query.get("signal", "") or "KILL",
                                       scope_of(request))
    return web.Response(status=204)


def _stop_args(request: web.Request) -> tuple[int | None, str]:
    raw = request.query.get("t", "")
    timeout = query_int(request, "t", 0) if raw else None
    return timeout, request.query.get("signal", "")


async def stop(request: web.Request) -> web.Response:
    timeout, signal = _stop_args(request)
    await request.app[CONTAINERS].stop(request.match_info["id"], timeout, signal,
                                       scope_of(request))
    return web.Response(status=204)


async def restart(request: web.Request) -> web.Response:
    timeout, signal = _stop_args(request)
    await request.app[CONTAINERS].restart(request.match_info["id"], timeout, signal,
                                          scope_of(request))
    return web.Response(status=204)


async def rename(request: web.Request) -> web.Response:
    request.app[CONTAINERS].rename(request.match_info["id"], request.query.get("name", ""),
                                   scope_of(request))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    return json_response(await request.app[CONTAINERS].prune(query_filters(request),
                                                             scope_of(request)))


async def remove(request: web.Request) -> web.Response:
    await request.app[CONTAINERS].remove(
        request.match_info["id"], force=query_bool(request, "force"),
        volumes=query_bool(request, "v"), link=query_bool(request, "link"),
        scope=scope_of(request))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    containers = request.app[CONTAINERS]
    future = containers.wait_future(request.match_info["id"],
                                    request.query.get("condition", ""), scope_of(request))
    # The CLI waits for these headers before it starts the container.
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    code = await future
    await response.write(json.dumps({"Error": None, "StatusCode": code}).encode() + b"\n")
    return response


def _log_query(request: web.Request, follow: bool) -> LogQuery:
    def time_ns(key: str) -> int:
        raw = request.query.get(key, "")
        if not raw or raw == "0":
            return 0
        value = parse_timestamp_ns(raw)
        if not value:
            raise InvalidParameter(f"invalid value for {key}: {raw}")
        return value

    tail_raw = request.query.get("tail", "all")
    try:
        tail = -1 if tail_raw == "all" else goparse.atoi(tail_raw)
    except ValueError:
        tail = -1  # dockerd treats an unparsable tail as "all"
    return LogQuery(
        stdout=query_bool(request, "stdout"), stderr=query_bool(request, "stderr"),
        since_ns=time_ns("since"), until_ns=time_ns("until"), tail=tail, follow=follow,
    )


def _render(record: LogRecord, tty: bool, timestamps: bool) -> bytes:
    data = record.data
    if timestamps:
        data = rfc3339_nano(record.time_ns).encode() + b" " + data
    return data if tty else frame(record.stream, data)


async def logs(request: web.Request) -> web.StreamResponse:
    query = _log_query(request, follow=query_bool(request, "follow"))
    if not (query.stdout or query.stderr):
        raise InvalidParameter("Bad parameters: you must choose at least one stream")
    c, records = request.app[CONTAINERS].logs(request.match_info["id"], query,
                                              scope_of(request))
    timestamps = query_bool(request, "timestamps")
    response = web.StreamResponse()
    response.content_type = stream_content_type(request, c.tty)
    await response.prepare(request)
    try:
        async with contextlib.aclosing(records):
            async for record in records:
                await response.write(_render(record, c.tty, timestamps))
    except ConnectionResetError:
        pass
    return response


def _detach_keys(request: web.Request) -> bytes:
    spec = request.query.get("detachKeys", "")
    try:
        return parse_detach_keys(spec)
    except ValueError as e:
        raise InvalidParameter(f"Invalid detach keys ({spec}) provided") from e


async def _rendered(attachment: Attachment, tty: bool) -> AsyncIterator[bytes]:
    async for stream, data in attachment.output():
        yield data if tty else frame(stream, data)


def _attach_stdin(request: web.Request, c: Container, keys: bytes) -> StdinPlan | None:
    """dockerd reads the client's stdin only for a container with OpenStdin."""
    if not (query_bool(request, "stdin") and c.config.get("OpenStdin")):
        return None
    containers = request.app[CONTAINERS]
    return StdinPlan(
        write=lambda data: containers.write_stdin(c, data),
        close=lambda: containers.close_stdin(c),
        close_on_eof=bool(c.config.get("StdinOnce")) and not c.tty,
        detect=DetachDetector(keys) if c.tty else None)


async def attach(request: web.Request) -> web.StreamResponse:
    containers = request.app[CONTAINERS]
    keys = _detach_keys(request)
    c, attachment = containers.attach(request.match_info["id"],
                                      stdout=query_bool(request, "stdout"),
                                      stderr=query_bool(request, "stderr"),
                                      scope=scope_of(request))
    # Taken with the attachment (no await between): no output in both, none in neither.
    records = containers.attach_logs(c, attachment) if query_bool(request, "logs") else None
    try:
        response, channel = await hijack(request, stream_content_type(request, c.tty))
        try:
            if records is not None:
                async with contextlib.aclosing(records):
                    async for record in records:
                        await channel.write(_render(record, c.tty, False))
            if query_bool(request, "stream"):
                output = _rendered(attachment, c.tty)
                if await serve_stdio(channel, output, _attach_stdin(request, c, keys)):
                    containers.detached(c)
        except ConnectionError:
            pass
        finally:
            channel.close()
    finally:
        containers.detach(c, attachment)
    return response


async def pause(request: web.Request) -> web.Response:
    await request.app[CONTAINERS].pause(request.match_info["id"], scope_of(request))
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.Response:
    await request.app[CONTAINERS].unpause(request.match_info["id"], scope_of(request))
    return web.Response(status=204)


async def top(request: web.Request) -> web.Response:
    return json_response(await request.app[CONTAINERS].top(
        request.match_info["id"], request.query.get("ps_args", ""), scope_of(request)))


async def update(request: web.Request) -> web.Response:
    body = await read_json(request)
    warnings = await request.app[CONTAINERS].update(request.match_info["id"], body,
                                                    scope_of(request))
    return json_response({"Warnings": warnings})


async def stats(request: web.Request) -> web.StreamResponse:
    """One record, or one a second while `stream`; dockerd's precpu is the previous one."""
    records = request.app[CONTAINERS].stats(
        request.match_info["id"], stream=query_bool(request, "stream", default=True),
        one_shot=query_bool(request, "one-shot"), scope=scope_of(request))
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    try:
        async with contextlib.aclosing(records):
            async for record in records:
                await response.write(json.dumps(record).encode() + b"\n")
    except ConnectionResetError:
        pass
    return response


async def resize(request: web.Request) -> web.Response:
    await request.app[CONTAINERS].resize(
        request.match_info["id"], query_int(request, "h", 0), query_int(request, "w", 0),
        scope_of(request))
    return web.Response(status=200)


async def archive_head(request: web.Request) -> web.Response:
    files = request.app[CONTAINER_FILES]
    stat = await files.stat(request.match_info["id"], request.query.get("path", ""),
                            scope_of(request))
    return web.Response(status=200, headers={
        "X-Docker-Container-Path-Stat": files.stat_header(stat),
        "Content-Type": "application/x-tar"})


async def archive_get(request: web.Request) -> web.StreamResponse:
    files = request.app[CONTAINER_FILES]
    path = request.query.get("path", "")
    if not path:
        raise InvalidParameter("path is required")
    stat, stream = await files.get_archive(request.match_info["id"], path,
                                           scope=scope_of(request))
    response = web.StreamResponse(headers={"X-Docker-Container-Path-Stat":
                                           files.stat_header(stat)})
    response.content_type = "application/x-tar"
    await response.prepare(request)
    try:
        async for chunk in stream:
            await response.write(chunk)
    except ConnectionResetError:
        await stream.aclose()  # type: ignore[attr-defined]
    return response


async def archive_put(request: web.Request) -> web.Response:
    path = request.query.get("path", "")
    if not path:
        raise InvalidParameter("path is required")
    await request.app[CONTAINER_FILES].put_archive(
        request.match_info["id"], path, request.content.iter_chunked(1024 * 1024),
        copy_uid_gid=query_bool(request, "copyUIDGID"),
        no_overwrite_dir_non_dir=query_bool(request, "noOverwriteDirNonDir"),
        scope=scope_of(request))
    return web.Response(status=200)


async def export(request: web.Request) -> web.StreamResponse:
    stream = request.app[CONTAINER_FILES].export(request.match_info["id"], scope_of(request))
    first = await anext(stream, b"")  # errors before any output are HTTP errors
    response = web.StreamResponse()
    response.content_type = "application/x-tar"
    await response.prepare(request)
    await response.write(first)
    async for chunk in stream:
        await response.write(chunk)
    return response


async def changes(request: web.Request) -> web.Response:
    result = await request.app[CONTAINER_FILES].changes(request.match_info["id"],
                                                        scope_of(request))
    return json_response(result or None)


async def commit(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True) or {}
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON: container config must be an object")
    image_id = await request.app[CONTAINER_FILES].commit(
        request.query.get("container", ""), request.query.get("repo", ""),
        request.query.get("tag", ""), request.query.get("comment", ""),
        request.query.get("author", ""), query_bool(request, "pause", default=True),
        body, request.query.getall("changes", []), scope_of(request))
    return json_response({"Id": image_id}, status=201)


def register(router: Router) -> None:
    router.add("GET", "/containers/json", list_containers)
    router.add("POST", "/containers/create", create)
    router.add("GET", "/containers/{id}/json", inspect)
    router.add("POST", "/containers/{id}/start", start)
    router.add("POST", "/containers/prune", prune)
    router.add("POST", "/containers/{id}/kill", kill)
    router.add("POST", "/containers/{id}/stop", stop)
    router.add("POST", "/containers/{id}/restart", restart)
    router.add("POST", "/containers/{id}/rename", rename)
    router.add("POST", "/containers/{id}/pause", pause)
    router.add("POST", "/containers/{id}/unpause", unpause)
    router.add("GET", "/containers/{id}/top", top)
    router.add("GET", "/containers/{id}/stats", stats)
    router.add("POST", "/containers/{id}/update", update)
    router.add("POST", "/containers/{id}/wait", wait)
    router.add("POST", "/containers/{id}/attach", attach)
    router.add("GET", "/containers/{id}/logs", logs)
    router.add("POST", "/containers/{id}/resize", resize)
    router.add("DELETE", "/containers/{id}", remove)
    # `docker rm --link PARENT/ALIAS`: the name holds a slash.
    router.add("DELETE", "/containers/{id:[^/]+/[^/]+}", remove)
    router.add("HEAD", "/containers/{id}/archive", archive_head)
    router.add("GET", "/containers/{id}/archive", archive_get)
    router.add("PUT", "/containers/{id}/archive", archive_put)
    router.add("GET", "/containers/{id}/export", export)
    router.add("GET", "/containers/{id}/changes", changes)
    router.add("POST", "/commit", commit)
