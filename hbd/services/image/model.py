"""What an image is: its config blob (the image ID is the config's digest)
plus an ordered list of layer blobs."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from hbd.services.timefmt import parse_rfc3339


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def chain_id(diff_ids: list[str]) -> str:
    chain = ""
    for diff_id in diff_ids:
        chain = diff_id if not chain else "sha256:" + hashlib.sha256(
            f"{chain} {diff_id}".encode()).hexdigest()
    return chain


@dataclass
class Layer:
    digest: str
    diff_id: str
    size: int
    media_type: str
    # Repositories ("registry/path") known to hold this blob: a push mounts
    # it from one of them instead of uploading it again.
    sources: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"digest": self.digest, "diff_id": self.diff_id, "size": self.size,
                "media_type": self.media_type, "sources": self.sources}


@dataclass
class Image:
    id: str
    config: dict[str, Any]
    layers: list[Layer]
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    last_tag_time: str = ""
    # The image a build step made this one from (dockerd's local Parent).
    parent: str = ""
    # Who has the image: "" the operator, else tenant project ids (owners.py).
    holders: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def chain_id(self) -> str:
        return chain_id([layer.diff_id for layer in self.layers])

    @property
    def container_config(self) -> dict[str, Any]:
        cfg = self.config.get("config") or {}
        return cfg if isinstance(cfg, dict) else {}

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "layers": [layer.record() for layer in self.layers],
            "repo_tags": self.repo_tags,
            "repo_digests": self.repo_digests,
            "last_tag_time": self.last_tag_time,
            **({"parent": self.parent} if self.parent else {}),
            "holders": self.holders,
        }

    @property
    def created_unix(self) -> int:
        created = self.config.get("created")
        return int(parse_rfc3339(created)) if isinstance(created, str) else 0
