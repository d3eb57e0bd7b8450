"""Sandboxes over their whole life: compose projects whose containers share
volumes and a guest, teardown by `compose down`, `rm -f` and across daemon
restarts, and what must be gone from the host afterwards.

Each behaviour asserted here was first checked by hand against real dockerd
(20.10, runc) with the same CLI and compose.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hbd.services.container.sandboxes import SANDBOX_ID
from hbd.services.network.service import instance_tag
from tests.daemon_fixture import (
    DOCKER_CLI,
    RunningDaemon,
    hbd_daemon,
    mountinfo_with_shares,
    run_dirs,
)

# -- what a daemon's guests hold on the host ------------------------------------------------


@dataclass
class HostState:
    """What guests of one daemon hold on the host, each as a readable line."""

    run_dirs: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)  # QEMU and virtiofsd
    mounts: list[str] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)

    def items(self) -> list[str]:
        return self.run_dirs + self.processes + self.mounts + self.taps


def _cmdlines() -> Iterator[tuple[int, list[str]]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry), raw.decode(errors="replace").rstrip("\0").split("\0")


def host_state(daemon: RunningDaemon, sandboxes: set[str] | None = None) -> HostState:
    """Run directories of guests under the daemon's exec root, their QEMU and
    virtiofsd processes, mounts under the exec root and the guests' taps;
    only those of `sandboxes` (run directory names) when given."""
    root = str(daemon.exec_root)

    def ours(path: str) -> bool:
        if not path.startswith(root + "/"):
            return False
        sid = path[len(root) + 1:].split("/", maxsplit=1)[0]
        return SANDBOX_ID.fullmatch(sid) is not None and (sandboxes is None or sid in sandboxes)

    state = HostState()
    state.run_dirs = sorted(str(p) for p in run_dirs(daemon.exec_root) if ours(str(p)))
    in_run_dir = re.compile(re.escape(root) + r"/[^/,\s]+/")
    for pid, argv in _cmdlines():
        if "virtiofsd" in argv[0] or "qemu-system" in argv[0]:
            # A jailed QEMU names no host path: the files hbd opened for it do.
            paths = in_run_dir.findall(" ".join([*argv, *_open_files(pid)]))
            if any(ours(path) for path in paths):
                state.processes.append(f"{pid}: {' '.join(argv)[:200]}")
    state.processes.sort()
    # The shares are mounted in the daemon's share space; none may be left in
    # the host's namespace either.
    for line in mountinfo_with_shares(daemon.exec_root):
        if ours(line.split()[4]):
            state.mounts.append(line)
    prefix = f"ht{instance_tag(daemon.data_root)}"
    for link in sorted(os.listdir("/sys/class/net")):
        if link.startswith(prefix) and (
                sandboxes is None or any(link[len(prefix):].startswith(s[:8])
                                         for s in sandboxes)):
            state.taps.append(link)
    return state


def _open_files(pid: int) -> list[str]:
    targets = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


def exported_shares(state: HostState) -> list[set[str]]:
    """For each virtiofsd of `state`: the shares mounted in what it exports
    (its own mount namespace, a slave of the share space)."""
    found = []
    for process in state.processes:
        pid, argv = process.split(": ", 1)
        if "virtiofsd" not in argv:
            continue
        with contextlib.suppress(OSError):
            lines = Path("/proc", pid, "mountinfo").read_text().splitlines()
            found.append({line.split()[4] for line in lines if line.split()[4] != "/"})
    return found


def sandbox_ids(daemon: RunningDaemon) -> set[str]:
    """The run directories (sandbox ids) under the daemon's exec root."""
    return {p.name for p in run_dirs(daemon.exec_root)}


def assert_holds_guests(state: HostState) -> None:
    """The probes see a running sandbox: the leak checks below can fail."""
    assert state.run_dirs, "no run directory"
    assert any("virtiofsd" in p for p in state.processes), state.processes
    assert any("qemu-system" in p for p in state.processes), state.processes
    assert state.mounts, "no mounts under the exec root"
    assert state.taps, "no taps"


def assert_nothing_left(daemon: RunningDaemon, sandboxes: set[str] | None = None,
                        timeout: float = 20) -> None:
    """Until `timeout`: none of the guests' run directories, processes, mounts
    or taps are left (guests power off in the background of rm and stop)."""
    deadline = time.monotonic() + timeout
    while True:
        left = host_state(daemon, sandboxes).items()
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError("left behind:\n" + "\n".join(left))
        time.sleep(0.2)


# -- docker and compose ---------------------------------------------------------------------


def inspect(daemon: RunningDaemon, ref: str) -> dict[str, Any]:
    return json.loads(daemon.docker("inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def sh(daemon: RunningDaemon, container: str, script: str) -> str:
    return daemon.docker("exec", container, "sh", "-c", script).stdout.decode()


@dataclass
class Project:
    daemon: RunningDaemon
    name: str
    directory: Path

    def argv(self, *args: str) -> list[str]:
        return [DOCKER_CLI, "compose", "-p", self.name, "-f",
                str(self.directory / "compose.yaml"), *args]

    def run(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(self.argv(*args), env=self.daemon.env(), capture_output=True,
                                timeout=timeout)
        if check:
            assert result.returncode == 0, (args, result.stdout.decode(errors="replace"),
                                            result.stderr.decode(errors="replace"))
        return result

    def containers(self) -> list[str]:
        return self.daemon.docker(
            "ps", "-a", "--format", "{{.Names}}", "--filter",
            f"label=com.docker.compose.project={self.name}").stdout.decode().split()


def compose_project(daemon: RunningDaemon, directory: Path, yaml: str) -> Iterator[Project]:
    (directory / "compose.yaml").write_text(yaml)
    project = Project(daemon, f"sbx{secrets.token_hex(4)}", directory)
    try:
        yield project
    finally:
        project.run("down", "-v", "-t", "1", check=False)


class Lines:
    """A process's stdout, line by line as it comes, with the time each came."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    def next(self, timeout: float = 30) -> tuple[float, str]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s") from None


# Waits (up to a minute) for a file to appear in the guest.
# Patient: under TCG on a loaded CI machine a docker exec can take seconds.
AWAIT_FILE = 'await() { i=0; while [ ! -f "$1" ] && [ $i -lt 600 ]; do sleep 0.1; ' \
             'i=$((i+1)); done; }; '
# A main process that stops at once on SIGTERM.
IDLE = "trap 'exit 0' TERM; while true; do sleep 0.2; done"

SHARED_VOLUME = f"""
services:
  app:
    image: busybox
    command: ["sh", "-c", "echo from-service > /data/svc; {IDLE}"]
    volumes:
      - data:/data
volumes:
  data: {{}}
"""


@pytest.fixture
def shared_volume_project(hbd: RunningDaemon, tmp_path: Path) -> Iterator[Project]:
    yield from compose_project(hbd, tmp_path, SHARED_VOLUME)


def test_compose_run_rm_shares_a_named_volume_with_the_running_service(
        hbd: RunningDaemon, shared_volume_project: Project) -> None:
    project = shared_volume_project
    before = sandbox_ids(hbd)
    project.run("up", "-d", "--wait")
    service = sandbox_ids(hbd) - before
    assert len(service) == 1
    one_off = subprocess.Popen(
        project.argv("run", "--rm", "-T", "app", "sh", "-c",
                     AWAIT_FILE + "await /data/svc; cat /data/svc; "
                     "echo from-run > /data/run; echo wrote; "
                     "await /data/reply; cat /data/reply"),
        env=hbd.env(), stdout=subprocess.PIPE,
        stderr=(project.directory / "run.err").open("wb"))
    try:
        out = Lines(one_off)
        # The one-off sees what the running service wrote. Its first line
        # waits for compose, a guest's boot and AWAIT_FILE's minute.
        first = out.next(timeout=90)[1]
        assert first == "from-service", (project.directory / "run.err").read_text()
        wrote_at, line = out.next()
        assert line == "wrote"
        # Two guests: the service's and the one-off's.
        one_off_sandbox = sandbox_ids(hbd) - before - service
        assert len(one_off_sandbox) == 1
        # The service sees what the one-off wrote, while both run (a guest
        # caches attributes and lookups for at most a second).
        seen = ""
        while seen != "from-run":
            assert time.monotonic() - wrote_at < 3, "the service did not see the one-off's file"
            seen = project.run("exec", "-T", "app", "cat", "/data/run",
                               check=False).stdout.decode().strip()
            time.sleep(0.1)
        # And the one-off sees what the service writes now.
        project.run("exec", "-T", "app", "sh", "-c", "echo from-service-later > /data/reply")
        replied_at = time.monotonic()
        got_at, line = out.next()
        assert line == "from-service-later"
        assert got_at - replied_at < 3
        assert one_off.wait(30) == 0, (project.directory / "run.err").read_text()
    finally:
        if one_off.poll() is None:
            one_off.kill()
            one_off.wait()
    # --rm: the one-off is gone with its guest, the service runs on.
    assert project.containers() == [f"{project.name}-app-1"]
    assert_nothing_left(hbd, one_off_sandbox)
    assert inspect(hbd, f"{project.name}-app-1")["State"]["Running"]
    volume = json.loads(hbd.docker("volume", "inspect", f"{project.name}_data").stdout)[0]
    data = Path(volume["Mountpoint"])
    assert sorted(p.name for p in data.iterdir()) == ["reply", "run", "svc"]
    assert (data / "run").read_text() == "from-run\n"

    assert_holds_guests(host_state(hbd, service))
    project.run("down", "-t", "1")
    assert project.containers() == []
    assert_nothing_left(hbd, service)
    # down keeps named volumes, down -v removes them (as with dockerd).
    assert (data / "run").exists()
    project.run("down", "-v", "-t", "1")
    volumes = hbd.docker("volume", "ls", "-q").stdout.decode().split()
    assert f"{project.name}_data" not in volumes


SIDECAR = f"""
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo served > /tmp/index.html; exec httpd -f -p 127.0.0.1:8080 -h /tmp"]
    volumes:
      - data:/data
  side:
    image: busybox
    network_mode: "service:web"
    command: ["sh", "-c", "{IDLE}"]
    volumes:
      - data:/data
volumes:
  data: {{}}
"""


@pytest.fixture
def sidecar_project(hbd: RunningDaemon, tmp_path: Path) -> Iterator[Project]:
    yield from compose_project(hbd, tmp_path, SIDECAR)


def test_compose_sidecar_in_the_service_network_then_down(
        hbd: RunningDaemon, sidecar_project: Project) -> None:
    project = sidecar_project
    web, side = f"{project.name}-web-1", f"{project.name}-side-1"
    before = sandbox_ids(hbd)
    project.run("up", "-d", "--wait")
    mine = sandbox_ids(hbd) - before
    assert len(mine) == 1  # one guest holds both
    web_info, side_info = inspect(hbd, web), inspect(hbd, side)
    assert side_info["HostConfig"]["NetworkMode"] == f"container:{web_info['Id']}"
    assert side_info["NetworkSettings"]["Networks"] == {}
    assert f"{project.name}_default" in web_info["NetworkSettings"]["Networks"]
    # web's hostname (its id's first 12 digits: compose sets none).
    assert sh(hbd, side, "hostname").strip() == web_info["Id"][:12]
    assert sh(hbd, web, "hostname").strip() == web_info["Id"][:12]
    assert side_info["Config"]["Hostname"] == web_info["Id"][:12]
    # web's server listens on its loopback only; the sidecar shares it.
    deadline = time.monotonic() + 20
    got = ""
    while "served" not in got:
        assert time.monotonic() < deadline, got
        got = project.run("exec", "-T", "side", "wget", "-qO-",
                          "http://127.0.0.1:8080/index.html", check=False).stdout.decode()
    web_ip = web_info["NetworkSettings"]["Networks"][f"{project.name}_default"]["IPAddress"]
    probe = hbd.docker("run", "--rm", "--network", f"{project.name}_default", "busybox", "sh",
                       "-c", f"ping -c1 -W3 {web_ip} >/dev/null && echo reachable; "
                       f"if nc -w 3 {web_ip} 8080 </dev/null; then echo open; "
                       "else echo closed; fi")
    assert probe.stdout.decode().split() == ["reachable", "closed"]
    # The volume is shared within the guest too.
    sh(hbd, side, "echo from-side > /data/side")
    assert sh(hbd, web, "cat /data/side") == "from-side\n"

    assert_holds_guests(host_state(hbd, mine))
    project.run("down", "-t", "1")
    assert project.containers() == []
    networks = hbd.docker("network", "ls", "--format", "{{.Name}}").stdout.decode().split()
    assert f"{project.name}_default" not in networks
    assert_nothing_left(hbd, mine)
    volumes = hbd.docker("volume", "ls", "-q").stdout.decode().split()
    assert f"{project.name}_data" in volumes  # down keeps it
    project.run("down", "-v", "-t", "1")
    volumes = hbd.docker("volume", "ls", "-q").stdout.decode().split()
    assert f"{project.name}_data" not in volumes


# -- rm -f, and guests that end while the daemon is down ---------------------------------------


@pytest.fixture
def named(hbd: RunningDaemon) -> Iterator[str]:
    """A unique prefix for names; containers and volumes with it go after the test."""
    prefix = f"lc{secrets.token_hex(3)}"
    yield prefix
    for name in hbd.docker("ps", "-aq", "--filter", f"name={prefix}").stdout.decode().split():
        hbd.docker("rm", "-f", name, check=False)
    for name in hbd.docker("volume", "ls", "-q", "--filter", f"name={prefix}"
                           ).stdout.decode().split():
        hbd.docker("volume", "rm", "-f", name, check=False)


def test_rm_f_of_the_owner_then_of_its_sidecar_leaves_nothing(
        hbd: RunningDaemon, named: str, tmp_path: Path) -> None:
    owner, side, volume = f"{named}-owner", f"{named}-side", f"{named}-vol"
    before = sandbox_ids(hbd)
    hbd.docker("run", "-d", "--name", owner, "-v", f"{volume}:/data", "-v", f"{tmp_path}:/host",
               "busybox", "sh", "-c", IDLE)
    hbd.docker("run", "-d", "--name", side, "--network", f"container:{owner}", "-v",
               f"{volume}:/data", "busybox", "sh", "-c", IDLE)
    mine = sandbox_ids(hbd) - before
    assert len(mine) == 1
    running = host_state(hbd, mine)
    assert_holds_guests(running)
    shares = exported_shares(running)
    assert shares and all(len(s) == 3 for s in shares), shares

    # As with dockerd, the sidecar outlives the owner whose network it
    # shares, with only its loopback left. rm returns once the owner has
    # left the guest: its two shares (volume, bind) are unmounted then.
    hbd.docker("rm", "-f", owner)
    assert inspect(hbd, side)["State"]["Running"]
    assert sh(hbd, side, "ip -o link | grep -v ' lo:' | grep -c eth || true").strip() == "0"
    left = host_state(hbd, mine)
    assert len(left.mounts) == len(running.mounts) - 2, (running.mounts, left.mounts)
    assert left.taps == running.taps  # the guest keeps its NIC slots
    # Gone from what the guest is served too.
    assert [len(s) for s in exported_shares(left)] == [1] * len(shares)
    assert sh(hbd, side, "echo still > /data/x; cat /data/x") == "still\n"

    hbd.docker("rm", "-f", side)
    assert_nothing_left(hbd, mine)
    hbd.docker("volume", "rm", volume)


def test_what_ends_while_the_daemon_is_down_is_settled_and_leaves_nothing(
        tmp_path: Path) -> None:
    """One guest dies while hbd is down, and one container of another guest
    exits: the restarted hbd settles both and cleans up after them."""
    with hbd_daemon() as daemon:
        daemon.docker("volume", "create", "shared")
        data = Path(json.loads(daemon.docker("volume", "inspect", "shared").stdout)[0]
                    ["Mountpoint"])
        daemon.docker("run", "-d", "--name", "owner", "-v", "shared:/data", "-v",
                      f"{tmp_path}:/host", "busybox", "sh", "-c", IDLE)
        pair = sandbox_ids(daemon)
        daemon.docker("run", "-d", "--name", "quitter", "--network", "container:owner", "-v",
                      "shared:/data", "-v", f"{tmp_path}:/host", "busybox", "sh", "-c",
                      AWAIT_FILE + "while [ ! -f /data/quit ]; do await /data/quit; done; "
                      "touch /data/gone; exit 3")
        daemon.docker("run", "-d", "--name", "alone", "-v", "shared:/data", "busybox", "sh",
                      "-c", IDLE)
        alone = sandbox_ids(daemon) - pair
        assert len(pair) == 1 and len(alone) == 1
        running = host_state(daemon)
        assert_holds_guests(running)
        pair_mounts = len(host_state(daemon, pair).mounts)
        assert pair_mounts == 5  # the exported directory and four shares

        # hbd stops (its guests run on); while it is down, one guest dies and
        # a container of the other exits.
        daemon.stop()
        (alone_dir,) = (daemon.exec_root / sid for sid in alone)
        os.kill(int((alone_dir / "qemu.pid").read_text()), signal.SIGKILL)
        (data / "quit").touch()
        deadline = time.monotonic() + 15
        while not (data / "gone").exists():
            assert time.monotonic() < deadline, "quitter did not see /data/quit"
            time.sleep(0.1)
        time.sleep(0.5)
        daemon.crash_and_restart()

        assert_nothing_left(daemon, alone)
        state = inspect(daemon, "alone")["State"]
        assert not state["Running"] and state["ExitCode"] == 137, state
        state = inspect(daemon, "quitter")["State"]
        assert not state["Running"] and state["ExitCode"] == 3, state
        assert inspect(daemon, "owner")["State"]["Running"]
        # The quitter's two shares left the guest; the owner's stay.
        deadline = time.monotonic() + 20
        while len(host_state(daemon, pair).mounts) != pair_mounts - 2:
            assert time.monotonic() < deadline, host_state(daemon, pair).mounts
            time.sleep(0.2)
        assert sh(daemon, "owner", "ls /data").split() == ["gone", "quit"]
        daemon.docker("rm", "-f", "owner", "quitter", "alone")
        daemon.docker("volume", "rm", "shared")
        assert_nothing_left(daemon)


# -- a sandbox of several containers across a daemon restart ------------------------------------


def ticker(name: str) -> str:
    """A main process that logs `name N` for N = 0, 1, 2… and stops on SIGTERM."""
    return (f"trap 'exit 0' TERM; i=0; while true; do echo {name} $i; i=$((i+1)); "
            "sleep 0.2; done")


def ticks(daemon: RunningDaemon, container: str) -> list[int]:
    """The numbers of the container's log lines, in order."""
    lines = daemon.docker("logs", container).stdout.decode().split("\n")
    return [int(line.split()[1]) for line in lines if line.startswith(container + " ")]


def wait_ticks(daemon: RunningDaemon, container: str, past: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not ticks(daemon, container) or ticks(daemon, container)[-1] <= past:
        assert time.monotonic() < deadline, (container, ticks(daemon, container)[-5:])
        time.sleep(0.2)


def test_restart_reattaches_a_sandbox_of_three_containers() -> None:
    names = ("owner", "netside", "pidside")
    with hbd_daemon() as daemon:
        daemon.docker("volume", "create", "shared")
        daemon.docker("run", "-d", "--name", "owner", "-v", "shared:/data", "busybox", "sh",
                      "-c", ticker("owner"))
        daemon.docker("run", "-d", "--name", "netside", "--network", "container:owner", "-v",
                      "shared:/data", "busybox", "sh", "-c", ticker("netside"))
        daemon.docker("run", "-d", "--name", "pidside", "--pid", "container:owner", "-v",
                      "shared:/data", "busybox", "sh", "-c", ticker("pidside"))
        ids = {name: inspect(daemon, name)["Id"] for name in names}
        before = host_state(daemon)
        assert_holds_guests(before)
        assert len(before.run_dirs) == 1  # one guest holds all three
        for name in names:
            wait_ticks(daemon, name, 2)
        counted = {name: ticks(daemon, name)[-1] for name in names}

        daemon.crash_and_restart()

        # The same guest, found again with all three in it: the same
        # processes, mounts and taps, nothing more.
        assert host_state(daemon) == before
        listed = daemon.docker("ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"
                               ).stdout.decode().split("\n")
        assert sorted(filter(None, listed)) == sorted(f"{ids[n]} {n}" for n in names)
        # Logs go on where they were, with nothing lost while hbd was down.
        for name in names:
            wait_ticks(daemon, name, counted[name] + 5)
            seen = ticks(daemon, name)
            assert seen == list(range(len(seen))), (name, seen)
        # exec works in each, and each still shares what it shared.
        sh(daemon, "owner", "echo after-restart > /data/marker")
        for name in names:
            assert sh(daemon, name, "cat /data/marker") == "after-restart\n"
        owner_host = sh(daemon, "owner", "hostname")
        assert sh(daemon, "netside", "hostname") == owner_host
        assert sh(daemon, "netside", "ip -o link") == sh(daemon, "owner", "ip -o link")
        assert "echo owner" in sh(daemon, "pidside", "ps -o args")

        # Stopping the network sidecar leaves the owner (and the other) running.
        daemon.docker("stop", "-t", "5", "netside")
        state = inspect(daemon, "netside")["State"]
        assert not state["Running"] and state["ExitCode"] == 0
        for name in ("owner", "pidside"):
            assert inspect(daemon, name)["State"]["Running"], name
            last = ticks(daemon, name)[-1]
            wait_ticks(daemon, name, last + 2)
        assert sh(daemon, "owner", "cat /data/marker") == "after-restart\n"
        assert host_state(daemon).run_dirs == before.run_dirs

        # The owner's pid namespace ends with it, and the container in it
        # (dockerd: exit 137).
        daemon.docker("stop", "-t", "5", "owner")
        assert inspect(daemon, "owner")["State"]["ExitCode"] == 0
        deadline = time.monotonic() + 20
        while inspect(daemon, "pidside")["State"]["Running"]:
            assert time.monotonic() < deadline, "pidside outlived its pid namespace"
            time.sleep(0.2)
        assert inspect(daemon, "pidside")["State"]["ExitCode"] == 137

        daemon.docker("rm", *names)
        daemon.docker("volume", "rm", "shared")
        assert daemon.docker("ps", "-aq").stdout.strip() == b""
        assert_nothing_left(daemon)
