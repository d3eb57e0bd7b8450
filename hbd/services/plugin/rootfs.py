"""A `docker plugin create` context: a tar of config.json and rootfs/.

As dockerd's splitConfigRootFSFromTar: config.json at the top is the config;
everything under rootfs/ becomes the plugin's one layer, its paths taken
relative to rootfs/. The layer is kept as registries want it (gzip, with a
fixed header time so the same content gives the same blob), with its diff_id
(the digest of the uncompressed tar) for the config's rootfs.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hbd.errors import SystemError_

CONFIG_FILE = "config.json"
ROOTFS_DIR = "rootfs"
MAX_CONFIG = 4 * 1024 * 1024


@dataclass
class Layer:
    digest: str  # of the gzip blob
    diff_id: str  # of the tar inside
    size: int  # of the gzip blob


class _HashingGzip:
    """A file-like sink: gzips what it is given into `out`, hashing both sides."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.raw = hashlib.sha256()
        self.packed = hashlib.sha256()
        self.size = 0
        # zlib's gzip framing writes mtime 0: reproducible blobs.
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def _emit(self, data: bytes) -> None:
        if data:
            self.packed.update(data)
            self.size += len(data)
            self.out.write(data)

    def write(self, data: bytes) -> int:
        self.raw.update(data)
        self._emit(self._deflate.compress(data))
        return len(data)

    def close(self) -> Layer:
        self._emit(self._deflate.flush())
        return Layer("sha256:" + self.packed.hexdigest(), "sha256:" + self.raw.hexdigest(),
                     self.size)


def _tar_error(e: tarfile.TarError) -> str:
    text = str(e)
    if "truncated" in text or "unexpected end" in text:
        return "unexpected EOF"
    return "archive/tar: invalid tar header"


def split_context(context: IO[bytes], layer_path: Path) -> tuple[bytes, Layer]:
    """(config.json's bytes, the rootfs layer written gzipped to `layer_path`).
    Blocking: run it in a thread."""
    config: bytes | None = None
    has_rootfs = False
    with open(layer_path, "wb") as out:
        sink = _HashingGzip(out)
        with tarfile.open(fileobj=sink, mode="w|",  # type: ignore[call-overload]
                          format=tarfile.PAX_FORMAT) as writer:
            try:
                with tarfile.open(fileobj=context, mode="r|") as reader:
                    for member in reader:
                        name = posixpath.normpath(member.name).lstrip("/")
                        if name == CONFIG_FILE and member.isfile():
                            data = reader.extractfile(member)
                            if data is None or member.size > MAX_CONFIG:
                                raise SystemError_(f"failed to read {CONFIG_FILE}")
                            config = data.read()
                        parts = name.split("/")
                        if parts[0] != ROOTFS_DIR:
                            continue
                        member.name = posixpath.normpath(posixpath.join(".", *parts[1:]))
                        if member.islnk() and \
                                member.linkname.lower().startswith(ROOTFS_DIR + "/"):
                            member.linkname = member.linkname[len(ROOTFS_DIR) + 1:]
                        writer.addfile(member, reader.extractfile(member)
                                       if member.isfile() else None)
                        has_rootfs = True
            except tarfile.ReadError as e:
                if "empty file" not in str(e):
                    raise SystemError_(f"failed to read from tar: {_tar_error(e)}") from None
            except tarfile.TarError as e:
                raise SystemError_(f"failed to read from tar: {_tar_error(e)}") from None
        layer = sink.close()
    if not has_rootfs:
        raise SystemError_("no rootfs found: EOF")
    if config is None:
        raise SystemError_("config not found")
    return config, layer


def verify_blob(path: Path) -> Layer:
    """Digests of a downloaded gzip layer blob (raises zlib.error on bad data)."""
    packed, raw = hashlib.sha256(), hashlib.sha256()
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            size += len(chunk)
            packed.update(chunk)
            raw.update(inflate.decompress(chunk))
    raw.update(inflate.flush())
    return Layer("sha256:" + packed.hexdigest(), "sha256:" + raw.hexdigest(), size)
