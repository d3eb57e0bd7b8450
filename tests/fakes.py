"""Small stand-ins shared by the tests: request bodies, in-memory tars, sizes as
the CLI prints them."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator


class Body:
    """What ImageStore.load reads from: an aiohttp request body, in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), n):
            yield self.data[i:i + n]


def text_tar(files: dict[str, str]) -> io.BytesIO:
    """An uncompressed tar of text files (a build context), rewound."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def human_size(size: int) -> str:
    """go-units HumanSize: how the docker CLI prints a size ("Total reclaimed space")."""
    units = ["B", "kB", "MB", "GB", "TB"]
    value = float(size)
    i = 0
    while value >= 1000 and i < len(units) - 1:
        value /= 1000
        i += 1
    return f"{value:.4g}{units[i]}"
