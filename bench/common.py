"""Shared pieces of the benchmarks: timing, a private real dockerd, tables."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.daemon_fixture import RunningDaemon

REPO = Path(__file__).resolve().parent.parent
DOCKER_CLI = shutil.which("docker", path="/usr/local/bin") or "docker"


@dataclass
class Timing:
    name: str
    samples: list[float]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def measure(name: str, runs: int, action: Callable[[], None], warmup: int = 1) -> Timing:
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return Timing(name, samples)


def run(argv: list[str], env: dict[str, str] | None = None, check: bool = True,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, env=env, capture_output=True, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.decode()[-2000:]}")
    return result


def docker_env(host: str) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": host}


# gVisor as a runtime of the private dockerd, where Debian's runsc is installed:
# ptrace (no KVM here) and the host network (its netstack does not start on
# this host kernel).
RUNSC = shutil.which("runsc")
RUNSC_RUNTIME = {"runsc": {"path": RUNSC or "runsc",
                           "runtimeArgs": ["--platform=ptrace", "--network=host"]}}


def dockerd_pid(host: str) -> int:
    """The pid of a private dockerd that `real_dockerd` started."""
    sock = Path(host.removeprefix("unix://"))
    return int((sock.parent / "docker.pid").read_text())


@contextlib.contextmanager
def real_dockerd(runtimes: dict[str, dict[str, object]] | None = None) -> Iterator[str]:
    """A private dockerd + runc (Debian docker.io) on its own socket; yields DOCKER_HOST.

    `runtimes`: more OCI runtimes, as daemon.json's "runtimes" names them."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("dockerd is not installed (apt install docker.io)")
    base = Path(tempfile.mkdtemp(prefix="bench-dockerd-"))
    exec_root = Path(tempfile.mkdtemp(prefix="bd-", dir="/run"))
    sock = exec_root / "docker.sock"
    config = base / "daemon.json"
    config.write_text(json.dumps({"runtimes": runtimes or {}}))
    log = open(base / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [dockerd, "-H", f"unix://{sock}", "--data-root", str(base / "data"),
         "--exec-root", str(exec_root / "exec"), "--pidfile", str(exec_root / "docker.pid"),
         "--config-file", str(config),
         "--bridge=none", "--iptables=false", "--ip6tables=false"],
        stdout=log, stderr=subprocess.STDOUT)
    host = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 60
        while run([DOCKER_CLI, "version"], env=docker_env(host), check=False).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start: {(base / 'dockerd.log').read_text()}")
            time.sleep(0.2)
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        subprocess.run(["umount", "-R", str(base / "data")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(exec_root, ignore_errors=True)


def table(rows: list[Timing], baseline: Timing | None = None) -> str:
    lines = [f"{'what':<44} {'min':>8} {'median':>8} {'ratio':>7}"]
    for t in rows:
        ratio = f"{t.median / baseline.median:6.2f}x" if baseline else ""
        lines.append(f"{t.name:<44} {t.min:8.3f} {t.median:8.3f} {ratio:>7}")
    return "\n".join(lines)


def wait_template(daemon: RunningDaemon, timeout: float = 60) -> None:
    """Until the template hbd builds at start is ready (containers started
    before boot instead)."""
    deadline = time.monotonic() + timeout
    while not list((daemon.data_root / "templates").glob("*/meta.json")):
        if time.monotonic() > deadline:
            raise RuntimeError("hbd built no guest template")
        time.sleep(0.1)
