"""Named volumes, of two kinds.

- shared (the default): a host directory, `<volumes>/<name>/_data` as in
  dockerd, shared into guests over virtiofs. Any number of running
  containers use it at once, read and write, and see each other's changes.
- block (`docker volume create -o type=block [-o size=…]`): an ext4 disk
  image attached straight to the guest (Hummingbird's cloud-disk model), the
  fastest, but one running container at a time: a block device cannot be
  mounted by two guests at once, so a second one gets a clear error instead
  of a corrupted filesystem. It is a qcow2 overlay of an empty,
  pre-formatted ext4 template of its size (one template per size, made
  once), so creating one is a file copy.

Host block devices registered for volume paths (direct-assigned volumes,
Kata's convention) are `direct`'s: hbd/services/volume/direct.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hbd.drivers import disks
from hbd.errors import Conflict, InvalidParameter, NotFound
from hbd.events import EventBus
from hbd.services.filters import PruneFilter, labels_match
from hbd.services.quota import QuotaGuard
from hbd.services.scope import OPERATOR, Scope
from hbd.services.timefmt import rfc3339_nano
from hbd.services.volume.direct import DirectVolumes
from hbd.store import StateStore

DEFAULT_SIZE = 8 * 1024 * 1024 * 1024
VALID_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
LIST_FILTERS = {"dangling", "driver", "label", "name"}
_SIZE = re.compile(r"^(\d+)([kmgt]?)b?$", re.IGNORECASE)
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise InvalidParameter(f"invalid size: '{text}'")
    size = int(m.group(1)) * UNITS[m.group(2).lower()]
    if size < 16 * 1024 * 1024:
        raise InvalidParameter(f"invalid size: '{text}': volumes hold at least 16MiB")
    return size


@dataclass
class Volume:
    name: str
    created: str
    size: int
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False
    # Records from before shared volumes existed are block volumes.
    kind: str = "block"

    @property
    def block(self) -> bool:
        return self.kind == "block"


class VolumeService:
    def __init__(self, state: StateStore, root: Path, events: EventBus,
                 quota: QuotaGuard | None = None, direct: DirectVolumes | None = None) -> None:
        self.state = state
        # Direct-assigned volumes: block devices registered for volume paths.
        self.direct = direct or DirectVolumes(root / "_direct")
        self.quota = quota or QuotaGuard()
        self.root = root
        self.events = events
        self.templates = root / "_templates"
        self.templates.mkdir(parents=True, exist_ok=True)
        self.volumes: dict[str, Volume] = {}
        # The containers that reference a volume (running or not). The
        # container service answers; handed in so volumes do not depend on it.
        self.container_users: Callable[[str], list[str]] = lambda name: []
        # volume name -> id of the running container that has it attached
        self.attached: dict[str, str] = {}
        self._lock = asyncio.Lock()
        for _, rec in state.load("volumes"):
            v = Volume(**rec)
            self.volumes[v.name] = v

    def get(self, name: str, scope: Scope = OPERATOR) -> Volume:
        """By name: a tenant's own (hbd.services.scope), or any for the operator."""
        v = self.volumes.get(scope.qualify(name))
        if v is None:
            raise NotFound(f"get {name}: no such volume")
        return v

    def disk(self, v: Volume) -> Path:
        return self.root / v.name / "disk.qcow2"

    def data_dir(self, v: Volume) -> Path:
        return self.root / v.name / "_data"

    def mountpoint(self, v: Volume) -> str:
        return str(self.disk(v) if v.block else self.data_dir(v))

    async def _template(self, size: int) -> Path:
        base = self.templates / f"ext4-{size}.raw"
        if not base.exists():
            await disks.empty_ext4(base, size, label="hbd-volume")
        return base

    async def create(self, name: str = "", driver: str = "", labels: dict[str, str] | None = None,
                     options: dict[str, str] | None = None,
                     anonymous: bool = False, scope: Scope = OPERATOR) -> Volume:
        """A new volume (the existing one of that name, as dockerd answers); a
        tenant's is named with its project."""
        if driver and driver != "local":
            raise NotFound(f"plugin \"{driver}\" not found")
        if not name:
            name = secrets.token_hex(32)
            anonymous = True
        if not VALID_NAME.match(name):
            raise InvalidParameter(f"create {name}: \"{name}\" includes invalid characters "
                                   "for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" "
                                   "are allowed. If you intended to pass a host directory, "
                                   "use absolute path")
        name = scope.qualify(name)
        options = {str(k): str(v) for k, v in (options or {}).items()}
        kind = self._kind(name, options)
        async with self._lock:
            if name in self.volumes:
                existing = self.volumes[name]
                # dockerd returns the existing volume when nothing conflicts.
                return existing
            size = parse_size(options["size"]) if "size" in options else \
                (DEFAULT_SIZE if kind == "block" else 0)
            if scope.is_tenant:
                self.quota.check_volume(scope, size, await asyncio.to_thread(
                    self._sizes, [v for v in self.volumes.values() if scope.sees(v.name)]))
            v = Volume(name, rfc3339_nano(), size, dict(labels or {}), options, anonymous,
                       kind)
            directory = self.root / name
            directory.mkdir(parents=True, exist_ok=True)
            try:
                if v.block:
                    await disks.qcow2_overlay(await self._template(size), self.disk(v))
                else:
                    self.data_dir(v).mkdir(mode=0o755)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            self.volumes[name] = v
            self.state.put("volumes", name, asdict(v))
        self.events.publish("volume", "create", name, {"driver": "local"})
        return v

    @staticmethod
    def _kind(name: str, options: dict[str, str]) -> str:
        for key in options:
            if key not in ("size", "type"):
                raise InvalidParameter(f"create {name}: invalid option: \"{key}\": hbd's "
                                       "local volumes take type (shared, block) and size")
        kind = options.get("type", "shared")
        if kind not in ("shared", "block"):
            raise InvalidParameter(f"create {name}: invalid volume type \"{kind}\": hbd's "
                                   "local volumes are shared (a host directory) or block "
                                   "(a disk)")
        if kind == "shared" and "size" in options:
            # dockerd's words for a size on a filesystem without quotas.
            raise InvalidParameter("quota size requested but no quota support")
        return kind

    async def remove(self, name: str, force: bool = False, scope: Scope = OPERATOR) -> None:
        """A volume that containers reference (running or not) stays."""
        v = self.volumes.get(scope.qualify(name))
        if v is None:
            if force:
                return
            raise NotFound(f"get {name}: no such volume")
        name = v.name
        users = self.container_users(name)
        if users:
            raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
        async with self._lock:
            del self.volumes[name]
            self.state.delete("volumes", name)
            await asyncio.to_thread(shutil.rmtree, self.root / name, True)
        self.events.publish("volume", "destroy", name, {"driver": "local"})

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]:
        """`volume prune`: since API 1.42 only anonymous volumes unless all=true."""
        filters = dict(filters)
        prune_all = filters.pop("all", ["false"])[0].lower() in ("true", "1")
        matches = PruneFilter(filters)
        deleted = []
        reclaimed = 0
        for v in list(self.volumes.values()):
            if (not prune_all and not v.anonymous) or not scope.sees(v.name) or \
                    self.container_users(v.name):
                continue
            if not matches(v.created, {"Labels": v.labels}):
                continue
            size = await asyncio.to_thread(self.disk_usage, v)
            await self.remove(v.name)
            deleted.append(v.name)
            reclaimed += size
        return {"VolumesDeleted": scope.shown(deleted) or None, "SpaceReclaimed": reclaimed}

    def _sizes(self, volumes: list[Volume]) -> list[int]:
        """What each volume counts for in a quota: a block one its size, a
        shared one (which has none) what it holds."""
        return [v.size if v.block else self.disk_usage(v) for v in volumes]

    def disk_usage(self, v: Volume) -> int:
        """The bytes a volume holds. A shared one: its files, counted as dockerd
        counts a directory (their sizes, a hard-linked file once). A block one:
        its disk as allocated on the host (the host never reads a filesystem a
        guest wrote, so what is in it is not known here)."""
        if v.block:
            return disks.allocated_bytes(self.disk(v))
        return directory_size(self.data_dir(v))

    def attach(self, name: str, container_id: str) -> None:
        """A running container takes a block volume; shared ones take any number."""
        if not self.get(name).block:
            return
        holder = self.attached.get(name)
        if holder is not None and holder != container_id:
            raise Conflict(f"volume {name} is attached to running container {holder[:12]}: a "
                           "volume is a block device in hbd and one guest at a time can "
                           "mount it")
        self.attached[name] = container_id

    def detach_all(self, container_id: str) -> None:
        for name in [n for n, cid in self.attached.items() if cid == container_id]:
            del self.attached[name]

    def list_views(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                   ) -> list[dict[str, Any]]:
        """`volume ls`: dangling, driver, label, name; a tenant's own volumes."""
        for key in filters:
            if key not in LIST_FILTERS:
                raise InvalidParameter(f"invalid filter '{key}'")
        out = []
        for v in sorted(self.volumes.values(), key=lambda v: v.name):
            if not scope.sees(v.name):
                continue
            if "name" in filters and not any(n in scope.shown(v.name)
                                             for n in filters["name"]):
                continue
            if "driver" in filters and "local" not in filters["driver"]:
                continue
            if not labels_match(filters.get("label", []), v.labels):
                continue
            if "dangling" in filters:
                dangling = filters["dangling"][0].lower() in ("true", "1")
                if dangling == bool(self.container_users(v.name)):
                    continue
            out.append(self.inspect(v, scope))
        return out

    def inspect(self, v: Volume, scope: Scope = OPERATOR) -> dict[str, Any]:
        return scope.shown({
            "CreatedAt": v.created, "Driver": "local", "Labels": v.labels or None,
            "Mountpoint": self.mountpoint(v), "Name": v.name, "Options": v.options or None,
            "Scope": "local",
        })


def directory_size(root: Path) -> int:
    """Sizes of everything under `root` but directories, each inode once,
    without following symbolic links (moby's pkg/directory.Size)."""
    seen: set[int] = set()
    total = 0
    for parent, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            try:
                st = os.lstat(os.path.join(parent, name))
            except OSError:
                continue  # gone while we looked
            if stat.S_ISDIR(st.st_mode) or not st.st_size or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_size
    return total
