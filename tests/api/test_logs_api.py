"""Log drivers through the real API and services (fake sandbox driver):
what dockerd 20.10 answers, checked against it."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from hbd.services.container.logfile import settle
from tests.api.conftest import ApiDaemon


def create(raw: docker.APIClient, cmd: list[str], log_type: str, **opts: str) -> str:
    host_config = raw.create_host_config(log_config={"Type": log_type, "Config": opts})
    return str(raw.create_container("busybox", cmd, host_config=host_config)["Id"])


def run(raw: docker.APIClient, cmd: list[str], log_type: str = "json-file",
        **opts: str) -> str:
    cid = create(raw, cmd, log_type, **opts)
    raw.start(cid)
    raw.wait(cid, timeout=30)
    return cid


def container_dir(api_daemon: ApiDaemon, cid: str) -> Path:
    c = api_daemon.daemon.containers.get(cid)
    return api_daemon.daemon.containers.store.dir(c)


def lines(count: int, width: int = 40) -> list[str]:
    """A shell command printing `count` numbered lines of `width` characters."""
    return ["sh", "-c", f"i=0; while [ $i -lt {count} ]; do printf '%0{width}d\\n' $i; "
                        "i=$((i+1)); done"]


@pytest.mark.parametrize(("log_type", "message"), [
    ("nope", 'error looking up logging plugin nope: plugin "nope" not found'),
    ("syslog", "hbd does not serve the syslog logging driver: use json-file, local or none"),
])
def test_unserved_drivers_are_refused_at_create(raw: docker.APIClient, log_type: str,
                                                message: str) -> None:
    r = raw._post_json(raw._url("/containers/create"), data={
        "Image": "busybox", "HostConfig": {"LogConfig": {"Type": log_type}}})
    assert r.status_code == 400
    assert r.json() == {"message": message}


def test_unknown_option_is_refused_at_create(raw: docker.APIClient) -> None:
    with pytest.raises(docker.errors.APIError) as e:
        create(raw, ["true"], "json-file", foo="bar")
    assert e.value.status_code == 400
    assert e.value.explanation == "unknown log opt 'foo' for json-file log driver"


def test_bad_option_value_fails_the_start_as_dockerd(raw: docker.APIClient) -> None:
    cid = create(raw, ["true"], "json-file", **{"max-size": "abc"})
    try:
        with pytest.raises(docker.errors.APIError) as e:
            raw.start(cid)
        assert e.value.status_code == 500
        assert e.value.explanation == ("failed to initialize logging driver: "
                                       "invalid size: 'abc'")
        state = raw.inspect_container(cid)["State"]
        assert (state["Status"], state["ExitCode"]) == ("created", 128)
        assert state["Error"] == e.value.explanation
    finally:
        raw.remove_container(cid)


def test_none_keeps_no_log(raw: docker.APIClient, api_daemon: ApiDaemon) -> None:
    cid = run(raw, ["echo", "hi"], "none")
    try:
        r = raw._get(raw._url("/containers/{0}/logs", cid), params={"stdout": 1})
        assert r.status_code == 501
        assert r.json() == {"message": "configured logging driver does not support reading"}
        assert raw.inspect_container(cid)["LogPath"] == ""
        assert list(container_dir(api_daemon, cid).glob("*log*")) == []
        assert raw.attach(cid, stream=False, logs=True) == b""
    finally:
        raw.remove_container(cid)


def test_log_path_is_shown_once_json_file_logs(raw: docker.APIClient) -> None:
    cid = create(raw, ["echo", "hi"], "json-file")
    try:
        assert raw.inspect_container(cid)["LogPath"] == ""
        raw.start(cid)
        raw.wait(cid, timeout=30)
        assert raw.inspect_container(cid)["LogPath"].endswith(f"{cid}-json.log")
    finally:
        raw.remove_container(cid)


def test_json_file_rotates_and_logs_read_across_files(raw: docker.APIClient) -> None:
    # 41-byte lines make records of about 110 bytes: nine stay under 1k (1000
    # bytes), the tenth fills the file and the eleventh starts a new one. dockerd
    # 20.10 made the same three files of ten records each of this.
    cid = run(raw, lines(100), "json-file", **{"max-size": "1k", "max-file": "3"})
    try:
        path = Path(raw.inspect_container(cid)["LogPath"])
        names = sorted(p.name for p in path.parent.glob(f"{cid}-json.log*"))
        assert names == [f"{cid}-json.log", f"{cid}-json.log.1", f"{cid}-json.log.2"]
        assert [json.loads(line)["log"] for line in path.read_text().splitlines()] == \
            [f"{i:040d}\n" for i in range(90, 100)]
        out = raw.logs(cid).decode().splitlines()
        assert out == [f"{i:040d}" for i in range(70, 100)]
        assert raw.logs(cid, tail=12).decode().splitlines() == out[-12:]
    finally:
        raw.remove_container(cid)


def test_compressed_rotation(raw: docker.APIClient) -> None:
    cid = run(raw, lines(100), "json-file", **{"max-size": "1k", "max-file": "3",
                                               "compress": "true"})
    try:
        path = Path(raw.inspect_container(cid)["LogPath"])
        settle(path)  # the last rotated file's compression, in a thread of the daemon
        names = sorted(p.name for p in path.parent.glob(f"{cid}-json.log*"))
        assert names == [f"{cid}-json.log", f"{cid}-json.log.1.gz", f"{cid}-json.log.2.gz"]
        assert raw.logs(cid, tail=3).decode().splitlines() == [f"{i:040d}"
                                                                for i in (97, 98, 99)]
    finally:
        raw.remove_container(cid)


def test_local_driver_is_served(raw: docker.APIClient, api_daemon: ApiDaemon) -> None:
    cid = run(raw, ["sh", "-c", "echo out; echo err >&2"], "local")
    try:
        assert raw.logs(cid, stdout=True, stderr=False) == b"out\n"
        assert raw.logs(cid, stdout=False, stderr=True) == b"err\n"
        assert raw.inspect_container(cid)["LogPath"] == ""
        assert (container_dir(api_daemon, cid) / "local-logs" / "container.log").exists()
        assert "local" in raw.info()["Plugins"]["Log"]
    finally:
        raw.remove_container(cid)


def test_tail_of_a_large_log(raw: docker.APIClient) -> None:
    cid = run(raw, ["seq", "1", "200000"])
    try:
        assert raw.logs(cid, tail=1) == b"200000\n"
        assert raw.logs(cid, tail=2, stdout=False, stderr=True) == b""
    finally:
        raw.remove_container(cid)
