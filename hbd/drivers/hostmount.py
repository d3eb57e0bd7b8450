"""Mounts for a guest's shared filesystem: the directory a virtiofsd
exports, and each share (a volume's directory, a bind source) mounted into it
while the guest runs. Knows nothing of Docker.

They live in a mount namespace of their own, the share space, not in the
host's: a share is a copy of its source's mount tree, and in the host's
namespace that copy would hold every mount beneath the source busy for the
host, which could then not remove the directory of a mount it took away
(rmdir fails with EBUSY for a mount point in the caller's own namespace, and
quietly detaches those of other namespaces). The space is a slave of the
host's namespace (the host's later mounts still reach it), held by a
process of its own, so it outlives an hbd restart with the guests and
virtiofsds that use it. hbd works in it from one thread of its
own that entered it (setns applies to the calling thread, once it has a
filesystem context of its own), and virtiofsd is started in it.

The export directory is a mount of its own with shared propagation, so a
share mounted into it later also appears in virtiofsd's copy of it (virtiofsd
runs in a mount namespace of its own, a slave of the space). A share is made
with the new mount API: cloned from its source in the host's namespace
(recursively, as Docker's binds are: the source is named as the host sees
it), made read-only if asked *before* it is attached, then attached in the
space. A read-only remount after attaching would not propagate: virtiofsd's
copy would stay writable. A share takes mounts the host makes beneath its
source later only when asked (rslave); otherwise it is made private before it
is attached (rprivate: the clone of a shared source would be a peer of it).
Read-only is recursive (every mount of the tree), or, asked so,
non-recursive: the top mount alone, the mounts beneath keeping their own
flags; the share then tells which of its paths are such writable mounts, for
the guest, which sees the whole share as one filesystem, to keep them so.

These are host paths the user named or hbd's own volume directories, never
a filesystem a guest wrote (the host does not mount those).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import queue
import re
import signal
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

from hbd.drivers import jail

T = TypeVar("T")

MS_BIND = 0x1000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
CLONE_FS = 0x200
CLONE_NEWNS = 0x20000
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


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash come octal-escaped."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def writable_mounts_beneath(top: Path, mountinfo: str = "/proc/thread-self/mountinfo") -> list[str]:
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


def _mount_points(mountinfo: str = "/proc/thread-self/mountinfo") -> set[str]:
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        return {_unescape(line.split(" ")[4]) for line in f if line.count(" ") >= 5}


def _make_shared_mount(directory: Path) -> None:
    """`directory` becomes a mount point of its own with shared propagation."""
    directory.mkdir(parents=True, exist_ok=True)
    if str(directory) in _mount_points():
        return
    path = str(directory).encode()
    _check(_libc.mount(path, path, None, MS_BIND, None), f"bind {directory}")
    _check(_libc.mount(None, path, None, MS_SHARED, None), f"share {directory}")


def _attach(tree: int, target: Path, is_dir: bool, readonly: bool, recursive: bool,
            follow_host: bool) -> list[str]:
    """The cloned `tree` mounted at `target` (see ShareSpace.attach_share)."""
    if is_dir:
        target.mkdir(exist_ok=True)
    else:
        target.touch(exist_ok=True)
    try:
        propagation = MountAttr(0, 0, MS_SLAVE if follow_host else MS_PRIVATE, 0)
        _check(_libc.mount_setattr(tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                                   ctypes.byref(propagation), ctypes.sizeof(propagation)),
               f"set the propagation of {target}")
        if readonly:
            attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
            _check(_libc.mount_setattr(tree, b"", AT_EMPTY_PATH |
                                       (AT_RECURSIVE if recursive else 0),
                                       ctypes.byref(attr), ctypes.sizeof(attr)),
                   f"make {target} read-only")
        _check(_libc.move_mount(tree, b"", AT_FDCWD, str(target).encode(),
                                MOVE_MOUNT_F_EMPTY_PATH), f"mount at {target}")
    except BaseException:
        _remove_entry(target)
        raise
    return writable_mounts_beneath(target) if readonly and not recursive else []


def _detach(target: Path) -> None:
    _libc.umount2(str(target).encode(), MNT_DETACH)
    _remove_entry(target)


def _remove_entry(target: Path) -> None:
    with contextlib.suppress(OSError):
        if target.is_dir() and not target.is_symlink():
            target.rmdir()
        else:
            target.unlink()


def _remove_export_dir(directory: Path) -> None:
    if not directory.exists():
        return
    for entry in directory.iterdir():
        _detach(entry)
    _libc.umount2(str(directory).encode(), MNT_DETACH)
    with contextlib.suppress(OSError):
        directory.rmdir()


# The process that holds a share space: util-linux's unshare makes the
# namespace (a slave copy of its caller's) and becomes a sleep in it.
HOLDER_ARGV = ["unshare", "--mount", "--propagation", "slave", "sleep", "infinity"]
HOLDER_CMDLINE = b"sleep\0infinity\0"
HOLDER_START_TIMEOUT = 10.0


def _holder_in_place(pid: int) -> bool:
    """Whether `pid` is a holder that has made its namespace (and so runs sleep)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == HOLDER_CMDLINE and \
            os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


def _start_holder() -> int:
    """A new share space's holder, once its namespace is made."""
    pid = jail.spawn("/usr/bin/unshare", HOLDER_ARGV, None, (), -1, (), ())
    deadline = time.monotonic() + HOLDER_START_TIMEOUT
    while not _holder_in_place(pid):
        if time.monotonic() > deadline or not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise MountError(errno.ESRCH, "the share space's holder (unshare) did not start")
        time.sleep(0.002)
    return pid


def _enter(namespace: str) -> None:
    """The calling thread into the mount namespace `namespace` (a
    /proc/PID/ns/mnt), for good. It needs a filesystem context (root, cwd)
    of its own first: setns refuses to move one the process's other threads
    share."""
    _check(_libc.unshare(CLONE_FS), "unshare the filesystem context")
    fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNS), f"enter the mount namespace {namespace}")
    finally:
        os.close(fd)


Work = tuple[Callable[[], object], "Future[object]"]


class ShareSpace:
    """The mount namespace of a daemon's export directories and shares, and
    the thread hbd works in it from. A process of its own holds it (its pid
    in `directory`/holder.pid): started on first use, found again if an
    earlier hbd left it, left running when hbd stops with guests running.
    (Not a bind-mounted pin: the kernel refuses to pin a namespace it does
    not number after the caller's, and this one's numbers are not in order
    of making, so pinning failed at random under a namespace of someone
    else's making, unshare(1)'s or a systemd unit's.) Every call blocks
    until the thread is done: these are short mount calls, as they were
    when made in place."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._queue: queue.SimpleQueue[Work | None] | None = None
        self._thread: threading.Thread | None = None
        self._holder = 0
        self._lock = threading.Lock()

    @property
    def namespace(self) -> Path:
        """The namespace (/proc/PID/ns/mnt): what virtiofsd is started in."""
        with self._lock:
            self._opened()
        return Path(f"/proc/{self._holder}/ns/mnt")

    def run(self, work: Callable[[], T]) -> T:
        """`work()` run in the space, by its thread."""
        done: Future[object] = Future()
        with self._lock:
            self._opened().put((work, done))
        return done.result()  # type: ignore[return-value]

    def _opened(self) -> queue.SimpleQueue[Work | None]:
        """The thread's work queue; the space opened first if it is not yet
        (the caller holds the lock)."""
        if self._queue is None:
            self._queue = self._open()
        return self._queue

    def _open(self) -> queue.SimpleQueue[Work | None]:
        self._holder = holder_of(self.directory)
        if not self._holder:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._holder = _start_holder()
            (self.directory / "holder.pid").write_text(f"{self._holder}\n")
        work: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        entered: Future[object] = Future()
        thread = threading.Thread(target=self._serve,
                                  args=(f"/proc/{self._holder}/ns/mnt", work, entered),
                                  name="share space", daemon=True)
        thread.start()
        entered.result()
        self._thread = thread
        return work

    @staticmethod
    def _serve(namespace: str, work: queue.SimpleQueue[Work | None],
               entered: Future[object]) -> None:
        try:
            _enter(namespace)
        except OSError as e:
            entered.set_exception(e)
            return
        entered.set_result(None)
        while (item := work.get()) is not None:
            call, done = item
            try:
                done.set_result(call())
            except BaseException as e:  # handed to the caller
                done.set_exception(e)

    def make_export_dir(self, directory: Path) -> None:
        """`directory` becomes an export directory: a mount of its own in
        the space, with shared propagation."""
        self.run(lambda: _make_shared_mount(directory))

    def attach_share(self, source: Path, target: Path, readonly: bool, subpath: str = "",
                     recursive: bool = True, follow_host: bool = False) -> list[str]:
        """Mount `source` (a directory or a file), or its `subpath`, at
        `target`, a new entry of an export directory, read-only from the
        first moment when asked: every mount of it, or with `recursive` false
        its top one only; receiving the host's later mounts beneath a shared
        source with `follow_host`, else private. Then, the paths beneath
        `target` (relative) that stay writable: the mounts beneath a
        non-recursively read-only top (none otherwise)."""
        tree = _clone_tree(source, subpath)  # here: the source as the host sees it
        try:
            is_dir = stat.S_ISDIR(os.fstat(tree).st_mode)
            return self.run(lambda: _attach(tree, target, is_dir, readonly, recursive,
                                             follow_host))
        finally:
            os.close(tree)

    def detach_share(self, target: Path) -> None:
        """Undo attach_share (lazily: a process of the guest may still hold it)."""
        self.run(lambda: _detach(target))

    def remove_export_dir(self, directory: Path) -> None:
        """Detach every share in the export directory, then the directory itself."""
        if directory.exists():  # (the space is not made for a guest without one)
            self.run(lambda: _remove_export_dir(directory))

    def mount_points(self) -> set[str]:
        """The mount points the space has (for checks)."""
        return self.run(_mount_points)

    def close(self, end: bool) -> None:
        """The thread ends; with `end` (no guest uses the space any more)
        the namespace goes too, and its mounts with it."""
        with self._lock:
            if self._queue is not None:
                self._queue.put(None)
                assert self._thread is not None
                self._thread.join()
                self._queue = self._thread = None
            if end:
                end_space(self.directory)


def holder_of(directory: Path) -> int:
    """The pid of the process holding the share space of `directory` (0: none)."""
    try:
        pid = int((directory / "holder.pid").read_text())
    except (OSError, ValueError):
        return 0
    return pid if _holder_in_place(pid) else 0


def end_space(directory: Path) -> None:
    """A share space gone: its holder ends, and the namespace with the last
    process in it (a virtiofsd's, say)."""
    pid = holder_of(directory)
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # hbd's own child, unless an earlier hbd started it
    with contextlib.suppress(OSError):
        (directory / "holder.pid").unlink()
        directory.rmdir()
