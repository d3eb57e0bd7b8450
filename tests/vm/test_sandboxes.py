"""Issue 8: guests that are not sealed at boot. Containers that share a guest
(`--network/--pid/--ipc container:X`), volumes shared by running containers,
bind mounts live both ways, networks joined and left while running. Each
behaviour here was checked against real dockerd 20.10 + runc on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_fixture import RunningDaemon, mounts_under, run_dirs
from tests.registry_fixture import free_port


def inspect(hbd: RunningDaemon, ref: str) -> dict[str, Any]:
    return json.loads(hbd.docker("inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def sh(hbd: RunningDaemon, container: str, script: str) -> str:
    return hbd.docker("exec", container, "sh", "-c", script).stdout.decode()


@pytest.fixture
def cleanup(hbd: RunningDaemon) -> Iterator[list[str]]:
    """Names of containers, volumes and networks to remove after the test."""
    made: list[str] = []
    yield made
    for container in hbd.docker("ps", "-aq").stdout.split():
        hbd.docker("rm", "-f", container.decode(), check=False)
    for name in made:
        hbd.docker("volume", "rm", "-f", name, check=False)
        hbd.docker("network", "rm", name, check=False)


def test_network_container_mode_shares_localhost_and_hostname(
        hbd: RunningDaemon, cleanup: list[str]) -> None:
    hbd.docker("run", "-d", "--name", "web", "--hostname", "webhost",
               "--dns-search", "foo.local", "busybox", "sh", "-c",
               "echo served > /tmp/index.html; httpd -f -p 127.0.0.1:8080 -h /tmp")
    web = inspect(hbd, "web")["Id"]
    hbd.docker("run", "-d", "--name", "side", "--network", "container:web", "busybox",
               "sleep", "600")
    side = inspect(hbd, "side")
    assert side["HostConfig"]["NetworkMode"] == f"container:{web}"
    assert side["NetworkSettings"]["Networks"] == {}
    assert side["Config"]["Hostname"] == "webhost"
    assert sh(hbd, "side", "hostname").strip() == "webhost"
    # web's DNS settings too, as dockerd gives a container:X its resolv.conf.
    resolv = sh(hbd, "side", "cat /etc/resolv.conf")
    assert "search foo.local" in resolv and resolv == sh(hbd, "web", "cat /etc/resolv.conf")
    # The sidecar reaches web's loopback-only server: one network stack.
    deadline = time.monotonic() + 20
    got = ""
    while time.monotonic() < deadline and "served" not in got:
        got = hbd.docker("exec", "side", "wget", "-qO-", "http://127.0.0.1:8080/index.html",
                         check=False).stdout.decode()
        time.sleep(0.2)
    assert "served" in got
    # Each has its own root filesystem.
    sh(hbd, "side", "echo mine > /only-side")
    assert hbd.docker("exec", "web", "cat", "/only-side", check=False).returncode != 0
    # Both are listed, each stops on its own; the sidecar keeps running
    # without web's network, as in dockerd.
    names = hbd.docker("ps", "--format", "{{.Names}}").stdout.decode().split()
    assert {"web", "side"} <= set(names)
    hbd.docker("stop", "-t", "1", "web")
    assert inspect(hbd, "side")["State"]["Running"]
    addresses = sh(hbd, "side", "ip -4 -o addr show")
    assert "127.0.0.1" in addresses and "eth0" not in addresses
    hbd.docker("logs", "side")
    hbd.docker("rm", "-f", "side")


def test_pid_and_ipc_container_modes(hbd: RunningDaemon, cleanup: list[str]) -> None:
    hbd.docker("run", "-d", "--name", "donor", "--ipc", "shareable", "busybox", "sh", "-c",
               "echo shared > /dev/shm/note; exec sleep 600")
    seen = hbd.docker("run", "--rm", "--pid", "container:donor", "busybox", "ps", "-o",
                      "comm").stdout.decode().split()
    assert "sleep" in seen and "ps" in seen
    note = hbd.docker("run", "--rm", "--ipc", "container:donor", "busybox", "cat",
                      "/dev/shm/note").stdout.decode()
    assert note.strip() == "shared"
    hbd.docker("run", "-d", "--name", "private", "busybox", "sleep", "600")
    refused = hbd.docker("run", "--rm", "--ipc", "container:private", "busybox", "true",
                         check=False)
    assert refused.returncode != 0
    assert b"non-shareable IPC (hint: use IpcMode:shareable for the donor container)" in \
        refused.stderr


def test_container_mode_errors(hbd: RunningDaemon, cleanup: list[str]) -> None:
    missing = hbd.docker("run", "--rm", "--network", "container:nosuchthing", "busybox", "true",
                         check=False)
    assert missing.returncode != 0
    assert b"No such container: nosuchthing" in missing.stderr
    stopped = hbd.docker("create", "--name", "stopped", "busybox", "true").stdout.decode()
    refused = hbd.docker("run", "--rm", "--network", "container:stopped", "busybox", "true",
                         check=False)
    assert b"cannot join network of a non running container: " + \
        stopped.strip().encode() in refused.stderr
    conflict = hbd.docker("run", "--rm", "--network", "container:stopped", "-p", "80:80",
                          "busybox", "true", check=False)
    assert b"conflicting options: port publishing and the container type network mode" in \
        conflict.stderr
    pid_missing = hbd.docker("create", "--pid", "container:nosuchthing", "busybox", "true",
                             check=False)
    assert b"No such container: nosuchthing" in pid_missing.stderr


def test_named_volume_shared_by_running_containers(hbd: RunningDaemon,
                                                   cleanup: list[str]) -> None:
    volume = f"shared{free_port()}"
    cleanup.append(volume)
    hbd.docker("volume", "create", volume)
    hbd.docker("run", "-d", "--name", "one", "-v", f"{volume}:/d", "busybox", "sleep", "600")
    hbd.docker("run", "-d", "--name", "two", "-v", f"{volume}:/d", "busybox", "sleep", "600")
    sh(hbd, "one", "echo from-one > /d/a")
    assert sh(hbd, "two", "cat /d/a").strip() == "from-one"
    sh(hbd, "two", "echo from-two > /d/b")
    assert sh(hbd, "one", "cat /d/b").strip() == "from-two"
    one_off = hbd.docker("run", "--rm", "-v", f"{volume}:/d", "busybox", "cat", "/d/a", "/d/b")
    assert one_off.stdout.decode().split() == ["from-one", "from-two"]
    # --volumes-from a running container shares its volumes live.
    hbd.docker("run", "-d", "--name", "three", "--volumes-from", "one", "busybox", "sleep",
               "600")
    sh(hbd, "one", "echo later > /d/c")
    assert sh(hbd, "three", "cat /d/c").strip() == "later"
    mountpoint = json.loads(hbd.docker("volume", "inspect", volume).stdout)[0]["Mountpoint"]
    assert Path(mountpoint, "c").read_text() == "later\n"
    busy = hbd.docker("volume", "rm", volume, check=False)
    assert busy.returncode != 0 and b"volume is in use" in busy.stderr


def test_bind_mount_is_live_both_ways(hbd: RunningDaemon, cleanup: list[str],
                                      tmp_path: Path) -> None:
    (tmp_path / "from-host").write_text("one\n")
    hbd.docker("run", "-d", "--name", "binder", "-v", f"{tmp_path}:/src", "busybox", "sleep",
               "600")
    assert sh(hbd, "binder", "cat /src/from-host").strip() == "one"
    (tmp_path / "from-host").write_text("two\n")
    (tmp_path / "new").write_text("new\n")
    # The guest caches attributes for at most a second.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if sh(hbd, "binder", "cat /src/from-host /src/new").split() == ["two", "new"]:
            break
        time.sleep(0.3)
    assert sh(hbd, "binder", "cat /src/from-host /src/new").split() == ["two", "new"]
    sh(hbd, "binder", "echo guest > /src/from-guest")
    assert (tmp_path / "from-guest").read_text() == "guest\n"
    hbd.docker("run", "-d", "--name", "reader", "-v", f"{tmp_path}:/src:ro", "busybox", "sleep",
               "600")
    refused = hbd.docker("exec", "reader", "touch", "/src/nope", check=False)
    assert refused.returncode != 0 and not (tmp_path / "nope").exists()


def test_network_connect_and_disconnect_while_running(hbd: RunningDaemon,
                                                      cleanup: list[str]) -> None:
    suffix = free_port()
    front, back = f"front{suffix}", f"back{suffix}"
    cleanup += [front, back]
    hbd.docker("network", "create", front)
    hbd.docker("network", "create", back)
    hbd.docker("run", "-d", "--name", "app", "--network", front, "busybox", "sleep", "600")
    hbd.docker("run", "-d", "--name", "db", "--network", back, "busybox", "sleep", "600")
    assert hbd.docker("exec", "app", "ping", "-c1", "-W2", "db", check=False).returncode != 0
    hbd.docker("network", "connect", "--alias", "api", back, "app")
    info = inspect(hbd, "app")["NetworkSettings"]["Networks"]
    assert set(info) == {front, back} and info[back]["IPAddress"]
    assert "api" in info[back]["Aliases"]
    # Reachable and resolvable both ways, the alias included.
    assert hbd.docker("exec", "app", "ping", "-c1", "-W3", "db").returncode == 0
    assert hbd.docker("exec", "db", "ping", "-c1", "-W3", "app").returncode == 0
    assert hbd.docker("exec", "db", "ping", "-c1", "-W3", "api").returncode == 0
    assert info[back]["IPAddress"] in sh(hbd, "app", "cat /etc/hosts")
    twice = hbd.docker("network", "connect", back, "app", check=False)
    assert twice.returncode != 0
    assert f"endpoint with name app already exists in network {back}".encode() in twice.stderr
    hbd.docker("network", "disconnect", back, "app")
    assert set(inspect(hbd, "app")["NetworkSettings"]["Networks"]) == {front}
    assert hbd.docker("exec", "db", "ping", "-c1", "-W2", "app", check=False).returncode != 0
    assert "eth1" not in sh(hbd, "app", "ip -o link")
    not_on = hbd.docker("network", "disconnect", back, "app", check=False)
    assert b"is not connected to network" in not_on.stderr


def test_four_networks_on_one_container(hbd: RunningDaemon, cleanup: list[str]) -> None:
    suffix = free_port()
    nets = [f"n{i}x{suffix}" for i in range(4)]
    cleanup += nets
    for name in nets:
        hbd.docker("network", "create", name)
    hbd.docker("run", "-d", "--name", "hub", "--network", nets[0], "busybox", "sleep", "600")
    for name in nets[1:]:
        hbd.docker("network", "connect", name, "hub")
    links = sh(hbd, "hub", "ip -o -4 addr show")
    assert all(f"eth{i}" in links for i in range(4))


def guest_dirs(hbd: RunningDaemon) -> set[Path]:
    return run_dirs(hbd.exec_root)


def test_nothing_leaks_after_removal(hbd: RunningDaemon, cleanup: list[str]) -> None:
    volume = f"leak{free_port()}"
    cleanup.append(volume)
    before = guest_dirs(hbd)
    hbd.docker("run", "-d", "--name", "holder", "-v", f"{volume}:/d", "-v", "/tmp:/host",
               "busybox", "sleep", "600")
    hbd.docker("run", "-d", "--name", "joiner", "--network", "container:holder", "-v",
               f"{volume}:/e", "busybox", "sleep", "600")
    (sandbox,) = guest_dirs(hbd) - before
    taps = sorted(p.name for p in Path("/sys/class/net").iterdir()
                  if p.name.startswith("ht") and sandbox.name[:8] in p.name)
    assert len(taps) == 4  # the NIC slots
    virtiofsd = int((sandbox / "virtiofsd.pid").read_text())
    hbd.docker("rm", "-f", "joiner", "holder")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sandbox.exists():
        time.sleep(0.2)
    assert not sandbox.exists()
    assert not Path(f"/proc/{virtiofsd}").exists()
    assert not mounts_under(hbd.exec_root, sandbox)
    assert not [t for t in taps if Path("/sys/class/net", t).exists()]


# Writes a counter to the bind mount every 0.1 s; each write's outcome that
# differs from the last one's goes to the log (so an error shows once, by text).
WRITER = """
i=0; last=
while true; do
  i=$((i+1))
  if echo $i > /data/counter 2>/tmp/err; then now=ok; else now="failed: $(cat /tmp/err)"; fi
  [ "$now" != "$last" ] && echo "write $i $now"
  last=$now; sleep 0.1
done
"""


def test_a_killed_virtiofsd_ends_its_guest_not_hbd(hbd: RunningDaemon, cleanup: list[str],
                                                  tmp_path: Path) -> None:
    """virtiofsd SIGKILLed under a container writing to a bind mount: its
    guest's requests to the shared filesystem could only wait forever, so hbd
    destroys the guest and says why; the container dies (137, the reason as
    its error, a die event), hbd goes on answering, and rm -f leaves nothing
    of the guest behind."""
    name = f"fskill{free_port()}"
    cleanup.append(name)
    share = tmp_path / "share"
    share.mkdir()
    before = guest_dirs(hbd)
    since = time.time()
    hbd.docker("run", "-d", "--name", name, "-v", f"{share}:/data", "busybox", "sh", "-c",
               WRITER)
    (sandbox,) = guest_dirs(hbd) - before
    deadline = time.monotonic() + 60
    while not (share / "counter").exists() or not (share / "counter").read_text().strip():
        assert time.monotonic() < deadline, hbd.docker("logs", name).stdout
        time.sleep(0.2)
    virtiofsd = int((sandbox / "virtiofsd.pid").read_text())
    os.kill(virtiofsd, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "die" not in (events := hbd.docker(
            "events", "--since", str(int(since) - 1), "--until", "0s", "--filter",
            f"container={name}", "--format", "{{.Action}}").stdout.decode().split()):
        assert time.monotonic() < deadline, f"the guest outlived its virtiofsd: {events}"
        time.sleep(0.5)
    assert events[-1] == "die" and "start" in events, events
    state = inspect(hbd, name)["State"]
    assert not state["Running"] and state["ExitCode"] == 137, state
    assert "virtiofsd" in state["Error"], state
    assert "write 1 ok" in hbd.docker("logs", name).stdout.decode()
    hbd.docker("rm", "-f", name, timeout=60)
    assert name not in hbd.docker("ps", "-a", "--format", "{{.Names}}").stdout.decode()
    deadline = time.monotonic() + 30
    while sandbox.exists():
        assert time.monotonic() < deadline, sorted(sandbox.iterdir())
        time.sleep(0.2)
    assert not mounts_under(hbd.exec_root, sandbox)
    assert not Path(f"/proc/{virtiofsd}").exists()
