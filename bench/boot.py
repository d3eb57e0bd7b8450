"""`docker run --rm busybox true` through hbd, side by side with its floor and runc.

    python3 bench/boot.py [--runs N]

Rows, measured in one run on this machine:
  bare floor   QEMU + the hbd guest kernel booting an init that powers off at
               once, with the same machine and devices hbd uses (no disks)
  hbd          the docker CLI against hbd: create, attach, start, wait, remove
  runc         the docker CLI against a private real dockerd (Debian docker.io)
The target (shared/DESIGN.md §4) is hbd <= 1.3 times the bare floor under TCG.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOCKER_CLI, REPO, Timing, docker_env, measure, real_dockerd, run, table
from hbd.config import VMSettings
from hbd.drivers.accel import choose_accel
from hbd.drivers.vm import VMSpec, build_argv
from tests.daemon_fixture import BUSYBOX_TAR, hbd_daemon


def bare_initrd(work: Path) -> Path:
    root = work / "root"
    root.mkdir()
    run(["musl-gcc", "-static", "-Os", "-o", str(root / "init"),
         str(REPO / "bench" / "bare_init.c")])
    initrd = work / "bare.cpio"
    with open(initrd, "wb") as out:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input=b"init\n", cwd=root,
                       stdout=out, check=True)
    return initrd


def bare_floor(runs: int, work: Path) -> Timing:
    settings = VMSettings()
    accel = asyncio.run(choose_accel(settings.accel, settings.qemu, settings.kernel_path(),
                                     Path("/run/hbd")))
    spec = VMSpec(run_dir=work / "vm", kernel=settings.kernel_path(),
                  initrd=bare_initrd(work), accel=accel, memory_mib=settings.memory_mib,
                  tcg_tb_size_mib=settings.tcg_tb_size_mib)
    spec.run_dir.mkdir()
    argv = [a for a in build_argv(settings.qemu, spec) if a != "-daemonize"]

    def boot() -> None:
        run(argv)

    return measure(f"bare floor: QEMU + kernel to init, off ({accel})", runs, boot)


def docker_run(host: str) -> None:
    run([DOCKER_CLI, "run", "--rm", "busybox", "true"], env=docker_env(host))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-runc", action="store_true", help="skip the real dockerd row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        floor = bare_floor(args.runs, Path(tmp))
    rows = [floor]
    with hbd_daemon() as daemon:
        rows.append(measure("hbd: docker run --rm busybox true", args.runs,
                            lambda: docker_run(daemon.host)))
    if not args.no_runc:
        with real_dockerd() as host:
            run([DOCKER_CLI, "load", "-q", "-i", str(BUSYBOX_TAR)], env=docker_env(host))
            rows.append(measure("runc (dockerd 20.10): docker run --rm busybox true",
                                args.runs, lambda: docker_run(host)))
    print(table(rows, baseline=floor))
    ratio = rows[1].median / floor.median
    print(f"\nhbd / bare floor (median): {ratio:.2f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
