"""Bind mounts of single host files into a directory that virtio-9p exports.

9p exports directories. Sharing a file's parent would show the guest every
sibling of the file; instead the file alone is bind-mounted into a private,
empty directory and that directory is shared. These are host files the user
named (`-v /host/file:/ctr/file`), never a filesystem a guest wrote.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

MS_BIND = 4096
MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class MountError(OSError):
    pass


def bind_file(source: Path, directory: Path) -> Path:
    """`directory/<name>` becomes `source` (same inode: writes go through)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / source.name
    target.touch(exist_ok=True)
    if _libc.mount(str(source).encode(), str(target).encode(), None, MS_BIND, None) != 0:
        errno = ctypes.get_errno()
        raise MountError(errno, f"bind {source}: {os.strerror(errno)}")
    return target


def unbind_all(directory: Path) -> None:
    """Undo bind_file for everything below `directory` and remove it."""
    if not directory.exists():
        return
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file() or path.is_symlink():
            _libc.umount2(str(path).encode(), MNT_DETACH)
            path.unlink(missing_ok=True)
        elif path.is_dir():
            path.rmdir()
    directory.rmdir()
