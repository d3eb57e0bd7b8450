"""The aiohttp application: routing with dockerd's optional /v1.NN prefix,
the single place where errors become HTTP statuses, and request helpers
shared by the routers."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hbd import API_VERSION, MIN_API_VERSION
from hbd.api import gotypes
from hbd.errors import HbdError, InvalidParameter
from hbd.services import goparse
from hbd.services.system.service import ENGINE_VERSION

log = logging.getLogger(__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


API_VERSION_KEY = web.RequestKey("api_version", str)


def request_version(request: web.Request) -> str:
    """The API version the client asked for (the latest when it named none)."""
    version: str = request.get(API_VERSION_KEY, API_VERSION)
    return version


def version_at_least(request: web.Request, v: str) -> bool:
    return version_tuple(request_version(request)) >= version_tuple(v)


def json_response(data: Any, status: int = 200) -> web.Response:
    # dockerd encodes with a trailing newline (json.Encoder.Encode).
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode() + b"\n",
        status=status,
        content_type="application/json",
    )


def error_response(status: int, message: str) -> web.Response:
    return json_response({"message": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HbdError as e:
        if e.status == 304:
            return web.Response(status=304)
        return error_response(e.status, e.message)
    except web.HTTPNotFound:
        return error_response(404, "page not found")
    except web.HTTPMethodNotAllowed:
        # gorilla/mux in dockerd answers an unknown method on a known path with 404.
        return error_response(404, "page not found")
    except web.HTTPException:
        raise
    except ConnectionResetError:
        # The client went away mid-stream; there is nobody left to answer.
        return web.Response(status=499)
    except Exception as e:  # the last line of defence: never a traceback to the client
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"{type(e).__name__}: {e}")


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    version = request.match_info.get("version")
    if version:
        if version_tuple(version) > version_tuple(API_VERSION):
            return error_response(400, f"client version {version} is too new. Maximum "
                                       f"supported API version is {API_VERSION}")
        if version_tuple(version) < version_tuple(MIN_API_VERSION):
            return error_response(400, f"client version {version} is too old. Minimum "
                                       f"supported API version is {MIN_API_VERSION}, please "
                                       "upgrade your client to a newer version")
        request[API_VERSION_KEY] = version
    return await handler(request)


async def _common_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Api-Version"] = API_VERSION
    response.headers["Docker-Experimental"] = "false"
    response.headers["Ostype"] = "linux"
    response.headers["Server"] = f"Docker/{ENGINE_VERSION} (linux)"


class Router:
    """Registers each route with and without dockerd's /v{version} prefix."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.app.router.add_route(method, path, handler)
        self.app.router.add_route(method, r"/v{version:\d+\.\d+}" + path, handler)


def create_app() -> web.Application:
    app = web.Application(
        middlewares=[version_middleware, error_middleware],
        client_max_size=1024**4,
    )
    app.on_response_prepare.append(_common_headers)
    return app


# -- request helpers -----------------------------------------------------------


def query_bool(request: web.Request, key: str, default: bool = False) -> bool:
    """dockerd's httputils.BoolValue."""
    if key not in request.query:
        return default
    value = request.query[key].strip().lower()
    return value not in ("", "0", "no", "false", "none")


def query_int(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidParameter(f'strconv.Atoi: parsing "{raw}": invalid syntax') from None


def query_filters(request: web.Request) -> dict[str, list[str]]:
    """The `filters` parameter: {"key": ["v", ...]} or the old {"key": {"v": true}}."""
    raw = request.query.get("filters", "")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise InvalidParameter("invalid filter: invalid character in JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidParameter("invalid filter")
    out: dict[str, list[str]] = {}
    for key, value in parsed.items():
        if isinstance(value, dict):
            out[key] = [str(k) for k, v in value.items() if v]
        elif isinstance(value, list):
            out[key] = [str(v) for v in value]
        else:
            raise InvalidParameter(f"invalid filter '{key}'")
    return out


async def read_json(request: web.Request, allow_empty: bool = False) -> Any:
    body = await request.read()
    if not body.strip():
        if allow_empty:
            return None
        raise InvalidParameter("invalid JSON: request body is empty")
    try:
        return goparse.json_loads(body)
    except ValueError as e:
        raise InvalidParameter(f"invalid JSON: {e}") from None


async def read_json_object(request: web.Request, go_type: str,
                           allow_empty: bool = False) -> dict[str, Any]:
    """A body that dockerd decodes into the Go struct `go_type` (see
    hbd/api/gotypes.py): its type errors are dockerd's 400s, never a Python
    exception further down."""
    return gotypes.check_body(await read_json(request, allow_empty=allow_empty), go_type)
