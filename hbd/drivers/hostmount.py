"""Mounts on the host for a guest's shared filesystem: the directory a
virtiofsd exports, and each share (a volume's directory, a bind source)
mounted into it while the guest runs. Knows nothing of Docker.

The export directory is a mount of its own with shared propagation, so a
share mounted into it later also appears in virtiofsd's copy of it (virtiofsd
runs in a mount namespace of its own, a slave of ours). A share is made with
the new mount API: cloned from its source (recursively, as Docker's binds
are), made read-only if asked *before* it is attached, then attached. A
read-only remount after attaching would not propagate: virtiofsd's copy would
stay writable.

These are host paths the user named or hbd's own volume directories, never
a filesystem a guest wrote (the host does not mount those).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path

MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class MountError(OSError):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise MountError(errno, f"{what}: {os.strerror(errno)}")
    return result


def make_export_dir(directory: Path) -> None:
    """`directory` becomes a mount point of its own with shared propagation."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(directory):
        return
    path = str(directory).encode()
    _check(_libc.mount(path, path, None, MS_BIND, None), f"bind {directory}")
    _check(_libc.mount(None, path, None, MS_SHARED, None), f"share {directory}")


def attach_share(source: Path, target: Path, readonly: bool) -> None:
    """Mount `source` (a directory or a file) at `target`, a new entry of an
    export directory, read-only from the first moment when asked."""
    if source.is_dir():
        target.mkdir(exist_ok=True)
    else:
        target.touch(exist_ok=True)
    tree = _check(_libc.open_tree(AT_FDCWD, str(source).encode(),
                                  OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE),
                  f"clone {source}")
    try:
        if readonly:
            attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
            _check(_libc.mount_setattr(tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                                       ctypes.byref(attr), ctypes.sizeof(attr)),
                   f"make {source} read-only")
        _check(_libc.move_mount(tree, b"", AT_FDCWD, str(target).encode(),
                                MOVE_MOUNT_F_EMPTY_PATH), f"mount {source} at {target}")
    except BaseException:
        _remove_entry(target)
        raise
    finally:
        os.close(tree)


def detach_share(target: Path) -> None:
    """Undo attach_share (lazily: a process of the guest may still hold it)."""
    _libc.umount2(str(target).encode(), MNT_DETACH)
    _remove_entry(target)


def _remove_entry(target: Path) -> None:
    with contextlib.suppress(OSError):
        if target.is_dir() and not target.is_symlink():
            target.rmdir()
        else:
            target.unlink()


def remove_export_dir(directory: Path) -> None:
    """Detach every share in the export directory, then the directory itself."""
    if not directory.exists():
        return
    for entry in directory.iterdir():
        detach_share(entry)
    _libc.umount2(str(directory).encode(), MNT_DETACH)
    with contextlib.suppress(OSError):
        directory.rmdir()
