"""A Keystone v3 client for one thing: what a user's token says.

hbd authenticates as a service user (password, project-scoped) and asks
`GET /v3/auth/tokens` with its own token in X-Auth-Token and the user's in
X-Subject-Token. Keystone answers the token's project, user and roles, or
404 for a token that is bad, expired or revoked. The service token is
fetched again when Keystone stops taking it. keystonemiddleware does the
same through private APIs with a blocking client and an unbounded cache;
this is the small asynchronous version (the cache is the caller's:
hbd/services/identity/validator.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from hbd.errors import Unauthorized, Unavailable
from hbd.services.identity.validator import Identity

TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass
class ServiceCredentials:
    user: str
    password: str
    project: str
    user_domain: str = "Default"
    project_domain: str = "Default"


class KeystoneClient:
    def __init__(self, url: str, credentials: ServiceCredentials) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._service_token = ""
        self._token_lock = asyncio.Lock()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _issue_service_token(self) -> str:
        c = self.credentials
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": c.user, "domain": {"name": c.user_domain}, "password": c.password}}},
            "scope": {"project": {"name": c.project, "domain": {"name": c.project_domain}}},
        }}
        try:
            async with self._http().post(f"{self.url}/v3/auth/tokens", json=body) as r:
                if r.status != 201:
                    raise Unavailable(f"identity service refused hbd's service user "
                                      f"({r.status})")
                return r.headers["X-Subject-Token"]
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Unavailable(f"identity service unreachable: {e}") from e

    async def _service(self, stale: str = "") -> str:
        async with self._token_lock:
            if not self._service_token or self._service_token == stale:
                self._service_token = await self._issue_service_token()
            return self._service_token

    async def validate(self, token: str) -> Identity:
        service = await self._service()
        for _attempt in range(2):
            try:
                async with self._http().get(
                        f"{self.url}/v3/auth/tokens",
                        headers={"X-Auth-Token": service, "X-Subject-Token": token}) as r:
                    if r.status == 200:
                        return identity_of(await r.json())
                    if r.status == 404:
                        raise Unauthorized("authentication failed: the token is invalid, "
                                           "expired or revoked")
                    if r.status != 401:
                        raise Unavailable(f"identity service answered {r.status}")
            except (aiohttp.ClientError, TimeoutError) as e:
                raise Unavailable(f"identity service unreachable: {e}") from e
            service = await self._service(stale=service)  # ours expired: once more
        raise Unavailable("identity service does not take hbd's service token")


def identity_of(body: dict[str, Any]) -> Identity:
    token = body.get("token") or {}
    project = token.get("project")
    if not project:
        raise Unauthorized("authentication failed: the token is not scoped to a project")
    user = token.get("user") or {}
    expires = 0.0
    if token.get("expires_at"):
        expires = datetime.fromisoformat(str(token["expires_at"]).replace("Z", "+00:00")
                                         ).timestamp()
    return Identity(project_id=str(project.get("id", "")),
                    project_name=str(project.get("name", "")),
                    user_id=str(user.get("id", "")), user_name=str(user.get("name", "")),
                    roles=frozenset(str(r.get("name", "")) for r in token.get("roles") or []),
                    expires_at=expires)
