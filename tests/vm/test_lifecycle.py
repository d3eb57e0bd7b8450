"""Issue 3: the whole container lifecycle, streams and exec, with real guests."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import termios
import threading
import time
from collections.abc import Iterator

import docker
import pytest

from tests.daemon_fixture import DOCKER_CLI, RunningDaemon, hbd_daemon


def inspect(hbd: RunningDaemon, ref: str) -> dict:  # type: ignore[type-arg]
    return json.loads(hbd.docker("inspect", ref).stdout)[0]


def events(hbd: RunningDaemon, *args: str) -> list[str]:
    """`docker events --until 0s`: the CLI sends whole seconds, so events of the
    current second are not yet "until now" (dockerd behaves the same)."""
    time.sleep(1.1)
    return hbd.docker("events", "--until", "0s", *args).stdout.decode().splitlines()


def wait_for(predicate, timeout: float = 30, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class Terminal:
    """A docker CLI command on a real pseudo-terminal, as a person runs it."""

    def __init__(self, hbd: RunningDaemon, *args: str, rows: int = 30, cols: int = 100) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ["DOCKER_HOST"] = hbd.host
            os.execv(DOCKER_CLI, [DOCKER_CLI, *args])
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.output = b""

    def read_until(self, needle: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:
                    break
        assert needle in self.output, self.output[-500:]
        return self.output

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._drain()
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    self.output += os.read(self.fd, 4096)
        raise AssertionError("docker CLI did not exit")

    def _drain(self) -> None:
        """What the CLI wrote before it exited and was not read yet (its last
        words, such as "read escape sequence", can come just before the exit)."""
        while select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the terminal's other end is closed and empty
                return
            if not chunk:
                return
            self.output += chunk


@pytest.fixture
def running(hbd: RunningDaemon) -> Iterator[str]:
    cid = hbd.docker("run", "-d", "busybox", "sleep", "600").stdout.decode().strip()
    yield cid
    hbd.docker("rm", "-f", cid, check=False)


def test_detached_logs_follow_tail_since_timestamps(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "busybox", "sh", "-c",
                     "for i in 1 2 3; do echo line$i; sleep 1; done; echo done >&2"
                     ).stdout.decode().strip()
    try:
        followed = hbd.docker("logs", "-f", cid)
        assert followed.stdout == b"line1\nline2\nline3\n"
        assert followed.stderr == b"done\n"
        assert hbd.docker("logs", "--tail", "1", cid).stdout == b""
        assert hbd.docker("logs", "--tail", "2", cid).stdout == b"line3\n"
        stamped = hbd.docker("logs", "-t", cid).stdout.decode().splitlines()
        times = [line.split(" ", 1)[0] for line in stamped]
        assert all(t.endswith("Z") for t in times) and times == sorted(times)
        middle = times[1]
        assert hbd.docker("logs", "--since", middle, cid).stdout == b"line2\nline3\n"
        assert hbd.docker("logs", "--until", middle, cid).stdout == b"line1\nline2\n"
    finally:
        hbd.docker("rm", cid)


def test_stdin_without_tty_ends_with_eof(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "--rm", "-i", "busybox", "sh", "-c", "wc -l; cat /dev/null",
                     input=b"a\nb\nc\n")
    assert out.stdout.strip() == b"3"


def test_interactive_tty_run_resize_and_exit_code(hbd: RunningDaemon) -> None:
    term = Terminal(hbd, "run", "-it", "--rm", "busybox", "sh", rows=33, cols=111)
    term.read_until(b"# ")
    term.send(b"stty size; tty\r")
    term.read_until(b"/dev/pts/0")
    assert b"33 111" in term.output
    term.resize(20, 70)
    time.sleep(1)
    term.send(b"stty size\r")
    term.read_until(b"20 70")
    term.send(b"exit 7\r")
    assert term.wait() == 7


def test_detach_keys_and_attach(hbd: RunningDaemon) -> None:
    name = "lifecycle-detach"
    term = Terminal(hbd, "run", "-it", "--name", name, "busybox", "sh")
    try:
        term.read_until(b"# ")
        term.send(b"echo before\r")
        term.read_until(b"before")
        term.send(b"\x10\x11")  # ctrl-p ctrl-q
        assert term.wait() == 0
        assert inspect(hbd, name)["State"]["Running"] is True
        again = Terminal(hbd, "attach", name)
        time.sleep(1)
        again.send(b"echo after\r")
        again.read_until(b"after")
        again.send(b"exit 3\r")
        assert again.wait() == 3
        assert inspect(hbd, name)["State"]["ExitCode"] == 3
    finally:
        hbd.docker("rm", "-f", name, check=False)


def test_exec_tty_env_user_workdir(hbd: RunningDaemon, running: str) -> None:
    term = Terminal(hbd, "exec", "-it", running, "sh", "-c", "tty; stty size; exit 4",
                    rows=40, cols=120)
    assert term.wait() == 4
    assert b"/dev/pts/" in term.output and b"40 120" in term.output
    out = hbd.docker("exec", "-e", "X=1", "-u", "nobody", "-w", "/tmp", running, "sh", "-c",
                     'echo "$X $(id -un) $(pwd)"')
    assert out.stdout == b"1 nobody /tmp\n"
    # The exec joins the container: it sees the main process as PID 1.
    ps = hbd.docker("exec", running, "ps", "-o", "pid,args").stdout.decode()
    assert any(line.split(None, 1) == ["1", "sleep 600"] for line in ps.splitlines())


def test_exec_inspect_and_many_concurrent(sdk: docker.DockerClient, running: str) -> None:
    container = sdk.containers.get(running)
    api = sdk.api
    exec_id = api.exec_create(running, ["sh", "-c", "exit 6"])["Id"]
    api.exec_start(exec_id)
    info = api.exec_inspect(exec_id)
    assert (info["ExitCode"], info["Running"]) == (6, False)
    results: list[tuple[int, bytes]] = []

    def one(i: int) -> None:
        results.append(container.exec_run(["sh", "-c", f"echo {i}"]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(int(out) for code, out in results if code == 0) == list(range(8))


def test_stop_signals_and_exit_codes(hbd: RunningDaemon) -> None:
    # PID 1 without a handler ignores SIGTERM: stop waits, then SIGKILL -> 137.
    cid = hbd.docker("run", "-d", "busybox", "sleep", "600").stdout.decode().strip()
    started = time.monotonic()
    hbd.docker("stop", "-t", "1", cid)
    assert 1 <= time.monotonic() - started < 15
    assert inspect(hbd, cid)["State"]["ExitCode"] == 137
    hbd.docker("rm", cid)
    # A handler for SIGTERM: exits 143 right away.
    cid = hbd.docker("run", "-d", "busybox", "sh", "-c",
                     "trap 'exit 143' TERM; while true; do sleep 0.1; done"
                     ).stdout.decode().strip()
    time.sleep(1)
    started = time.monotonic()
    hbd.docker("stop", "-t", "10", cid)
    assert time.monotonic() - started < 8
    assert inspect(hbd, cid)["State"]["ExitCode"] == 143
    hbd.docker("rm", cid)
    # StopSignal from the config; kill -s.
    cid = hbd.docker("run", "-d", "--stop-signal", "SIGUSR1", "busybox", "sh", "-c",
                     "trap 'exit 10' USR1; trap 'exit 12' USR2; while true; do sleep 0.1; done"
                     ).stdout.decode().strip()
    time.sleep(1)
    hbd.docker("kill", "-s", "USR2", cid)
    assert hbd.docker("wait", cid).stdout == b"12\n"
    hbd.docker("start", cid)
    time.sleep(1)
    hbd.docker("stop", cid)
    assert inspect(hbd, cid)["State"]["ExitCode"] == 10
    bad = hbd.docker("kill", "-s", "NOPE", cid, check=False)
    assert (bad.returncode == 1 and b"is not running" in bad.stderr) or b"Invalid signal" in \
        bad.stderr
    hbd.docker("rm", cid)


def test_restart_keeps_the_scratch_disk(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "busybox", "sh", "-c",
                     "echo $(($(cat /count 2>/dev/null || echo 0)+1)) > /count; sleep 600"
                     ).stdout.decode().strip()
    try:
        time.sleep(1)
        hbd.docker("restart", "-t", "1", cid)
        time.sleep(1)
        assert hbd.docker("exec", cid, "cat", "/count").stdout == b"2\n"
        assert "restart" in events(hbd, "--since", "60s", "--filter", f"container={cid}",
                                   "--format", "{{.Action}}")
    finally:
        hbd.docker("rm", "-f", cid)


def test_pause_freezes_and_unpause_thaws(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "busybox", "sh", "-c",
                     "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done"
                     ).stdout.decode().strip()
    try:
        time.sleep(1)
        hbd.docker("pause", cid)
        assert inspect(hbd, cid)["State"]["Paused"] is True
        assert inspect(hbd, cid)["State"]["Status"] == "paused"
        frozen = hbd.docker("logs", cid).stdout
        time.sleep(1.5)
        assert hbd.docker("logs", cid).stdout == frozen
        again = hbd.docker("pause", cid, check=False)
        assert b"is already paused" in again.stderr
        exec_paused = hbd.docker("exec", cid, "true", check=False)
        assert b"is paused" in exec_paused.stderr
        hbd.docker("unpause", cid)
        time.sleep(1.5)
        assert len(hbd.docker("logs", cid).stdout) > len(frozen)
        not_paused = hbd.docker("unpause", cid, check=False)
        assert b"is not paused" in not_paused.stderr
    finally:
        hbd.docker("rm", "-f", cid)


def test_wait_conditions_rename_top(hbd: RunningDaemon, sdk: docker.DockerClient) -> None:
    c = sdk.containers.create("busybox", ["sh", "-c", "sleep 2; exit 4"], name="lc-wait")
    try:
        result: dict = {}  # type: ignore[type-arg]
        waiter = threading.Thread(
            target=lambda: result.update(c.wait(condition="next-exit", timeout=60)))
        waiter.start()
        c.start()
        c.rename("lc-renamed")
        top = sdk.api.top(c.id)
        assert top["Titles"][:3] == ["UID", "PID", "PPID"]
        assert any("sleep 2" in row[-1] or "sh -c" in row[-1] for row in top["Processes"])
        waiter.join(60)
        assert result["StatusCode"] == 4
        assert sdk.containers.get("lc-renamed").id == c.id
    finally:
        c.remove(force=True)


def test_stats_memory_and_cpu_from_the_guest(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "-m", "96m", "--cpus", "0.5", "busybox", "sh", "-c",
                     "while true; do :; done").stdout.decode().strip()
    try:
        time.sleep(2)
        line = hbd.docker("stats", "--no-stream", "--format",
                          "{{.CPUPerc}} {{.MemUsage}}", cid).stdout.decode()
        cpu, usage = line.split(" ", 1)
        assert 20 <= float(cpu.rstrip("%")) <= 75, line
        assert usage.strip().endswith("/ 96MiB"), line
        free = hbd.docker("exec", cid, "free", "-m").stdout.decode().splitlines()[1].split()
        assert 90 <= int(free[1]) <= 100, free
        warnings = hbd.docker("update", "--memory", "64m", "--memory-swap", "-1", cid)
        assert warnings.returncode == 0
        assert hbd.docker("exec", cid, "cat", "/sys/fs/cgroup/memory.max").stdout == \
            b"67108864\n"
        free = hbd.docker("exec", cid, "free", "-m").stdout.decode().splitlines()[1].split()
        assert int(free[1]) <= 70, free
        hbd.docker("update", "--cpus", "0.25", cid)
        assert hbd.docker("exec", cid, "cat", "/sys/fs/cgroup/cpu.max").stdout == \
            b"25000 100000\n"
    finally:
        hbd.docker("rm", "-f", cid)


def test_oom_kill_is_reported(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "-m", "64m", "--name", "lc-oom", "busybox", "sh", "-c",
                     "x=a; while true; do x=$x$x; done", check=False)
    try:
        assert out.returncode == 137
        state = inspect(hbd, "lc-oom")["State"]
        assert (state["OOMKilled"], state["ExitCode"]) == (True, 137)
    finally:
        hbd.docker("rm", "lc-oom")


def test_restart_policies(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "--restart", "on-failure:2", "busybox", "sh", "-c",
                     "exit 3").stdout.decode().strip()
    try:
        wait_for(lambda: inspect(hbd, cid)["RestartCount"] == 2 and
                 inspect(hbd, cid)["State"]["Status"] == "exited", timeout=60)
        assert inspect(hbd, cid)["State"]["ExitCode"] == 3
    finally:
        hbd.docker("rm", "-f", cid)
    cid = hbd.docker("run", "-d", "--restart", "always", "busybox", "sleep", "600"
                     ).stdout.decode().strip()
    try:
        pid = inspect(hbd, cid)["State"]["Pid"]
        os.kill(pid, signal.SIGKILL)  # the guest's QEMU dies under it
        wait_for(lambda: inspect(hbd, cid)["RestartCount"] >= 1 and
                 inspect(hbd, cid)["State"]["Running"] and
                 inspect(hbd, cid)["State"]["Pid"] != pid, timeout=60)
        died = events(hbd, "--since", "120s", "--filter", f"container={cid}", "--filter",
                      "event=die", "--format", "{{.Actor.Attributes.exitCode}}")
        assert died and died[0] != "0"
        hbd.docker("stop", "-t", "1", cid)
        time.sleep(1)
        assert inspect(hbd, cid)["State"]["Running"] is False  # stopped by hand: stays so
    finally:
        hbd.docker("rm", "-f", cid)


def test_killed_guest_without_policy_is_exited_nonzero(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "busybox", "sleep", "600").stdout.decode().strip()
    try:
        os.kill(inspect(hbd, cid)["State"]["Pid"], signal.SIGKILL)
        state = wait_for(lambda: (s := inspect(hbd, cid)["State"])["Status"] == "exited" and s)
        assert state["ExitCode"] != 0
    finally:
        hbd.docker("rm", "-f", cid)


def test_healthcheck_states(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "--health-cmd", "test -f /tmp/ok", "--health-interval",
                     "1s", "--health-retries", "2", "busybox", "sleep", "600"
                     ).stdout.decode().strip()
    try:
        wait_for(lambda: inspect(hbd, cid)["State"]["Health"]["Status"] == "unhealthy")
        hbd.docker("exec", cid, "touch", "/tmp/ok")
        wait_for(lambda: inspect(hbd, cid)["State"]["Health"]["Status"] == "healthy")
        listed = hbd.docker("ps", "--filter", "health=healthy", "--format", "{{.ID}} {{.Status}}"
                            ).stdout.decode()
        assert cid[:12] in listed and "(healthy)" in listed
        actions = events(hbd, "--since", "120s", "--filter", f"container={cid}",
                         "--format", "{{.Action}}")
        assert "health_status: unhealthy" in actions and "health_status: healthy" in actions
    finally:
        hbd.docker("rm", "-f", cid)


def test_events_filters_and_ps_formats(hbd: RunningDaemon) -> None:
    since = str(int(time.time()))
    hbd.docker("run", "--name", "lc-events", "--label", "team=a", "busybox", "true")
    try:
        actions = events(hbd, "--since", since, "--filter", "label=team=a",
                         "--format", "{{.Type}} {{.Action}}")
        # As dockerd: `docker run` attaches before it starts.
        assert actions[:3] == ["container create", "container attach", "container start"]
        assert "container die" in actions
        ps = hbd.docker("ps", "-a", "--filter", "label=team=a", "--filter", "exited=0",
                        "--format", "{{.Names}}|{{.Image}}|{{.Command}}|{{.Status}}"
                        ).stdout.decode().strip()
        name, image, command, status = ps.split("|")
        assert (name, image, command) == ("lc-events", "busybox", '"true"')
        assert status.startswith("Exited (0)")
        assert hbd.docker("ps", "-a", "-q", "--filter", "ancestor=busybox",
                          "--filter", "name=lc-events").stdout.strip()
    finally:
        hbd.docker("rm", "lc-events")


def test_rm_force_and_prune(hbd: RunningDaemon) -> None:
    cid = hbd.docker("run", "-d", "busybox", "sleep", "600").stdout.decode().strip()
    refused = hbd.docker("rm", cid, check=False)
    assert b"cannot remove a running container" in refused.stderr.lower()
    hbd.docker("rm", "-f", cid)
    assert hbd.docker("inspect", cid, check=False).returncode != 0
    done = hbd.docker("run", "-d", "busybox", "true").stdout.decode().strip()
    hbd.docker("wait", done)
    pruned = hbd.docker("container", "prune", "-f").stdout.decode()
    assert done in pruned


def test_bad_requests(hbd: RunningDaemon, running: str) -> None:
    created = hbd.docker("create", "busybox", "true").stdout.decode().strip()
    try:
        out = hbd.docker("exec", created, "true", check=False)
        assert out.returncode != 0 and b"is not running" in out.stderr
    finally:
        hbd.docker("rm", created)
    assert hbd.docker("start", running).returncode == 0  # 304 is not an error
    out = hbd.docker("kill", "-s", "SIGBOGUS", running, check=False)
    assert b"Invalid signal: SIGBOGUS" in out.stderr


def test_daemon_restart_reattaches(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("restart")
    with hbd_daemon(base=base) as first:
        first.docker("run", "-d", "--name", "survivor", "busybox", "sh", "-c",
                     "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done")
        first.docker("run", "-d", "--name", "finisher", "busybox", "sh", "-c",
                     "sleep 3; echo last words; exit 9")
        first.docker("run", "--name", "exited", "busybox", "echo", "kept")
        time.sleep(1)
        qemu_pid = inspect(first, "survivor")["State"]["Pid"]
        first.process.kill()
        first.process.wait()
        time.sleep(4)  # the finisher exits while no daemon listens
        os.kill(qemu_pid, 0)  # the guest outlived the daemon
        first.crash_and_restart()
        survivor = inspect(first, "survivor")["State"]
        assert survivor["Running"] and survivor["Pid"] == qemu_pid
        ticks = first.docker("logs", "survivor").stdout.decode().split("\n")
        numbers = [int(t.split()[1]) for t in ticks if t]
        assert numbers == list(range(len(numbers))), "no output lost across the restart"
        assert first.docker("exec", "survivor", "echo", "hi").stdout == b"hi\n"
        finisher = inspect(first, "finisher")["State"]
        assert (finisher["Status"], finisher["ExitCode"]) == ("exited", 9)
        assert first.docker("logs", "finisher").stdout == b"last words\n"
        assert first.docker("logs", "exited").stdout == b"kept\n"
        first.docker("stop", "-t", "1", "survivor")
        assert first.docker("wait", "survivor").stdout == b"137\n"
