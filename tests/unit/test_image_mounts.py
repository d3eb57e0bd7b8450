"""Image mounts (the CRI's image volumes, API 1.48's type=image): how they
parse, which disks a guest boots with for them, and the subpath check on
an image's ext4 disk."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from hbd.drivers import disks
from hbd.drivers.agent import ContainerSetup
from hbd.errors import InvalidParameter
from hbd.services.container.mounts import _parse_mount
from hbd.services.container.sandbox import Member, SandboxRecord
from hbd.services.container.sandboxes import ContainerPlan, MountPlan, SandboxManager


def test_an_image_mount_is_read_only_whatever_was_asked() -> None:
    mp = _parse_mount({"Type": "image", "Source": "busybox", "Target": "/i/",
                       "ReadOnly": False, "ImageOptions": {"Subpath": "etc/./ssl"}})
    assert (mp.type, mp.source, mp.destination, mp.rw, mp.subpath) == \
        ("image", "busybox", "/i", False, "etc/ssl")


@pytest.mark.parametrize(("mount", "words"), [
    ({"Type": "image", "Target": "/i"}, 'type "image": field Source must not be empty'),
    ({"Type": "image", "Source": "busybox", "Target": "/i",
      "ImageOptions": {"Subpath": "../etc"}}, "subpath must be a relative path within the image"),
    ({"Type": "image", "Source": "busybox", "Target": "/i",
      "ImageOptions": {"Subpath": "/etc"}}, "subpath must be a relative path within the image"),
])
def test_a_bad_image_mount_says_what_is_wrong(mount: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        _parse_mount(mount)
    assert words in info.value.message


def test_a_guest_boots_with_each_image_disk_once() -> None:
    """An image mount of the container's own image uses its image disk; two
    mounts of another image share one read-only disk of it."""
    record = SandboxRecord(id="s", owner="c", shared_fs=False)
    member = Member("c", "c1", "n1", True)
    other = Path("/images/other.ext4")
    plan = ContainerPlan(
        container_id="c", image_id="sha256:own", image_disk=Path("/images/own.ext4"),
        scratch_disk=Path("/c/scratch.qcow2"), setup=ContainerSetup("c1", "n1", "h"),
        mounts=[MountPlan("image", "/own", Path("/images/own.ext4"), True,
                          image_id="sha256:own"),
                MountPlan("image", "/a", other, True, image_id="sha256:other"),
                MountPlan("image", "/b", other, True, subpath="etc",
                          image_id="sha256:other")])
    booted = SandboxManager._boot_disks(record, member, plan)
    assert [(d.serial, d.lun, d.readonly) for d in booted[2:]] == [("d1", 3, True)]
    assert booted[2].path == other and booted[2].format == "raw"
    assert member.disks == ["image", "scratch", "image", "d1", "d1"]
    assert record.image_serials == {"sha256:own": "image", "sha256:other": "d1"}


def test_a_path_is_looked_up_in_an_ext4_disk_without_mounting_it(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.symlink("/etc", tree / "link")
    disk = tmp_path / "image.ext4"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(disk), "8M"],
                   check=True)
    found = {path: asyncio.run(disks.ext4_has_path(disk, path))
             for path in ("etc", "etc/passwd", "link", "nope", "etc/nope", 'a"b')}
    assert found == {"etc": True, "etc/passwd": True, "link": True, "nope": False,
                     "etc/nope": False, 'a"b': False}
    with pytest.raises(disks.DiskError):
        asyncio.run(disks.ext4_has_path(tmp_path / "missing.ext4", "etc"))
