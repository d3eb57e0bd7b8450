"""Write image archives as `docker save` of Docker 25+ does.

An OCI image layout (oci-layout, index.json, blobs/sha256/…) that also holds
manifest.json and repositories, so that dockerd of any age and hbd load it.
Entries are sorted and carry a fixed mtime: the same images give the same
bytes. images/build_image.py writes its archives with this too.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

EPOCH = 1_700_000_000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layer_media_type(media_type: str) -> str:
    """The OCI media type for a layer of any (Docker or OCI) media type."""
    if "zstd" in media_type:
        return OCI_LAYER_ZSTD
    return OCI_LAYER_GZIP if "gzip" in media_type else OCI_LAYER


@dataclass
class ArchiveLayer:
    digest: str
    compressed: bool  # gzip, unless media_type says otherwise
    source: Path | bytes
    media_type: str = ""  # OCI media type; empty: from `compressed`

    @property
    def oci_media_type(self) -> str:
        return self.media_type or (OCI_LAYER_GZIP if self.compressed else OCI_LAYER)


@dataclass
class ArchiveImage:
    config: bytes
    layers: list[ArchiveLayer]
    # (full name, tag, familiar "name:tag") for each tag to record
    tags: list[tuple[str, str, str]]


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _add(tar: tarfile.TarFile, name: str, source: Path | bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.mode = mode
    if isinstance(source, bytes):
        info.size = len(source)
        tar.addfile(info, io.BytesIO(source))
        return
    info.size = source.stat().st_size
    with open(source, "rb") as f:
        tar.addfile(info, f)


def write_image_archive(out: BinaryIO, images: list[ArchiveImage]) -> None:
    blobs: dict[str, Path | bytes] = {}
    index_entries = []
    docker_manifest = []
    repositories: dict[str, dict[str, str]] = {}
    for image in images:
        config_digest = digest_of(image.config)
        blobs[config_digest] = image.config
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                       "size": len(image.config)},
            "layers": [{"mediaType": layer.oci_media_type,
                        "digest": layer.digest,
                        "size": len(layer.source) if isinstance(layer.source, bytes)
                        else layer.source.stat().st_size} for layer in image.layers],
        }, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = digest_of(manifest)
        blobs[manifest_digest] = manifest
        for layer in image.layers:
            blobs[layer.digest] = layer.source
        descriptor = {"mediaType": OCI_MANIFEST, "digest": manifest_digest,
                      "size": len(manifest)}
        for full, tag, _ in image.tags:
            index_entries.append({**descriptor, "annotations": {
                "io.containerd.image.name": f"{full}:{tag}",
                "org.opencontainers.image.ref.name": tag}})
        if not image.tags:
            index_entries.append(descriptor)
        docker_manifest.append({
            "Config": _blob_path(config_digest),
            "RepoTags": [familiar for _, _, familiar in image.tags] or None,
            "Layers": [_blob_path(layer.digest) for layer in image.layers],
        })
        for _, tag, familiar in image.tags:
            repositories.setdefault(familiar.rsplit(":", 1)[0], {})[tag] = \
                config_digest.split(":", 1)[1]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = EPOCH
            tar.addfile(info)
        for digest in sorted(blobs):
            _add(tar, _blob_path(digest), blobs[digest])
        _add(tar, "index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": index_entries}, sort_keys=True
                                           ).encode())
        _add(tar, "manifest.json", json.dumps(docker_manifest).encode())
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        if repositories:
            _add(tar, "repositories", json.dumps(repositories, sort_keys=True).encode())


def write_image_archive_file(path: Path, images: list[ArchiveImage]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write_image_archive(f, images)
    shutil.move(tmp, path)
