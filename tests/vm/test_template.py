"""Guests cloned from a template: containers start in clones, run, exec,
restart and go like any; every clone has its own identity (boot_id, RNG,
MAC, a clock of now); what a clone cannot have (a shared filesystem for a
container joining it) is refused with the reason."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_fixture import RunningDaemon, hbd_daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    with hbd_daemon() as d:
        wait_template(d)
        yield d


def wait_template(d: RunningDaemon, timeout: float = 60) -> None:
    """Until the template hbd builds at start is ready."""
    deadline = time.monotonic() + timeout
    while not list((d.data_root / "templates").glob("*/meta.json")):
        if time.monotonic() > deadline:
            raise AssertionError("no template was built\n" + d.log_tail())
        time.sleep(0.1)


def sandbox_of(d: RunningDaemon, container_id: str) -> dict[str, Any]:
    for path in (d.data_root / "state" / "sandboxes").glob("*.json"):
        record: dict[str, Any] = json.loads(path.read_text())
        if container_id in record["members"]:
            return record
    raise AssertionError(f"no sandbox holds {container_id}")


def sh(d: RunningDaemon, container: str, script: str) -> str:
    return d.docker("exec", container, "sh", "-c", script).stdout.decode()


def identity(d: RunningDaemon, container: str) -> dict[str, str]:
    out = sh(d, container, "cat /proc/sys/kernel/random/boot_id; "
                           "head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
                           "cat /sys/class/net/eth0/address; date +%s")
    boot_id, random, mac, clock = out.split("\n")[:4]
    return {"boot_id": boot_id, "random": random, "mac": mac, "clock": clock}


def clones_in_log(d: RunningDaemon) -> int:
    return len(re.findall(r"clone of template", d.log.read_text(errors="replace")))


def test_run_rm_uses_a_clone(daemon: RunningDaemon) -> None:
    before = clones_in_log(daemon)
    out = daemon.docker("run", "--rm", "busybox", "echo", "cloned").stdout
    assert out == b"cloned\n"
    assert clones_in_log(daemon) == before + 1, daemon.log_tail()


def test_clones_run_exec_restart_and_go_each_with_its_own_identity(
        daemon: RunningDaemon) -> None:
    names = ["tpl-one", "tpl-two"]
    try:
        ids = [daemon.docker("run", "-d", "--name", n, "busybox", "sleep", "600")
               .stdout.decode().strip() for n in names]
        records = [sandbox_of(daemon, cid) for cid in ids]
        assert all(r["template"] for r in records), records
        assert not any(r["shared_fs"] for r in records)
        assert records[0]["id"] != records[1]["id"]

        first, second = (identity(daemon, n) for n in names)
        host_now = time.time()
        for key in ("boot_id", "random", "mac"):
            assert first[key] != second[key], (key, first, second)
        for seen in (first, second):
            assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", seen["boot_id"])
            # The template was saved a while ago: a clone's clock is the host's.
            assert abs(int(seen["clock"]) - host_now) < 5, seen
        # Each MAC is its endpoint's, as docker inspect reports it.
        for name, seen in zip(names, (first, second), strict=True):
            info = json.loads(daemon.docker("inspect", name).stdout)[0]
            assert info["NetworkSettings"]["MacAddress"] == seen["mac"]
        # The clones reach each other over the default bridge.
        ip = json.loads(daemon.docker("inspect", names[1]).stdout)[0][
            "NetworkSettings"]["IPAddress"]
        sh(daemon, names[0], f"ping -c1 -W5 {ip}")

        # A restart is a new guest: a new clone, a new boot_id.
        daemon.docker("restart", "-t", "1", names[0])
        again = identity(daemon, names[0])
        assert again["boot_id"] != first["boot_id"]
        assert sandbox_of(daemon, ids[0])["template"]
        assert sh(daemon, names[0], "echo $((6*7))") == "42\n"
    finally:
        daemon.docker("rm", "-f", *names, check=False)
    # Gone, as any guest goes: no QEMU of theirs, no run directory.
    deadline = time.monotonic() + 20
    while any(p.is_dir() for r in records for p in [daemon.exec_root / r["id"]]):
        assert time.monotonic() < deadline, "run directories left"
        time.sleep(0.2)


def test_block_volume_joins_a_clone_and_a_shared_one_is_refused(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    names = ["tpl-owner", "tpl-block", "tpl-bind"]
    try:
        daemon.docker("volume", "create", "-o", "type=block", "-o", "size=64m", "tplblock")
        daemon.docker("run", "-d", "--name", names[0], "-v", "tplblock:/data", "busybox",
                      "sleep", "600")
        owner = json.loads(daemon.docker("inspect", names[0]).stdout)[0]["Id"]
        assert sandbox_of(daemon, owner)["template"], "a block volume is a disk: clone"
        assert sh(daemon, names[0], "echo kept > /data/f; cat /data/f") == "kept\n"
        # A joiner with no shared mount is fine in a clone.
        daemon.docker("run", "-d", "--name", names[1], "--network",
                      f"container:{names[0]}", "busybox", "sleep", "600")
        assert sh(daemon, names[1], "hostname") == sh(daemon, names[0], "hostname")
        # One with a bind mount cannot be: the clone has no shared filesystem.
        refused = daemon.docker("run", "-d", "--name", names[2], "--network",
                                f"container:{names[0]}", "-v", f"{tmp_path}:/src", "busybox",
                                "sleep", "600", check=False)
        assert refused.returncode != 0
        assert b"started without a shared filesystem" in refused.stderr, refused.stderr
    finally:
        daemon.docker("rm", "-f", *names, check=False)
        daemon.docker("volume", "rm", "-f", "tplblock", check=False)


def test_a_container_with_a_bind_mount_boots_with_a_shared_filesystem(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("host\n")
    try:
        daemon.docker("run", "-d", "--name", "tpl-shared", "-v", f"{tmp_path}:/src",
                      "busybox", "sleep", "600")
        cid = json.loads(daemon.docker("inspect", "tpl-shared").stdout)[0]["Id"]
        record = sandbox_of(daemon, cid)
        assert not record["template"] and record["shared_fs"]
        assert sh(daemon, "tpl-shared", "cat /src/f") == "host\n"
    finally:
        daemon.docker("rm", "-f", "tpl-shared", check=False)


def test_no_template_when_disabled(tmp_path: Path) -> None:
    config = tmp_path / "hbd.toml"
    config.write_text("[vm]\ntemplates = false\n")
    with hbd_daemon(extra_args=("--config", str(config))) as d:
        assert d.docker("run", "--rm", "busybox", "echo", "booted").stdout == b"booted\n"
        assert clones_in_log(d) == 0
        assert not list((d.data_root / "templates").glob("*/meta.json"))
