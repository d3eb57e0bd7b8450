"""An hbd daemon in a background thread with the fake sandbox driver.

The real API, services and state machine; container processes run on the
host instead of in guests, so these tests need no VM and take milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from aiohttp import web

from hbd.api import server
from hbd.api.auth import TENANCY, Tenancy
from hbd.config import Config
from hbd.daemon import Daemon
from hbd.drivers import hostmount
from hbd.drivers.fake import FakeGuestDriver
from hbd.errors import Unauthorized
from hbd.services.container.sandboxes import SHARE_SPACE_DIR
from hbd.services.identity.validator import Identity, TokenValidator
from hbd.services.network.service import instance_tag, remove_host_state
from tests.daemon_fixture import BUSYBOX_TAR, DOCKER_CLI


@dataclass
class ApiDaemon:
    socket: Path
    daemon: Daemon
    loop: asyncio.AbstractEventLoop
    # A tenant listener (serve_api_daemon's `tenants`): tokens to identities.
    tenant_socket: Path | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, input: bytes | None = None,
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([DOCKER_CLI, *args], input=input, capture_output=True,
                                env={**os.environ, "DOCKER_HOST": self.host}, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {result.stderr.decode()}")
        return result

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@pytest.fixture(scope="session")
def api_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    with serve_api_daemon(tmp_path_factory.mktemp("hbd-api")) as api:
        yield api


class StaticTokens:
    """A token source for tests: a fixed token -> identity table (the real
    Keystone is tests/keystone_fixture.py's)."""

    def __init__(self, identities: dict[str, Identity]) -> None:
        self.identities = identities

    async def validate(self, token: str) -> Identity:
        if token not in self.identities:
            raise Unauthorized("invalid, expired or revoked token")
        return self.identities[token]


@contextlib.contextmanager
def serve_api_daemon(base: Path, tenants: dict[str, Identity] | None = None,
                     config: Config | None = None, clones: bool = False) -> Iterator[ApiDaemon]:
    """A daemon of its own (for tests that change what every other test sees);
    with `tenants` (token -> identity), a tenant listener beside the operator's;
    `clones`: guests that may be clones are, as with templates (no shared fs)."""
    exec_root = Path(f"/run/hbd-api-{secrets.token_hex(4)}")
    config = config or Config()
    config.daemon.data_root = str(base / "data")
    config.daemon.exec_root = str(exec_root)
    socket = exec_root / "hbd.sock"
    tenant_socket = exec_root / "tenant.sock" if tenants is not None else None
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    holder: dict[str, Daemon] = {}
    errors: list[BaseException] = []

    async def serve() -> None:
        daemon = Daemon(config, guest_driver=FakeGuestDriver(clones=clones))
        await daemon.start()
        holder["daemon"] = daemon
        app = server.build(daemon)
        if tenant_socket is not None:
            app[TENANCY] = Tenancy(TokenValidator(StaticTokens(tenants or {})),
                                   {str(tenant_socket)})
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        exec_root.mkdir(parents=True, exist_ok=True)
        await web.UnixSite(runner, str(socket)).start()
        if tenant_socket is not None:
            await web.UnixSite(runner, str(tenant_socket)).start()
        ready.set()
        await stop.wait()
        await daemon.stop()
        await runner.cleanup()

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as e:  # surface start-up failures to the test
            errors.append(e)
            ready.set()

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    ready.wait(60)
    if errors:
        raise errors[0]
    api = ApiDaemon(socket, holder["daemon"], loop, tenant_socket)
    if BUSYBOX_TAR.exists():
        api.docker("load", "-q", "-i", str(BUSYBOX_TAR))
    yield api
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    asyncio.run(remove_host_state(instance_tag(Path(config.daemon.data_root))))
    # A daemon that stops with guests running keeps its share space.
    hostmount.end_space(exec_root / SHARE_SPACE_DIR)
    shutil.rmtree(exec_root, ignore_errors=True)


@pytest.fixture
def client(api_daemon: ApiDaemon) -> Iterator[docker.DockerClient]:
    c = docker.DockerClient(base_url=api_daemon.host, version="1.47")
    yield c
    c.close()


@pytest.fixture
def raw(api_daemon: ApiDaemon) -> Iterator[docker.APIClient]:
    """The low-level client; the containers and networks a test made go after it."""
    c = docker.APIClient(base_url=api_daemon.host, version="1.47")
    yield c
    for container in c.containers(all=True):
        c.remove_container(container["Id"], force=True)
    for n in c.networks():
        if n["Name"] not in ("bridge", "host", "none"):
            c.remove_network(n["Id"])
    c.close()
