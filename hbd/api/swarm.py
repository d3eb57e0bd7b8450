"""Swarm-mode endpoints, answered as a dockerd that is in no swarm answers them.

hbd runs no swarm mode (Kubernetes, through the CRI, is its cluster path),
but clients probe these: `docker info`, docker-py's swarm checks and test
teardowns, compose. They get dockerd's statuses and texts, so they take hbd
for a node outside any swarm. Requests that dockerd would refuse for their
parameters first are refused the same way.
"""

from __future__ import annotations

from aiohttp import web

from hbd.api.app import Router, read_json
from hbd.errors import InvalidParameter, SystemError_, Unavailable

NOT_A_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or '
                 '"docker swarm join" to connect this node to swarm and try again.')
# Swarm objects that dockerd updates only at a given version.
VERSIONED = {"services": "service", "nodes": "node", "secrets": "secret", "configs": "config"}


async def not_a_manager(request: web.Request) -> web.Response:
    raise Unavailable(NOT_A_MANAGER)


async def leave(request: web.Request) -> web.Response:
    raise Unavailable("This node is not part of a swarm")


async def init_or_join(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True) or {}
    address = body.get("ListenAddr", "") if isinstance(body, dict) else ""
    if not address:
        raise InvalidParameter('invalid ListenAddr "": invalid empty address')
    raise Unavailable("hbd runs no swarm mode: this node can neither start nor join a swarm "
                      "(Kubernetes, through hbd's CRI, is its cluster path)")


async def update_swarm(request: web.Request) -> web.Response:
    _check_version(request, "swarm")
    raise Unavailable(NOT_A_MANAGER)


async def update_object(request: web.Request) -> web.Response:
    kind = VERSIONED[request.path.split("/")[-3]]
    if kind in ("secret", "config"):
        if not request.query.get("version", "").isdigit():
            raise InvalidParameter(f"invalid {kind} version")
    else:
        _check_version(request, kind)
    raise Unavailable(NOT_A_MANAGER)


def _check_version(request: web.Request, kind: str) -> None:
    raw = request.query.get("version", "")
    if not raw.isdigit():
        raise InvalidParameter(f"invalid {kind} version '{raw}': strconv.ParseUint: parsing "
                               f'"{raw}": invalid syntax')


async def logs(request: web.Request) -> web.Response:
    if not any(request.query.get(s, "") not in ("", "0", "false") for s in ("stdout", "stderr")):
        raise SystemError_("Bad parameters: you must choose at least one stream")
    raise Unavailable(NOT_A_MANAGER)


def register(router: Router) -> None:
    router.add("GET", "/swarm", not_a_manager)
    router.add("POST", "/swarm/init", init_or_join)
    router.add("POST", "/swarm/join", init_or_join)
    router.add("POST", "/swarm/leave", leave)
    router.add("POST", "/swarm/update", update_swarm)
    router.add("GET", "/swarm/unlockkey", not_a_manager)
    router.add("POST", "/swarm/unlock", not_a_manager)
    for kind in ("services", "nodes", "tasks", "secrets", "configs"):
        router.add("GET", f"/{kind}", not_a_manager)
        router.add("GET", f"/{kind}/{{id}}", not_a_manager)
        if kind != "tasks":
            router.add("DELETE", f"/{kind}/{{id}}", not_a_manager)
            router.add("POST", f"/{kind}/{{id}}/update", update_object)
        if kind not in ("nodes", "tasks"):
            router.add("POST", f"/{kind}/create", not_a_manager)
    router.add("GET", "/services/{id}/logs", logs)
    router.add("GET", "/tasks/{id}/logs", logs)
