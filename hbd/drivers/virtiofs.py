"""virtiofsd: the host side of a guest's shared filesystem. Knows nothing of Docker.

One virtiofsd per guest exports one directory: the Rust virtiofsd
(/usr/libexec/virtiofsd, Debian 13's virtiofsd package) or QEMU 7.2's C one
(/usr/lib/qemu/virtiofsd, Debian 12; QEMU 8 dropped it). They take different
options for the same things. It starts in the mount namespace the directory
is mounted in (hbd's share space, hbd.drivers.hostmount) and runs sandboxed
in its own mount, pid and network namespaces, pivoted into that directory
(sandbox namespace), so it sees nothing of the host but what is mounted
there. hbd mounts each share into the directory while the guest runs: the
directory is a shared mount, so those mounts propagate into virtiofsd's
(slave) copy of it.

virtiofsd serves one QEMU and exits when that QEMU disconnects, so it never
outlives its guest. It is started detached, like QEMU, and survives an hbd
restart with it.

Its confinement, beside QEMU's jail (hbd.drivers.jail): its own namespaces
(above), its built-in seccomp filter, and a host cgroup of its own bounding
memory and pids. It runs as root: file ownership passthrough (chown, modes
and xattrs of the guest's files on the shared directory) needs it, and
virtiofsd drops the capabilities it does not need itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from hbd.drivers import jail
from hbd.drivers.cgroups import VIRTIOFSD_LIMITS, Cgroups, remove_soon
from hbd.drivers.procwatch import ProcessWatch, cmdline_of

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0


class VirtiofsdError(Exception):
    pass


# /proc/net/unix's flag of a socket that listen() was called on (__SO_ACCEPTCON).
ACCEPTING = 0x10000


def _listening(pid: int, socket: Path) -> bool:
    """Whether virtiofsd listens on `socket` yet. Its path appears at bind(),
    a moment before listen(): QEMU's connect in between is refused, and the
    guest's boot fails (1 pod boot in ~30 under critest)."""
    try:
        table = Path(f"/proc/{pid}/net/unix").read_text()
    except OSError:
        return socket.exists()
    wanted = str(socket)
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == wanted and int(fields[3], 16) & ACCEPTING:
            return True
    return False


@dataclass(frozen=True)
class VirtiofsdBinary:
    path: str
    # The Rust virtiofsd (--shared-dir, --cache, ...) rather than QEMU's C one (-o ...).
    rust: bool

    def argv(self, socket: Path, source: Path) -> list[str]:
        # The same settings in each one's words:
        #  * cache auto: the guest caches data and attributes for a second, and
        #    re-reads a file that changed on the host when it opens it;
        #  * sandbox namespace: see the module docstring;
        #  * announce submounts: each share is a mount of its own, and the guest
        #    sees them as separate filesystems, so inode numbers never collide.
        # --socket-path=... is spelled alike (Virtiofsd.find looks for it).
        if self.rust:
            return [self.path, f"--socket-path={socket}", f"--shared-dir={source}",
                    "--cache=auto", "--sandbox=namespace", "--announce-submounts"]
        return [self.path, f"--socket-path={socket}", "-o", f"source={source}",
                "-o", "cache=auto", "-o", "sandbox=namespace", "-o", "announce_submounts"]


# Where Debian installs them, the Rust one first: Debian 13's virtiofsd package
# also links /usr/lib/qemu/virtiofsd to it (the C one's old path), and where
# both really are (Debian 12 with the backported package) it is the maintained one.
VIRTIOFSD_BINARIES = (VirtiofsdBinary("/usr/libexec/virtiofsd", rust=True),
                      VirtiofsdBinary("/usr/lib/qemu/virtiofsd", rust=False))


def find_virtiofsd(candidates: tuple[VirtiofsdBinary, ...] = VIRTIOFSD_BINARIES,
                   ) -> VirtiofsdBinary:
    """The virtiofsd this host has."""
    for binary in candidates:
        if os.access(binary.path, os.X_OK):
            return binary
    raise VirtiofsdError("no virtiofsd at " + " or ".join(b.path for b in candidates)
                         + " (./install.sh installs it)")


def cgroup_name(run_dir: Path) -> str:
    return f"{run_dir.name}-virtiofsd"


class Virtiofsd:
    def __init__(self, pid: int, socket: Path, cgroups: Cgroups | None = None) -> None:
        self.pid = pid
        self.socket = socket
        self._process = ProcessWatch(pid)
        self._cgroup_gone: asyncio.Future[None] | None = None
        if cgroups is not None:
            self._cgroup_gone = asyncio.ensure_future(
                self._remove_cgroup(cgroups, cgroup_name(socket.parent)))

    async def _remove_cgroup(self, cgroups: Cgroups, name: str) -> None:
        await self._process.wait()
        await remove_soon(cgroups, name)

    @classmethod
    async def start(cls, run_dir: Path, source: Path, binary: VirtiofsdBinary | None = None,
                    cgroups: Cgroups | None = None, mount_namespace: Path | None = None,
                    ) -> Virtiofsd:
        """Start virtiofsd for `source` (in a cgroup of its own, when
        `cgroups`; in the mount namespace pinned at `mount_namespace`, where
        `source` is, when given); returns once its socket listens."""
        binary = binary or find_virtiofsd()
        socket = run_dir / "virtiofsd.sock"
        socket.unlink(missing_ok=True)
        argv = binary.argv(socket, source)
        procs = cgroups.create(cgroup_name(run_dir), VIRTIOFSD_LIMITS) if cgroups else ()
        log_fd = os.open(run_dir / "virtiofsd.log",
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        # Forked here, not an asyncio subprocess: ProcessWatch reaps it (now
        # or, after an hbd restart, never: it is then not hbd's child).
        try:
            pid = jail.spawn(binary.path, argv, None, (), log_fd, (), procs,
                             mount_namespace=mount_namespace)
        except jail.SpawnError as e:
            await remove_soon(cgroups, cgroup_name(run_dir))
            raise VirtiofsdError(f"cannot start virtiofsd: {e}") from e
        finally:
            os.close(log_fd)
        (run_dir / "virtiofsd.pid").write_text(f"{pid}\n")
        daemon = cls(pid, socket, cgroups)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not _listening(pid, socket):
                    if not daemon.running:
                        raise VirtiofsdError("virtiofsd exited at start: " + _tail(run_dir))
                    await asyncio.sleep(0.002)
        except BaseException:
            await daemon.stop()
            raise
        return daemon

    @classmethod
    def find(cls, run_dir: Path, cgroups: Cgroups | None = None) -> Virtiofsd | None:
        """The virtiofsd an earlier hbd started for `run_dir`, if it still runs."""
        try:
            pid = int((run_dir / "virtiofsd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        socket = run_dir / "virtiofsd.sock"
        argv = cmdline_of(pid)
        if argv is None or f"--socket-path={socket}".encode() not in argv:
            return None
        return cls(pid, socket, cgroups)

    @property
    def running(self) -> bool:
        return self._process.running

    async def wait_exit(self) -> None:
        await self._process.wait()

    async def stop(self) -> None:
        # sandbox=namespace forks: the process we started only waits for its
        # sandboxed child. Signalled itself, it exits without waiting, and the
        # child, handed to hbd (a subreaper), would die as hbd's zombie. So the
        # child goes first; its parent then exits on its own.
        for child in _children_of(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        await self._process.terminate(2.0)
        if self._cgroup_gone is not None and not self._cgroup_gone.cancelled():
            # Its cgroup is gone too once a stop returns.
            await asyncio.shield(self._cgroup_gone)

    def close(self) -> None:
        self._process.close()
        if self._cgroup_gone is not None:
            self._cgroup_gone.cancel()


def _children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _tail(run_dir: Path) -> str:
    try:
        return (run_dir / "virtiofsd.log").read_text(errors="replace")[-1000:].strip()
    except OSError:
        return ""

