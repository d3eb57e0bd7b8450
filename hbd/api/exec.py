"""Exec routes: create, start (hijacked stream), inspect, resize."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hbd.api import gotypes
from hbd.api.app import (
    Router,
    json_response,
    query_int,
    read_json_object,
)
from hbd.api.auth import scope_of
from hbd.api.backends import EXECS, ExecBackend
from hbd.api.streams import (
    STDOUT,
    StdinPlan,
    frame,
    hijack,
    serve_stdio,
    stream_content_type,
)
from hbd.errors import HbdError
from hbd.services.container.detach import DetachDetector
from hbd.services.container.execs import EXEC_CONFIG_FIELDS, ExecInstance, go_field_names

# What dockerd writes into an exec's stream when its client detaches: moby
# wraps the detach as an error on stdin, so the exec reports it as failed.
DETACHED_MESSAGE = b"exec attach failed: error on attach stdin: read escape sequence\r\n"


async def create(request: web.Request) -> web.Response:
    body = go_field_names(await read_json_object(request, "types.ExecConfig"), EXEC_CONFIG_FIELDS)
    size = _console_size(body)
    body["ConsoleSize"] = list(size) if size else None
    exec_id = request.app[EXECS].create(request.match_info["id"], body, scope_of(request))
    return json_response({"Id": exec_id}, status=201)


@dataclass(frozen=True)
class Framing:
    """How an exec's output goes to its client, by the start request's `Tty`
    (not the process's): raw stdout, with stderr dropped (dockerd passes no
    stderr writer then); else stdcopy frames of both."""

    raw: bool

    def render(self, stream: int, data: bytes) -> bytes:
        if not self.raw:
            return frame(stream, data)
        return data if stream == STDOUT else b""

    async def output(self, instance: ExecInstance) -> AsyncIterator[bytes]:
        async for stream, data in instance.output():
            if rendered := self.render(stream, data):
                yield rendered


def _start_options(body: dict[str, Any]) -> tuple[bool, bool, tuple[int, int] | None]:
    """(detach, tty, console size) of an exec start request (types.ExecStartCheck)."""
    detach, tty = gotypes.field(body, "Detach"), gotypes.field(body, "Tty")
    return bool(detach), bool(tty), _console_size(body)


def _console_size(body: dict[str, Any]) -> tuple[int, int] | None:
    """ConsoleSize, a Go *[2]uint (its elements checked by gotypes): nulls
    are zeros, a shorter array is padded with them and a longer one cut."""
    size = gotypes.field(body, "ConsoleSize")
    if size is None:
        return None
    height, width = [0 if v is None else int(v) for v in [*size, None, None][:2]]
    return height, width


def _exec_stdin(execs: ExecBackend, instance: ExecInstance) -> StdinPlan | None:
    if not instance.stdin:
        return None
    return StdinPlan(
        write=lambda data: execs.write_stdin(instance, data),
        close=lambda: execs.close_stdin(instance),
        close_on_eof=not instance.tty,
        detect=DetachDetector(instance.detach_keys) if instance.tty else None)


async def start(request: web.Request) -> web.StreamResponse:
    execs = request.app[EXECS]
    body = await read_json_object(request, "types.ExecStartCheck", allow_empty=True)
    detach, tty, size = _start_options(body)
    instance = execs.get(request.match_info["id"], scope_of(request))
    if detach:
        await execs.start(instance.id, detach=True, console=size)
        return web.Response(status=200)
    framing = Framing(raw=tty)
    response, channel = await hijack(request, stream_content_type(request, tty))
    try:
        try:
            await execs.start(instance.id, detach=False, console=size)
        except HbdError as e:
            # dockerd reports a failed start inside the already-hijacked stream.
            await channel.write(framing.render(STDOUT, (e.message + "\r\n").encode()))
            return response
        if await serve_stdio(channel, framing.output(instance), _exec_stdin(execs, instance)):
            await channel.write(framing.render(STDOUT, DETACHED_MESSAGE))
    except ConnectionError:
        pass
    finally:
        instance.stop_output()
        channel.close()
    return response


async def inspect(request: web.Request) -> web.Response:
    return json_response(request.app[EXECS].get(request.match_info["id"],
                                                    scope_of(request)).inspect())


async def resize(request: web.Request) -> web.Response:
    await request.app[EXECS].resize(request.match_info["id"],
                                    query_int(request, "h", 0), query_int(request, "w", 0),
                                    scope_of(request))
    return web.Response(status=200)


def register(router: Router) -> None:
    router.add("POST", "/containers/{id}/exec", create)
    router.add("POST", "/exec/{id}/start", start)
    router.add("GET", "/exec/{id}/json", inspect)
    router.add("POST", "/exec/{id}/resize", resize)
