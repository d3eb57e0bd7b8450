"""Attach and exec streams through the real API and services (fake sandbox
driver, so no real tty: a tty process's stderr joins its stdout, without
\\r\\n). The byte streams expected here are those dockerd 20.10 sent for the
same requests."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.api.conftest import ApiDaemon
from tests.hijack import ctrl, frames, hijack, running_cat

STDOUT, STDERR = 1, 2
DETACHED = b"exec attach failed: error on attach stdin: read escape sequence\r\n"


@pytest.fixture
def cat(raw: docker.APIClient) -> Iterator[str]:
    with running_cat(raw) as cid:
        yield cid


@pytest.fixture
def tty_cat(raw: docker.APIClient) -> Iterator[str]:
    with running_cat(raw, tty=True) as cid:
        yield cid


def running(raw: docker.APIClient, cid: str) -> bool:
    return bool(raw.inspect_container(cid)["State"]["Running"])


# -- attach ------------------------------------------------------------------------------


def test_attach_logs_of_an_exited_container(raw: docker.APIClient) -> None:
    # The replay follows the 101 headers at once: docker-py loses what it reads
    # together with them, so this held only sometimes before hbd waited for
    # the client to read its headers.
    cid = raw.create_container("busybox", ["sh", "-c", "echo hello; echo oops >&2"])["Id"]
    try:
        raw.start(cid)
        raw.wait(cid, timeout=30)
        for _ in range(10):
            assert raw.attach(cid, stream=False, logs=True) == b"hello\noops\n"
        assert raw.attach(cid, stream=False, logs=True, demux=True) == (b"hello\n", b"oops\n")
        assert raw.attach(cid, stream=False, logs=True, stderr=False) == b"hello\n"
    finally:
        raw.remove_container(cid)


def test_attach_to_a_paused_container_is_409(raw: docker.APIClient, cat: str) -> None:
    raw.pause(cat)
    try:
        with pytest.raises(docker.errors.APIError) as e:
            raw.attach(cat, stream=True)
        assert e.value.status_code == 409
        assert e.value.explanation == (f"container {cat} is paused, unpause the container "
                                       "before attach")
    finally:
        raw.unpause(cat)


def test_attach_with_bad_detach_keys_is_400(api_daemon: ApiDaemon, tty_cat: str) -> None:
    s = hijack(api_daemon.socket, f"/containers/{tty_cat}/attach?stream=1&stdin=1"
                                  "&detachKeys=ctrl-1")
    assert s.status == 400
    assert json.loads(s.error_body()) == {"message": "Invalid detach keys (ctrl-1) provided"}


@pytest.mark.parametrize(("query", "keys"), [
    ("", [ctrl("p"), ctrl("q")]),
    ("&detachKeys=ctrl-x", [ctrl("x")]),
    ("&detachKeys=a,DEL", [b"a", b"\x7f"]),
])
def test_attach_detaches_with_the_keys(api_daemon: ApiDaemon, raw: docker.APIClient,
                                       tty_cat: str, query: str, keys: list[bytes]) -> None:
    s = hijack(api_daemon.socket,
               f"/containers/{tty_cat}/attach?stream=1&stdin=1&stdout=1&stderr=1{query}")
    assert s.status == 101
    # Keys sent together (pasted) pass through; alone, in order, they detach.
    s.send(b"hi\n", b"".join(keys) + b"\n", *keys)
    out = s.read_until_eof()
    assert out == b"hi\n" + b"".join(keys) + b"\n"
    assert running(raw, tty_cat)


def test_attach_without_tty_passes_the_keys_on(api_daemon: ApiDaemon, cat: str) -> None:
    s = hijack(api_daemon.socket, f"/containers/{cat}/attach?stream=1&stdin=1&stdout=1")
    s.send(b"hi\n", ctrl("p"), ctrl("q"), b"\n")
    assert frames(s.read_exactly(8 + 3 + 8 + 1 + 8 + 1 + 8 + 1)) == [
        (STDOUT, b"hi\n"), (STDOUT, ctrl("p")), (STDOUT, ctrl("q")), (STDOUT, b"\n")]
    s.close()


def test_attach_ends_when_stdin_ends_unless_stdin_once(api_daemon: ApiDaemon,
                                                       raw: docker.APIClient, cat: str,
                                                       tty_cat: str) -> None:
    for cid in (cat, tty_cat):
        s = hijack(api_daemon.socket, f"/containers/{cid}/attach?stream=1&stdin=1&stdout=1")
        s.close_write()
        s.read_until_eof()  # ends, though the container runs on with stdin open
        assert running(raw, cid)
    # docker-py sets StdinOnce for stdin_open without detach, as `docker run -i`.
    once = raw.create_container("busybox", ["sh", "-c", "cat; echo bye"], stdin_open=True)["Id"]
    try:
        raw.start(once)
        s = hijack(api_daemon.socket, f"/containers/{once}/attach?stream=1&stdin=1&stdout=1")
        s.send(b"hi\n")
        s.close_write()
        assert frames(s.read_until_eof()) == [(STDOUT, b"hi\n"), (STDOUT, b"bye\n")]
        assert raw.wait(once, timeout=30)["StatusCode"] == 0
    finally:
        raw.remove_container(once, force=True)


def test_attach_and_detach_are_events(api_daemon: ApiDaemon, raw: docker.APIClient,
                                      tty_cat: str) -> None:
    since = raw.inspect_container(tty_cat)["State"]["StartedAt"]
    s = hijack(api_daemon.socket, f"/containers/{tty_cat}/attach?stream=1&stdin=1")
    s.send(ctrl("p"), ctrl("q"))
    s.read_until_eof()
    events = raw.events(since=since, until=raw.info()["SystemTime"], decode=True,
                        filters={"container": tty_cat})
    actions = [e["Action"] for e in events]
    assert actions[-2:] == ["attach", "detach"]


# -- exec --------------------------------------------------------------------------------


SCRIPT = "echo hello out; sleep 0.2; echo hello err >&2"


def test_exec_start_combinations_without_tty(raw: docker.APIClient, cat: str) -> None:
    """docker-py's ExecDemuxTest, the cases without a tty."""
    def start(**kwargs: bool) -> object:
        exec_id = raw.exec_create(cat, ["sh", "-c", SCRIPT])["Id"]
        return raw.exec_start(exec_id, **kwargs)

    assert start() == b"hello out\nhello err\n"
    assert list(start(stream=True)) == [b"hello out\n", b"hello err\n"]  # type: ignore
    assert start(demux=True) == (b"hello out\n", b"hello err\n")
    assert list(start(stream=True, demux=True)) == [  # type: ignore
        (b"hello out\n", None), (None, b"hello err\n")]


def test_exec_framing_follows_the_start_request(api_daemon: ApiDaemon,
                                                raw: docker.APIClient, cat: str) -> None:
    # A tty process, framed because the start said no tty: all on stdout.
    exec_id = raw.exec_create(cat, ["sh", "-c", SCRIPT], tty=True)["Id"]
    s = hijack(api_daemon.socket, f"/exec/{exec_id}/start", {"Tty": False})
    assert s.headers["content-type"] == "application/vnd.docker.multiplexed-stream"
    assert b"".join(d for _, d in frames(s.read_until_eof())) == b"hello out\nhello err\n"
    assert raw.exec_inspect(exec_id)["ProcessConfig"]["tty"] is True
    # No tty, started as with one: raw stdout, and stderr dropped as dockerd does.
    exec_id = raw.exec_create(cat, ["sh", "-c", SCRIPT])["Id"]
    s = hijack(api_daemon.socket, f"/exec/{exec_id}/start", {"Tty": True})
    assert s.headers["content-type"] == "application/vnd.docker.raw-stream"
    assert s.read_until_eof() == b"hello out\n"
    assert raw.exec_inspect(exec_id)["ProcessConfig"]["tty"] is False


def test_detached_exec(raw: docker.APIClient, cat: str, tmp_path: Path) -> None:
    done = tmp_path / "done"
    exec_id = raw.exec_create(cat, ["sh", "-c", f"echo out; touch {done}"])["Id"]
    r = raw._post_json(raw._url("/exec/{0}/start", exec_id), data={"Detach": True})
    assert (r.status_code, r.content) == (200, b"")
    assert "Content-Type" not in r.headers
    while raw.exec_inspect(exec_id)["Running"]:
        pass
    assert raw.exec_inspect(exec_id)["ExitCode"] == 0 and done.exists()


def test_exec_started_twice(raw: docker.APIClient, cat: str) -> None:
    exec_id = raw.exec_create(cat, ["sleep", "30"])["Id"]
    raw.exec_start(exec_id, detach=True)
    with pytest.raises(docker.errors.APIError) as e:
        raw.exec_start(exec_id, detach=True)
    assert e.value.status_code == 409
    assert e.value.explanation == f"Error: Exec command {exec_id} is already running"
    exec_id = raw.exec_create(cat, ["true"])["Id"]
    raw.exec_start(exec_id)
    with pytest.raises(docker.errors.APIError) as e:
        raw.exec_start(exec_id, detach=True)
    assert e.value.explanation == f"Error: Exec command {exec_id} has already run"


def test_exec_detach_keys_are_checked_at_create(raw: docker.APIClient, cat: str) -> None:
    r = raw._post_json(raw._url("/containers/{0}/exec", cat),
                       data={"Cmd": ["cat"], "DetachKeys": "ctrl-P"})
    assert r.status_code == 500
    assert r.json() == {"message": "Invalid escape keys (ctrl-P) provided"}
    exec_id = raw.exec_create(cat, "cat", detach_keys="ctrl-x")["Id"]
    assert raw.exec_inspect(exec_id)["DetachKeys"] == base64.b64encode(b"\x18").decode()


@pytest.mark.parametrize("framed", [False, True])
def test_exec_detaches_with_the_keys(api_daemon: ApiDaemon, raw: docker.APIClient, cat: str,
                                     framed: bool) -> None:
    exec_id = raw.exec_create(cat, "cat", stdin=True, tty=True, detach_keys="ctrl-x")["Id"]
    s = hijack(api_daemon.socket, f"/exec/{exec_id}/start", {"Tty": not framed})
    s.send(b"hi\n", ctrl("x"))
    out = s.read_until_eof()
    if framed:
        assert frames(out) == [(STDOUT, b"hi\n"), (STDOUT, DETACHED)]
    else:
        assert out == b"hi\n" + DETACHED
    # The process runs on, its stdin open.
    assert raw.exec_inspect(exec_id)["Running"] is True


def test_exec_stdin_end(api_daemon: ApiDaemon, raw: docker.APIClient, cat: str) -> None:
    # Without a tty the process gets EOF and its output flows to its end.
    exec_id = raw.exec_create(cat, ["sh", "-c", "cat; echo bye"], stdin=True)["Id"]
    s = hijack(api_daemon.socket, f"/exec/{exec_id}/start", {"Tty": False})
    s.send(b"hi\n")
    s.close_write()
    assert frames(s.read_until_eof()) == [(STDOUT, b"hi\n"), (STDOUT, b"bye\n")]
    assert raw.exec_inspect(exec_id)["ExitCode"] == 0
    # With a tty the session ends there; the process runs on.
    exec_id = raw.exec_create(cat, "cat", stdin=True, tty=True)["Id"]
    s = hijack(api_daemon.socket, f"/exec/{exec_id}/start", {"Tty": True})
    s.close_write()
    assert s.read_until_eof() == b""
    assert raw.exec_inspect(exec_id)["Running"] is True


def test_attach_with_logs_to_a_running_container_shows_each_line_once(
        raw: docker.APIClient) -> None:
    cid = raw.create_container("busybox", ["sh", "-c", "i=0; while :; do echo $i; "
                                                       "i=$((i+1)); done"], detach=True)["Id"]
    try:
        raw.start(cid)
        text = b""
        stream = raw.attach(cid, stream=True, logs=True)
        try:
            for chunk in stream:
                text += chunk
                if text.count(b"\n") > 20000:
                    break
        finally:
            stream.close()
        numbers = [int(line) for line in text.split(b"\n")[:20000]]
        assert numbers == list(range(20000))
    finally:
        raw.remove_container(cid, force=True)
