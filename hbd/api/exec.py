"""Exec routes: create, start (hijacked stream), inspect, resize."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from hbd.api.app import Router, json_response, query_int, read_json
from hbd.api.backends import EXECS, ExecBackend
from hbd.api.streams import Channel, frame, hijack, stream_content_type
from hbd.errors import HbdError, InvalidParameter
from hbd.services.container.execs import ExecInstance

HEADER_GAP = 0.05


async def create(request: web.Request) -> web.Response:
    body = await read_json(request)
    exec_id = request.app[EXECS].create(request.match_info["id"], body)
    return json_response({"Id": exec_id}, status=201)


async def _pump_output(channel: Channel, instance: ExecInstance) -> None:
    async for stream, data in instance.output():
        await channel.write(data if instance.tty else frame(stream, data))


async def _pump_stdin(channel: Channel, execs: ExecBackend, instance: ExecInstance) -> None:
    while (data := await channel.read()) is not None:
        await execs.write_stdin(instance, data)
    await execs.close_stdin(instance)


async def start(request: web.Request) -> web.StreamResponse:
    execs = request.app[EXECS]
    body = await read_json(request, allow_empty=True) or {}
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON: exec start config must be an object")
    detach = bool(body.get("Detach"))
    tty = body.get("Tty")
    console = body.get("ConsoleSize")
    size = (int(console[0]), int(console[1])) if isinstance(console, list) and \
        len(console) == 2 else None
    instance = execs.get(request.match_info["id"])
    if detach:
        await execs.start(instance.id, detach=True, tty=tty, console=size)
        return json_response({}, status=200)
    response, channel = await hijack(request, stream_content_type(request, bool(
        instance.tty if tty is None else tty)))
    tasks: list[asyncio.Future[Any]] = []
    try:
        try:
            await execs.start(instance.id, detach=False, tty=tty, console=size)
        except HbdError as e:
            # dockerd reports a failed start inside the already-hijacked stream.
            # docker-py reads that stream from the raw socket, past the buffer
            # its HTTP parser filled: bytes that arrive together with the 101
            # headers are lost to it. Let the headers go out on their own.
            await asyncio.sleep(HEADER_GAP)
            message = (e.message + "\r\n").encode()
            await channel.write(message if instance.tty else frame(1, message))
            return response
        output = asyncio.ensure_future(_pump_output(channel, instance))
        lost = asyncio.ensure_future(channel.lost.wait())
        tasks += [output, lost]
        if instance.stdin:
            tasks.append(asyncio.ensure_future(_pump_stdin(channel, execs, instance)))
        await asyncio.wait({output, lost}, return_when=asyncio.FIRST_COMPLETED)
    except ConnectionResetError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        channel.close()
    return response


async def inspect(request: web.Request) -> web.Response:
    return json_response(request.app[EXECS].get(request.match_info["id"]).inspect())


async def resize(request: web.Request) -> web.Response:
    await request.app[EXECS].resize(request.match_info["id"],
                                    query_int(request, "h", 0), query_int(request, "w", 0))
    return web.Response(status=200)


def register(router: Router) -> None:
    router.add("POST", "/containers/{id}/exec", create)
    router.add("POST", "/exec/{id}/start", start)
    router.add("GET", "/exec/{id}/json", inspect)
    router.add("POST", "/exec/{id}/resize", resize)
