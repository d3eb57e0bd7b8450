"""Logs, attach and exec with real guests (a real tty in the guest), through
the docker CLI and docker-py. What is expected is what dockerd 20.10 gave
for the same commands."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.daemon_fixture import RunningDaemon
from tests.hijack import KEY_PAUSE, ctrl, running_cat
from tests.vm.test_lifecycle import Terminal

DETACHED = b"exec attach failed: error on attach stdin: read escape sequence\r\n"
SCRIPT = "echo hello out; sleep 1; echo hello err >&2"


@pytest.fixture
def api(sdk: docker.DockerClient) -> docker.APIClient:
    return sdk.api


@pytest.fixture
def cat(api: docker.APIClient) -> Iterator[str]:
    with running_cat(api) as cid:
        yield cid


def raw_socket(sock: Any) -> socket.socket:
    return getattr(sock, "_sock", sock)


def detached_with(sock: Any, keys: list[bytes]) -> bytes:
    """Send the keys one by one, as docker-py's tests do; what the stream
    still carries until it ends."""
    s = raw_socket(sock)
    for key in keys:
        s.sendall(key)
        time.sleep(KEY_PAUSE)
    s.settimeout(60)
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


# -- exec --------------------------------------------------------------------------------


def test_exec_start_with_a_tty_in_every_combination(api: docker.APIClient, cat: str) -> None:
    """docker-py's ExecDemuxTest, the tty cases: the guest's tty turns \\n into \\r\\n."""
    def start(**kwargs: bool) -> Any:
        exec_id = api.exec_create(cat, ["sh", "-c", SCRIPT], tty=True)["Id"]
        return api.exec_start(exec_id, **kwargs)

    assert start() == b"hello out\r\nhello err\r\n"
    assert list(start(stream=True)) == [b"hello out\r\n", b"hello err\r\n"]
    assert start(demux=True) == (b"hello out\r\nhello err\r\n", None)
    assert list(start(stream=True, demux=True)) == [(b"hello out\r\n", None),
                                                    (b"hello err\r\n", None)]
    assert start(tty=True) == b"hello out\r\nhello err\r\n"


def test_exec_start_socket(api: docker.APIClient, cat: str) -> None:
    """docker-py's test_exec_start_socket: a tty process, framed (the start says
    no tty), its first frame on a socket read right after the headers."""
    line = "yay, interactive exec!"
    exec_id = api.exec_create(cat, ["printf", line], tty=True)["Id"]
    sock = api.exec_start(exec_id, socket=True)
    try:
        stream, size = docker.utils.socket.next_frame_header(sock)
        assert (stream, size) == (1, len(line))
        assert docker.utils.socket.read_exactly(sock, size).decode() == line
    finally:
        sock.close()


@pytest.mark.parametrize(("configured", "given", "keys"), [
    (None, None, [ctrl("p"), ctrl("q")]),
    ("ctrl-p", None, [ctrl("p")]),
    ("ctrl-p", "ctrl-x", [ctrl("x")]),
])
def test_exec_detach_keys(api: docker.APIClient, cat: str, configured: str | None,
                          given: str | None, keys: list[bytes]) -> None:
    """docker-py's exec detach tests: its config file's detachKeys, or the argument."""
    if configured:
        api._general_configs["detachKeys"] = configured
    exec_id = api.exec_create(cat, "cat", stdin=True, tty=True, stdout=True,
                              detach_keys=given)["Id"]
    sock = api.exec_start(exec_id, tty=True, socket=True)
    try:
        assert detached_with(sock, keys) == DETACHED
    finally:
        sock.close()
    info = api.exec_inspect(exec_id)
    assert info["Running"] is True  # left running, as the keys are for
    top = api.top(cat)["Processes"]
    assert sum(1 for p in top if p[-1] == "cat") == 2


def test_cli_exec_detached_and_detach_keys(hbd: RunningDaemon, cat: str,
                                           tmp_path: Path) -> None:
    hbd.docker("exec", "-d", cat, "sh", "-c", "sleep 1; echo done > /marker")
    deadline = time.monotonic() + 60
    while hbd.docker("exec", cat, "cat", "/marker", check=False).stdout != b"done\n":
        assert time.monotonic() < deadline, "the detached exec did not run"
        time.sleep(0.5)
    # --detach-keys, then the CLI's config file: dockerd 20.10 let the CLI
    # print "read escape sequence" and exit 1, the shell left running.
    (tmp_path / "config.json").write_text(json.dumps({"detachKeys": "ctrl-y"}))
    for args, key in ((["exec", "-it", "--detach-keys", "ctrl-x"], ctrl("x")),
                      (["--config", str(tmp_path), "exec", "-it"], ctrl("y"))):
        term = Terminal(hbd, *args, cat, "sh")
        term.read_until(b"# ")
        term.send(b"echo in-shell\r")
        term.read_until(b"in-shell\r\n")
        term.send(key)
        assert term.wait() == 1
        assert b"read escape sequence" in term.output
    shells = [p for p in hbd.docker("top", cat).stdout.decode().splitlines()
              if p.endswith(" sh")]
    assert len(shells) == 2


# -- attach ------------------------------------------------------------------------------


def test_attach_logs_of_an_exited_container(api: docker.APIClient) -> None:
    """docker-py's test_attach_no_stream, and the same with a tty."""
    for tty, expected in ((False, b"hello\n"), (True, b"hello\r\n")):
        cid = api.create_container("busybox", "echo hello", tty=tty)["Id"]
        try:
            api.start(cid)
            api.wait(cid, condition="not-running", timeout=60)
            assert api.attach(cid, stream=False, logs=True) == expected
        finally:
            api.remove_container(cid)


@pytest.mark.parametrize(("configured", "query", "keys"), [
    (None, {}, [ctrl("p"), ctrl("q")]),
    ("ctrl-p", {}, [ctrl("p")]),
    ("ctrl-p", {"detachKeys": "ctrl-x"}, [ctrl("x")]),
])
def test_attach_detach_keys(api: docker.APIClient, configured: str | None,
                            query: dict[str, str], keys: list[bytes]) -> None:
    """docker-py's attach detach tests (it sends the config file's keys too)."""
    if configured:
        api._general_configs["detachKeys"] = configured
    with running_cat(api, tty=True) as cid:
        sock = api.attach_socket(cid, {"stdin": True, "stream": True, **query})
        try:
            assert detached_with(sock, keys) == b""
        finally:
            sock.close()
        assert api.inspect_container(cid)["State"]["Running"] is True


def test_cli_run_and_attach_detach_keys(hbd: RunningDaemon, tmp_path: Path) -> None:
    """With dockerd 20.10 `run -it` left with 0, `attach` with 1 and "read escape
    sequence"; the container ran on."""
    (tmp_path / "config.json").write_text(json.dumps({"detachKeys": "ctrl-y"}))
    for options, key in ((["--detach-keys", "ctrl-x"], ctrl("x")),
                         ([], ctrl("y"))):
        name = f"streams-detach-{key.hex()}"
        term = Terminal(hbd, "--config", str(tmp_path), "run", "-it", *options, "--name",
                        name, "busybox", "sh")
        try:
            term.read_until(b"# ")
            term.send(key)
            assert term.wait() == 0
            term = Terminal(hbd, "--config", str(tmp_path), "attach", *options, name)
            term.send(b"echo $((6*7))\r")
            term.read_until(b"42\r\n")  # the shell's answer: the CLI is attached
            term.send(key)
            assert term.wait() == 1
            assert b"read escape sequence" in term.output
            assert json.loads(hbd.docker("inspect", name).stdout)[0]["State"]["Running"]
        finally:
            hbd.docker("rm", "-f", name, check=False)


# -- logs --------------------------------------------------------------------------------


def test_log_drivers_with_the_cli(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "--name", "streams-none", "--log-driver", "none", "busybox",
                     "echo", "hi")
    try:
        assert out.stdout == b"hi\n"  # attached output does not need a log
        logs = hbd.docker("logs", "streams-none", check=False)
        assert logs.returncode == 1
        assert logs.stderr == (b"Error response from daemon: configured logging driver "
                               b"does not support reading\n")
    finally:
        hbd.docker("rm", "streams-none")
    refused = hbd.docker("run", "--log-driver", "syslog", "busybox", "true", check=False)
    assert refused.returncode == 125
    assert b"hbd does not serve the syslog logging driver" in refused.stderr
    bad = hbd.docker("run", "--rm", "--log-opt", "max-size=abc", "busybox", "true",
                     check=False)
    assert bad.returncode == 125
    assert b"failed to initialize logging driver: invalid size: 'abc'" in bad.stderr


def test_rotation_and_tail(hbd: RunningDaemon) -> None:
    count = "i=0; while [ $i -lt 100 ]; do printf '%040d\\n' $i; i=$((i+1)); done"
    cid = hbd.docker("run", "-d", "--log-opt", "max-size=1k", "--log-opt", "max-file=3",
                     "busybox", "sh", "-c", count).stdout.decode().strip()
    try:
        hbd.docker("wait", cid)
        path = Path(json.loads(hbd.docker("inspect", cid).stdout)[0]["LogPath"])
        assert sorted(p.name for p in path.parent.glob(f"{cid}-json.log*")) == [
            f"{cid}-json.log", f"{cid}-json.log.1", f"{cid}-json.log.2"]
        logs = hbd.docker("logs", cid).stdout.decode().splitlines()
        assert logs == [f"{i:040d}" for i in range(70, 100)]
        assert hbd.docker("logs", "--tail", "1", cid).stdout == f"{99:040d}\n".encode()
    finally:
        hbd.docker("rm", cid)
    cid = hbd.docker("run", "-d", "--log-driver", "local", "busybox", "seq", "1", "50000"
                     ).stdout.decode().strip()
    try:
        hbd.docker("wait", cid)
        assert hbd.docker("logs", "--tail", "2", cid).stdout == b"49999\n50000\n"
    finally:
        hbd.docker("rm", cid)
