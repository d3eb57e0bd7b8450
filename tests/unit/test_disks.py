"""Empty ext4 images of every size a block volume may have."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hbd.drivers import disks


def journal_bytes(image: Path) -> int:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        if line.startswith("Total journal size:"):
            value = line.split(":")[1].strip()
            return int(value[:-1]) * {"k": 1024, "M": 1024 * 1024}[value[-1]]
    return 0


@pytest.mark.parametrize("mib", [16, 32, 255])
async def test_a_small_disk_gets_a_journal_that_fits(tmp_path: Path, mib: int) -> None:
    image = tmp_path / "small.raw"
    await disks.empty_ext4(image, mib * 1024 * 1024, label="t")
    assert image.stat().st_size == mib * 1024 * 1024
    assert 0 < journal_bytes(image) < mib * 1024 * 1024 // 4


async def test_a_large_disk_gets_the_16_mib_journal(tmp_path: Path) -> None:
    image = tmp_path / "large.raw"
    await disks.empty_ext4(image, disks.SMALL_DISK, label="t")
    assert journal_bytes(image) == 16 * 1024 * 1024
