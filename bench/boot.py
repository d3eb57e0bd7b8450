"""`docker run --rm busybox true` through hbd, side by side with its floor and runc.

    python3 bench/boot.py [--runs N]

Rows, measured in one run on this machine:
  bare floor   QEMU + the hbd guest kernel booting an init that powers off at
               once, launched by hbd's own drivers with the devices hbd boots
               a container's guest with: the SCSI bus with its image and
               scratch disks, 4 NICs on taps hbd opens, the balloon, the
               agent's serial port, and a virtiofsd with the vhost-user-fs
               device (so guest RAM on a shared memfd). Each boot opens its
               taps and starts its virtiofsd, as hbd does for each guest.
               What it leaves out is hbd's own work: the agent handshake,
               mounting the container's disks and shares, its processes.
  hbd          the docker CLI against hbd: create, attach, start, wait, remove
               (the guest a clone of hbd's template, built at its start)
  hbd booted   the same with templates off: every guest boots
  runc         the docker CLI against a private real dockerd (Debian docker.io)
  gVisor       the same dockerd with runsc (ptrace, host network), where installed
The target (shared/DESIGN.md §4) is hbd <= 1.3 times the bare floor under TCG.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DOCKER_CLI,
    REPO,
    RUNSC,
    RUNSC_RUNTIME,
    Timing,
    docker_env,
    measure,
    real_dockerd,
    run,
    table,
    wait_template,
)
from hbd.config import VMSettings
from hbd.drivers import hostmount, net
from hbd.drivers.accel import choose_accel
from hbd.drivers.virtiofs import Virtiofsd
from hbd.drivers.vm import DiskSpec, NicSpec, QemuMicrovmDriver, VMSpec
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


async def bare_boot(driver: QemuMicrovmDriver, spec: VMSpec, space: hostmount.ShareSpace,
                    export: Path) -> None:
    """One boot of the bare guest, set up as hbd sets up a container's guest
    (its export directory in a share space, virtiofsd started there)."""
    tag = secrets.token_hex(4)
    fds: list[int] = []
    virtiofsd = None
    try:
        for i in range(len(spec.nics)):
            tap = f"bfl{tag}{i:x}"
            fds.append(net.open_tap(tap))
            spec.nics[i] = NicSpec(tap, spec.nics[i].mac, fds[-1])
        space.make_export_dir(export)
        virtiofsd = await Virtiofsd.start(spec.run_dir, export,
                                          mount_namespace=space.namespace)
        spec.shared_fs_socket = virtiofsd.socket
        vm = await driver.launch(spec)
        await vm.wait_exit()
    finally:
        for fd in fds:
            os.close(fd)  # QEMU is gone: so are the taps
        if virtiofsd is not None:
            await virtiofsd.stop()  # it exits once QEMU lets go; stop() sees it gone
        space.remove_export_dir(export)


def bare_floor(runs: int, work: Path) -> Timing:
    settings = VMSettings()
    accel = asyncio.run(choose_accel(settings.accel, settings.qemu, settings.kernel_path(),
                                     Path("/run/hbd")))
    # The image and scratch disks are never read: the guest sees them only
    # when its init asks for them (scsi_mod.scan=manual), and this one does not.
    image, scratch = work / "image.raw", work / "scratch.qcow2"
    image.write_bytes(b"")
    os.truncate(image, 16 << 20)
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(scratch), "1G"])
    run_dir = Path(tempfile.mkdtemp(prefix="bfl-", dir="/run"))  # short: socket paths
    spec = VMSpec(run_dir=run_dir, kernel=settings.kernel_path(),
                  initrd=bare_initrd(work), accel=accel, memory_mib=settings.memory_mib,
                  vcpus=settings.vcpus, tcg_tb_size_mib=settings.tcg_tb_size_mib,
                  disks=[DiskSpec(image, "image", 1, readonly=True),
                         DiskSpec(scratch, "scratch", 2, format="qcow2")],
                  nics=[NicSpec("", f"02:68:62:00:00:{i:02x}", -1)
                        for i in range(settings.nic_slots)])
    loop = asyncio.new_event_loop()
    space = hostmount.ShareSpace(run_dir / "shares")
    try:
        # Its constructor turns transparent huge pages off, as hbd's does.
        driver = QemuMicrovmDriver(settings.qemu)

        def boot() -> None:
            loop.run_until_complete(bare_boot(driver, spec, space, run_dir / "fs"))

        return measure(f"bare floor: QEMU + kernel to init, off ({accel})", runs, boot)
    finally:
        loop.close()
        space.close(end=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def docker_run(host: str, runtime: str = "") -> None:
    run([DOCKER_CLI, "run", "--rm", *(["--runtime", runtime] if runtime else []),
         "busybox", "true"], env=docker_env(host))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-runc", action="store_true",
                        help="skip the real dockerd rows (runc, gVisor)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        floor = bare_floor(args.runs, Path(tmp))
    rows = [floor]
    with hbd_daemon() as daemon:
        wait_template(daemon)
        rows.append(measure("hbd: docker run --rm busybox true", args.runs,
                            lambda: docker_run(daemon.host)))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hbd.toml"
        config.write_text("[vm]\ntemplates = false\n")
        with hbd_daemon(extra_args=("--config", str(config))) as daemon:
            rows.append(measure("hbd, every guest booted (templates = false)", args.runs,
                                lambda: docker_run(daemon.host)))
    if not args.no_runc:
        with real_dockerd(RUNSC_RUNTIME if RUNSC else None) as host:
            run([DOCKER_CLI, "load", "-q", "-i", str(BUSYBOX_TAR)], env=docker_env(host))
            rows.append(measure("runc (dockerd 20.10): docker run --rm busybox true",
                                args.runs, lambda: docker_run(host)))
            if RUNSC:
                rows.append(measure("gVisor (runsc ptrace): docker run --rm busybox true",
                                    args.runs, lambda: docker_run(host, "runsc")))
    print(table(rows, baseline=floor))
    ratio = rows[1].median / floor.median
    print(f"\nhbd / bare floor (median): {ratio:.2f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
