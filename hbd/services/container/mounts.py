"""A container's mounts: `-v`, `--mount`, `--tmpfs`, image VOLUMEs, `--volumes-from`.

Resolved once at create into MountPoints (what `inspect` shows as Mounts);
its sandbox provides them at each start: shared volumes and bind mounts
through the guest's shared filesystem, block volumes as disks, tmpfs mounts
made in the guest, image mounts (API 1.48's `type=image`, the CRI's image
volumes) as the image's own read-only disk.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hbd.errors import InvalidParameter, NotFound
from hbd.services.scope import OPERATOR, Scope
from hbd.services.volume.service import Volume, VolumeService

PROPAGATIONS = {"private", "rprivate", "shared", "rshared", "slave", "rslave"}
BIND_OPTIONS = {"ro", "rw", "z", "Z", "nocopy", "consistent", "cached", "delegated"} | PROPAGATIONS


@dataclass
class MountPoint:
    type: str  # bind | volume | tmpfs | image
    destination: str
    source: str = ""  # host path (bind), volume name (volume) or image id (image)
    rw: bool = True
    mode: str = ""
    options: str = ""  # tmpfs options
    nocopy: bool = False
    # A volume's or image's subdirectory mounted instead of its root
    # (VolumeOptions.Subpath, ImageOptions.Subpath).
    subpath: str = ""
    # A read-only bind whose source's own mounts keep their flags (moby's
    # BindOptions.ReadOnlyNonRecursive); otherwise read-only is recursive,
    # moby's default since API 1.44.
    readonly_non_recursive: bool = False
    # A bind's propagation ("" is the default, rprivate): slave or rslave
    # takes the host's later mounts beneath a shared source.
    propagation: str = ""

    @property
    def follows_host(self) -> bool:
        return self.propagation in ("slave", "rslave")

    def view(self, volumes: VolumeService) -> dict[str, Any]:
        out: dict[str, Any] = {"Type": self.type}
        if self.type == "volume":
            v = volumes.volumes.get(self.source)
            out.update({"Name": self.source,
                        "Source": volumes.mountpoint(v) if v else "", "Driver": "local"})
        else:
            out["Source"] = self.source
        out.update({"Destination": self.destination, "Mode": self.mode, "RW": self.rw,
                    "Propagation": (self.propagation or "rprivate") if self.type == "bind"
                    else ""})
        return out


def _clean_target(target: str) -> str:
    if not target.startswith("/"):
        raise InvalidParameter(f"invalid mount config: mount path must be absolute: "
                               f"\"{target}\"")
    cleaned = posixpath.normpath(target)
    if cleaned == "/":
        raise InvalidParameter("invalid specification: destination can't be '/'")
    return cleaned


def _parse_bind(spec: str) -> MountPoint:
    """`-v` syntax: [source:]destination[:options]."""
    parts = spec.split(":")
    if len(parts) == 1:
        return MountPoint("volume", _clean_target(parts[0]))
    if len(parts) > 3:
        raise InvalidParameter(f"invalid volume specification: '{spec}'")
    source, target = parts[0], parts[1]
    options = parts[2].split(",") if len(parts) == 3 else []
    for option in options:
        if option not in BIND_OPTIONS:
            raise InvalidParameter(f"invalid mode: {option}")
    rw = "ro" not in options
    mode = parts[2] if len(parts) == 3 else ""
    if source.startswith("/"):
        propagation = [o for o in options if o in PROPAGATIONS]
        return MountPoint("bind", _clean_target(target), os.path.normpath(source), rw, mode,
                          propagation=_propagation(propagation[-1] if propagation else ""))
    if not source:
        raise InvalidParameter(f"invalid volume specification: '{spec}'")
    return MountPoint("volume", _clean_target(target), source, rw, mode or "z",
                      nocopy="nocopy" in options)


def _volume_subpath(source: str, subpath: str) -> str:
    """dockerd's checks (>= 26): a named volume, and a path that stays in it
    (Go's filepath.IsLocal)."""
    if not subpath:
        return ""
    if not source:
        raise InvalidParameter('invalid mount config for type "volume": must not set Subpath '
                               "when using anonymous volumes")
    return _local_subpath(subpath, "volume")


def _local_subpath(subpath: str, kind: str) -> str:
    cleaned = posixpath.normpath(subpath)
    if subpath.startswith("/") or cleaned == ".." or cleaned.startswith("../") or \
            "\0" in subpath:
        raise InvalidParameter(f'invalid mount config for type "{kind}": subpath must be a '
                               f"relative path within the {kind}")
    return "" if cleaned == "." else cleaned


def _propagation(mode: str) -> str:
    """A bind's propagation as hbd can give it: a mount made in the guest is
    the guest kernel's and cannot reach the host, so shared ones are refused."""
    if mode in ("shared", "rshared"):
        raise InvalidParameter(f"bind propagation {mode} is not possible: mounts made in a "
                               "container are its guest kernel's and cannot reach the host "
                               "(rslave gives the host's mounts to the container)")
    return mode


def _readonly_non_recursive(m: dict[str, Any]) -> bool:
    """BindOptions' read-only recursion, checked in moby's words (moby checks
    at start; hbd at create, where the mount is read)."""
    options = m.get("BindOptions") or {}
    non_recursive = bool(options.get("ReadOnlyNonRecursive"))
    force_recursive = bool(options.get("ReadOnlyForceRecursive"))
    for name, wanted in (("ReadOnlyNonRecursive", non_recursive),
                         ("ReadOnlyForceRecursive", force_recursive)):
        if wanted and not m.get("ReadOnly"):
            raise InvalidParameter(f"mount options conflict: !ReadOnly && BindOptions.{name}")
    if non_recursive and force_recursive:
        raise InvalidParameter("mount options conflict: ReadOnlyNonRecursive && "
                               "BindOptions.ReadOnlyForceRecursive")
    return non_recursive


def _parse_mount(m: dict[str, Any], source_exists: Callable[[str], bool] = os.path.exists
                 ) -> MountPoint:
    kind = m.get("Type") or ""
    target = m.get("Target") or ""
    if not target:
        raise InvalidParameter(f"invalid mount config for type \"{kind}\": field Target "
                               "must not be empty")
    target = _clean_target(target)
    rw = not m.get("ReadOnly")
    source = m.get("Source") or ""
    if kind == "bind":
        if not source:
            raise InvalidParameter("invalid mount config for type \"bind\": field Source must "
                                   "not be empty")
        if not source_exists(source):
            raise InvalidParameter("invalid mount config for type \"bind\": bind source path "
                                   f"does not exist: {source}")
        options = m.get("BindOptions") or {}
        propagation = str(options.get("Propagation") or "")
        if propagation and propagation not in PROPAGATIONS:
            raise InvalidParameter(f'invalid mount config for type "bind": invalid '
                                   f"propagation mode: {propagation}")
        return MountPoint("bind", target, os.path.normpath(source), rw,
                          readonly_non_recursive=_readonly_non_recursive(m),
                          propagation=_propagation(propagation))
    if kind == "volume":
        options = m.get("VolumeOptions") or {}
        subpath = _volume_subpath(source, str(options.get("Subpath") or ""))
        return MountPoint("volume", target, source, rw, nocopy=bool(options.get("NoCopy")),
                          subpath=subpath)
    if kind == "tmpfs":
        if source:
            raise InvalidParameter("invalid mount config for type \"tmpfs\": field Source "
                                   "must not be specified")
        opts = m.get("TmpfsOptions") or {}
        options = []
        if opts.get("SizeBytes"):
            options.append(f"size={int(opts['SizeBytes'])}")
        if opts.get("Mode"):
            options.append(f"mode={int(opts['Mode']):o}")
        return MountPoint("tmpfs", target, "", rw, options=",".join(options))
    if kind == "image":
        if not source:
            raise InvalidParameter("invalid mount config for type \"image\": field Source "
                                   "must not be empty")
        options = m.get("ImageOptions") or {}
        subpath = str(options.get("Subpath") or "")
        # An image is never written through a mount: read-only, asked or not.
        return MountPoint("image", target, source, False,
                          subpath=_local_subpath(subpath, "image") if subpath else "")
    raise InvalidParameter(f"mount type unknown: \"{kind}\"")


async def _volume_for(volumes: VolumeService, name: str, driver: str, scope: Scope
                      ) -> Volume:
    """The named volume (created if need be) or a new anonymous one, the
    asker's own, with HostConfig.VolumeDriver's error as dockerd words it for
    a driver hbd has not."""
    try:
        return await volumes.create(name, driver=driver, scope=scope)
    except NotFound as e:
        message = f"error looking up volume plugin {driver}: {e.message}"
        raise NotFound(f"create {name}: {message}" if name else message) from None


async def resolve_mounts(config: dict[str, Any], host_config: dict[str, Any],
                         volumes: VolumeService,
                         volumes_from: list[list[MountPoint]], scope: Scope = OPERATOR
                         ) -> list[MountPoint]:
    """Every mount of a new container, named volumes created as needed (those
    of `volumes_from` are another container's, resolved already)."""
    mounts: dict[str, MountPoint] = {}
    for source_mounts in volumes_from:
        for mp in source_mounts:
            mounts[mp.destination] = MountPoint(**asdict(mp))
    resolved = {id(mp) for mp in mounts.values()}
    for spec in host_config.get("Binds") or []:
        mp = _parse_bind(spec)
        if mp.type == "bind" and not os.path.exists(mp.source):
            # -v creates a missing host directory, as dockerd does (--mount does not).
            Path(mp.source).mkdir(parents=True, exist_ok=True)
        mounts[mp.destination] = mp
    for m in host_config.get("Mounts") or []:
        # A direct-assigned volume's path is a name for its device: nothing
        # need be there on the host.
        mp = _parse_mount(m, lambda path: os.path.exists(path) or
                          volumes.direct.lookup(path) is not None)
        if mp.destination in mounts and mp.destination not in \
                {x.destination for xs in volumes_from for x in xs}:
            raise InvalidParameter(f"Duplicate mount point: {mp.destination}")
        mounts[mp.destination] = mp
    for target, options in (host_config.get("Tmpfs") or {}).items():
        mp = MountPoint("tmpfs", _clean_target(target), "", "ro" not in options.split(","),
                        options=",".join(o for o in options.split(",") if o not in ("ro", "rw")))
        mounts[mp.destination] = mp
    for target in config.get("Volumes") or {}:
        cleaned = _clean_target(target)
        if cleaned not in mounts:
            mounts[cleaned] = MountPoint("volume", cleaned)
    driver = str(host_config.get("VolumeDriver") or "")
    for mp in mounts.values():
        if mp.type == "volume" and id(mp) not in resolved:
            mp.source = (await _volume_for(volumes, mp.source, driver, scope)).name
    # Parents before children, as the guest mounts them in order.
    return sorted(mounts.values(), key=lambda m: (m.destination.count("/"), m.destination))
