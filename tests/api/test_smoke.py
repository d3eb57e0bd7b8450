"""The docker CLI and SDK against hbd's API with the fake sandbox driver."""

from __future__ import annotations

import docker
import pytest

from tests.api.conftest import ApiDaemon


def test_run_echo_with_the_cli(api_daemon: ApiDaemon) -> None:
    out = api_daemon.docker("run", "--rm", "busybox", "echo", "hello")
    assert out.stdout == b"hello\n"


def test_exit_code_passes_through(api_daemon: ApiDaemon) -> None:
    out = api_daemon.docker("run", "--rm", "busybox", "sh", "-c", "echo err >&2; exit 3",
                            check=False)
    assert out.returncode == 3
    assert out.stderr == b"err\n"


def test_unknown_command_is_127_with_dockerds_message(api_daemon: ApiDaemon) -> None:
    out = api_daemon.docker("run", "--rm", "busybox", "no-such-command", check=False)
    assert out.returncode == 127
    assert b'exec: "no-such-command": executable file not found in $PATH' in out.stderr


def test_sdk_run_returns_output(client: docker.DockerClient) -> None:
    assert client.containers.run("busybox", "echo hi", remove=True) == b"hi\n"


def test_unknown_container_is_404(client: docker.DockerClient) -> None:
    with pytest.raises(docker.errors.NotFound, match="No such container: nope"):
        client.containers.get("nope")
