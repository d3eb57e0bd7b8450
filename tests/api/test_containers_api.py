"""Container endpoints through the real API and services (fake sandbox driver)."""

from __future__ import annotations

import json
import threading
import time

import docker
import pytest
import requests

from tests.api.conftest import ApiDaemon
from tests.conformance import validate_definition, validate_response


@pytest.fixture
def raw(api_daemon: ApiDaemon) -> docker.APIClient:
    c = docker.APIClient(base_url=api_daemon.host, version="1.47")
    yield c
    c.close()


def test_ping_headers(raw: docker.APIClient) -> None:
    r = raw._get(raw.base_url + "/_ping")
    assert r.status_code == 200 and r.text == "OK"
    assert r.headers["Api-Version"] == "1.47"
    assert r.headers["Ostype"] == "linux"
    assert r.headers["Docker-Experimental"] == "false"
    assert r.headers["Builder-Version"] == "1"
    head = raw._result(raw.head(raw.base_url + "/_ping"))
    assert head == ""


def test_version_and_info_follow_the_spec(raw: docker.APIClient) -> None:
    version = raw.version()
    validate_definition(version, "SystemVersion")
    assert version["ApiVersion"] == "1.47" and version["MinAPIVersion"] == "1.24"
    info = raw.info()
    validate_definition(info, "SystemInfo")
    # kubelet and cri-dockerd refuse a runtime whose cgroup driver is "none".
    assert info["CgroupDriver"] == "cgroupfs" and info["CgroupVersion"] == "2"
    # With and without the version prefix.
    assert raw._result(raw._get(raw.base_url + "/info"), json=True)["ID"] == info["ID"]


def test_api_version_bounds(raw: docker.APIClient) -> None:
    too_new = raw._get(raw.base_url.replace("/v1.47", "") + "/v1.99/version")
    assert too_new.status_code == 400
    assert "too new" in too_new.json()["message"]
    too_old = raw._get(raw.base_url + "/v1.12/version")
    assert too_old.status_code == 400


def test_unknown_route_is_dockers_404(raw: docker.APIClient) -> None:
    r = raw._get(raw.base_url + "/no/such/route")
    assert r.status_code == 404 and r.json() == {"message": "page not found"}


def test_bad_json_is_400(raw: docker.APIClient) -> None:
    r = raw._post(raw._url("/containers/create"), data="{bad",
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "message" in r.json()


def test_unknown_image_is_404_with_dockers_text(raw: docker.APIClient) -> None:
    r = raw._post_json(raw._url("/containers/create"), data={"Image": "nope"})
    assert r.status_code == 404
    assert r.json() == {"message": "No such image: nope:latest"}


def test_create_inspect_follows_the_spec(client: docker.DockerClient,
                                         raw: docker.APIClient) -> None:
    c = client.containers.create("busybox", ["echo", "x"], name="spec-shape",
                                 environment={"A": "1"}, labels={"l": "v"},
                                 working_dir="/tmp", user="nobody")
    try:
        data = raw.inspect_container(c.id)
        validate_response(data, "/containers/{id}/json", "get")
        assert data["Name"] == "/spec-shape"
        assert data["Path"] == "echo" and data["Args"] == ["x"]
        assert data["State"]["Status"] == "created"
        assert data["Config"]["Env"][0] == "A=1"
        assert data["Config"]["Labels"] == {"l": "v"}
        assert data["Config"]["WorkingDir"] == "/tmp"
        assert data["Config"]["User"] == "nobody"
        assert data["Config"]["Hostname"] == c.id[:12]
        assert data["HostConfig"]["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
        assert "bridge" in data["NetworkSettings"]["Networks"]
        summary = raw.containers(all=True, filters={"name": "spec-shape"})
        assert len(summary) == 1
        validate_definition(summary[0], "ContainerSummary")
        assert summary[0]["Status"] == "Created"
    finally:
        c.remove()


def test_name_conflict_is_409(client: docker.DockerClient) -> None:
    c = client.containers.create("busybox", "true", name="taken")
    try:
        with pytest.raises(docker.errors.APIError) as e:
            client.containers.create("busybox", "true", name="taken")
        assert e.value.status_code == 409
        assert 'The container name "/taken" is already in use' in str(e.value)
    finally:
        c.remove()


def test_start_wait_logs_streams_apart(client: docker.DockerClient) -> None:
    c = client.containers.create("busybox", ["sh", "-c", "echo out; echo err >&2; exit 7"])
    try:
        c.start()
        assert c.wait(timeout=30) == {"Error": None, "StatusCode": 7}
        assert c.logs(stdout=True, stderr=False) == b"out\n"
        assert c.logs(stdout=False, stderr=True) == b"err\n"
        c.reload()
        assert c.status == "exited"
        assert c.attrs["State"]["ExitCode"] == 7
        assert c.attrs["State"]["FinishedAt"] > c.attrs["State"]["StartedAt"]
    finally:
        c.remove()


def test_logs_are_json_file_on_the_host(client: docker.DockerClient,
                                        raw: docker.APIClient) -> None:
    c = client.containers.run("busybox", ["echo", "line"], detach=True)
    try:
        c.wait(timeout=30)
        path = raw.inspect_container(c.id)["LogPath"]
        with open(path) as f:
            record = json.loads(f.readline())
        assert record["log"] == "line\n" and record["stream"] == "stdout"
        assert record["time"].endswith("Z")
        assert c.logs(timestamps=True).split(b" ", 1)[1] == b"line\n"
    finally:
        c.remove()


def test_start_of_running_is_304_and_rm_of_running_is_409(client: docker.DockerClient,
                                                          raw: docker.APIClient) -> None:
    c = client.containers.run("busybox", ["sleep", "30"], detach=True)
    try:
        r = raw._post(raw._url("/containers/{0}/start", c.id))
        assert r.status_code == 304
        with pytest.raises(docker.errors.APIError) as e:
            c.remove()
        assert e.value.status_code == 409
        assert "You cannot remove a running container" in str(e.value)
    finally:
        c.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(c.id)


def test_kill_with_bad_signal_is_400(client: docker.DockerClient) -> None:
    c = client.containers.run("busybox", ["sleep", "30"], detach=True)
    try:
        with pytest.raises(docker.errors.APIError) as e:
            c.kill("SIGNOPE")
        assert e.value.status_code == 400 and "Invalid signal: SIGNOPE" in str(e.value)
        c.kill("SIGKILL")
        assert c.wait(timeout=30)["StatusCode"] == 137
    finally:
        c.remove(force=True)


def test_kill_of_stopped_is_409(client: docker.DockerClient) -> None:
    c = client.containers.create("busybox", "true")
    try:
        with pytest.raises(docker.errors.APIError) as e:
            c.kill()
        assert e.value.status_code == 409 and "is not running" in str(e.value)
    finally:
        c.remove()


def test_attach_stdin_with_eof(api_daemon: ApiDaemon) -> None:
    out = api_daemon.docker("run", "--rm", "-i", "busybox", "cat", input=b"piped\n")
    assert out.stdout == b"piped\n"


def test_wait_conditions(client: docker.DockerClient, raw: docker.APIClient) -> None:
    c = client.containers.create("busybox", ["sh", "-c", "exit 4"], auto_remove=True)
    result: dict = {}

    def waiter() -> None:
        result.update(raw.wait(c.id, condition="removed", timeout=30))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    c.start()
    t.join(30)
    assert result["StatusCode"] == 4
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(c.id)


def test_events_stream_and_filters(client: docker.DockerClient, raw: docker.APIClient) -> None:
    since = time.time()
    c = client.containers.run("busybox", "true", detach=True, name="evented")
    c.wait(timeout=30)
    c.remove()
    events = list(raw.events(since=since, until=time.time() + 0.5, decode=True,
                             filters={"container": "evented"}))
    actions = [e["Action"] for e in events]
    assert actions[:1] == ["create"] and "start" in actions and "die" in actions
    assert actions[-1] == "destroy"
    die = next(e for e in events if e["Action"] == "die")
    assert die["Actor"]["Attributes"]["exitCode"] == "0"
    assert die["Actor"]["Attributes"]["name"] == "evented"
    assert all(e["Type"] == "container" for e in events)


def test_ps_filters(client: docker.DockerClient) -> None:
    a = client.containers.run("busybox", ["sleep", "30"], detach=True, labels={"k": "a"})
    b = client.containers.run("busybox", ["sh", "-c", "exit 2"], detach=True,
                              labels={"k": "b"})
    try:
        b.wait(timeout=30)
        ids = {c.id for c in client.containers.list(filters={"label": "k=a"})}
        assert ids == {a.id}
        ids = {c.id for c in client.containers.list(all=True, filters={"exited": 2})}
        assert ids == {b.id}
        ids = {c.id for c in client.containers.list(all=True,
                                                    filters={"status": "running",
                                                             "label": "k"})}
        assert ids == {a.id}
        with pytest.raises(docker.errors.APIError):
            client.containers.list(filters={"nope": "x"})
    finally:
        a.remove(force=True)
        b.remove(force=True)


def test_exec_create_start_inspect(client: docker.DockerClient, raw: docker.APIClient) -> None:
    c = client.containers.run("busybox", ["sleep", "30"], detach=True)
    try:
        code, out = c.exec_run(["sh", "-c", "echo $FOO; exit 5"], environment={"FOO": "bar"})
        assert (code, out) == (5, b"bar\n")
        code, out = c.exec_run(["no-such-binary"])
        assert code == 127
        assert b"executable file not found" in out
        exec_id = raw.exec_create(c.id, ["true"])["Id"]
        raw.exec_start(exec_id)
        info = raw.exec_inspect(exec_id)
        assert info["ExitCode"] == 0 and info["Running"] is False
        assert info["ContainerID"] == c.id
    finally:
        c.remove(force=True)


def test_exec_in_stopped_container_is_409(client: docker.DockerClient) -> None:
    c = client.containers.create("busybox", "true")
    try:
        with pytest.raises(docker.errors.APIError) as e:
            c.exec_run("true")
        assert e.value.status_code == 409 and "is not running" in str(e.value)
    finally:
        c.remove()


def test_stop_and_restart(client: docker.DockerClient, raw: docker.APIClient) -> None:
    c = client.containers.run("busybox", ["sleep", "30"], detach=True)
    try:
        started = time.monotonic()
        c.stop(timeout=1)
        assert time.monotonic() - started < 15
        c.reload()
        assert c.status == "exited"
        r = raw._post(raw._url("/containers/{0}/stop", c.id))
        assert r.status_code == 304
        c.restart(timeout=1)
        c.reload()
        assert c.status == "running"
    finally:
        c.remove(force=True)


def test_rename(client: docker.DockerClient) -> None:
    c = client.containers.create("busybox", "true", name="before")
    other = client.containers.create("busybox", "true", name="other")
    try:
        c.rename("after")
        assert client.containers.get("after").id == c.id
        with pytest.raises(docker.errors.APIError) as e:
            c.rename("other")
        assert e.value.status_code == 409
    finally:
        c.remove()
        other.remove()


def test_container_prune(client: docker.DockerClient) -> None:
    done = client.containers.run("busybox", "true", detach=True)
    done.wait(timeout=30)
    running = client.containers.run("busybox", ["sleep", "30"], detach=True)
    try:
        result = client.containers.prune()
        assert done.id in result["ContainersDeleted"]
        assert running.id not in (result["ContainersDeleted"] or [])
    finally:
        running.remove(force=True)


def test_restart_policy_on_failure(client: docker.DockerClient) -> None:
    c = client.containers.run("busybox", ["sh", "-c", "exit 1"], detach=True,
                              restart_policy={"Name": "on-failure", "MaximumRetryCount": 2})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            c.reload()
            if c.attrs["RestartCount"] == 2 and c.status == "exited":
                break
            time.sleep(0.1)
        assert c.attrs["RestartCount"] == 2 and c.status == "exited"
    finally:
        c.remove(force=True)


def test_no_traceback_on_garbage(raw: docker.APIClient) -> None:
    for path, body in [("/containers/create", "[]"), ("/containers/create", '{"Cmd": 5}'),
                       ("/containers/create", '{"Image": "busybox", "HostConfig": 3}'),
                       ("/networks/create", "{}"), ("/volumes/create", "[1]")]:
        r = raw._post(raw._url(path), data=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 404), (path, body, r.status_code, r.text)
        assert set(r.json()) == {"message"}
    assert isinstance(requests, object)
