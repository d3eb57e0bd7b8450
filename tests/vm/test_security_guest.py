"""Docker's security semantics inside the guest: capability sets, seccomp,
no-new-privileges, masked and read-only paths, and a guest init that the
container cannot see, signal or reach.

Expected values are what dockerd 20.10.24 + runc 1.1.5 print for the same
commands on the same busybox image (and tests/vm/security/probe.c), except
where the kernels differ: a privileged container has every capability its
kernel knows (the guest's 6.1 knows 41: 000001ffffffffff), and keyctl
without a filter is ENOSYS in a guest kernel built without keys."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_fixture import RunningDaemon

PROBE_SOURCE = Path(__file__).resolve().parent / "security" / "probe.c"
DOCKER_DEFAULT = "00000000a80425fb"
NET_ADMIN_ADDED = "00000000a80435fb"
GUEST_ALL = "000001ffffffffff"
NONE = "0000000000000000"
EPERM = "Operation not permitted"


def status(text: str) -> dict[str, str]:
    """The Cap*, Seccomp and NoNewPrivs lines of /proc/self/status."""
    return dict(re.findall(r"^(Cap\w+|Seccomp|NoNewPrivs):\s+(\S+)$", text, re.M))


def caps(bnd: str, eff: str) -> dict[str, str]:
    """runc's sets as /proc shows them: inheritable and ambient empty,
    permitted as effective."""
    return {"CapInh": NONE, "CapPrm": eff, "CapEff": eff, "CapBnd": bnd, "CapAmb": NONE}


def listing(out: subprocess.CompletedProcess[bytes]) -> dict[str, str]:
    """probe's output: `what=result` and `dir: entries` lines."""
    return dict(re.split("[=:]", line, maxsplit=1) for line in out.stdout.decode().splitlines())


def run_status(hbd: RunningDaemon, *args: str) -> dict[str, str]:
    out = hbd.docker("run", "--rm", *args, "busybox", "cat", "/proc/self/status")
    return status(out.stdout.decode())


@pytest.fixture(scope="module")
def probe_dir() -> Iterator[Path]:
    """probe.c built static, in a directory containers bind read-only at /t."""
    with tempfile.TemporaryDirectory(prefix="guestsec-probe-") as tmp:
        subprocess.run(["musl-gcc", "-static", "-Os", "-o", f"{tmp}/probe", str(PROBE_SOURCE)],
                       check=True)
        Path(tmp).chmod(0o755)
        yield Path(tmp)


@pytest.fixture
def names(hbd: RunningDaemon) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        hbd.docker("rm", "-f", name, check=False)


def test_capability_sets_as_dockerd(hbd: RunningDaemon) -> None:
    cases: list[tuple[tuple[str, ...], dict[str, str]]] = [
        ((), caps(DOCKER_DEFAULT, DOCKER_DEFAULT)),
        (("--cap-drop", "ALL"), caps(NONE, NONE)),
        (("--cap-add", "NET_ADMIN"), caps(NET_ADMIN_ADDED, NET_ADMIN_ADDED)),
        (("--cap-drop", "ALL", "--cap-add", "chown"), caps("0000000000000001",
                                                           "0000000000000001")),
        (("--privileged",), caps(GUEST_ALL, GUEST_ALL)),
        # A non-root user keeps the bounding set; execve clears the rest.
        (("--user", "1000"), caps(DOCKER_DEFAULT, NONE)),
        (("--user", "1000", "--cap-add", "NET_ADMIN"), caps(NET_ADMIN_ADDED, NONE)),
    ]
    for args, expected in cases:
        got = run_status(hbd, *args)
        assert {k: got[k] for k in expected} == expected, args
        assert got["Seccomp"] == ("0" if "--privileged" in args else "2"), args
        assert got["NoNewPrivs"] == "0", args


def test_unknown_capability_refused_as_dockerd(hbd: RunningDaemon) -> None:
    out = hbd.docker("run", "--rm", "--cap-add", "FOO", "busybox", "true", check=False)
    assert out.returncode != 0
    assert 'invalid CapAdd: unknown capability: "CAP_FOO"' in out.stderr.decode()


def test_seccomp_profiles_and_no_new_privileges(hbd: RunningDaemon, probe_dir: Path,
                                                tmp_path: Path) -> None:
    unconfined = run_status(hbd, "--security-opt", "seccomp=unconfined")
    assert (unconfined["Seccomp"], unconfined["CapEff"]) == ("0", DOCKER_DEFAULT)
    nnp = run_status(hbd, "--security-opt", "no-new-privileges")
    assert (nnp["NoNewPrivs"], nnp["Seccomp"]) == ("1", "2")
    bind = ("-v", f"{probe_dir}:/t:ro")
    default = hbd.docker("run", "--rm", *bind, "busybox", "/t/probe", "syscalls")
    assert default.stdout.decode().splitlines() == [f"keyctl={EPERM}", f"unshare={EPERM}"]
    # The profile's rules on CAP_SYS_ADMIN follow the container's caps.
    admin = hbd.docker("run", "--rm", *bind, "--cap-add", "SYS_ADMIN", "busybox", "/t/probe",
                       "syscalls")
    assert admin.stdout.decode().splitlines() == [f"keyctl={EPERM}", "unshare=ok"]
    # The CLI sends a profile file's content.
    profile = tmp_path / "no-mkdir.json"
    profile.write_text('{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir",'
                       '"mkdirat","nosuchcall"],"action":"SCMP_ACT_ERRNO"}]}')
    custom = hbd.docker("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox",
                        "sh", "-c", "mkdir /x 2>&1; ls -d /etc", check=False)
    assert custom.stdout.decode().splitlines() == [
        f"mkdir: can't create directory '/x': {EPERM}", "/etc"]
    profile.write_text('{"defaultAction":"SCMP_ACT_BAD"}')
    bad = hbd.docker("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox", "true",
                     check=False)
    assert "string SCMP_ACT_BAD is not a valid action for seccomp" in bad.stderr.decode()


def test_masked_and_readonly_paths(hbd: RunningDaemon) -> None:
    script = ("wc -c < /proc/timer_list; ls /sys/firmware | wc -l; "
              "grep -c ' /proc/sys proc ro' /proc/mounts; "
              "echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo ro")
    default = hbd.docker("run", "--rm", "busybox", "sh", "-c", script).stdout.decode()
    assert default.split() == ["0", "0", "1", "ro"]
    for lifted in (("--security-opt", "systempaths=unconfined"), ("--privileged",)):
        out = hbd.docker("run", "--rm", *lifted, "busybox", "sh", "-c", script).stdout.decode()
        timer_list, _, readonly_sys, *_ = out.split()
        assert int(timer_list) > 0 and readonly_sys == "0", lifted


def test_the_guest_init_is_out_of_reach(hbd: RunningDaemon, probe_dir: Path,
                                        names: list[str]) -> None:
    names.append("guestsec-reach")
    hbd.docker("run", "-d", "--name", "guestsec-reach", "-v", f"{probe_dir}:/t:ro", "busybox",
               "sleep", "600")
    # Only the container's own processes: the init is in no namespace it sees.
    pids = hbd.docker("exec", "guestsec-reach", "sh", "-c",
                      "ls /proc | grep '^[0-9]' | sort -n | tr '\\n' ' '; "
                      "cat /proc/1/cmdline | tr '\\0' ' '").stdout.decode()
    assert pids.startswith("1 ") and pids.endswith("sleep 600 ")
    # Signalling its pid 1 from inside does not reach the init, nor kill the container.
    hbd.docker("exec", "guestsec-reach", "kill", "-9", "1", check=False)
    assert hbd.docker("inspect", "-f", "{{.State.Running}}", "guestsec-reach")\
        .stdout.decode().strip() == "true"
    # Docker's /dev only: no virtio ports, no disks.
    dev = hbd.docker("exec", "guestsec-reach", "ls", "/dev").stdout.decode().split()
    assert sorted(dev) == ["fd", "full", "mqueue", "null", "ptmx", "pts", "random",
                           "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"]
    # Leaving the container's root (CAP_SYS_CHROOT is a default cap) leads
    # back into it, as with runc: nothing of the init's is there.
    escaped = listing(hbd.docker("exec", "guestsec-reach", "/t/probe", "escape"))
    assert escaped["escape"] == "ok" and "t" in escaped["/"].split()
    assert escaped["/run/hbd"] == " (none)"
    assert "disks" not in escaped["/run/hbd"]
    # exec gets the container's sets; --privileged every one; a user none.
    as_exec = status(hbd.docker("exec", "guestsec-reach", "cat", "/proc/self/status")
                     .stdout.decode())
    assert (as_exec["CapEff"], as_exec["CapBnd"], as_exec["Seccomp"]) == \
        (DOCKER_DEFAULT, DOCKER_DEFAULT, "2")
    privileged = status(hbd.docker("exec", "--privileged", "guestsec-reach", "cat",
                                   "/proc/self/status").stdout.decode())
    assert (privileged["CapEff"], privileged["CapBnd"]) == (GUEST_ALL, GUEST_ALL)
    user = status(hbd.docker("exec", "-u", "1000", "guestsec-reach", "cat",
                             "/proc/self/status").stdout.decode())
    assert (user["CapEff"], user["CapBnd"]) == (NONE, DOCKER_DEFAULT)


def test_init_mounts_gone_from_the_container_namespace(hbd: RunningDaemon,
                                                       probe_dir: Path) -> None:
    """With CAP_SYS_ADMIN a container can unmount its own root and re-enter
    its mount namespace: beneath lies the guest's initramfs, and none of the
    init's mounts (its /dev with the agent's port and the disks, its /proc,
    the disks under /run/hbd) came into the namespace."""
    out = listing(hbd.docker("run", "--rm", "--cap-add", "SYS_ADMIN", "-v",
                             f"{probe_dir}:/t:ro", "busybox", "/t/probe", "unmount"))
    assert (out["unmount"], out["setns"]) == ("ok", "ok")
    assert "init" in out["/"].split() and "bin" not in out["/"].split()
    # The initramfs's own /dev/console node, which the kernel makes, and the
    # init's mount points, empty: no mounts.
    assert out["/dev"].split() == ["console"] and out["/proc"].split() == []
    assert out["/run/hbd/disks/image"].split() in ([], ["(none)"])
