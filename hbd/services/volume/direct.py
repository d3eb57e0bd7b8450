"""Direct-assigned volumes: filesystems on host block devices that the host
never mounts, attached to a guest and mounted there (Kata Containers'
convention, `kata-runtime direct-volume`).

A node's storage driver (a CSI plugin) that would mount a disk at a
volume path registers the disk instead: it writes the volume's
`mountInfo.json` under `<root>/<base64url of the volume path>/`:

    {"volume-type": "block", "device": "/dev/sdb", "fstype": "ext4",
     "options": ["noatime"], "metadata": {}}

When a container mounts that volume path (a CRI Mount, or a bind mount of
the Engine API), hbd attaches the device to the container's guest and the
guest mounts it with that filesystem type and options; the container gets
a bind of it. `python3 -m hbd.tools.direct_volume` registers and removes
volumes as `kata-runtime direct-volume add/remove` does.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbd.errors import InvalidParameter

MOUNT_INFO = "mountInfo.json"
VOLUME_TYPES = ("block",)
# What the guest kernel mounts (ext4's driver serves ext2 and ext3 too).
FILESYSTEMS = ("ext4", "ext3", "ext2")

# Linux's MS_* mount flags for the options that are flags, not filesystem data.
MS_RDONLY = 1
FLAG_OPTIONS = {
    "ro": MS_RDONLY, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "dirsync": 128,
    "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24,
    "lazytime": 1 << 25,
}
# Options that only undo a flag: the default already.
NO_FLAG_OPTIONS = {"rw", "suid", "dev", "exec", "async", "atime", "diratime", "defaults"}


@dataclass
class MountInfo:
    """A direct volume's registration (Kata's MountInfo)."""

    volume_type: str
    device: str
    fstype: str
    options: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"volume-type": self.volume_type, "device": self.device,
                           "fstype": self.fstype, "options": self.options,
                           "metadata": self.metadata})

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def parse_mount_info(text: str, where: str = "mountInfo") -> MountInfo:
    """A mountInfo.json's content, checked: InvalidParameter saying what is wrong."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise InvalidParameter(f"{where}: not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidParameter(f"{where}: not a JSON object")
    kind = raw.get("volume-type")
    if kind not in VOLUME_TYPES:
        raise InvalidParameter(f"{where}: unknown volume-type {kind!r}: hbd attaches "
                               f"direct volumes of type {', '.join(VOLUME_TYPES)}")
    device = raw.get("device")
    if not isinstance(device, str) or not device.startswith("/"):
        raise InvalidParameter(f"{where}: device must be an absolute path, not {device!r}")
    fstype = raw.get("fstype") or "ext4"
    if fstype not in FILESYSTEMS:
        raise InvalidParameter(f"{where}: fstype {fstype!r} is not one the guest kernel "
                               f"mounts ({', '.join(FILESYSTEMS)})")
    options = raw.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) and o and "," not in o
                                                for o in options):
        raise InvalidParameter(f"{where}: options must be a list of mount options")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidParameter(f"{where}: metadata must be an object")
    return MountInfo("block", device, str(fstype), list(options),
                     {str(k): str(v) for k, v in metadata.items()})


def mount_flags(options: list[str]) -> tuple[int, str]:
    """Mount options as the guest's mount(2) takes them: MS_* flags and the
    filesystem's own options (its data string)."""
    flags, data = 0, []
    for option in options:
        if option in FLAG_OPTIONS:
            flags |= FLAG_OPTIONS[option]
        elif option not in NO_FLAG_OPTIONS:
            data.append(option)
    return flags, ",".join(data)


def volume_key(volume_path: str) -> str:
    """The directory name of a volume path's registration (Go's
    base64.URLEncoding, padded, as kata-runtime names it)."""
    return base64.urlsafe_b64encode(volume_path.encode()).decode()


class DirectVolumes:
    """The registrations under `root` (hbd.toml's [volumes] direct_volumes)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, volume_path: str) -> Path:
        return self.root / volume_key(os.path.normpath(volume_path)) / MOUNT_INFO

    def lookup(self, volume_path: str) -> MountInfo | None:
        """The registration of a volume path, or None (a plain bind mount)."""
        if not volume_path.startswith("/"):
            return None
        path = self._file(volume_path)
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise InvalidParameter(f"direct volume {volume_path}: cannot read {path}: "
                                   f"{e.strerror}") from None
        return parse_mount_info(text, f"direct volume {volume_path}: {MOUNT_INFO}")

    def add(self, volume_path: str, info: MountInfo) -> Path:
        """Register (or register again) a volume path; written atomically."""
        if not volume_path.startswith("/"):
            raise InvalidParameter(f"volume path must be absolute: {volume_path!r}")
        path = self._file(volume_path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{MOUNT_INFO}.tmp")
        tmp.write_text(info.to_json())
        os.replace(tmp, path)
        return path

    def remove(self, volume_path: str) -> bool:
        """Forget a volume path; False if it was not registered."""
        directory = self._file(volume_path).parent
        if not directory.is_dir():
            return False
        shutil.rmtree(directory)
        return True

    def stats(self, volume_path: str) -> dict[str, Any]:
        """What the host knows of a registered volume: its registration and
        its device's size (its filesystem is the guest's to read)."""
        info = self.lookup(volume_path)
        if info is None:
            raise InvalidParameter(f"{volume_path} is not a registered direct volume")
        size = -1
        try:
            with open(info.device, "rb") as f:
                size = f.seek(0, os.SEEK_END)
        except OSError:
            pass
        return {"volume-path": volume_path, "mount-info": json.loads(info.to_json()),
                "device-bytes": size}
