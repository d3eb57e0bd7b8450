"""The VM boundary on the host: each guest's QEMU (and virtiofsd) jailed,
bounded by a cgroup, and hbd's files private; a removed guest leaves no
jail, mount or cgroup behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_fixture import RunningDaemon, hbd_daemon, mounts_under
from tests.vm.test_template import wait_template

# What a jailed QEMU may see at its root (hbd.drivers.jail).
JAIL_ENTRIES = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev",
                "proc", "guest"}


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    with hbd_daemon() as d:
        wait_template(d)
        yield d


def run(d: RunningDaemon, name: str, *args: str) -> str:
    d.docker("rm", "-f", name, check=False)
    out = d.docker("run", "-d", "--name", name, *args, "busybox", "sleep", "600")
    return out.stdout.decode().strip()


def qemu_pid(d: RunningDaemon, name: str) -> int:
    return int(d.docker("inspect", "-f", "{{.State.Pid}}", name).stdout)


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def cgroup_dirs(pid: int) -> dict[str, Path]:
    """The cgroup directory of `pid` per controller ("" for cgroup v2)."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if after[0] == "cgroup2":
            mounts[""] = Path(fields[4])
        elif after[0] == "cgroup":
            for option in after[2].split(","):
                mounts[option] = Path(fields[4])
    dirs = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            if controller in mounts:
                dirs[controller] = mounts[controller] / path.lstrip("/")
    return dirs


def limits(pid: int) -> tuple[int, int]:
    """(memory bound in bytes, pids bound) of the cgroup `pid` is in."""
    dirs = cgroup_dirs(pid)
    if "memory" in dirs:  # cgroup v1
        memory = (dirs["memory"] / "memory.limit_in_bytes").read_text()
        pids = (dirs["pids"] / "pids.max").read_text()
    else:
        memory = (dirs[""] / "memory.max").read_text()
        pids = (dirs[""] / "pids.max").read_text()
    return int(memory), int(pids)


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_qemu_runs_unprivileged_under_seccomp(daemon: RunningDaemon) -> None:
    run(daemon, "jail-seccomp")
    pid = qemu_pid(daemon, "jail-seccomp")
    s = status(pid)
    assert s["Name"].startswith("qemu-system")
    assert all(int(uid) != 0 for uid in s["Uid"].split()), s["Uid"]
    assert all(int(gid) != 0 for gid in s["Gid"].split()), s["Gid"]
    assert s["Groups"] == ""
    assert s["Seccomp"] == "2"
    assert s["NoNewPrivs"] == "1"
    assert int(s["CapEff"], 16) == 0 and int(s["CapBnd"], 16) != 0
    daemon.docker("rm", "-f", "jail-seccomp")


def test_qemu_sees_only_its_jail(daemon: RunningDaemon) -> None:
    run(daemon, "jail-root")
    pid = qemu_pid(daemon, "jail-root")
    root = Path(f"/proc/{pid}/root")
    assert (root.stat().st_dev, root.stat().st_ino) != (os.stat("/").st_dev, os.stat("/").st_ino)
    assert set(os.listdir(root)) <= JAIL_ENTRIES, os.listdir(root)
    for host_path in (daemon.data_root, daemon.exec_root, Path("/root"), Path("/home")):
        assert not (root / str(host_path).lstrip("/")).exists(), host_path
    # Its namespace has the jail's mounts alone, and its /proc shows an
    # unprivileged reader (QEMU) no process but its own.
    mounts = {line.split()[4]: line for line in
              Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}
    assert set(mounts) <= {"/", "/usr", "/etc/ld.so.cache", "/dev/null", "/dev/zero",
                           "/dev/urandom", "/dev/random", "/guest/vmlinux", "/guest/initrd",
                           "/proc", "/lib", "/lib64", "/bin", "/sbin"}, sorted(mounts)
    assert "hidepid=" in mounts["/proc"] and " ro," in mounts["/usr"] + ","
    # No host path of hbd's reaches its command line: disks, sockets and the
    # console are descriptors.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert str(daemon.data_root) not in argv and str(daemon.exec_root) not in argv
    assert "/dev/fdset/" in argv and "-sandbox" in argv
    daemon.docker("rm", "-f", "jail-root")


def test_qemu_is_bounded_by_its_cgroup(daemon: RunningDaemon) -> None:
    run(daemon, "jail-cgroup", "--memory", "128m")
    pid = qemu_pid(daemon, "jail-cgroup")
    memory, pids = limits(pid)
    # Guest RAM plus overhead: far below the host's memory, above the guest's.
    assert 128 * 2**20 < memory <= 512 * 2**20, memory
    assert memory < host_memory()
    assert 8 < pids <= 1024
    # QEMU was in it from its start: its group holds it alone.
    for group in cgroup_dirs(pid).values():
        if (group / "cgroup.procs").exists() and group.name != "":
            procs = (group / "cgroup.procs").read_text().split()
            if group.parent.name.startswith("hbd-"):
                assert procs == [str(pid)], (group, procs)
    daemon.docker("rm", "-f", "jail-cgroup")


def test_roots_and_disks_are_private(daemon: RunningDaemon) -> None:
    for root in (daemon.data_root, daemon.exec_root):
        st = root.stat()
        assert stat.S_IMODE(st.st_mode) == 0o710 and st.st_uid == 0, root
    cid = run(daemon, "jail-disks")
    image_disks = list((daemon.data_root / "image" / "disks").iterdir())
    assert image_disks
    for disk in image_disks:
        assert stat.S_IMODE(disk.stat().st_mode) == 0o600, disk
    assert stat.S_IMODE((daemon.data_root / "image" / "tmp").stat().st_mode) == 0o700
    scratch = list(daemon.data_root.glob(f"**/{cid}/scratch.qcow2"))
    assert scratch and stat.S_IMODE(scratch[0].stat().st_mode) == 0o600
    daemon.docker("volume", "create", "-o", "type=block", "-o", "size=64m", "jailblock")
    volume = daemon.data_root / "volumes" / "jailblock" / "disk.qcow2"
    assert stat.S_IMODE(volume.stat().st_mode) == 0o600
    daemon.docker("rm", "-f", "jail-disks")
    daemon.docker("volume", "rm", "jailblock")


def test_block_volume_works_through_passed_descriptors(daemon: RunningDaemon) -> None:
    """A block volume (qcow2 over a backing file: both passed as descriptors)
    at boot and hot-added to a running guest."""
    daemon.docker("volume", "create", "-o", "type=block", "-o", "size=64m", "jailvol")
    run(daemon, "jail-vol", "-v", "jailvol:/data")
    daemon.docker("exec", "jail-vol", "sh", "-c", "echo kept > /data/f && sync")
    daemon.docker("rm", "-f", "jail-vol")
    out = daemon.docker("run", "--rm", "-v", "jailvol:/data", "busybox", "cat", "/data/f")
    assert out.stdout.strip() == b"kept"
    daemon.docker("volume", "rm", "jailvol")


def test_virtiofsd_has_its_own_cgroup(daemon: RunningDaemon, tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("hi")
    run(daemon, "jail-fs", "-v", f"{tmp_path}:/host")
    assert daemon.docker("exec", "jail-fs", "cat", "/host/hello").stdout == b"hi"
    (run_dir,) = [p for p in daemon.exec_root.iterdir() if (p / "virtiofsd.pid").exists()]
    virtiofsd = int((run_dir / "virtiofsd.pid").read_text())
    assert status(virtiofsd)["Name"] == "virtiofsd"
    memory, pids = limits(virtiofsd)
    assert memory < host_memory() and pids <= 1024
    sandboxed = [int(p) for p in
                 Path(f"/proc/{virtiofsd}/task/{virtiofsd}/children").read_text().split()]
    assert sandboxed and status(sandboxed[0])["Seccomp"] == "2"
    daemon.docker("rm", "-f", "jail-fs")


def test_nothing_is_left_behind(daemon: RunningDaemon, tmp_path: Path) -> None:
    """stop and rm, of a clone and of a booted guest with virtiofsd: no run
    directory, mount or cgroup of theirs stays."""
    run(daemon, "jail-gone-a")
    run(daemon, "jail-gone-b", "-v", f"{tmp_path}:/host")
    groups = []
    for name in ("jail-gone-a", "jail-gone-b"):
        pid = qemu_pid(daemon, name)
        groups += list(cgroup_dirs(pid).values())
        virtiofsd = [p / "virtiofsd.pid" for p in daemon.exec_root.iterdir()
                     if (p / "virtiofsd.pid").exists()]
        groups += [d for f in virtiofsd for d in cgroup_dirs(int(f.read_text())).values()]
    groups = [g for g in groups if g.parent.name.startswith("hbd-")]
    assert len(groups) >= 3 and all(g.exists() for g in groups), groups
    run_dirs = [Path(os.readlink(f"/proc/{qemu_pid(daemon, n)}/fd/2")).parent
                for n in ("jail-gone-a", "jail-gone-b")]
    assert all(r.parent == daemon.exec_root for r in run_dirs), run_dirs
    daemon.docker("stop", "-t", "1", "jail-gone-a")
    daemon.docker("rm", "-f", "jail-gone-a", "jail-gone-b")
    leftovers = [g for g in groups if g.exists()]
    assert not leftovers, leftovers
    assert not [r for r in run_dirs if r.exists()]
    assert not [m for r in run_dirs for m in mounts_under(daemon.exec_root, r)]
    jail_root = daemon.exec_root / "vmm-jail"
    assert jail_root.is_dir() and not os.listdir(jail_root)
