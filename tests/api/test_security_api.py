"""Security fields through the real API and services (fake guest driver):
dockerd's checks, statuses and inspect shapes, and what CREATE and START
ask of the guest."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import docker
import pytest

from tests.api.conftest import ApiDaemon
from tests.api.test_hostconfig_api import create, guest_of, post_create


@pytest.fixture
def raw(api_daemon: ApiDaemon) -> Iterator[docker.APIClient]:
    c = docker.APIClient(base_url=api_daemon.host, version="1.47")
    yield c
    for container in c.containers(all=True, filters={"label": "hbd.test=hostconfig"}):
        c.remove_container(container["Id"], force=True, v=True)
    c.close()


@pytest.mark.parametrize(("host_config", "status", "message"), [
    ({"CapAdd": ["FOO"]}, 400, 'invalid CapAdd: unknown capability: "CAP_FOO"'),
    ({"CapDrop": ["net_bogus"]}, 400, 'invalid CapDrop: unknown capability: "CAP_NET_BOGUS"'),
    ({"SecurityOpt": ["foo"]}, 500, 'invalid --security-opt 1: "foo"'),
    ({"SecurityOpt": ["foo=1"]}, 500, 'invalid --security-opt 2: "foo=1"'),
])
def test_create_refuses_as_dockerd(raw: docker.APIClient, host_config: dict[str, object],
                                   status: int, message: str) -> None:
    r = post_create(raw, host_config)
    assert (r.status_code, r.json()["message"]) == (status, message)


def test_inspect_shows_the_fields_as_dockerd(raw: docker.APIClient) -> None:
    cid = create(raw, {"CapAdd": ["net_admin", "ALL"], "CapDrop": ["chown"],
                       "SecurityOpt": ["no-new-privileges:true", "seccomp=unconfined"],
                       "Privileged": True})
    hc = raw.inspect_container(cid)["HostConfig"]
    assert (hc["CapAdd"], hc["CapDrop"], hc["Privileged"]) == (["net_admin", "ALL"], ["chown"],
                                                               True)
    assert hc["SecurityOpt"] == ["no-new-privileges:true", "seccomp=unconfined",
                                 "label=disable"]
    assert (hc["MaskedPaths"], hc["ReadonlyPaths"]) == (None, None)
    plain = raw.inspect_container(create(raw, {}))["HostConfig"]
    assert (plain["CapAdd"], plain["CapDrop"], plain["SecurityOpt"]) == (None, None, None)
    assert "/proc/keys" in plain["MaskedPaths"]


def test_the_guest_is_asked_for_dockerds_settings(api_daemon: ApiDaemon,
                                                  raw: docker.APIClient) -> None:
    cid = create(raw, {"CapDrop": ["ALL"], "CapAdd": ["CHOWN"],
                       "SecurityOpt": ["no-new-privileges"], "MaskedPaths": ["/proc/x"],
                       "ReadonlyPaths": []})
    raw.start(cid)
    guest = guest_of(api_daemon, cid)
    setup = next(iter(guest.containers.values()))
    payload = setup.payload()
    assert payload["capabilities"]["bounding"] == [0]
    assert payload["no_new_privileges"] is True
    assert base64.b64decode(payload["seccomp"]) == setup.security.seccomp != b""
    assert (payload["masked_paths"], payload["readonly_paths"]) == (["/proc/x"], [])
    exec_id = raw.exec_create(cid, ["true"], privileged=True)["Id"]
    raw.exec_start(exec_id)
    assert guest.started[-1].privileged is True


def test_a_bad_profile_fails_the_start_as_dockerd(raw: docker.APIClient) -> None:
    cid = create(raw, {"SecurityOpt": ["seccomp={bad"]})
    with pytest.raises(docker.errors.APIError) as e:
        raw.start(cid)
    assert e.value.status_code == 500
    assert "Decoding seccomp profile failed: " in str(e.value.explanation)
    assert raw.inspect_container(cid)["State"]["Status"] == "created"

