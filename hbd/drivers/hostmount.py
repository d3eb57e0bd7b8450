"""Mounts on the host for a guest's shared filesystem: the directory a
virtiofsd exports, and each share (a volume's directory, a bind source)
mounted into it while the guest runs. Knows nothing of Docker.

The export directory is a mount of its own with shared propagation, so a
share mounted into it later also appears in virtiofsd's copy of it (virtiofsd
runs in a mount namespace of its own, a slave of ours). A share is made with
the new mount API: cloned from its source (recursively, as Docker's binds
are), made read-only if asked *before* it is attached, then attached. A
read-only remount after attaching would not propagate: virtiofsd's copy would
stay writable. A share takes mounts the host makes beneath its source later
only when asked (rslave); otherwise it is made private before it is attached
(rprivate: the clone of a shared source would be a peer of it). Read-only is
recursive (every mount of the tree), or, asked so, non-recursive: the top
mount alone, the mounts beneath keeping their own flags; the share then
tells which of its paths are such writable mounts, for the guest, which sees
the whole share as one filesystem, to keep them so.

These are host paths the user named or hbd's own volume directories, never
a filesystem a guest wrote (the host does not mount those).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import stat
from pathlib import Path

MS_BIND = 0x1000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class MountError(OSError):
    pass


class NotAccessible(Exception):
    """A subpath that does not exist (or cannot be looked up)."""

    def __init__(self, path: Path, cause: OSError) -> None:
        reason = (cause.strerror or str(cause)).lower()
        super().__init__(f"cannot access path {path}: lstat {cause.filename or path}: "
                         f"{reason}")


class EscapesBase(Exception):
    """A subpath that leads out of its base directory."""

    def __init__(self, base: Path, subpath: str) -> None:
        super().__init__(f"path concatenation escapes the base directory, base: {base}, "
                         f"subpath: {subpath}")


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


def resolve_beneath(base: Path, subpath: str) -> str:
    """`subpath` of `base` with its symlinks resolved, as a relative path that
    stays in `base` (moby's safepath evaluation)."""
    real_base = Path(os.path.realpath(base))
    combined = real_base / subpath
    try:
        resolved = os.path.realpath(combined, strict=True)
    except OSError as e:
        raise NotAccessible(combined, e) from None
    relative = os.path.relpath(resolved, real_base)
    if relative == ".." or relative.startswith("../"):
        raise EscapesBase(real_base, subpath)
    return relative


def _open_beneath(base: Path, subpath: str) -> int:
    """An O_PATH fd of `subpath` under `base`: no symlink followed, nothing
    outside `base` reached, whatever changed since resolve_beneath."""
    relative = resolve_beneath(base, subpath)
    directory = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = OpenHow(os.O_PATH | os.O_CLOEXEC, 0,
                      RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        return _check(_libc.syscall(SYS_OPENAT2, directory, relative.encode(),
                                    ctypes.byref(how), ctypes.sizeof(how)),
                      f"open {subpath} in {base}")
    finally:
        os.close(directory)


def _clone_tree(source: Path, subpath: str) -> int:
    """A detached recursive copy of the mount tree at `source` (or at its
    `subpath`), as a mount fd."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
    if not subpath:
        return _check(_libc.open_tree(AT_FDCWD, str(source).encode(), flags),
                      f"clone {source}")
    fd = _open_beneath(source, subpath)
    try:
        return _check(_libc.open_tree(fd, b"", flags | AT_EMPTY_PATH),
                      f"clone {subpath} of {source}")
    finally:
        os.close(fd)


def attach_share(source: Path, target: Path, readonly: bool, subpath: str = "",
                 recursive: bool = True, follow_host: bool = False) -> list[str]:
    """Mount `source` (a directory or a file), or its `subpath`, at `target`, a
    new entry of an export directory, read-only from the first moment when
    asked: every mount of it, or with `recursive` false its top one only;
    receiving the host's later mounts beneath a shared source with
    `follow_host`, else private. Then, the paths beneath `target` (relative)
    that stay writable: the mounts beneath a non-recursively read-only top
    (none otherwise)."""
    tree = _clone_tree(source, subpath)
    try:
        if stat.S_ISDIR(os.fstat(tree).st_mode):
            target.mkdir(exist_ok=True)
        else:
            target.touch(exist_ok=True)
        if not follow_host:
            private = MountAttr(0, 0, MS_PRIVATE, 0)
            _check(_libc.mount_setattr(tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                                       ctypes.byref(private), ctypes.sizeof(private)),
                   f"make {source} private")
        if readonly:
            attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
            _check(_libc.mount_setattr(tree, b"", AT_EMPTY_PATH |
                                       (AT_RECURSIVE if recursive else 0),
                                       ctypes.byref(attr), ctypes.sizeof(attr)),
                   f"make {source} read-only")
        _check(_libc.move_mount(tree, b"", AT_FDCWD, str(target).encode(),
                                MOVE_MOUNT_F_EMPTY_PATH), f"mount {source} at {target}")
    except BaseException:
        _remove_entry(target)
        raise
    finally:
        os.close(tree)
    return writable_mounts_beneath(target) if readonly and not recursive else []


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash come octal-escaped."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def writable_mounts_beneath(top: Path, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points strictly beneath `top`, relative to it, that are mounted
    read-write, each once: none inside another one listed (the guest's bind
    of that one covers it)."""
    prefix = str(top).rstrip("/") + "/"
    found: list[str] = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) < 6:
                continue
            point = _unescape(fields[4])
            if point.startswith(prefix) and "rw" in fields[5].split(","):
                found.append(point[len(prefix):])
    kept: list[str] = []
    for path in sorted(set(found)):
        if not any(path.startswith(parent + "/") for parent in kept):
            kept.append(path)
    return kept


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
