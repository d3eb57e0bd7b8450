"""How far a container's output has reached its log, kept across an hbd crash.

The guest keeps each process's output until hbd acknowledges it (the
protocol numbers output frames per process, kernels/init/PROTOCOL.md §6).
After a kill -9, frames the guest had already written into the dead hbd's
socket would be lost, and the ones hbd had logged must not be logged twice:
so after every frame it logs, hbd records here how many frames it has taken
and the unfinished lines its log writer holds, and the next hbd asks the
guest for output from exactly there.

One small file per container, rewritten in place by a single `pwrite` (no
fsync: this survives hbd's death, which is what it is for, not the host's).
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"hbo1"
# magic, process id, frames taken, bytes of unfinished stdout, of stderr
HEADER = struct.Struct("<4sIQII")
FILE_NAME = "output.mark"


@dataclass
class OutputMark:
    proc: int
    frames: int
    # Per stream (1 stdout, 2 stderr): the end of a line not yet logged.
    pending: dict[int, bytes] = field(default_factory=lambda: {1: b"", 2: b""})

    def encode(self) -> bytes:
        out, err = self.pending.get(1, b""), self.pending.get(2, b"")
        return HEADER.pack(MAGIC, self.proc, self.frames, len(out), len(err)) + out + err

    @classmethod
    def decode(cls, data: bytes) -> OutputMark | None:
        """None for anything but a whole mark (an empty file: a fresh run)."""
        if len(data) < HEADER.size:
            return None
        magic, proc, frames, out_len, err_len = HEADER.unpack_from(data)
        body = data[HEADER.size:]
        if magic != MAGIC or len(body) < out_len + err_len:
            return None
        return cls(proc, frames, {1: body[:out_len], 2: body[out_len:out_len + err_len]})


class OutputMarkFile:
    """The mark of the run in progress."""

    def __init__(self, path: Path, *, fresh: bool) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if fresh else 0)
        self.path = path
        self._fd: int | None = os.open(path, flags, 0o600)

    @staticmethod
    def read(path: Path) -> OutputMark | None:
        try:
            return OutputMark.decode(path.read_bytes())
        except OSError:
            return None

    def write(self, mark: OutputMark) -> None:
        if self._fd is None:
            return
        # A full disk: the log write failed too; the container runs on, and
        # a crash now may repeat or lose a frame.
        with contextlib.suppress(OSError):
            os.pwrite(self._fd, mark.encode(), 0)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
