"""Choose KVM or TCG by booting a probe guest, not by looking at /dev/kvm.

/dev/kvm can exist and still be unable to boot a stock kernel (a nested PVM
hangs right after "Probing EDD"). The probe boots the real guest kernel with
no initramfs: it panics at "VFS: Unable to mount root", and with panic=-1 and
-no-reboot QEMU exits. Exiting within the deadline proves KVM works. The
verdict is cached per host boot and kernel, in the exec root (tmpfs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_DEADLINE = 5.0


def _cache_key(kernel: Path) -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except OSError:
        boot_id = ""
    st = kernel.stat()
    return hashlib.sha256(f"{boot_id}:{kernel}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


async def kvm_boots(qemu: str, kernel: Path, deadline: float = PROBE_DEADLINE) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = [
        qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off",
        "-accel", "kvm", "-cpu", "host", "-m", "64", "-smp", "1",
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-serial", "none", "-kernel", str(kernel),
        "-append", "console=ttyS0 reboot=t panic=-1 quiet",
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(proc.wait(), deadline)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False
    return proc.returncode == 0


async def choose_accel(setting: str, qemu: str, kernel: Path, cache_dir: Path) -> str:
    """`setting` is auto, kvm or tcg (hbd.toml [vm] accel)."""
    if setting in ("kvm", "tcg"):
        return setting
    key = _cache_key(kernel)
    cache = cache_dir / "accel.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return str(cached["accel"])
    accel = "kvm" if await kvm_boots(qemu, kernel) else "tcg"
    log.info("accelerator probe: %s", accel)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "accel": accel}))
    tmp.replace(cache)
    return accel
