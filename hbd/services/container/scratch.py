"""Per-container writable scratch disks.

One empty, fully initialised ext4 template is made per data root; each
container gets a qcow2 overlay of it. The overlay file is made once as a
template too, so a container's scratch disk is a plain file copy (no
qemu-img process on the `docker create` path).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from hbd.drivers import disks

SCRATCH_SIZE = 8 * 1024 * 1024 * 1024
SCRATCH_DISK = "scratch.qcow2"  # in the container's directory


class ScratchDisks:
    def __init__(self, root: Path, size: int = SCRATCH_SIZE) -> None:
        self.root = root
        self.size = size
        self.base = root / "scratch-base.ext4"
        self.overlay = root / "scratch-overlay.qcow2"

    async def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.base.exists():
            self.overlay.unlink(missing_ok=True)
            await disks.empty_ext4(self.base, self.size, label="hbd-scratch")
        if not self.overlay.exists():
            await disks.qcow2_overlay(self.base, self.overlay)

    async def create(self, path: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, self.overlay, path)

    def size_rw(self, container_dir: Path) -> int:
        """What a container wrote (its SizeRw): the bytes its scratch disk has
        allocated on the host beyond those of the empty overlay it was copied
        from, so that one that wrote nothing has 0, as with dockerd. Counted in
        qcow2 clusters, with the ext4 metadata the guest wrote."""
        return max(0, disks.allocated_bytes(container_dir / SCRATCH_DISK) -
                   disks.allocated_bytes(self.overlay))
