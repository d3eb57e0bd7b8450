"""Start a real hbd daemon (subprocess) on private paths, for end-to-end tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import secrets
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hbd.drivers import hostmount
from hbd.drivers.cgroups import Cgroups
from hbd.services.container.sandboxes import SANDBOX_ID, SHARE_SPACE_DIR
from hbd.services.network.service import instance_tag, remove_host_state

REPO = Path(__file__).resolve().parent.parent
# A newer CLI in /usr/local/bin if there is one, else the distribution's; a full
# path either way (os.execv does not search PATH).
DOCKER_CLI = (shutil.which("docker", path="/usr/local/bin") or shutil.which("docker")
              or "docker")
BUSYBOX_TAR = REPO / "images" / "out" / "busybox.tar"


@dataclass
class RunningDaemon:
    socket: Path
    data_root: Path
    exec_root: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, input: bytes | None = None, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([DOCKER_CLI, *args], input=input, capture_output=True,
                                env=self.env(), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout.decode(errors='replace')}\n"
                f"stderr: {result.stderr.decode(errors='replace')}")
        return result

    def log_tail(self, limit: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def crash_and_restart(self) -> None:
        """SIGKILL the daemon (no shutdown at all), then start it again as it was."""
        self.process.kill()
        self.process.wait()
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(self.process.args, stdout=log_file,
                                            stderr=subprocess.STDOUT, cwd=REPO)
        wait_for_socket(self.socket, self.process, self.log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_socket(socket: Path, process: subprocess.Popen[bytes], log: Path,
                    timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hbd exited {process.returncode}:\n{log.read_text()[-4000:]}")
        if socket.exists():
            with contextlib.suppress(OSError):
                s = socketlib.socket(socketlib.AF_UNIX)
                s.connect(str(socket))
                conn = http.client.HTTPConnection("hbd")
                conn.sock = s
                conn.request("GET", "/_ping")
                if conn.getresponse().status == 200:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"hbd did not answer on {socket}:\n{log.read_text()[-4000:]}")


def kill_guests(exec_root: Path) -> None:
    """Kill any QEMU whose run directory is under exec_root (a test's leftovers),
    and end the daemon's share space (its holder process)."""
    for pidfile in exec_root.glob("*/qemu.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
    hostmount.end_space(exec_root / SHARE_SPACE_DIR)


def run_dirs(exec_root: Path) -> set[Path]:
    """The sandboxes' run directories under a daemon's exec root."""
    return {p for p in exec_root.iterdir() if p.is_dir() and SANDBOX_ID.fullmatch(p.name)}


def mountinfo_with_shares(exec_root: Path) -> list[str]:
    """The host's mountinfo lines, then those of a daemon's share space
    (hbd.drivers.hostmount), where its guests' shared directories are
    mounted (none if it has no space)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    pid = hostmount.holder_of(exec_root / SHARE_SPACE_DIR)
    if pid:
        with contextlib.suppress(OSError):
            lines += Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return lines


def mounts_under(exec_root: Path, path: Path) -> list[str]:
    """Mounts naming `path`, in the host's namespace or the daemon's share space."""
    return [line for line in mountinfo_with_shares(exec_root) if str(path) in line]


def remove_cgroups(parent: str) -> None:
    """The host cgroups of a test daemon's guests (killed just before)."""
    groups = Cgroups.detect(parent)
    if groups is None:
        return
    for _ in range(50):
        groups.sweep()
        groups.remove_parents()
        if not any(p.exists() for p in groups.layout.parents):
            return
        time.sleep(0.02)


@contextlib.contextmanager
def hbd_daemon(extra_args: tuple[str, ...] = (), load_busybox: bool = True,
               base: Path | None = None) -> Iterator[RunningDaemon]:
    tag = secrets.token_hex(4)
    base = base or Path(tempfile.mkdtemp(prefix=f"hbd-test-{tag}-"))
    exec_root = Path(f"/run/hbd-t-{tag}")
    socket = exec_root / "hbd.sock"
    data_root = base / "data"
    log = base / "hbd.log"
    exec_root.mkdir(parents=True)
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "hbd", "-H", f"unix://{socket}", "--data-root",
             str(data_root), "--exec-root", str(exec_root), "--log-level", "debug",
             *extra_args],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
    daemon = RunningDaemon(socket, data_root, exec_root, log, process)
    try:
        wait_for_socket(socket, process, log)
        if load_busybox:
            daemon.docker("load", "-q", "-i", str(BUSYBOX_TAR))
        yield daemon
    finally:
        daemon.stop()
        kill_guests(exec_root)
        remove_cgroups(f"hbd-{instance_tag(data_root)}")
        asyncio.run(remove_host_state(instance_tag(data_root)))
        shutil.rmtree(exec_root, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
