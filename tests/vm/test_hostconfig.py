"""Container options as dockerd applies them, in real guests: --group-add,
--ulimit, --oom-score-adj, --init, kill signals, cgroup settings, sysctls,
--storage-opt, --cpuset-cpus, volume subpaths, --runtime.

Expected values are what dockerd 20.10 + runc print for the same commands on
the same busybox image."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.daemon_fixture import RunningDaemon
from tests.vm.test_lifecycle import Terminal, events, inspect


def run(hbd: RunningDaemon, *args: str, check: bool = True) -> str:
    return hbd.docker("run", "--rm", *args, check=check).stdout.decode()


def groups(hbd: RunningDaemon, *args: str) -> str:
    out = run(hbd, *args, "busybox", "grep", "Groups", "/proc/self/status")
    return out.split(":", 1)[1].strip()


@pytest.fixture
def names(hbd: RunningDaemon) -> Iterator[list[str]]:
    """Containers and volumes a test makes, removed after it."""
    made: list[str] = []
    yield made
    for name in made:
        hbd.docker("rm", "-f", name, check=False)
        hbd.docker("volume", "rm", "-f", name, check=False)


def test_group_add_names_and_numbers_as_runc_sets_them(hbd: RunningDaemon) -> None:
    # The primary group, the user's /etc/group memberships, then --group-add.
    assert groups(hbd) == "0 10"
    assert groups(hbd, "--group-add", "audio", "--group-add", "1234") == "0 10 29 1234"
    assert groups(hbd, "-u", "nobody", "--group-add", "audio", "--group-add", "1234") == \
        "29 1234 65534"
    assert groups(hbd, "-u", "nobody:users", "--group-add", "audio") == "29 100"
    assert groups(hbd, "--group-add", "root", "--group-add", "0") == "0 10"


@pytest.mark.parametrize(("group", "message"), [
    ("nope", "Unable to find group nope: no matching entries in group file"),
    ("-5", "uids and gids must be in range 0-2147483647"),
])
def test_group_add_errors_as_dockerd(hbd: RunningDaemon, names: list[str], group: str,
                                     message: str) -> None:
    names.append(f"gadd-{group}")
    hbd.docker("create", "--name", f"gadd-{group}", "--group-add", group, "busybox", "true")
    out = hbd.docker("start", f"gadd-{group}", check=False)
    assert out.returncode != 0 and message in out.stderr.decode()
    state = inspect(hbd, f"gadd-{group}")["State"]
    assert (state["ExitCode"], state["Error"]) == (128, message)


def test_exec_gets_the_containers_groups_limits_and_oom_score(hbd: RunningDaemon,
                                                              names: list[str]) -> None:
    names.append("procsettings")
    hbd.docker("run", "-d", "--name", "procsettings", "-u", "daemon", "--group-add", "3",
               "--ulimit", "nofile=100:200", "--oom-score-adj", "500", "busybox", "sleep",
               "600")
    main = hbd.docker("exec", "procsettings", "sh", "-c",
                      "grep Groups /proc/1/status; cat /proc/1/oom_score_adj").stdout.decode()
    assert main.split() == ["Groups:", "1", "3", "500"]
    as_root = hbd.docker("exec", "-u", "root", "procsettings", "sh", "-c",
                         "grep Groups /proc/self/status; ulimit -n; ulimit -Hn; "
                         "cat /proc/self/oom_score_adj").stdout.decode()
    assert as_root.split() == ["Groups:", "0", "3", "10", "100", "200", "500"]


def test_init_is_docker_init(hbd: RunningDaemon) -> None:
    out = run(hbd, "--init", "busybox", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline")
    assert out == "/sbin/docker-init -- sh -c tr '\\0' ' ' < /proc/1/cmdline "
    missing = hbd.docker("run", "--rm", "--init", "busybox", "nope", check=False)
    assert missing.returncode == 127
    assert re.fullmatch(rb"\[FATAL tini \(\d+\)\] exec nope failed: No such file or "
                        rb"directory\n", missing.stderr)


def test_kill_signals_exit_128_plus_n_with_dockerds_events(hbd: RunningDaemon,
                                                           names: list[str]) -> None:
    names.append("killinit")
    since = str(int(time.time()))
    hbd.docker("run", "-d", "--name", "killinit", "--init", "busybox", "sleep", "600")
    hbd.docker("kill", "-s", "RTMIN+3", "killinit")
    assert hbd.docker("wait", "killinit").stdout.strip() == b"165"
    hbd.docker("start", "killinit")
    hbd.docker("kill", "-s", "10", "killinit")
    assert hbd.docker("wait", "killinit").stdout.strip() == b"138"
    seen = events(hbd, "--since", since, "--filter", "container=killinit", "--filter", "event=kill",
                  "--filter", "event=die", "--format", "{{.Action}} {{json .Actor.Attributes}}")
    assert [(line.split(" ", 1)[0], json.loads(line.split(" ", 1)[1])) for line in seen] == [
        ("kill", {"image": "busybox", "name": "killinit", "signal": "37"}),
        ("die", {"exitCode": "165", "image": "busybox", "name": "killinit"}),
        ("kill", {"image": "busybox", "name": "killinit", "signal": "10"}),
        ("die", {"exitCode": "138", "image": "busybox", "name": "killinit"}),
    ]
    # Without --init a trap is what a PID 1 has to answer with.
    names.append("killtrap")
    hbd.docker("run", "-d", "--name", "killtrap", "busybox", "sh", "-c",
               'trap "exit 7" USR1; while true; do sleep 0.2; done')
    time.sleep(1)
    hbd.docker("kill", "-s", "SIGUSR1", "killtrap")
    assert hbd.docker("wait", "killtrap").stdout.strip() == b"7"
    bad = hbd.docker("kill", "-s", "65", "killtrap", check=False)
    assert "Cannot kill container: killtrap: The linux daemon does not support signal 65" in \
        bad.stderr.decode()


def test_init_gives_the_terminal_to_the_command(hbd: RunningDaemon) -> None:
    term = Terminal(hbd, "run", "-it", "--rm", "--init", "busybox", "sh")
    term.read_until(b"# ")
    term.send(b"sleep 100; echo interrupted\r")
    time.sleep(1)
    term.send(b"\x03")  # ^C reaches sleep, the foreground group, not the init
    term.read_until(b"interrupted")
    term.send(b"exit 3\r")
    assert term.wait() == 3


def test_cpu_shares_and_memory_reservation_in_the_container_cgroup(
        hbd: RunningDaemon, names: list[str]) -> None:
    names.append("weights")
    hbd.docker("run", "-d", "--name", "weights", "--cpu-shares", "512",
               "--memory-reservation", "64m", "busybox", "sleep", "600")
    read = ["exec", "weights", "cat", "/sys/fs/cgroup/cpu.weight", "/sys/fs/cgroup/memory.low"]
    assert hbd.docker(*read).stdout.split() == [b"20", str(64 * 1024 * 1024).encode()]
    hbd.docker("update", "--cpu-shares", "2048", "--memory-reservation", "32m", "weights")
    assert hbd.docker(*read).stdout.split() == [b"79", str(32 * 1024 * 1024).encode()]


def test_sysctls_in_a_guest_of_its_own(sdk: docker.DockerClient,
                                       hbd: RunningDaemon) -> None:
    # The CLI refuses non-namespaced sysctls itself; the API takes them for a
    # container with a kernel of its own.
    out = sdk.containers.run("busybox", ["cat", "/proc/sys/vm/max_map_count",
                                         "/proc/sys/net/ipv4/ip_forward"], remove=True,
                             sysctls={"vm.max_map_count": "262144",
                                      "net.ipv4.ip_forward": "1"})
    assert out.split() == [b"262144", b"1"]
    missing = hbd.docker("run", "--rm", "--sysctl", "net.ipv4.nope=1", "busybox", "true",
                         check=False)
    assert "open /proc/sys/net/ipv4/nope: no such file or directory" in missing.stderr.decode()
    invalid = hbd.docker("run", "--rm", "--sysctl", "kernel.shmmax=abc", "busybox", "true",
                         check=False)
    assert "write /proc/sys/kernel/shmmax: invalid argument" in invalid.stderr.decode()


def test_storage_opt_size_is_the_writable_layer(hbd: RunningDaemon) -> None:
    df = run(hbd, "--storage-opt", "size=200m", "busybox", "df", "-k", "/").splitlines()
    total_kib = int(df[1].split()[1])
    assert 150 * 1024 < total_kib <= 200 * 1024


def qemu_cpus(pidfile: Path) -> set[str]:
    """Cpus_allowed_list of every thread of a QEMU."""
    allowed = set()
    for task in Path(f"/proc/{pidfile.read_text().strip()}/task").iterdir():
        found = re.search(r"Cpus_allowed_list:\s*(\S+)", (task / "status").read_text())
        assert found is not None
        allowed.add(found.group(1))
    return allowed


def test_cpuset_cpus_pins_the_guest(hbd: RunningDaemon, names: list[str]) -> None:
    names.append("pinned")
    before = set(hbd.exec_root.glob("*/qemu.pid"))
    hbd.docker("run", "-d", "--name", "pinned", "--cpuset-cpus", "1", "busybox", "sleep",
               "600")
    (pidfile,) = set(hbd.exec_root.glob("*/qemu.pid")) - before
    assert hbd.docker("exec", "pinned", "nproc").stdout.strip() == b"1"
    assert qemu_cpus(pidfile) == {"1"}
    hbd.docker("update", "--cpuset-cpus", "0", "pinned")
    assert qemu_cpus(pidfile) == {"0"}
    assert inspect(hbd, "pinned")["HostConfig"]["CpusetCpus"] == "0"


def test_volume_subpaths_shared_and_block(hbd: RunningDaemon, names: list[str]) -> None:
    names += ["subshared", "subblock"]
    hbd.docker("volume", "create", "subshared")
    hbd.docker("volume", "create", "-o", "type=block", "-o", "size=64m", "subblock")
    fill = "mkdir -p /v/app/logs && echo in-sub > /v/app/logs/f && echo top > /v/top"
    run(hbd, "-v", "subshared:/v", "busybox", "sh", "-c", fill)
    run(hbd, "-v", "subblock:/v", "busybox", "sh", "-c",
        fill + " && ln -s /etc /v/out && ln -s app/logs /v/rel")
    for volume in ("subshared", "subblock"):
        mount = f"type=volume,src={volume},dst=/d,volume-subpath=app/logs"
        assert run(hbd, "--mount", mount, "busybox", "sh", "-c", "ls /d; cat /d/f") == \
            "f\nin-sub\n"
        missing = hbd.docker("run", "--rm", "--mount", mount.replace("logs", "nope"),
                             "busybox", "true", check=False)
        assert missing.returncode != 0
        assert "cannot access path" in missing.stderr.decode()
        assert "no such file or directory" in missing.stderr.decode()
    mountpoint = json.loads(hbd.docker("volume", "inspect", "subshared").stdout)[0]["Mountpoint"]
    missing = hbd.docker("run", "--rm", "--mount",
                         "type=volume,src=subshared,dst=/d,volume-subpath=app/nope", "busybox",
                         "true", check=False)
    assert (f"cannot access path {mountpoint}/app/nope: lstat {mountpoint}/app/nope: no such "
            "file or directory") in missing.stderr.decode()
    # In the guest too, a subpath resolves beneath its volume or not at all.
    assert run(hbd, "--mount", "type=volume,src=subblock,dst=/d,volume-subpath=rel",
               "busybox", "cat", "/d/f") == "in-sub\n"
    escape = hbd.docker("run", "--rm", "--mount",
                        "type=volume,src=subblock,dst=/d,volume-subpath=out", "busybox", "true",
                        check=False)
    assert "path concatenation escapes the base directory" in escape.stderr.decode()


def test_runtime_runc_is_hbds(hbd: RunningDaemon) -> None:
    assert run(hbd, "--runtime", "runc", "busybox", "uname", "-r").strip().endswith("-hbd")
    bad = hbd.docker("run", "--rm", "--runtime", "nope", "busybox", "true", check=False)
    assert "Unknown runtime specified nope" in bad.stderr.decode()
