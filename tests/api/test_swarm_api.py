"""Swarm endpoints answer as a dockerd outside any swarm (texts and statuses
taken from dockerd 20.10 on this machine)."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from hbd.api.swarm import NOT_A_MANAGER
from tests.api.conftest import ApiDaemon


@pytest.fixture
def raw(api_daemon: ApiDaemon) -> Iterator[docker.APIClient]:
    c = docker.APIClient(base_url=api_daemon.host, version="1.47")
    yield c
    c.close()


@pytest.mark.parametrize(("method", "path", "status", "message"), [
    ("GET", "/swarm", 503, NOT_A_MANAGER),
    ("POST", "/swarm/leave", 503, "This node is not part of a swarm"),
    ("POST", "/swarm/init", 400, 'invalid ListenAddr "": invalid empty address'),
    ("POST", "/swarm/update", 400,
     "invalid swarm version '': strconv.ParseUint: parsing \"\": invalid syntax"),
    ("GET", "/swarm/unlockkey", 503, NOT_A_MANAGER),
    ("GET", "/services", 503, NOT_A_MANAGER),
    ("POST", "/services/create", 503, NOT_A_MANAGER),
    ("DELETE", "/services/x", 503, NOT_A_MANAGER),
    ("POST", "/services/x/update", 400,
     "invalid service version '': strconv.ParseUint: parsing \"\": invalid syntax"),
    ("GET", "/services/x/logs", 500, "Bad parameters: you must choose at least one stream"),
    ("GET", "/nodes", 503, NOT_A_MANAGER),
    ("GET", "/nodes/x", 503, NOT_A_MANAGER),
    ("GET", "/tasks", 503, NOT_A_MANAGER),
    ("GET", "/secrets", 503, NOT_A_MANAGER),
    ("POST", "/secrets/x/update", 400, "invalid secret version"),
    ("GET", "/configs/x", 503, NOT_A_MANAGER),
    ("POST", "/configs/x/update", 400, "invalid config version"),
])
def test_swarm_endpoints(raw: docker.APIClient, method: str, path: str, status: int,
                         message: str) -> None:
    response = raw.request(method, raw._url(path), json={})
    assert response.status_code == status
    assert response.json() == {"message": message}


def test_sdk_sees_no_swarm(client: docker.DockerClient) -> None:
    # docker-py's teardown: a forced leave of no swarm is not an error (503).
    assert client.swarm.leave(force=True) is True
    with pytest.raises(docker.errors.APIError) as leave:
        client.swarm.leave()
    assert leave.value.status_code == 503
    assert client.info()["Swarm"]["LocalNodeState"] == "inactive"
