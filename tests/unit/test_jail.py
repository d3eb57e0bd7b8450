"""The jail around QEMU as data: what is mounted in it, which cgroup files
a guest gets on v1 and v2, how QEMU's options are validated and escaped, and
the qcow2 backing chains hbd opens itself."""

from __future__ import annotations

import fcntl
import json
import os
import struct
from pathlib import Path

import pytest

from hbd.drivers import cgroups, jail, qemuopts
from hbd.drivers.vm import (
    SANDBOX,
    DiskSpec,
    GuestFiles,
    HostFds,
    NicSpec,
    VMSpec,
    build_argv,
    hot_fdset,
)
from hbd.errors import InvalidParameter

MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64",
              "lib32": None, "libx32": None, "/etc/ld.so.cache": ""}


def plan(**kwargs: object) -> jail.JailPlan:
    inputs = jail.PlanInputs(root=Path("/run/hbd/vmm-jail"), qemu="/usr/bin/qemu-system-x86_64",
                             kernel=Path("/srv/hbd/kernels/out/vmlinux"),
                             initrd=Path("/srv/hbd/kernels/out/initrd.cpio"),
                             user=jail.VmmUser(999, 995), layout=dict(MERGED_USR))
    for key, value in kwargs.items():
        setattr(inputs, key, value)
    return jail.jail_plan(inputs)


def test_the_jail_holds_usr_the_guest_and_a_few_devices_only() -> None:
    p = plan()
    targets = {b.target: b for b in p.binds}
    assert set(targets) == {"/usr", "/etc/ld.so.cache", "/dev/null", "/dev/zero",
                            "/dev/urandom", "/dev/random", jail.KERNEL_IN_JAIL,
                            jail.INITRD_IN_JAIL}
    assert targets[jail.KERNEL_IN_JAIL].source == "/srv/hbd/kernels/out/vmlinux"
    # Read-only but for the device nodes.
    assert all(b.readonly for t, b in targets.items() if not t.startswith("/dev/"))
    assert ("/lib", "usr/lib") in p.symlinks and ("/bin", "usr/bin") in p.symlinks
    assert not any(name == "/lib32" for name, _ in p.symlinks)
    assert (p.uid, p.gid) == (999, 995) and p.proc


def test_kvm_and_a_qemu_outside_usr_are_bound_in() -> None:
    p = plan(kvm=True, kvm_gid=108, qemu="/opt/qemu/bin/qemu-system-x86_64")
    targets = {b.target for b in p.binds}
    assert "/dev/kvm" in targets and "/opt/qemu/bin/qemu-system-x86_64" in targets
    assert p.groups == (108,)
    tcg = plan(kvm_gid=108)
    assert "/dev/kvm" not in {b.target for b in tcg.binds} and tcg.groups == ()


def test_without_merged_usr_lib_dirs_are_bound() -> None:
    p = plan(layout={**MERGED_USR, "lib": "", "lib64": ""})
    targets = {b.target for b in p.binds}
    assert {"/lib", "/lib64"} <= targets
    assert not any(name in ("/lib", "/lib64") for name, _ in p.symlinks)


def test_the_vmm_user_is_never_root(monkeypatch: pytest.MonkeyPatch) -> None:
    class Root:
        pw_uid, pw_gid = 0, 0

    monkeypatch.setattr(jail.pwd, "getpwnam", lambda name: Root())
    with pytest.raises(jail.JailError, match="must not be root"):
        jail.vmm_user("root")


def test_spawn_reports_what_failed_in_the_child(tmp_path: Path) -> None:
    with pytest.raises(jail.SpawnError, match="FileNotFoundError"):
        jail.spawn("/bin/true", ["true"], None, (), -1, (), (tmp_path / "missing",))
    pid = jail.spawn("/bin/true", ["true"], None, (), -1, (), ())
    assert os.waitpid(pid, 0)[1] == 0


# -- cgroups ---------------------------------------------------------------------------

MOUNTINFO_HYBRID = """\
30 23 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
"""
MOUNTINFO_V2 = "31 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
OWN_HYBRID = "4:memory:/process_api/abc\n8:pids:/\n1:cpu,cpuacct:/\n0::/\n"


def test_v2_is_first_when_it_has_the_controllers() -> None:
    mounts = cgroups.parse_mounts(MOUNTINFO_V2)
    layout = cgroups.choose_layout(mounts, {"": "/system.slice/hbd.service"},
                                   {"cpu", "memory", "pids", "io"}, "hbd-x")
    assert layout == cgroups.Layout(2, (Path("/sys/fs/cgroup/hbd-x"),), Path("/sys/fs/cgroup"))
    assert cgroups.v2_chain(layout.root, layout.parents[0]) == [
        Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/hbd-x")]


def test_hybrid_hosts_use_v1_under_hbds_own_groups() -> None:
    mounts = cgroups.parse_mounts(MOUNTINFO_HYBRID)
    own = cgroups.parse_own_cgroups(OWN_HYBRID)
    # cgroup2 here has no controllers: v1 it is.
    layout = cgroups.choose_layout(mounts, own, set(), "hbd-x")
    assert layout is not None and layout.version == 1
    assert layout.parents == (Path("/sys/fs/cgroup/memory/process_api/abc/hbd-x"),
                              Path("/sys/fs/cgroup/pids/hbd-x"),
                              Path("/sys/fs/cgroup/cpu,cpuacct/hbd-x"))


def test_no_usable_hierarchy_means_no_limits() -> None:
    mounts = cgroups.parse_mounts(MOUNTINFO_HYBRID.replace("rw,pids", "rw,freezer"))
    assert cgroups.choose_layout(mounts, {}, set(), "hbd-x") is None


def test_limit_files_on_v1_and_v2() -> None:
    limits = cgroups.qemu_limits(memory_mib=256, vcpus=2, tb_size_mib=24)
    assert limits.memory_bytes == (256 + 24 + 96) * 2**20
    assert cgroups.v2_settings(limits) == {"memory.max": str(limits.memory_bytes),
                                           "pids.max": "130", "cpu.weight": "200"}
    v1 = cgroups.v1_settings(limits)
    assert v1["memory"] == {"memory.limit_in_bytes": str(limits.memory_bytes)}
    assert v1["pids"] == {"pids.max": "130"} and v1["cpu"] == {"cpu.shares": "2048"}


def test_groups_are_made_and_removed(tmp_path: Path) -> None:
    layout = cgroups.Layout(1, (tmp_path / "memory" / "hbd-x", tmp_path / "pids" / "hbd-x",
                                tmp_path / "cpu" / "hbd-x"))
    groups = cgroups.Cgroups(layout)
    groups._make_parents()
    procs = groups.create("guest1", cgroups.Limits(2**28, 64, 100))
    assert procs[0] == tmp_path / "memory" / "hbd-x" / "guest1" / "cgroup.procs"
    assert (tmp_path / "pids/hbd-x/guest1/pids.max").read_text() == "64"
    # A plain directory with files is not empty (a cgroup with processes is
    # not either): remove reports it.
    assert not groups.remove("guest1")
    for group in groups.paths("guest1"):
        for f in group.iterdir():
            f.unlink()
    assert groups.remove("guest1") and not any(p.exists() for p in groups.paths("guest1"))


# -- QEMU options ----------------------------------------------------------------------

def test_names_serials_and_macs_are_validated_and_commas_escaped() -> None:
    assert qemuopts.escape("a,b") == "a,,b"
    assert qemuopts.mac_address("02:AB:00:00:00:01") == "02:ab:00:00:00:01"
    for bad in ("02:ab:00:00:00:01,id=x", "zz:00:00:00:00:00", "02:ab:00:00:00"):
        with pytest.raises(InvalidParameter):
            qemuopts.mac_address(bad)
    for bad in ("img,drive=x", "", "a" * 40, "-x"):
        with pytest.raises(InvalidParameter):
            qemuopts.disk_serial(bad)
    with pytest.raises(InvalidParameter):
        qemuopts.guest_name("x,guest=y")


def spec(tmp_path: Path, **kwargs: object) -> VMSpec:
    return VMSpec(run_dir=tmp_path / "abc", kernel=tmp_path / "k", initrd=tmp_path / "i",
                  **kwargs)  # type: ignore[arg-type]


def test_argv_names_no_host_path(tmp_path: Path) -> None:
    disks = [DiskSpec(tmp_path / "image.ext4", "image", 1, readonly=True),
             DiskSpec(tmp_path / "scratch.qcow2", "scratch", 2, format="qcow2")]
    fds = HostFds(qmp=3, agent=4, console=5, shared_fs=6,
                  fdsets=[(5, 1, "console"), (7, 2, "image"), (8, 3, "scratch"),
                          (9, 4, "scratch")],
                  disk_sets={"image": [2], "scratch": [3, 4]},
                  disk_formats={"image": ["raw"], "scratch": ["qcow2", "raw"]})
    vm = spec(tmp_path, disks=disks, nics=[NicSpec("t0", "02:00:00:00:00:01", 10)],
              shared_fs_socket=tmp_path / "fs.sock")
    argv = build_argv("/usr/bin/qemu", vm, fds, GuestFiles("/guest/k", "/guest/i"), True)
    assert not [a for a in argv if str(tmp_path) in a]
    assert argv[argv.index("-sandbox") + 1] == SANDBOX
    assert "spawn=deny" in SANDBOX and "elevateprivileges=deny" in SANDBOX
    assert "-daemonize" not in argv and "-pidfile" not in argv
    scratch = json.loads(argv[argv.index("-blockdev", argv.index("-blockdev") + 1) + 1])
    assert scratch["file"]["filename"] == "/dev/fdset/3"
    assert scratch["backing"] == {"driver": "raw", "read-only": True,
                                  "file": {"driver": "file", "filename": "/dev/fdset/4",
                                           "aio": "threads"}}
    assert "socket,id=fs,fd=6" in argv and "socket,id=qmp,fd=3,server=on,wait=off" in argv
    assert "fd=9,set=4,opaque=scratch" in argv
    assert "-sandbox" not in build_argv("q", vm, fds, GuestFiles("/k", "/i"), False)


def qcow2_header(backing: str, fmt: str = "") -> bytes:
    header = bytearray(4096)
    header[:4] = qemuopts.QCOW2_MAGIC
    struct.pack_into(">I", header, 4, 3)
    struct.pack_into(">QI", header, 8, 1024, len(backing))
    struct.pack_into(">I", header, 100, 112)
    if fmt:
        struct.pack_into(">II", header, 112, qemuopts.QCOW2_BACKING_FORMAT, len(fmt))
        header[120:120 + len(fmt)] = fmt.encode()
    header[1024:1024 + len(backing)] = backing.encode()
    return bytes(header)


def test_qcow2_backing_files_are_found_in_the_header(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    assert qemuopts.qcow2_backing(qcow2_header("/x/base.ext4", "raw"), image) == \
        qemuopts.Backing(Path("/x/base.ext4"), "raw")
    assert qemuopts.qcow2_backing(qcow2_header("base.qcow2", "qcow2"), image) == \
        qemuopts.Backing(tmp_path / "base.qcow2", "qcow2")
    assert qemuopts.qcow2_backing(qcow2_header(""), image) is None
    assert qemuopts.qcow2_backing(b"\0" * 512, image) is None


def test_a_disk_and_its_backing_chain_are_opened(tmp_path: Path) -> None:
    (tmp_path / "base.raw").write_bytes(b"\0" * 512)
    (tmp_path / "mid.qcow2").write_bytes(qcow2_header("base.raw", "raw"))
    (tmp_path / "top.qcow2").write_bytes(qcow2_header(str(tmp_path / "mid.qcow2"), "qcow2"))
    opened = qemuopts.open_disk(tmp_path / "top.qcow2", "qcow2", readonly=False)
    try:
        assert opened.formats == ["qcow2", "qcow2", "raw"]
        links = [os.readlink(f"/proc/self/fd/{fd}") for fd in opened.fds]
        assert links == [str(tmp_path / n) for n in ("top.qcow2", "mid.qcow2", "base.raw")]
        modes = [fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE for fd in opened.fds]
        assert modes == [os.O_RDWR, os.O_RDONLY, os.O_RDONLY]
    finally:
        opened.close()
    (tmp_path / "loop.qcow2").write_bytes(qcow2_header("loop.qcow2", "qcow2"))
    with pytest.raises(InvalidParameter, match="too long"):
        qemuopts.open_disk(tmp_path / "loop.qcow2", "qcow2", readonly=True)


def test_hot_added_disks_get_fdsets_of_their_own() -> None:
    chain = range(qemuopts.MAX_BACKING_CHAIN + 1)
    sets = [hot_fdset(lun, i) for lun in range(1, 64) for i in chain]
    assert len(set(sets)) == len(sets) and min(sets) > 64  # above the command line's
