"""Content-addressed blob store: `<root>/sha256/<hex>`, digest checked on write and read."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1024 * 1024


class DigestMismatch(ValueError):
    pass


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ValueError(f"invalid digest {digest!r}")
    return digest


class BlobWriter:
    """Accumulates a blob in a temp file; `commit` verifies and publishes it."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self.size = 0
        self._tmp = store.tmp_path()
        self._file: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)
        self._file.write(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self, expected: str | None = None) -> str:
        digest = self.digest
        try:
            if expected is not None and expected != digest:
                raise DigestMismatch(f"digest mismatch: expected {expected}, got {digest}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._store.path(digest))
        finally:
            self.abort()
        return digest

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        for leftover in (root / "tmp").iterdir():
            leftover.unlink()
        self._counter = 0

    def tmp_path(self) -> Path:
        self._counter += 1
        return self.root / "tmp" / f"{os.getpid()}-{self._counter}"

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / check_digest(digest).split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        w = self.writer()
        w.write(data)
        return w.commit(expected)

    def read_bytes(self, digest: str, limit: int = 64 * 1024 * 1024) -> bytes:
        path = self.path(digest)
        if path.stat().st_size > limit:
            raise ValueError(f"blob {digest} is larger than {limit} bytes")
        data = path.read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatch(f"blob {digest} is corrupt on disk")
        return data

    @contextmanager
    def open_verified(self, digest: str) -> Iterator[BinaryIO]:
        """Open a blob for streaming after checking its digest."""
        path = self.path(digest)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
            if "sha256:" + h.hexdigest() != digest:
                raise DigestMismatch(f"blob {digest} is corrupt on disk")
            f.seek(0)
            yield f

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for entry in (self.root / "sha256").iterdir():
            yield "sha256:" + entry.name
