"""The single state store under --data-root.

Every record is one JSON file, written atomically (temp file, fsync, rename,
fsync of the directory), so a crash at any point leaves either the old or the
new record, never a torn one. Services keep their in-memory view and call
`put`/`delete` on every change; on start they `load` everything back.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    """Records grouped by kind (`containers`, `images`, ...), keyed by id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad state key {key!r}")
        return self.root / kind / f"{key}.json"

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        write_atomic(self._path(kind, key), data)

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        try:
            with open(self._path(kind, key), "rb") as f:
                record: dict[str, Any] = json.load(f)
                return record
        except FileNotFoundError:
            return None

    def delete(self, kind: str, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(kind, key))

    def load(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every record of a kind; leftovers of interrupted writes are removed."""
        directory = self.root / kind
        if not directory.is_dir():
            return
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("."):
                entry.unlink(missing_ok=True)
                continue
            if entry.suffix != ".json":
                continue
            with open(entry, "rb") as f:
                yield entry.stem, json.load(f)
