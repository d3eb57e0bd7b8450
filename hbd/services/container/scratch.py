"""Per-container writable scratch disks.

One empty, fully initialised ext4 template is made per data root; each
container gets a qcow2 overlay of it. The overlay file is made once as a
template too, so a container's scratch disk is a plain file copy (no
qemu-img process on the `docker create` path). `--storage-opt size=…` gets
templates of its size, made the first time a size is asked for.
"""

from __future__ import annotations

import asyncio
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
        self._lock = asyncio.Lock()

    async def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.base.exists():
            self.overlay.unlink(missing_ok=True)
            await disks.empty_ext4(self.base, self.size, label="hbd-scratch")
        if not self.overlay.exists():
            await disks.qcow2_overlay(self.base, self.overlay)

    async def create(self, path: Path, size: int = 0) -> None:
        """A scratch disk of `size` bytes (0: the default size)."""
        overlay = self.overlay if size in (0, self.size) else await self._sized(size)
        await asyncio.to_thread(disks.private_copy, overlay, path)

    async def _sized(self, size: int) -> Path:
        """The templates for `--storage-opt size=…`, made on first use of a size."""
        base = self.root / f"scratch-base-{size}.ext4"
        overlay = self.root / f"scratch-overlay-{size}.qcow2"
        async with self._lock:
            if not overlay.exists():
                if not base.exists():
                    await disks.empty_ext4(base, size, label="hbd-scratch")
                await disks.qcow2_overlay(base, overlay)
        return overlay

    def size_rw(self, container_dir: Path) -> int:
        """What a container wrote (its SizeRw): the bytes its scratch disk has
        allocated on the host beyond those of the empty overlay it was copied
        from, so that one that wrote nothing has 0, as with dockerd. Counted in
        qcow2 clusters, with the ext4 metadata the guest wrote."""
        return max(0, disks.allocated_bytes(container_dir / SCRATCH_DISK) -
                   disks.allocated_bytes(self.overlay))
