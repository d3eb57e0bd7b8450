"""`GET /system/df`: the space images, containers, volumes and the build cache take.

- Images: dockerd's accounting (hbd/services/image/usage.py): LayersSize is
  every layer once; each listed image has its Size, the part of it other
  listed images share (SharedSize) and how many containers use it.
- Containers: SizeRw is what a container wrote, its scratch disk's own
  allocated bytes (hbd/services/container/scratch.py); SizeRootFs adds its
  image's size.
- Volumes: UsageData.Size is a shared volume's files, or a block volume's
  disk as allocated on the host; RefCount the containers that use it.
- Build cache: a record per cached build step. Its Size is what only the
  cache holds: the layers of an intermediate step image that no listed image
  has (a listed image's bytes are counted under Images).

A tenant's report has its own objects only: the images it sees (its own and
the operator's catalogue) and the layers of those, its containers, volumes
and build cache.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from hbd.errors import InvalidParameter
from hbd.services.container.service import ContainerService
from hbd.services.image import usage
from hbd.services.image.model import Image
from hbd.services.image.store import ImageStore
from hbd.services.scope import OPERATOR, Scope
from hbd.services.timefmt import ZERO_TIME
from hbd.services.volume.service import VolumeService

KINDS = ("container", "image", "volume", "build-cache")


class BuildCache(Protocol):
    def cached_steps(self, scope: Scope = OPERATOR) -> dict[str, Image]: ...


@dataclass
class DiskUsage:
    images: ImageStore
    containers: ContainerService
    volumes: VolumeService
    build_cache: BuildCache

    async def report(self, kinds: list[str], scope: Scope = OPERATOR) -> dict[str, Any]:
        """The SystemDataUsageResponse for `kinds` (all when empty): a tenant's
        own containers, volumes, images and build cache."""
        for kind in kinds:
            if kind not in KINDS:
                raise InvalidParameter(f"unknown object type: {kind}")
        wanted = set(kinds or KINDS)
        out: dict[str, Any] = {"LayersSize": 0, "Images": None, "Containers": None,
                               "Volumes": None, "BuildCache": None}
        if "image" in wanted:
            out["LayersSize"], out["Images"] = self.images.disk_usage(scope)
        if "container" in wanted:
            out["Containers"] = self.container_usage(scope)
        if "volume" in wanted:
            out["Volumes"] = await self.volume_usage(scope)
        if "build-cache" in wanted:
            out["BuildCache"] = self.build_cache_usage(scope)
        return out

    def container_usage(self, scope: Scope = OPERATOR) -> list[dict[str, Any]]:
        out = []
        for summary in self.containers.list_summaries(all_=True, scope=scope):
            c = self.containers.containers.get(summary["Id"])
            if c is None:
                continue  # removed meanwhile
            image = self.images.images.get(c.image_id)
            size_rw = self.containers.size_rw(c)
            if size_rw:  # omitted when 0, as dockerd does
                summary["SizeRw"] = size_rw
            summary["SizeRootFs"] = size_rw + (image.size if image is not None else 0)
            out.append(summary)
        return out

    async def volume_usage(self, scope: Scope = OPERATOR) -> list[dict[str, Any]]:
        views = self.volumes.list_views({}, scope)
        names = [scope.qualify(view["Name"]) for view in views]
        found = [self.volumes.volumes.get(name) for name in names]
        # Walking a shared volume's files may take a while: not on the loop.
        sizes = await asyncio.to_thread(
            lambda: [self.volumes.disk_usage(v) if v is not None else 0 for v in found])
        return [{**view, "UsageData": {
            "Size": size, "RefCount": len(self.volumes.container_users(name))}}
            for view, name, size in zip(views, names, sizes, strict=True)]

    def build_cache_usage(self, scope: Scope = OPERATOR) -> list[dict[str, Any]]:
        steps = self.build_cache.cached_steps(scope)
        key_of = {img.id: key for key, img in steps.items()}
        listed = self.images.listed_images(scope)
        listed_ids = {img.id for img in listed}
        listed_chains = {chain for img in listed for chain in usage.layer_chains(img)}
        return [{
            "ID": key,
            "Parents": [key_of[img.parent]] if img.parent in key_of else None,
            "Type": "regular",
            "Description": _step(img),
            "InUse": bool(self.images.container_usage(img.id, scope)),
            "Shared": bool(listed_chains & set(usage.layer_chains(img))),
            "Size": 0 if img.id in listed_ids else usage.unique_size(img, listed),
            "CreatedAt": str(img.config.get("created") or ZERO_TIME),
            "LastUsedAt": None,
            "UsageCount": 0,
        } for key, img in sorted(steps.items(), key=lambda kv: kv[1].created_unix)]


def _step(img: Image) -> str:
    """What the step ran: its history entry's created_by."""
    history = img.config.get("history") or [{}]
    last = history[-1] if isinstance(history[-1], dict) else {}
    return str(last.get("created_by", ""))
