"""The host's share mounts (hbd/drivers/hostmount.py): which mounts beneath
a non-recursively read-only share stay writable, from the host's mountinfo,
and the real thing on a tmpfs of our own."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hbd.drivers import hostmount

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
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A source directory with a tmpfs mounted at `sub`, and an export directory."""
    if os.geteuid() != 0:
        pytest.skip("mounts need root")
    source, export = tmp_path / "source", tmp_path / "export"
    (source / "sub").mkdir(parents=True)
    export.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(source / "sub")], check=True)
    yield source, export
    for target in (export / "share" / "sub", export / "share"):
        hostmount._libc.umount2(str(target).encode(), hostmount.MNT_DETACH)
    hostmount._libc.umount2(str(source / "sub").encode(), hostmount.MNT_DETACH)


def _writable(path: Path) -> bool:
    return os.statvfs(path).f_flag & os.ST_RDONLY == 0


def test_read_only_non_recursive_leaves_the_mounts_beneath_writable(
        tree: tuple[Path, Path]) -> None:
    source, export = tree
    target = export / "share"
    assert hostmount.attach_share(source, target, readonly=True, recursive=False) == ["sub"]
    assert not _writable(target) and _writable(target / "sub")


def test_read_only_by_default_is_recursive(tree: tuple[Path, Path]) -> None:
    source, export = tree
    target = export / "share"
    assert hostmount.attach_share(source, target, readonly=True) == []
    assert not _writable(target) and not _writable(target / "sub")


@pytest.mark.parametrize("follow_host", [False, True])
def test_a_share_takes_the_hosts_later_mounts_only_when_asked(
        tree: tuple[Path, Path], follow_host: bool) -> None:
    """rslave: a mount the host makes beneath a shared source later shows in
    the share; rprivate (the default): it does not."""
    source, export = tree
    subprocess.run(["mount", "--make-shared", str(source / "sub")], check=True)
    target = export / "share"
    hostmount.attach_share(source / "sub", target, readonly=False, follow_host=follow_host)
    (source / "sub" / "later").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(source / "sub" / "later")], check=True)
    try:
        (source / "sub" / "later" / "flag").touch()
        assert (target / "later" / "flag").exists() == follow_host
    finally:
        hostmount._libc.umount2(str(source / "sub" / "later").encode(), hostmount.MNT_DETACH)
