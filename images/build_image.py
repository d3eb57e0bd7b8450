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

from hbd.services.image.archive import (
    EPOCH,
    ArchiveImage,
    ArchiveLayer,
    write_image_archive_file,
)

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
    """Write the image archive (gzip layers); returns the image ID (config digest)."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest"
    compressed = [gzip.compress(layer, compresslevel=6, mtime=0) for layer in layers]
    config = {**config, "rootfs": {"type": "layers", "diff_ids": [_sha(x) for x in layers]},
              "created": config.get("created", CREATED)}
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    first = name.split("/", 1)[0]
    full = name if "/" in name and ("." in first or ":" in first or first == "localhost") \
        else f"docker.io/{name if '/' in name else 'library/' + name}"
    write_image_archive_file(out, [ArchiveImage(
        config=config_bytes,
        layers=[ArchiveLayer(_sha(c), True, c) for c in compressed],
        tags=[(full, tag, f"{name}:{tag}")],
    )])
    return _sha(config_bytes)


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
