"""The jail around each QEMU (Firecracker's jailer, fitted to QEMU).

hbd forks, and the child, before it executes QEMU:
- joins the guest's host cgroups (hbd.drivers.cgroups), so QEMU's first
  allocation is already bounded;
- enters a mount namespace of its own whose root is a fresh tmpfs holding
  only what QEMU reads by path: /usr (its binary, libraries and firmware,
  read-only), the guest's kernel and initrd (read-only), a few device nodes
  and a /proc that shows QEMU nothing but itself (for the template RAM's
  /proc/self/fd path). Everything else it uses (disks, taps, sockets, the
  console log, migration streams) hbd opens and passes as descriptors;
- drops to the unprivileged VMM user (no supplementary groups, no
  capabilities, no_new_privs) and executes QEMU, which then installs its
  seccomp filter (-sandbox ...=deny).

QEMU's own -chroot/-runas cannot do this: -runas calls setuid after the
seccomp filter is in place, which elevateprivileges=deny forbids, and
-daemonize forks after it, which spawn=deny forbids. So QEMU starts
unprivileged and in the foreground, and hbd detaches it (its own session).

The plan (what to mount, who to become) is pure data, built and tested
apart from `enter_jail`, which carries it out in the forked child.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import grp
import os
import pwd
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from hbd.errors import SystemError_

VMM_USER = "hbd-vmm"
# Where the jail's tmpfs is mounted, in the child's namespace only: one
# empty directory serves every guest (the host never sees the mounts).
JAIL_DIR_NAME = "vmm-jail"
# What QEMU sees of the host, bind-mounted read-only at the same paths.
HOST_DIRS = ("/usr",)
# The top-level names that merged-/usr Debian makes links into /usr; on a
# system without merged /usr they are directories, bound read-only.
USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
HOST_FILES = ("/etc/ld.so.cache",)
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
KERNEL_IN_JAIL = "/guest/vmlinux"
INITRD_IN_JAIL = "/guest/initrd"

# <linux/sched.h>, <linux/mount.h>, <linux/prctl.h>
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38


class JailError(SystemError_):
    """A guest's jail could not be set up."""


class SpawnError(JailError):
    """The child failed between fork and exec (its message says where)."""


@dataclass(frozen=True)
class Bind:
    """`source` (a host file or directory) at `target` in the jail."""

    source: str
    target: str
    readonly: bool = True
    directory: bool = True


@dataclass(frozen=True)
class JailPlan:
    # The empty directory the tmpfs root is mounted on (in the child's namespace).
    root: Path
    binds: tuple[Bind, ...]
    symlinks: tuple[tuple[str, str], ...]  # (path in the jail, link text)
    uid: int
    gid: int
    # Supplementary groups: kvm's alone, for /dev/kvm (0660 root:kvm on Debian).
    groups: tuple[int, ...] = ()
    proc: bool = True


@dataclass(frozen=True)
class VmmUser:
    uid: int
    gid: int


def vmm_user(name: str = VMM_USER) -> VmmUser:
    """The unprivileged user QEMU runs as, made (a system user with no home
    and no shell) when this host does not have it yet."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True, check=False)
        if result.returncode not in (0, 9):  # 9: made meanwhile by another hbd
            raise JailError(f"cannot create the user {name}: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise JailError(f"the VMM user {name} must not be root")
    return VmmUser(entry.pw_uid, entry.pw_gid)


def host_layout(path: str) -> str | None:
    """How a top-level name is on this host: its link text when it is a
    symlink, "" when a directory, None when absent."""
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return None
    except OSError:
        return "" if os.path.isdir(path) else None


@dataclass
class PlanInputs:
    """What a jail is made of: everything the plan depends on, so that the
    plan itself is a pure function (and unit-tested as one)."""

    root: Path
    qemu: str
    kernel: Path
    initrd: Path
    user: VmmUser
    kvm: bool = False
    layout: dict[str, str | None] = field(default_factory=dict)
    kvm_gid: int | None = None


def jail_plan(inputs: PlanInputs) -> JailPlan:
    binds: list[Bind] = [Bind(d, d) for d in HOST_DIRS]
    symlinks: list[tuple[str, str]] = []
    for name in USR_LINKS:
        how = inputs.layout.get(name)
        if how:
            symlinks.append((f"/{name}", how))
        elif how == "":
            binds.append(Bind(f"/{name}", f"/{name}"))
    if not inputs.qemu.startswith(tuple(d + "/" for d in HOST_DIRS)):
        binds.append(Bind(inputs.qemu, inputs.qemu, directory=False))
    binds += [Bind(f, f, directory=False) for f in HOST_FILES if inputs.layout.get(f) == ""]
    devices = DEVICES + (("/dev/kvm",) if inputs.kvm else ())
    binds += [Bind(d, d, readonly=False, directory=False) for d in devices]
    binds += [Bind(str(inputs.kernel), KERNEL_IN_JAIL, directory=False),
              Bind(str(inputs.initrd), INITRD_IN_JAIL, directory=False)]
    return JailPlan(root=inputs.root, binds=tuple(binds), symlinks=tuple(symlinks),
                    uid=inputs.user.uid, gid=inputs.user.gid,
                    groups=(inputs.kvm_gid,) if inputs.kvm and inputs.kvm_gid is not None else ())


def kvm_group() -> int | None:
    try:
        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None


def probe_layout() -> dict[str, str | None]:
    """This host's answers to what `jail_plan` asks of it."""
    layout = {name: host_layout(f"/{name}") for name in USR_LINKS}
    for f in HOST_FILES:
        layout[f] = "" if os.path.isfile(f) else None
    return layout


# -- in the forked child, between fork and exec ------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str, flags: int, data: str = "") -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                       data.encode() if data else None), f"mount {target}")


def _bind(root: str, bind: Bind) -> None:
    target = root + bind.target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if bind.directory:
        os.makedirs(target, exist_ok=True)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    _mount(bind.source, target, "", MS_BIND | MS_REC)
    # A bind mount takes its flags only on a remount.
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID
    if bind.readonly:
        flags |= MS_RDONLY | MS_NODEV
    _mount("", target, "", flags)


def _mount_proc(root: str) -> None:
    """A /proc in which QEMU sees only its own processes' directories."""
    os.makedirs(root + "/proc", exist_ok=True)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    try:
        _mount("proc", root + "/proc", "proc", flags, "hidepid=invisible,subset=pid")
    except OSError:  # kernels before 5.8 know neither option
        _mount("proc", root + "/proc", "proc", flags, "hidepid=2")


def _build_root(plan: JailPlan) -> None:
    root = str(plan.root)
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    # Nothing mounted here may reach the host's namespace, nor the other way.
    _mount("", "/", "", MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
    for bind in plan.binds:
        _bind(root, bind)
    for path, text in plan.symlinks:
        os.symlink(text, root + path)
    if plan.proc:
        _mount_proc(root)
    os.chdir(root)
    # pivot_root(".", "."): the old root is stacked under the new one and
    # detached at once; no directory of the jail ever holds it.
    _check(_libc.syscall(155, b".", b"."), "pivot_root")  # SYS_pivot_root on x86-64
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount("", "/", "", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_privileges(plan: JailPlan) -> None:
    os.setgroups(list(plan.groups))
    os.setresgid(plan.gid, plan.gid, plan.gid)
    os.setresuid(plan.uid, plan.uid, plan.uid)  # every capability goes with uid 0
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def enter_jail(plan: JailPlan | None, keep_fds: tuple[int, ...], stderr_fd: int,
               host_cpus: tuple[int, ...], cgroup_procs: tuple[Path, ...],
               mount_namespace: Path | None = None) -> None:
    """Everything between fork and exec. Without a plan (the jail is off)
    the child still detaches, joins its cgroups and keeps its descriptors.
    With `mount_namespace` (a pinned namespace) it runs in that one."""
    if mount_namespace is not None:
        fd = os.open(mount_namespace, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNS), f"enter {mount_namespace}")
        finally:
            os.close(fd)
    os.setsid()
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if stderr_fd >= 0:
        os.dup2(stderr_fd, 2)
    for fd in keep_fds:
        os.set_inheritable(fd, True)
    pid = str(os.getpid()).encode()
    for procs in cgroup_procs:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
    if host_cpus:
        os.sched_setaffinity(0, host_cpus)
    if plan is not None:
        _build_root(plan)
        _drop_privileges(plan)


def spawn(path: str, argv: list[str], plan: JailPlan | None, keep_fds: tuple[int, ...],
          stderr_fd: int, host_cpus: tuple[int, ...], cgroup_procs: tuple[Path, ...],
          mount_namespace: Path | None = None) -> int:
    """Fork, set the child up (hbd.drivers.jail) and execute `path`; returns
    its pid once it runs `path`, or raises what went wrong in the child."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: no logging, no asyncio, nothing that takes a lock
        try:
            os.close(read_end)
            enter_jail(plan, keep_fds, stderr_fd, host_cpus, cgroup_procs, mount_namespace)
            os.execv(path, argv)
        except BaseException as e:  # reported to the parent, then the child exits
            with contextlib.suppress(BaseException):
                os.write(write_end, f"{type(e).__name__}: {e}".encode()[:1000])
        os._exit(127)
    os.close(write_end)
    try:
        # Closed without a word by a successful exec (close-on-exec).
        with os.fdopen(read_end, "rb") as pipe:
            error = pipe.read()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    if error:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise SpawnError(error.decode(errors="replace"))
    return pid
