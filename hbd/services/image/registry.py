"""Client of the Docker Registry HTTP API v2 / OCI distribution spec.

Anonymous, basic and bearer-token auth (the `WWW-Authenticate` challenge
decides); schema2 and OCI manifests, manifest lists and OCI indexes; every
manifest and blob is checked against its digest while it streams in. Which
registries speak plain HTTP, and which mirrors stand in for Docker Hub, come
from hbd.toml as dockerd's `insecure-registries` and `registry-mirrors`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from hbd.errors import Forbidden, HbdError, InvalidParameter, NotFound, Unauthorized
from hbd.services.image.reference import DEFAULT_DOMAIN, Reference

log = logging.getLogger(__name__)

MEDIA_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT = ", ".join([MEDIA_MANIFEST_V2, MEDIA_MANIFEST_LIST, MEDIA_OCI_MANIFEST,
                    MEDIA_OCI_INDEX])
MAX_MANIFEST = 4 * 1024 * 1024
CHUNK = 256 * 1024
DOCKER_HUB_REGISTRY = "registry-1.docker.io"


class RegistryError(HbdError):
    """A registry refused or failed; `status` follows what dockerd would answer."""

    status = 500


@dataclass
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""

    @classmethod
    def from_header(cls, header: str | None) -> Credentials:
        """X-Registry-Auth: base64url JSON of the CLI's AuthConfig."""
        if not header:
            return cls()
        try:
            padded = header + "=" * (-len(header) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded))
        except (ValueError, UnicodeDecodeError):
            raise InvalidParameter("invalid X-Registry-Auth header") from None
        if not isinstance(data, dict):
            return cls()
        return cls(str(data.get("username") or ""), str(data.get("password") or ""),
                   str(data.get("identitytoken") or ""))


@dataclass
class RegistrySettings:
    mirrors: list[str] = field(default_factory=list)
    insecure: list[str] = field(default_factory=list)

    def is_insecure(self, host: str) -> bool:
        """127.0.0.0/8 and localhost always, as in dockerd; the rest from hbd.toml."""
        name = _hostname(host)
        if name == "localhost":
            return True
        for entry in self.insecure:
            if entry in (host, name):
                return True
            try:
                if ipaddress.ip_address(name) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass
class Manifest:
    raw: bytes
    media_type: str
    digest: str
    document: dict[str, Any]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Session:
    """One repository on one registry, with its auth state."""

    def __init__(self, client: RegistryClient, base_url: str, repository: str,
                 credentials: Credentials, actions: str) -> None:
        self.client = client
        self.base_url = base_url
        self.repository = repository
        self.credentials = credentials
        self.actions = actions
        self._authorization = ""

    async def _authenticate(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            if not self.credentials.username:
                raise Unauthorized("no basic auth credentials")
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode()
            return
        if scheme.lower() != "bearer":
            raise RegistryError(f"unsupported authentication scheme {scheme!r}")
        fields = dict(_CHALLENGE.findall(params))
        realm = fields.get("realm")
        if not realm:
            raise RegistryError("bearer challenge without realm")
        query = {"service": fields.get("service", ""),
                 "scope": fields.get("scope") or
                 f"repository:{self.repository}:{self.actions}"}
        headers = {}
        if self.credentials.username:
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        if self.credentials.identity_token:
            query["refresh_token"] = self.credentials.identity_token
        async with self.client.http.get(realm, params=query, headers=headers,
                                        ssl=self.client.ssl_for(realm)) as resp:
            if resp.status in (401, 403):
                raise Unauthorized("unauthorized: incorrect username or password"
                                   if self.credentials.username else
                                   "unauthorized: authentication required")
            if resp.status != 200:
                raise RegistryError(f"token server answered {resp.status}")
            body = await resp.json(content_type=None)
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) \
            else None
        if not token:
            raise RegistryError("token server sent no token")
        self._authorization = f"Bearer {token}"

    async def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                      data: Any = None, allow: tuple[int, ...] = ()) -> aiohttp.ClientResponse:
        """A request, re-sent once after an auth challenge. The caller releases it."""
        url = path if path.startswith("http") else f"{self.base_url}/v2/{self.repository}{path}"
        for attempt in range(2):
            all_headers = dict(headers or {})
            if self._authorization:
                all_headers["Authorization"] = self._authorization
            try:
                resp = await self.client.http.request(
                    method, url, headers=all_headers, data=data,
                    ssl=self.client.ssl_for(url), allow_redirects=True)
            except aiohttp.ClientError as e:
                raise RegistryError(f"cannot reach {self.base_url}: {e}") from e
            except TimeoutError as e:
                raise RegistryError(f"timeout talking to {self.base_url}") from e
            if resp.status == 401 and attempt == 0 and \
                    "WWW-Authenticate" in resp.headers:
                challenge = resp.headers["WWW-Authenticate"]
                resp.release()
                await self._authenticate(challenge)
                continue
            if resp.status in allow or 200 <= resp.status < 300:
                return resp
            message = await _error_text(resp)
            resp.release()
            if resp.status == 401:
                raise Unauthorized(message or "authentication required")
            if resp.status == 403:
                raise Forbidden(message or "denied")
            if resp.status == 404:
                raise NotFound(message or "not found")
            raise RegistryError(f"{method} {url}: {resp.status} {message}")
        raise Unauthorized("authentication required")

    # -- manifests ---------------------------------------------------------------

    async def get_manifest(self, reference: str) -> Manifest:
        resp = await self.request("GET", f"/manifests/{reference}", headers={"Accept": ACCEPT})
        try:
            raw = await _read_limited(resp, MAX_MANIFEST)
            media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        finally:
            resp.release()
        digest = sha256_digest(raw)
        if reference.startswith("sha256:") and reference != digest:
            raise RegistryError(f"manifest digest mismatch: asked {reference}, got {digest}")
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RegistryError("malformed manifest: not JSON") from None
        if not isinstance(document, dict):
            raise RegistryError("malformed manifest")
        media = document.get("mediaType") or media
        if document.get("schemaVersion") == 1:
            raise RegistryError("schema 1 manifests are not supported")
        return Manifest(raw, media, digest, document)

    async def put_manifest(self, reference: str, raw: bytes, media_type: str) -> str:
        resp = await self.request("PUT", f"/manifests/{reference}", data=raw,
                                  headers={"Content-Type": media_type})
        digest = resp.headers.get("Docker-Content-Digest") or sha256_digest(raw)
        resp.release()
        return digest

    # -- blobs -----------------------------------------------------------------------

    async def blob_stream(self, digest: str) -> AsyncIterator[bytes]:
        resp = await self.request("GET", f"/blobs/{digest}")
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                yield chunk
        except aiohttp.ClientError as e:
            raise RegistryError(f"blob {digest} download failed: {e}") from e
        finally:
            resp.release()

    async def blob_exists(self, digest: str) -> bool:
        resp = await self.request("HEAD", f"/blobs/{digest}", allow=(404,))
        resp.release()
        return resp.status == 200

    async def mount_blob(self, digest: str, from_repository: str) -> bool:
        resp = await self.request(
            "POST", f"/blobs/uploads/?mount={digest}&from={from_repository}", allow=(202,))
        location = resp.headers.get("Location", "")
        resp.release()
        if resp.status == 201:
            return True
        if location:  # the registry started a plain upload instead: cancel it
            with contextlib.suppress(HbdError):
                cancel = await self.request("DELETE", self._absolute(location), allow=(404,))
                cancel.release()
        return False

    def _absolute(self, location: str) -> str:
        return location if location.startswith("http") else self.base_url + location

    async def upload_blob(self, digest: str, size: int, chunks: Callable[[], AsyncIterator[bytes]]
                          ) -> None:
        """POST to start an upload, then one streaming PUT with the digest."""
        resp = await self.request("POST", "/blobs/uploads/", allow=(202,))
        location = resp.headers.get("Location")
        resp.release()
        if not location:
            raise RegistryError("registry gave no upload location")
        url = self._absolute(location)
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        resp = await self.request("PUT", url, data=chunks(),
                                  headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(size)})
        resp.release()


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    data = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK):
        data += chunk
        if len(data) > limit:
            raise RegistryError(f"response larger than {limit} bytes")
    return bytes(data)


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await _read_limited(resp, 64 * 1024)
        body = json.loads(raw)
        errors = body.get("errors") or []
        return "; ".join(f"{e.get('code', '').lower().replace('_', ' ')}: {e.get('message', '')}"
                         for e in errors if isinstance(e, dict))
    except (ValueError, RegistryError, aiohttp.ClientError, AttributeError):
        return ""


class RegistryClient:
    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self._http: aiohttp.ClientSession | None = None
        self._insecure_tls = ssl.create_default_context()
        self._insecure_tls.check_hostname = False
        self._insecure_tls.verify_mode = ssl.CERT_NONE
        self._schemes: dict[str, str] = {}

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            # No cookie jar (as Go's http.Client in dockerd): a registry's
            # cookie for one tenant's pull must not go with another's request.
            self._http = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, connect=15, sock_read=120),
                headers={"User-Agent": "hbd (docker-compatible)"})
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def ssl_for(self, url: str) -> ssl.SSLContext | bool:
        host = url.split("//", 1)[-1].split("/", 1)[0]
        return self._insecure_tls if self.settings.is_insecure(host) else True

    async def _base_url(self, host: str) -> str:
        """https, or plain http for an insecure registry that does not speak TLS."""
        if host in self._schemes:
            return self._schemes[host]
        if not self.settings.is_insecure(host):
            self._schemes[host] = f"https://{host}"
            return self._schemes[host]
        for scheme in ("https", "http"):
            try:
                async with self.http.get(f"{scheme}://{host}/v2/", ssl=self._insecure_tls
                                         if scheme == "https" else False,
                                         timeout=aiohttp.ClientTimeout(total=10)):
                    self._schemes[host] = f"{scheme}://{host}"
                    return self._schemes[host]
            except (aiohttp.ClientError, TimeoutError, ssl.SSLError):
                continue
        raise RegistryError(f"cannot reach registry {host}")

    async def sessions(self, ref: Reference, credentials: Credentials, actions: str
                       ) -> list[Session]:
        """Endpoints to try in order: mirrors first for Docker Hub names."""
        hosts = []
        if ref.domain == DEFAULT_DOMAIN:
            hosts = [m.split("//", 1)[-1].rstrip("/") for m in self.settings.mirrors]
            hosts.append(DOCKER_HUB_REGISTRY)
        else:
            hosts = [ref.domain]
        out = []
        for host in hosts:
            try:
                out.append(Session(self, await self._base_url(host), ref.path, credentials,
                                   actions))
            except RegistryError as e:
                log.warning("registry %s: %s", host, e)
        if not out:
            raise RegistryError(f"cannot reach any registry for {ref.domain}")
        return out

    async def login(self, server: str, credentials: Credentials) -> None:
        """Check credentials against a registry's /v2/ endpoint (POST /auth)."""
        host = server.split("//", 1)[-1].rstrip("/").split("/", 1)[0] or DOCKER_HUB_REGISTRY
        if host in ("index.docker.io", "docker.io"):
            host = DOCKER_HUB_REGISTRY
        session = Session(self, await self._base_url(host), "", credentials, "pull")
        resp = await session.request("GET", f"{session.base_url}/v2/", allow=(401,))
        status = resp.status
        resp.release()
        if status == 401:
            raise Unauthorized("login attempt failed: unauthorized: incorrect username or "
                               "password")

