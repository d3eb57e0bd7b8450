"""What goes into QEMU's options from outside: validated, escaped, and
disk files opened by hbd (a jailed QEMU opens no host path itself).

QEMU splits option strings at commas ("a,b=c"); a comma inside a value is
written twice. hbd never puts an unchecked string there: names, serials and
MACs are validated, and disks and sockets are passed as descriptors
(`/dev/fdset/N`, `fd=N`), so their host paths never reach QEMU at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from hbd.errors import InvalidParameter

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,19}")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_BACKING_FORMAT = 0xE2792ACA
MAX_BACKING_CHAIN = 4


def escape(value: str) -> str:
    """A value for a comma-separated QEMU option."""
    return value.replace(",", ",,")


def checked(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value):
        raise InvalidParameter(f"invalid {kind} for QEMU: {value!r}")
    return value


def guest_name(value: str) -> str:
    return checked("guest name", value, NAME_RE)


def disk_serial(value: str) -> str:
    return checked("disk serial", value, SERIAL_RE)


def mac_address(value: str) -> str:
    return checked("MAC address", value.lower(), MAC_RE)


@dataclass(frozen=True)
class Backing:
    path: Path
    format: str


def qcow2_backing(header: bytes, image: Path) -> Backing | None:
    """The backing file named in a qcow2 header (relative names are to the
    image's directory), or None. `header` is the file's first 64 KiB."""
    if header[:4] != QCOW2_MAGIC or len(header) < 72:
        return None
    version, offset, size = struct.unpack_from(">IQI", header, 4)
    if not offset or not size:
        return None
    if offset + size > len(header):
        raise InvalidParameter(f"{image.name}: backing file name out of range")
    name = header[offset:offset + size].decode()
    header_length = struct.unpack_from(">I", header, 100)[0] if version >= 3 else 72
    return Backing(image.parent / name, _backing_format(header, header_length) or "raw")


def _backing_format(header: bytes, at: int) -> str:
    while at + 8 <= len(header):
        kind, length = struct.unpack_from(">II", header, at)
        if kind == 0:
            return ""
        if kind == QCOW2_BACKING_FORMAT:
            return header[at + 8:at + 8 + length].decode()
        at += 8 + (length + 7) // 8 * 8
    return ""


@dataclass
class OpenDisk:
    """A disk's descriptors, the image first, then its backing chain (opened
    read-only), each with its format."""

    fds: list[int] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def open_disk(path: Path, fmt: str, readonly: bool, exclusive: bool = False) -> OpenDisk:
    """`exclusive`: a block device claimed with O_EXCL (fails with EBUSY while
    mounted or claimed elsewhere; keeps it from being mounted while open)."""
    disk = OpenDisk()
    try:
        mode = (os.O_RDONLY if readonly else os.O_RDWR) | (os.O_EXCL if exclusive else 0)
        while True:
            fd = os.open(path, mode | os.O_CLOEXEC)
            disk.fds.append(fd)
            disk.formats.append(fmt)
            if fmt != "qcow2":
                return disk
            backing = qcow2_backing(os.pread(fd, 65536, 0), path)
            if backing is None:
                return disk
            if len(disk.fds) > MAX_BACKING_CHAIN:
                raise InvalidParameter(f"{path.name}: backing chain too long")
            path, fmt, mode = backing.path, backing.format, os.O_RDONLY
    except BaseException:
        disk.close()
        raise


def file_node(fdset: int, host_device: bool = False) -> dict[str, object]:
    """QEMU's protocol node of a descriptor: `file` for an image, `host_device`
    for a block device (QEMU refuses a block device as `file`)."""
    return {"driver": "host_device" if host_device else "file",
            "filename": f"/dev/fdset/{fdset}", "aio": "threads"}


def chain_node(fdsets: list[int], formats: list[str], readonly: bool,
               host_device: bool = False) -> dict[str, object]:
    """The block node of an image on fdsets[0] and its backing chain on the
    rest: every file named, so QEMU never opens a backing file by the name
    in the image's header."""
    node: dict[str, object] = {"driver": formats[0], "read-only": readonly,
                               "file": file_node(fdsets[0], host_device)}
    if formats[0] == "qcow2":
        node["backing"] = chain_node(fdsets[1:], formats[1:], True) if fdsets[1:] else None
    return node
