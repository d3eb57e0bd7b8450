"""Loop devices for tests of host block devices: made from a file the test
owns, detached after (with whatever still holds them gone first)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def loop_device(image: Path, size_mib: int = 32, ext4: bool = False) -> Iterator[str]:
    """/dev/loopN over a new file `image` (an empty ext4 with `ext4`)."""
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    if ext4:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def host_mounts(device: str) -> list[str]:
    """Where the host has `device` mounted."""
    out = subprocess.run(["findmnt", "-n", "-o", "TARGET", "-S", device],
                         capture_output=True, text=True)
    return out.stdout.split()
