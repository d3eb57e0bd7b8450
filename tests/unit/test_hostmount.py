"""Share mounts (hbd/drivers/hostmount.py): which mounts beneath a
non-recursively read-only share stay writable, from a mountinfo, and the real
thing on a tmpfs of our own, in a share space of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hbd.drivers import hostmount, jail

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /export/s1 ro,relatime shared:9 - ext4 /dev/sda1 rw
41 40 0:51 / /export/s1/cache rw,nosuid shared:10 - tmpfs none rw
42 41 0:52 / /export/s1/cache/inner rw shared:11 - tmpfs none rw
43 40 0:53 / /export/s1/frozen ro shared:12 - tmpfs none rw
44 43 0:54 / /export/s1/frozen/thawed rw shared:13 - tmpfs none rw
45 40 0:55 / /export/s1/with\\040space rw shared:14 - tmpfs none rw
46 22 0:56 / /export/s10/other rw shared:15 - tmpfs none rw
"""


def test_writable_mounts_beneath_a_share_each_once(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    # Not the share itself, not a read-only one, not one inside one listed,
    # not a sibling whose name merely starts alike; escapes undone.
    assert hostmount.writable_mounts_beneath(Path("/export/s1"), str(info)) == [
        "cache", "frozen/thawed", "with space"]
    assert hostmount.writable_mounts_beneath(Path("/export/none"), str(info)) == []


@pytest.fixture
def space(tmp_path: Path) -> Iterator[hostmount.ShareSpace]:
    if os.geteuid() != 0:
        pytest.skip("mounts need root")
    shares = hostmount.ShareSpace(tmp_path / "space")
    yield shares
    shares.close(end=True)


@pytest.fixture
def tree(tmp_path: Path, space: hostmount.ShareSpace) -> Iterator[tuple[Path, Path]]:
    """A source directory with a tmpfs mounted at `sub` (on the host), and an
    export directory (in the space)."""
    source, export = tmp_path / "source", tmp_path / "export"
    (source / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(source / "sub")], check=True)
    space.make_export_dir(export)
    yield source, export
    space.remove_export_dir(export)
    hostmount._libc.umount2(str(source / "sub").encode(), hostmount.MNT_DETACH)


def _writable(path: Path) -> bool:
    return os.statvfs(path).f_flag & os.ST_RDONLY == 0


def _host_mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def test_read_only_non_recursive_leaves_the_mounts_beneath_writable(
        tree: tuple[Path, Path], space: hostmount.ShareSpace) -> None:
    source, export = tree
    target = export / "share"
    assert space.attach_share(source, target, readonly=True, recursive=False) == ["sub"]
    assert space.run(lambda: not _writable(target) and _writable(target / "sub"))


def test_read_only_by_default_is_recursive(tree: tuple[Path, Path],
                                           space: hostmount.ShareSpace) -> None:
    source, export = tree
    target = export / "share"
    assert space.attach_share(source, target, readonly=True) == []
    assert space.run(lambda: not _writable(target) and not _writable(target / "sub"))


@pytest.mark.parametrize("follow_host", [False, True])
def test_a_share_takes_the_hosts_later_mounts_only_when_asked(
        tree: tuple[Path, Path], space: hostmount.ShareSpace, follow_host: bool) -> None:
    """rslave: a mount the host makes beneath a shared source later shows in
    the share; rprivate (the default): it does not."""
    source, export = tree
    subprocess.run(["mount", "--make-shared", str(source / "sub")], check=True)
    target = export / "share"
    space.attach_share(source / "sub", target, readonly=False, follow_host=follow_host)
    (source / "sub" / "later").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(source / "sub" / "later")], check=True)
    try:
        (source / "sub" / "later" / "flag").touch()
        assert space.run((target / "later" / "flag").exists) == follow_host
        # rslave, not shared: nothing mounted in the share reaches the host.
        (source / "sub" / "mine").mkdir()
        space.run(lambda: subprocess.run(["mount", "-t", "tmpfs", "none", str(target / "mine")],
                                         check=True))
        assert str(target / "mine") in space.mount_points()
        assert str(source / "sub" / "mine") not in _host_mount_points()
    finally:
        hostmount._libc.umount2(str(source / "sub" / "later").encode(), hostmount.MNT_DETACH)


def test_shares_live_in_the_space_not_in_the_hosts_namespace(
        tree: tuple[Path, Path], space: hostmount.ShareSpace) -> None:
    source, export = tree
    target = export / "share"
    space.attach_share(source, target, readonly=True)
    assert {str(export), str(target), str(target / "sub")} <= space.mount_points()
    assert not {str(export), str(target)} & _host_mount_points()
    space.detach_share(target)
    assert str(target) not in space.mount_points() and not target.exists()


def test_the_host_removes_a_directory_whose_mount_a_share_holds(
        tree: tuple[Path, Path], space: hostmount.ShareSpace) -> None:
    """critest's read-only mount specs: the host unmounts what it mounted
    beneath a shared source and removes the directory while the share is
    still attached. A share in the host's own namespace made that EBUSY."""
    source, export = tree
    space.attach_share(source, export / "share", readonly=True)
    assert hostmount._libc.umount2(str(source / "sub").encode(), 0) == 0
    (source / "sub").rmdir()
    assert not (source / "sub").exists()


def test_a_process_started_in_the_space_sees_shares_attached_later(
        tree: tuple[Path, Path], space: hostmount.ShareSpace, tmp_path: Path) -> None:
    """As virtiofsd: started in the space, in a slave namespace of its own."""
    source, export = tree
    (source / "sub" / "hello").write_text("hi")
    pid = jail.spawn("/usr/bin/unshare", ["unshare", "--mount", "--propagation", "slave",
                                          "sleep", "60"], None, (), -1, (), (),
                     mount_namespace=space.namespace)
    try:
        space.attach_share(source / "sub", export / "late", readonly=False)
        deadline = time.monotonic() + 10
        seen: list[str] = []
        while str(export / "late") not in seen:
            assert time.monotonic() < deadline, seen
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            inside = children[0] if children else str(pid)
            seen = [line.split()[4] for line in
                    Path(f"/proc/{inside}/mountinfo").read_text().splitlines()]
            time.sleep(0.05)
        assert str(export / "late") not in _host_mount_points()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_the_space_outlives_its_thread(tree: tuple[Path, Path], tmp_path: Path,
                                       space: hostmount.ShareSpace) -> None:
    """hbd stops with guests running and starts again: the shares are where
    they were, in the same space, its holder still there."""
    source, export = tree
    space.attach_share(source, export / "share", readonly=False)
    space.close(end=False)
    again = hostmount.ShareSpace(tmp_path / "space")
    try:
        assert str(export / "share") in again.mount_points()
        again.detach_share(export / "share")
        assert str(export / "share") not in space.mount_points()
    finally:
        again.close(end=False)
