"""Build a Docker image archive from a root filesystem tree, deterministically.

The archive has the layout `docker save` of Docker 25+ writes: an OCI image
layout (oci-layout, index.json, blobs/sha256/...) that also carries
manifest.json and repositories, so both hbd and older dockerd load it.
Same tree in, same bytes out: mtimes, owners and order are fixed.

    python3 images/build_image.py TREE OUT.tar NAME:TAG --config config.json
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

EPOCH = 1_700_000_000  # fixed mtime of every entry: reproducible image IDs
CREATED = "2023-11-14T22:13:20Z"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_from_tree(tree: Path) -> bytes:
    """An uncompressed layer tar of `tree`: sorted, fixed mtimes, owners kept."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(tree):
        rel_dir = os.path.relpath(dirpath, tree)
        for name in dirnames + filenames:
            paths.append(os.path.normpath(os.path.join(rel_dir, name)))
    out = io.BytesIO()
    first_of_inode: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(paths):
            full = tree / rel
            st = full.lstat()
            info = tar.gettarinfo(str(full), arcname=rel)
            info.mtime = EPOCH
            info.uname = info.gname = ""
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in first_of_inode:
                    info.type = tarfile.LNKTYPE
                    info.linkname = first_of_inode[key]
                    info.size = 0
                    tar.addfile(info)
                    continue
                first_of_inode[key] = rel
            if info.isreg():
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return out.getvalue()


def write_archive(out: Path, ref: str, layers: list[bytes], config: dict[str, Any]) -> str:
    """Write the image archive; returns the image ID (config digest)."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest"
    diff_ids = [_sha(layer) for layer in layers]
    compressed = [gzip.compress(layer, compresslevel=6, mtime=0) for layer in layers]
    config = {**config, "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "created": config.get("created", CREATED)}
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = _sha(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha(c), "size": len(c)} for c in compressed],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    full_name = name if "/" in name.split(":")[0] or "." in name.split("/")[0] else \
        f"docker.io/library/{name}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": _sha(manifest_bytes), "size": len(manifest_bytes),
            "annotations": {"io.containerd.image.name": f"{full_name}:{tag}",
                            "org.opencontainers.image.ref.name": tag},
        }],
    }

    def blob_path(digest: str) -> str:
        return "blobs/sha256/" + digest.split(":", 1)[1]

    docker_manifest = [{"Config": blob_path(config_digest), "RepoTags": [f"{name}:{tag}"],
                        "Layers": [blob_path(_sha(c)) for c in compressed]}]
    files: list[tuple[str, bytes]] = [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        ("index.json", json.dumps(index, sort_keys=True).encode()),
        ("manifest.json", json.dumps(docker_manifest).encode()),
        ("repositories", json.dumps({name: {tag: config_digest.split(":")[1]}}).encode()),
        (blob_path(config_digest), config_bytes),
        (blob_path(_sha(manifest_bytes)), manifest_bytes),
        *[(blob_path(_sha(c)), c) for c in compressed],
    ]
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = EPOCH
            tar.addfile(info)
        for path, data in sorted(set(files), key=lambda x: x[0]):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = EPOCH
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)
    return config_digest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tree", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("ref")
    p.add_argument("--config", type=Path, required=True,
                   help="JSON: the image config without rootfs (architecture, os, config...)")
    args = p.parse_args()
    config = json.loads(args.config.read_text())
    image_id = write_archive(args.out, args.ref, [layer_from_tree(args.tree)], config)
    print(f"{args.out}: {args.ref} {image_id}")


if __name__ == "__main__":
    main()
