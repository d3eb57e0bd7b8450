"""Issue 2's walking skeleton: the docker CLI and SDK against hbd with real guests."""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

import docker
import pytest

from tests.daemon_fixture import RunningDaemon


def test_run_echo_hello(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "--rm", "busybox", "echo", "hello")
    assert out.stdout == b"hello\n"


def test_container_has_its_own_kernel(hbd: RunningDaemon) -> None:
    release = hbd.docker("run", "--rm", "busybox", "uname", "-r").stdout.decode().strip()
    assert release.endswith("-hbd")
    assert release != platform.release()


def test_exit_codes_pass_through(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "--rm", "busybox", "sh", "-c", "exit 3", check=False)
    assert out.returncode == 3


def test_unknown_command_is_127_with_dockerds_message(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "--rm", "busybox", "no-such-command", check=False)
    assert out.returncode == 127
    assert b'exec: "no-such-command": executable file not found in $PATH' in out.stderr


def test_sdk_run_returns_output(sdk: docker.DockerClient) -> None:
    assert sdk.containers.run("busybox", "echo hi", remove=True) == b"hi\n"


def test_config_reaches_the_process(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "--rm", "-e", "GREETING=hej", "-w", "/srv/app", "-u", "nobody",
                     "--entrypoint", "sh", "busybox", "-c",
                     'echo "$GREETING $(pwd) $(id -un) $HOME $HOSTNAME"')
    greeting, cwd, user, home, hostname = out.stdout.decode().split()
    assert (greeting, cwd, user, home) == ("hej", "/srv/app", "nobody", "/home")
    assert len(hostname) == 12


def test_streams_stay_apart_live_and_in_logs(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "busybox", "sh", "-c",
                     "echo out; echo err >&2; exit 5").stdout.decode().strip()
    try:
        assert hbd.docker("wait", cid).stdout == b"5\n"
        logs = hbd.docker("logs", cid)
        assert (logs.stdout, logs.stderr) == (b"out\n", b"err\n")
        state = json.loads(hbd.docker("inspect", cid).stdout)[0]["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 5)
        log_path = json.loads(hbd.docker("inspect", cid).stdout)[0]["LogPath"]
        with open(log_path) as f:
            lines = [json.loads(line) for line in f]
        assert [(x["stream"], x["log"]) for x in lines] == [("stdout", "out\n"),
                                                            ("stderr", "err\n")]
    finally:
        hbd.docker("rm", cid)


def test_attached_run_streams_output_live(hbd: RunningDaemon) -> None:
    proc = subprocess.Popen(["docker", "run", "--rm", "busybox", "sh", "-c",
                             "echo first; sleep 3; echo second"],
                            stdout=subprocess.PIPE, env=hbd.env())
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first == b"first\n"
    assert proc.poll() is None  # still running: output arrived before the exit
    assert proc.stdout.readline() == b"second\n"
    assert proc.wait(60) == 0


def test_ps_inspect_rm(hbd: RunningDaemon) -> None:
    hbd.docker("create", "--name", "skeleton-ps", "--label", "k=v", "busybox", "true")
    try:
        listing = hbd.docker("ps", "-a", "--filter", "name=skeleton-ps",
                             "--format", "{{.Names}} {{.Status}} {{.Labels}}").stdout
        assert listing == b"skeleton-ps Created k=v\n"
        hbd.docker("start", "skeleton-ps")
        hbd.docker("wait", "skeleton-ps")
        status = hbd.docker("ps", "-a", "--filter", "name=skeleton-ps",
                            "--format", "{{.Status}}").stdout.decode()
        assert status.startswith("Exited (0)")
    finally:
        hbd.docker("rm", "skeleton-ps")
    gone = hbd.docker("inspect", "skeleton-ps", check=False)
    assert gone.returncode == 1 and b"No such object: skeleton-ps" in gone.stderr


def test_images_tag_inspect_rmi(hbd: RunningDaemon) -> None:
    hbd.docker("tag", "busybox", "example.test/tools/bb:1.0")
    inspect = json.loads(hbd.docker("image", "inspect", "example.test/tools/bb:1.0").stdout)[0]
    assert "example.test/tools/bb:1.0" in inspect["RepoTags"]
    assert "busybox:latest" in inspect["RepoTags"]
    listing = hbd.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
    assert "example.test/tools/bb:1.0" in listing.split()
    out = hbd.docker("rmi", "example.test/tools/bb:1.0").stdout
    assert out == b"Untagged: example.test/tools/bb:1.0\n"
    assert hbd.docker("image", "inspect", "busybox").returncode == 0


def test_unknown_image_and_container(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "--rm", "--pull=never", "nope/nothing", "true", check=False)
    assert out.returncode == 125
    assert b"No such image: nope/nothing:latest" in out.stderr
    out = hbd.docker("rm", "no-such-container", check=False)
    assert b"No such container: no-such-container" in out.stderr


def test_a_tar_that_is_not_an_image(hbd: RunningDaemon, tmp_path: os.PathLike[str]) -> None:
    before = sorted(os.listdir(hbd.data_root / "image" / "blobs" / "sha256"))
    out = hbd.docker("load", input=b"this is not a tar archive" * 100, check=False)
    assert out.returncode != 0
    # dockerd's words, which it sends in a 200 stream (so no "Error response" prefix)
    assert out.stderr == b"Error processing tar file(exit status 1): " \
                         b"archive/tar: invalid tar header\n"
    assert sorted(os.listdir(hbd.data_root / "image" / "blobs" / "sha256")) == before
    assert hbd.docker("version", "--format", "{{.Server.APIVersion}}").stdout == b"1.47\n"


@pytest.mark.parametrize("prefix", ["", "/v1.47", "/v1.40"])
def test_ping_version_info_over_the_socket(hbd: RunningDaemon, prefix: str) -> None:
    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(hbd.socket))
        conn = http.client.HTTPConnection("hbd")
        conn.sock = s
        conn.request("GET", prefix + path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()

    status, headers, body = get("/_ping")
    assert (status, body) == (200, b"OK")
    assert headers["Api-Version"] == "1.47" and headers["Ostype"] == "linux"
    status, _, body = get("/version")
    assert status == 200 and json.loads(body)["MinAPIVersion"] == "1.24"
    status, _, body = get("/info")
    assert status == 200 and json.loads(body)["Images"] >= 1


def test_finished_guests_leave_no_zombies(hbd: RunningDaemon) -> None:
    for _ in range(2):
        hbd.docker("run", "--rm", "busybox", "true")
    cid = hbd.docker("run", "-d", "busybox", "sleep", "60").stdout.decode().strip()
    hbd.docker("rm", "-f", cid)
    zombies = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == hbd.process.pid:
            zombies.append(stat.parent.name)
    assert zombies == []
