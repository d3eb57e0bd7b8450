"""Who is asking, on tenant listeners: every request carries a Keystone
token (X-Auth-Token: the docker CLI sends it from `HttpHeaders` in its
config.json, the SDK from `client.api.headers`). The identity it stands for
goes with the request; roles decide what it may do. The operator's
listeners (the unix socket, by default) need no token and see everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from hbd.api.app import Handler
from hbd.errors import Forbidden, HbdError
from hbd.services.identity.validator import Identity, TokenValidator
from hbd.services.scope import OPERATOR, Scope

READ_METHODS = frozenset({"GET", "HEAD"})
# Unauthenticated everywhere: the CLI's API version probe says nothing of anyone.
OPEN_PATHS = frozenset({"_ping"})


@dataclass
class Tenancy:
    validator: TokenValidator
    # Listener keys (see listener_key) whose requests are tenants'.
    tenant_listeners: set[str] = field(default_factory=set)
    reader_roles: frozenset[str] = frozenset({"reader"})
    member_roles: frozenset[str] = frozenset({"member", "admin"})

    def may(self, identity: Identity, method: str) -> bool:
        if identity.roles & self.member_roles:
            return True
        return method in READ_METHODS and bool(identity.roles & self.reader_roles)


TENANCY = web.AppKey("tenancy", Tenancy)
IDENTITY = web.RequestKey("identity", Identity)


def listener_key(sockname: object) -> str:
    """A listener as its accepted connections see it: a unix socket's path,
    or a TCP port (the address of a wildcard listener varies per connection)."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return f"tcp:{sockname[1]}"
    return str(sockname)


def identity_of(request: web.Request) -> Identity | None:
    """The tenant asking, or None for the operator."""
    return request.get(IDENTITY)


def scope_of(request: web.Request) -> Scope:
    """Whose objects the request sees, as the services take it."""
    identity = identity_of(request)
    return OPERATOR if identity is None else \
        Scope(identity.project_id, identity.project_name)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    tenancy = request.app.get(TENANCY)
    if tenancy is None or request.transport is None:
        return await handler(request)
    if listener_key(request.transport.get_extra_info("sockname")) not in \
            tenancy.tenant_listeners:
        return await handler(request)
    if request.path.rstrip("/").rsplit("/", 1)[-1] in OPEN_PATHS:  # with /vX.Y/ or not
        return await handler(request)
    identity = await tenancy.validator.identify(request.headers.get("X-Auth-Token", ""))
    if not tenancy.may(identity, request.method):
        raise Forbidden(f"user {identity.user_name} may not {request.method} "
                        f"{request.path} in project {identity.project_name}: "
                        f"roles {', '.join(sorted(identity.roles)) or 'none'}")
    request[IDENTITY] = identity
    try:
        return await handler(request)
    except HbdError as e:
        # An error names the tenant's objects as it knows them.
        e.message = scope_of(request).shown(e.message)
        raise
