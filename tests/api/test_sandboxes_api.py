"""Containers that share a guest, through the real API and services (fake
guest driver): where each one runs, what inspect shows, dockerd's errors."""

from __future__ import annotations

import docker
import pytest

from hbd.drivers.fake import FakeGuest, FakeGuestDriver
from tests.api.conftest import ApiDaemon


def driver(api_daemon: ApiDaemon) -> FakeGuestDriver:
    guests = api_daemon.daemon.containers.sandboxes.driver
    assert isinstance(guests, FakeGuestDriver)
    return guests


def create(raw: docker.APIClient, name: str, **host_config: object) -> str:
    body = {"Image": "busybox", "Cmd": ["sleep", "600"], "HostConfig": host_config}
    r = raw._post_json(raw._url("/containers/create"), data=body, params={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["Id"])


def test_network_container_mode_joins_the_guest(api_daemon: ApiDaemon,
                                                raw: docker.APIClient) -> None:
    owner = create(raw, "owner")
    raw.start(owner)
    before = len(driver(api_daemon).booted)
    side = create(raw, "side", NetworkMode="container:owner")
    raw.start(side)
    assert len(driver(api_daemon).booted) == before  # no guest of its own
    guest: FakeGuest = driver(api_daemon).booted[-1]
    assert len(guest.containers) == 2
    info = raw.inspect_container(side)
    assert info["HostConfig"]["NetworkMode"] == f"container:{owner}"
    assert info["NetworkSettings"]["Networks"] == {}
    assert info["Config"]["Hostname"] == raw.inspect_container(owner)["Config"]["Hostname"]
    # Both name one network namespace in the guest.
    namespaces = {setup.netns for setup in guest.containers.values()}
    assert len(namespaces) == 1
    raw.stop(side, timeout=1)
    assert len(guest.containers) == 1


def test_pid_mode_joins_with_a_network_namespace_of_its_own(api_daemon: ApiDaemon,
                                                            raw: docker.APIClient) -> None:
    owner = create(raw, "pidowner")
    raw.start(owner)
    peer = create(raw, "pidpeer", PidMode="container:pidowner")
    assert raw.inspect_container(peer)["HostConfig"]["PidMode"] == f"container:{owner}"
    raw.start(peer)
    guest = driver(api_daemon).booted[-1]
    owner_setup, peer_setup = guest.containers.values()
    assert peer_setup.pidns == owner_setup.container
    assert peer_setup.netns != owner_setup.netns
    assert raw.inspect_container(peer)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]


@pytest.mark.parametrize(("host_config", "request_config", "message"), [
    ({"NetworkMode": "container:x", "PortBindings": {"80/tcp": [{}]}}, {},
     "conflicting options: port publishing and the container type network mode"),
    ({"NetworkMode": "container:x"}, {"Hostname": "h"},
     "conflicting options: hostname and the network mode"),
    ({"NetworkMode": "container:x", "Dns": ["1.1.1.1"]}, {},
     "conflicting options: dns and the network mode"),
    ({"NetworkMode": "container:"}, {},
     "Invalid network mode: invalid container format container:<name|id>"),
    ({"PidMode": "container:nosuchthing"}, {}, "No such container: nosuchthing"),
    ({"IpcMode": "container:nosuchthing"}, {}, "No such container: nosuchthing"),
    ({"PidMode": "host"}, {}, "--pid host"),
    ({"IpcMode": "bogus"}, {}, "invalid IPC mode: bogus"),
])
def test_create_refuses_as_dockerd_does(raw: docker.APIClient, host_config: dict[str, object],
                                        request_config: dict[str, object],
                                        message: str) -> None:
    body = {"Image": "busybox", **request_config, "HostConfig": host_config}
    r = raw._post_json(raw._url("/containers/create"), data=body)
    assert r.status_code == 400
    assert message in r.json()["message"]


def test_start_refuses_as_dockerd_does(raw: docker.APIClient) -> None:
    missing = create(raw, "lonely", NetworkMode="container:nosuchthing")
    r = raw._post(raw._url(f"/containers/{missing}/start"))
    assert r.status_code == 404 and r.json() == {"message": "No such container: nosuchthing"}
    stopped = create(raw, "stopped")
    waiting = create(raw, "waiting", NetworkMode="container:stopped")
    r = raw._post(raw._url(f"/containers/{waiting}/start"))
    assert r.status_code == 409
    assert r.json() == {"message": f"cannot join network of a non running container: "
                                   f"{stopped}"}
    donor = create(raw, "donor")
    raw.start(donor)
    guest = create(raw, "guest", IpcMode="container:donor")
    r = raw._post(raw._url(f"/containers/{guest}/start"))
    assert r.status_code == 500
    assert r.json() == {"message": f"can't join IPC of container {donor}: non-shareable IPC "
                                   "(hint: use IpcMode:shareable for the donor container)"}


def test_connect_while_running_reaches_the_guest(api_daemon: ApiDaemon,
                                                 raw: docker.APIClient) -> None:
    net = raw.create_network("hotnet")["Id"]
    try:
        c = create(raw, "hot")
        raw.start(c)
        guest = driver(api_daemon).booted[-1]
        raw.connect_container_to_network(c, "hotnet", aliases=["al"])
        update = guest.networks[-1]
        assert [i.name for i in update.attach] == ["eth1"]
        endpoint = raw.inspect_container(c)["NetworkSettings"]["Networks"]["hotnet"]
        assert update.attach[0].addresses == \
            [f"{endpoint['IPAddress']}/{endpoint['IPPrefixLen']}"]
        hosts = next(f for f in guest.files[next(iter(guest.containers))]
                     if f.path == "/etc/hosts")
        assert endpoint["IPAddress"].encode() in hosts.data
        twice = raw._post_json(raw._url("/networks/hotnet/connect"), data={"Container": c})
        assert twice.status_code == 403
        raw.disconnect_container_from_network(c, "hotnet")
        assert [d.name for d in guest.networks[-1].detach] == ["eth1"]
        again = raw._post_json(raw._url("/networks/hotnet/disconnect"), data={"Container": c})
        assert again.status_code == 500
        assert "is not connected to network hotnet" in again.json()["message"]
    finally:
        for container in raw.containers(all=True):
            raw.remove_container(container["Id"], force=True)
        raw.remove_network(net)


def test_clones_are_for_containers_without_shared_mounts(api_daemon: ApiDaemon,
                                                         raw: docker.APIClient,
                                                         tmp_path: object) -> None:
    guests = driver(api_daemon)
    # At start, hbd had the template of the usual guest built.
    assert [(v.memory_mib, len(v.nics)) for v in guests.prepared] == [(256, 4)]
    guests.clones = True
    try:
        owner = create(raw, "cloneowner")
        raw.start(owner)
        clone = guests.booted[-1]
        assert clone.spec.may_clone and clone.cloned
        sandbox = api_daemon.daemon.containers.sandboxes.holding(owner)
        assert sandbox is not None
        assert sandbox.record.template == "fake-template" and not sandbox.record.shared_fs
        # Joining without shared mounts is fine; with a bind mount, refused.
        side = create(raw, "cloneside", NetworkMode="container:cloneowner")
        raw.start(side)
        bound = create(raw, "clonebind", NetworkMode="container:cloneowner",
                       Binds=[f"{tmp_path}:/src"])
        with pytest.raises(docker.errors.APIError) as refused:
            raw.start(bound)
        assert refused.value.status_code == 409
        assert "started without a shared filesystem" in str(refused.value.explanation)
        # A container with a bind mount of its own is not cloned.
        shared = create(raw, "cloneshared", Binds=[f"{tmp_path}:/src"])
        raw.start(shared)
        assert not guests.booted[-1].spec.may_clone and not guests.booted[-1].cloned
        for c in (bound, side, owner, shared):
            raw.remove_container(c, force=True)
    finally:
        guests.clones = False
