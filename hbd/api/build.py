"""Build routes (the classic builder): HTTP in, Builder calls, jsonmessages out."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from typing import Any

from aiohttp import web

from hbd.api.app import Router, json_response, query_bool, query_int
from hbd.api.auth import scope_of
from hbd.api.backends import BUILDER
from hbd.errors import HbdError, InvalidParameter
from hbd.services.build.builder import BuildError, BuildOptions
from hbd.services.image.registry import Credentials

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


def _json_query(request: web.Request, key: str, kind: type) -> Any:
    raw = request.query.get(key, "")
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidParameter(f"invalid {key}: not JSON") from None
    if not isinstance(value, kind):
        raise InvalidParameter(f"invalid {key}: not a JSON {kind.__name__}")
    return value


def _json_map(request: web.Request, key: str) -> dict[str, Any]:
    value: dict[str, Any] = _json_query(request, key, dict)
    return value


def _json_list(request: web.Request, key: str) -> list[str]:
    return [str(v) for v in _json_query(request, key, list)]


def _registry_config(header: str | None) -> dict[str, Credentials]:
    """X-Registry-Config: base64 JSON of {registry: AuthConfig}."""
    if not header:
        return {}
    padded = header + "=" * (-len(header) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError):
        try:
            data = json.loads(base64.b64decode(padded))
        except (ValueError, UnicodeDecodeError):
            raise InvalidParameter("invalid X-Registry-Config header") from None
    out: dict[str, Credentials] = {}
    if isinstance(data, dict):
        for registry, auth in data.items():
            if not isinstance(auth, dict):
                continue
            host = str(registry).removeprefix("https://").removeprefix("http://")
            host = host.split("/")[0]
            if host in ("index.docker.io", "registry-1.docker.io"):
                host = "docker.io"
            out[host] = Credentials(str(auth.get("username") or ""),
                                    str(auth.get("password") or ""),
                                    str(auth.get("identitytoken") or ""))
    return out


_LIMITS = {"memory": "Memory", "memswap": "MemorySwap", "shmsize": "ShmSize",
           "cpushares": "CpuShares", "cpuperiod": "CpuPeriod", "cpuquota": "CpuQuota",
           "cpusetcpus": "CpusetCpus"}


def _limits(request: web.Request) -> dict[str, Any]:
    """The RUN containers' resources from the query (docker build --memory …)."""
    out: dict[str, Any] = {}
    for key, field in _LIMITS.items():
        raw = request.query.get(key, "")
        if not raw:
            continue
        if field == "CpusetCpus":
            out[field] = raw
            continue
        out[field] = query_int(request, key, 0)
    hosts = [h for raw in request.query.getall("extrahosts", []) for h in raw.split(",") if h]
    if hosts:
        out["ExtraHosts"] = hosts
    return {k: v for k, v in out.items() if v not in (0, "")}


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


async def build(request: web.Request) -> web.StreamResponse:
    """POST /build. Errors before any output are HTTP errors; later ones end the stream."""
    q = request.query
    if q.get("remote"):
        raise InvalidParameter("hbd builds from an uploaded context only; remote contexts "
                               "(git or URL) are not supported")
    if q.get("version", "1") == "2":
        raise InvalidParameter("BuildKit is not supported by hbd; build with "
                               "DOCKER_BUILDKIT=0 (the classic builder)")
    build_args = {str(k): (None if v is None else str(v))
                  for k, v in _json_map(request, "buildargs").items()}
    options = BuildOptions(
        scope=scope_of(request),
        tags=q.getall("t", []),
        dockerfile=q.get("dockerfile", "") or "Dockerfile",
        target=q.get("target", ""),
        build_args=build_args,
        labels={str(k): str(v) for k, v in _json_map(request, "labels").items()},
        nocache=query_bool(request, "nocache"),
        rm=query_bool(request, "rm", True),
        forcerm=query_bool(request, "forcerm"),
        quiet=query_bool(request, "q"),
        network_mode=q.get("networkmode", ""),
        pull=query_bool(request, "pull"),
        cache_from=_json_list(request, "cachefrom"),
        host_config=_limits(request),
        credentials=_registry_config(request.headers.get("X-Registry-Config")),
    )
    messages = await request.app[BUILDER].build(
        request.content.iter_chunked(CHUNK), options)
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    try:
        async with contextlib.aclosing(messages):
            async for message in messages:
                await response.write(_line(message))
    except BuildError as e:
        detail: dict[str, Any] = {"message": e.message}
        if e.code:
            detail = {"code": e.code, "message": e.message}
        await response.write(_line({"errorDetail": detail, "error": e.message}))
    except HbdError as e:
        await response.write(_line({"errorDetail": {"message": e.message},
                                    "error": e.message}))
    except ConnectionResetError:
        pass
    except Exception as e:  # the headers are out: the stream is the only place left
        log.exception("build failed")
        await response.write(_line({"errorDetail": {"message": f"{type(e).__name__}: {e}"},
                                    "error": f"{type(e).__name__}: {e}"}))
    return response


async def prune(request: web.Request) -> web.Response:
    return json_response(await request.app[BUILDER].prune_cache(scope_of(request)))


def register(router: Router) -> None:
    router.add("POST", "/build", build)
    router.add("POST", "/build/prune", prune)
