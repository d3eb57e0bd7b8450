"""Disk images for guests: ext4 from a directory, empty ext4, qcow2 overlays;
host block devices handed to guests as they are.

Knows nothing of Docker. The host only ever *writes* these images (mkfs
from a tree it unpacked itself); it never mounts or parses a filesystem a
guest has written (shared/DESIGN.md §2).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

BLOCK = 4096
# Disk images are root's alone: a jailed QEMU gets them as descriptors hbd opened.
DISK_MODE = 0o600


class DiskError(Exception):
    pass


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        text = out.decode(errors="replace").strip()
        raise DiskError(f"{argv[0]} failed ({proc.returncode}): {text[-500:]}")


async def ext4_has_path(image: Path, path: str) -> bool:
    """Whether the ext4 filesystem in `image` has `path` (relative to its
    root; a symlink counts, whatever it points at), read with debugfs
    without mounting it."""
    if '"' in path or "\n" in path:
        return False  # debugfs cannot be asked for such a name
    proc = await asyncio.create_subprocess_exec(
        "debugfs", "-c", "-R", f'stat "/{path}"', str(image),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if b"while trying to open" in err:
        raise DiskError(f"debugfs cannot read {image}: {err.decode(errors='replace')[-300:]}")
    return out.startswith(b"Inode:")


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes in whole blocks, inodes) a tree needs, without following links."""
    total = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        inodes += 1
        total += BLOCK
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            inodes += 1
            total += -(-st.st_size // BLOCK) * BLOCK
    return total, inodes


async def ext4_from_tree(root: Path, out: Path, label: str) -> None:
    """A read-only ext4 image holding `root` (owners, modes, xattrs, devices kept).

    No journal: the guest mounts it read-only. The image is sparse, so the
    headroom costs nothing on disk.
    """
    used, inodes = await asyncio.to_thread(tree_usage, root)
    size = used + used // 4 + inodes * 256 + 32 * 1024 * 1024
    size = -(-size // (1024 * 1024)) * 1024 * 1024
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        await _run(
            "mkfs.ext4", "-q", "-F", "-L", label, "-O", "^has_journal",
            "-N", str(inodes + 1024), "-m", "0",
            "-E", "lazy_itable_init=0,nodiscard,root_owner=0:0",
            "-d", str(root), str(tmp), f"{size // 1024}k",
        )
        os.chmod(tmp, DISK_MODE)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


SMALL_DISK = 256 * 1024 * 1024


async def empty_ext4(out: Path, size_bytes: int, label: str) -> None:
    """A formatted, empty ext4 image with every inode table initialised.

    Initialising now (not lazily) keeps the guest kernel from zeroing inode
    tables in the background into each container's overlay.
    """
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        # A 16 MiB journal fits only a disk many times its size; a small disk
        # takes mkfs's own choice (mkfs refuses a journal that does not fit).
        journal = ["-J", "size=16"] if size_bytes >= SMALL_DISK else []
        await _run(
            "mkfs.ext4", "-q", "-F", "-L", label, *journal, "-i", "32768", "-m", "0",
            "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            str(tmp), f"{size_bytes // 1024}k",
        )
        os.chmod(tmp, DISK_MODE)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


async def qcow2_overlay(backing: Path, out: Path, backing_format: str = "raw") -> None:
    """A qcow2 file whose unwritten clusters read from `backing` (absolute path)."""
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        await _run(
            "qemu-img", "create", "-q", "-f", "qcow2",
            "-b", str(backing.resolve()), "-F", backing_format, str(tmp),
        )
        os.chmod(tmp, DISK_MODE)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def private_copy(source: Path, target: Path) -> None:
    """A copy of a disk image that only root can open (disks are 0600)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, DISK_MODE)
    with open(fd, "wb") as out, open(source, "rb") as src:
        os.fchmod(out.fileno(), DISK_MODE)
        shutil.copyfileobj(src, out, 1 << 20)


def allocated_bytes(path: Path) -> int:
    """What a (sparse) disk file takes on the host: its allocated blocks; 0 if gone."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


class NotBlockDevice(DiskError):
    pass


@dataclass(frozen=True)
class BlockDevice:
    """A host block device node, by where its path resolves."""

    path: Path       # the node, symbolic links resolved
    rdev: int        # its device number: one device may have many paths
    mode: int        # its node's permission bits

    @property
    def number(self) -> str:
        """major:minor, as /proc/self/mountinfo names devices."""
        return f"{os.major(self.rdev)}:{os.minor(self.rdev)}"


def block_device(path: str) -> BlockDevice:
    """The block device `path` is (or resolves to); NotBlockDevice otherwise."""
    resolved = Path(os.path.realpath(path))
    try:
        st = os.stat(resolved)
    except OSError as e:
        raise NotBlockDevice(f"{path}: {e.strerror.lower() if e.strerror else e}") from e
    if not stat.S_ISBLK(st.st_mode):
        raise NotBlockDevice(f"{path} is not a block device")
    return BlockDevice(resolved, st.st_rdev, stat.S_IMODE(st.st_mode))


def host_mounts_of(device: BlockDevice, mountinfo: str | None = None) -> list[str]:
    """Where the host has the device mounted (its mount points), from
    /proc/self/mountinfo (or `mountinfo`'s text)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[2] == device.number:
            points.append(fields[4].replace("\\040", " "))
    return points
