"""Tenant listeners authenticated by a real Keystone (Debian's keystone on
sqlite, started here), on a real hbd: no token, a bad token and a revoked
one get 401; a reader may only read; the docker CLI's HttpHeaders work; the
operator's socket needs no token; Keystone down means 503 once the cache's
lifetime has passed. No guest is booted."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon_fixture import DOCKER_CLI, RunningDaemon, hbd_daemon
from tests.keystone_fixture import PASSWORD, Keystone, keystone_installed, keystone_server

pytestmark = pytest.mark.skipif(not keystone_installed(),
                                reason="Debian's keystone is not installed (./install.sh)")

CACHE_SECONDS = 2.0


class Relay:
    """A TCP relay in front of Keystone that the test can cut (Keystone "down")."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False


@dataclass
class Setup:
    keystone: Keystone
    daemon: RunningDaemon
    tenant_socket: Path
    relay: Relay

    def get(self, path: str, token: str | None = None, method: str = "GET"
            ) -> tuple[int, dict[str, object] | list[object]]:
        headers = {"X-Auth-Token": token} if token is not None else {}
        conn = http.client.HTTPConnection("hbd", timeout=60)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(str(self.tenant_socket))
        try:
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        return r.status, json.loads(raw) if raw.strip() and raw[:1] in b"[{" else {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("hbd-keystone")
    with keystone_server() as keystone:
        relay = Relay(int(keystone.url.rsplit(":", 1)[1]))
        tenant_socket = base / "tenant.sock"
        config = base / "hbd.toml"
        config.write_text(f"""[vm]
templates = false
[keystone]
url = "http://127.0.0.1:{relay.port}"
service_user = "hbd"
service_password = "{PASSWORD}"
service_project = "service"
tenant_hosts = ["unix://{tenant_socket}"]
cache_seconds = {CACHE_SECONDS}
""")
        with hbd_daemon(("-H", f"unix://{tenant_socket}", "--config", str(config)),
                        load_busybox=False) as daemon:
            yield Setup(keystone, daemon, tenant_socket, relay)


def test_operator_socket_needs_no_token(setup: Setup) -> None:
    assert setup.daemon.docker("ps", "-q").returncode == 0


def test_tenant_listener_refuses_missing_and_bad_tokens(setup: Setup) -> None:
    status, body = setup.get("/containers/json")
    assert status == 401 and "X-Auth-Token" in str(body)
    status, body = setup.get("/containers/json", "not-a-token")
    assert status == 401 and "invalid, expired or revoked" in str(body)
    # The API version probe is open: it says nothing of anyone.
    assert setup.get("/_ping")[0] == 200


def test_member_and_reader_roles(setup: Setup) -> None:
    alice = setup.keystone.token("alice", "tenant-a")
    assert setup.get("/containers/json", alice) == (200, [])
    rita = setup.keystone.token("rita", "tenant-a")
    assert setup.get("/containers/json", rita)[0] == 200
    status, body = setup.get("/containers/prune", rita, method="POST")
    assert status == 403 and "rita" in str(body) and "reader" in str(body)
    assert setup.get("/containers/prune", alice, method="POST")[0] == 200


def test_docker_cli_sends_its_config_headers(setup: Setup, tmp_path: Path) -> None:
    token = setup.keystone.token("bob", "tenant-b")
    (tmp_path / "config.json").write_text(json.dumps({"HttpHeaders": {"X-Auth-Token": token}}))
    env = {**os.environ, "DOCKER_HOST": f"unix://{setup.tenant_socket}",
           "DOCKER_CONFIG": str(tmp_path)}
    ok = subprocess.run([DOCKER_CLI, "ps"], env=env, capture_output=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "config.json").write_text("{}")
    refused = subprocess.run([DOCKER_CLI, "ps"], env=env, capture_output=True, timeout=60)
    assert refused.returncode != 0 and b"X-Auth-Token" in refused.stderr


def test_revocation_is_honoured_within_the_cache_lifetime(setup: Setup) -> None:
    token = setup.keystone.token("alice", "tenant-a")
    assert setup.get("/containers/json", token)[0] == 200
    setup.keystone.revoke(token)
    time.sleep(CACHE_SECONDS + 0.5)
    assert setup.get("/containers/json", token)[0] == 401


def test_keystone_down_is_503_after_the_cache_lifetime(setup: Setup) -> None:
    # Last in this module: it cuts Keystone off for good.
    cached = setup.keystone.token("alice", "tenant-a")
    fresh = setup.keystone.token("bob", "tenant-b")
    assert setup.get("/containers/json", cached)[0] == 200
    setup.relay.cut()
    assert setup.get("/containers/json", cached)[0] == 200  # still within its lifetime
    status, body = setup.get("/containers/json", fresh)
    assert status == 503 and "identity service" in str(body)
    time.sleep(CACHE_SECONDS + 0.5)
    assert setup.get("/containers/json", cached)[0] == 503
