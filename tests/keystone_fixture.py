"""A real Keystone for tests: Debian's keystone on an sqlite database in a
temporary directory, served by keystone-wsgi-public on 127.0.0.1, with two
tenant projects, a member user in each, a reader in the first, and hbd's
service user."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Keystone runs under Debian's python3, whatever python3 is first on PATH.
DEBIAN_PYTHON = "/usr/bin/python3"
ADMIN_PASSWORD = "admin-secret"
PASSWORD = "tenant-secret"


def keystone_installed() -> bool:
    return Path("/usr/bin/keystone-wsgi-public").exists()


@dataclass
class Keystone:
    url: str
    admin_token: str = ""
    ids: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             token: str = "", subject: str = "") -> tuple[int, dict[str, Any], str]:
        headers = {"Content-Type": "application/json"}
        if token or self.admin_token:
            headers["X-Auth-Token"] = token or self.admin_token
        if subject:
            headers["X-Subject-Token"] = subject
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else {}, \
                    r.headers.get("X-Subject-Token", "")
        except urllib.error.HTTPError as e:
            return e.code, {}, ""
        except OSError:  # not listening (yet, or any more)
            return 0, {}, ""

    def token(self, user: str, project: str, password: str = PASSWORD) -> str:
        status, _, token = self.call("POST", "/v3/auth/tokens", {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }}, token="-")
        assert status == 201, f"token for {user}@{project}: {status}"
        return token

    def revoke(self, token: str) -> None:
        status, _, _ = self.call("DELETE", "/v3/auth/tokens", subject=token)
        assert status == 204

    def _create(self, kind: str, body: dict[str, Any]) -> str:
        status, reply, _ = self.call("POST", f"/v3/{kind}s", {kind: body})
        assert status == 201, f"create {kind} {body}: {status}"
        return str(reply[kind]["id"])

    def _role_id(self, name: str) -> str:
        _, reply, _ = self.call("GET", f"/v3/roles?name={name}")
        roles = reply.get("roles") or []
        return str(roles[0]["id"]) if roles else self._create("role", {"name": name})

    def populate(self) -> None:
        self.admin_token = self.token("admin", "admin", ADMIN_PASSWORD)
        for project in ("tenant-a", "tenant-b", "service"):
            self.ids[project] = self._create("project", {"name": project,
                                                         "domain_id": "default"})
        for user, project, role in (("alice", "tenant-a", "member"),
                                    ("bob", "tenant-b", "member"),
                                    ("rita", "tenant-a", "reader"),
                                    ("hbd", "service", "service")):
            uid = self._create("user", {"name": user, "domain_id": "default",
                                        "password": PASSWORD})
            self.ids[user] = uid
            status, _, _ = self.call(
                "PUT", f"/v3/projects/{self.ids[project]}/users/{uid}/roles/"
                       f"{self._role_id(role)}")
            assert status == 204


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _configure(base: Path, port: int) -> Path:
    conf = base / "keystone.conf"
    conf.write_text(f"""[DEFAULT]
log_file = {base}/keystone.log
[database]
connection = sqlite:///{base}/keystone.db
[fernet_tokens]
key_repository = {base}/fernet-keys
[credential]
key_repository = {base}/credential-keys
[token]
expiration = 3600
""")
    manage = ["keystone-manage", "--config-file", str(conf)]
    owner = ["--keystone-user", "root", "--keystone-group", "root"]
    for step in (["db_sync"], ["fernet_setup", *owner], ["credential_setup", *owner],
                 ["bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
                  "--bootstrap-public-url", f"http://127.0.0.1:{port}/v3",
                  "--bootstrap-region-id", "RegionOne"]):
        subprocess.run([*manage, *step], check=True, capture_output=True, timeout=300)
    # One writer (the single-threaded server) and readers: WAL keeps sqlite's
    # "database is locked" away.
    with contextlib.closing(sqlite3.connect(base / "keystone.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
    return conf


@contextlib.contextmanager
def keystone_server() -> Iterator[Keystone]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hbd-keystone-") as tmp:
        base = Path(tmp)
        conf = _configure(base, port)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OS_KEYSTONE_CONFIG_FILES": str(conf)}
        with open(base / "server.log", "wb") as log:
            process = subprocess.Popen(
                [DEBIAN_PYTHON, "/usr/bin/keystone-wsgi-public", "--host", "127.0.0.1",
                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        keystone = Keystone(f"http://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 60
            while keystone.call("GET", "/v3", token="-")[0] != 200:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("keystone did not start:\n"
                                       + (base / "server.log").read_text()[-3000:])
                time.sleep(0.2)
            keystone.populate()
            yield keystone
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()
