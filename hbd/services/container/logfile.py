"""A log file with dockerd's rotation, and reading it back.

The current file is `path`; when it has reached `max_size` bytes, the next
record first rotates it: `path.1` becomes `path.2` and so on (the oldest,
`path.<max_file-1>`, is dropped), `path` becomes `path.1` and a new `path` is
started. With `compress`, rotated files are gzipped (`path.1.gz`, …) in a
thread. With `max_file` 1 the full file is unlinked and started afresh. These
are dockerd's names, so tools that look for them find them.

Files hold one record per line. Readers see complete lines only. A reader
opens every file it needs at one instant (the writer runs on the same event
loop, so nothing is written in between): renames and unlinks afterwards do not
disturb it, and a follower is handed each new file as it is started.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

BLOCK = 64 * 1024


@dataclass(frozen=True)
class Rotation:
    max_size: int = -1  # bytes a file may reach; negative: never rotate
    max_file: int = 1  # files kept, the current one included
    compress: bool = False


def rotated_name(path: Path, index: int, compressed: bool) -> Path:
    return path.with_name(f"{path.name}.{index}{'.gz' if compressed else ''}")


class Follower:
    """Reads what is appended to a log from a point on, across rotations."""

    def __init__(self, current: BinaryIO, keep: int) -> None:
        self._files: deque[BinaryIO] = deque([current])
        self._keep = keep

    def next_file(self, f: BinaryIO) -> None:
        """The writer started `f`. A follower that fell more than `keep` files
        behind loses the oldest of those it has not started on, as dockerd's
        readers lose rotated files that are gone."""
        self._files.append(f)
        while len(self._files) > self._keep + 1:
            self._files[1].close()
            del self._files[1]

    def lines(self) -> Iterator[bytes]:
        """The complete lines that can be read now."""
        while self._files:
            current = self._files[0]
            for line in iter(current.readline, b""):
                if line.endswith(b"\n"):
                    yield line
                elif len(self._files) == 1:
                    current.seek(-len(line), os.SEEK_CUR)  # still being written
                    return
            if len(self._files) == 1:
                return
            self._files.popleft().close()

    def close(self) -> None:
        while self._files:
            self._files.popleft().close()


# Compressions under way, by log: they outlive a writer (a container's run),
# and the next rotation of the same log waits for them.
_compressing: dict[Path, threading.Thread] = {}


def _compress_rotated(path: Path) -> None:
    thread = threading.Thread(target=compress_file, args=(rotated_name(path, 1, False),),
                              daemon=True)
    _compressing[path] = thread
    thread.start()


def settle(path: Path) -> None:
    """Wait for the compression of the log's last rotated file, if under way."""
    thread = _compressing.pop(path, None)
    if thread is not None:
        thread.join()


class LogFile:
    """The writing side: appends records, rotates as configured."""

    def __init__(self, path: Path, rotation: Rotation) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.rotation = rotation
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.size = os.fstat(self._fd).st_size
        self._followers: set[Follower] = set()
        if rotation.compress and path not in _compressing and \
                rotated_name(path, 1, False).exists():
            _compress_rotated(path)  # left plain when hbd stopped while compressing it

    def append(self, record: bytes) -> None:
        if 0 <= self.rotation.max_size <= self.size:
            self._rotate()
        view = memoryview(record)
        while view:
            view = view[os.write(self._fd, view):]
        self.size += len(record)

    def append_many(self, records: list[bytes]) -> None:
        """`append` of each record, with one write per run of records that
        fits before the next rotation."""
        total = sum(map(len, records))
        if records and (self.rotation.max_size < 0 or
                        self.size + total - len(records[-1]) < self.rotation.max_size):
            # No rotation due before the last record: all in one write.
            if 0 <= self.rotation.max_size <= self.size:
                self._rotate()
            self._write(b"".join(records))
            self.size += total
            return
        start = 0
        while start < len(records):
            if 0 <= self.rotation.max_size <= self.size:
                self._rotate()
            end, taken = start, 0
            while end < len(records) and (end == start or self.rotation.max_size < 0 or
                                          self.size + taken < self.rotation.max_size):
                taken += len(records[end])
                end += 1
            self._write(b"".join(records[start:end]))
            self.size += taken
            start = end

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        settle(self.path)  # as dockerd: a rotation waits for the last one's compression
        rotation = self.rotation
        if rotation.max_file < 2:
            self.path.unlink(missing_ok=True)
        else:
            self._shift_rotated()
            os.replace(self.path, rotated_name(self.path, 1, False))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC,
                           0o640)
        self.size = 0
        for follower in self._followers:
            follower.next_file(open(self.path, "rb"))  # noqa: SIM115 - the follower closes it
        if rotation.compress and rotation.max_file >= 2:
            _compress_rotated(self.path)

    def _shift_rotated(self) -> None:
        compressed = self.rotation.compress
        last = self.rotation.max_file - 1
        rotated_name(self.path, last, compressed).unlink(missing_ok=True)
        for index in range(last, 1, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(rotated_name(self.path, index - 1, compressed),
                           rotated_name(self.path, index, compressed))

    def follow(self) -> Follower:
        """A follower that starts after the last record written so far."""
        current = open(self.path, "rb")  # noqa: SIM115 - the follower closes it
        current.seek(self.size)
        follower = Follower(current, max(2, self.rotation.max_file))
        self._followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)
        follower.close()

    def reopen(self) -> None:
        """Write to a new file at the path (kubelet renamed the old one to rotate
        it itself, and asks for this: the CRI's ReopenContainerLog)."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.size = os.fstat(self._fd).st_size

    def close(self) -> None:
        """Stop writing; a compression under way goes on (see settle)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def compress_file(path: Path) -> None:
    """path -> path.gz; the plain file goes once the compressed one is complete."""
    target = path.with_name(path.name + ".gz")
    try:
        with open(path, "rb") as src, gzip.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, BLOCK)
    except OSError:
        target.unlink(missing_ok=True)  # the container may be gone meanwhile
        return
    path.unlink(missing_ok=True)


# -- reading ----------------------------------------------------------------------------


@dataclass
class Segment:
    """One file of a log, open for reading: its lines from `start` (a byte
    offset, or for a compressed file a number of lines to skip) up to byte
    `end` (None: to the end of the file)."""

    file: BinaryIO
    compressed: bool
    end: int | None = None
    start: int = 0

    def lines(self) -> Iterator[bytes]:
        if self.compressed:
            with _unless_damaged():
                self.file.seek(0)
                for number, line in enumerate(self.file):
                    if number >= self.start and line.endswith(b"\n"):
                        yield line
            return
        self.file.seek(self.start)
        left = self.end - self.start if self.end is not None else -1
        while left:
            line = self.file.readline(left if left > 0 else -1)
            if not line.endswith(b"\n"):
                return  # a record still being written
            left -= len(line) if left > 0 else 0
            yield line

    def keep_last(self, n: int) -> int:
        """Narrow to the last `n` lines; how many lines that leaves."""
        if self.compressed:
            total = count_lines(self.file)
            self.start = max(0, total - n)
            return total - self.start
        end = complete_end(self.file, self.end)
        self.end = end
        self.start, found = last_lines_start(self.file, end, n)
        return found


def count_lines(f: BinaryIO) -> int:
    """The complete lines of a compressed file: as many as Segment.lines() gives."""
    count = 0
    with _unless_damaged():
        f.seek(0)
        for line in f:
            count += line.endswith(b"\n")
    return count


@contextlib.contextmanager
def _unless_damaged() -> Iterator[None]:
    """A compressed file cut short (hbd stopped while compressing it) is read
    as far as it goes."""
    try:
        yield
    except (OSError, EOFError, zlib.error):
        return


def complete_end(f: BinaryIO, end: int | None) -> int:
    """The offset after the last complete line before `end`."""
    if end is None:
        end = f.seek(0, os.SEEK_END)
    if end > 0:
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return end  # the usual case: the last line is complete
    while end > 0:
        start = max(0, end - BLOCK)
        f.seek(start)
        block = f.read(end - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def last_lines_start(f: BinaryIO, end: int, n: int) -> tuple[int, int]:
    """Where the last `n` lines before `end` (a line boundary) begin, reading
    backwards block by block; and how many lines there are from there."""
    if end == 0 or n <= 0:
        return end, 0
    found = 0
    limit = end - 1  # the last line's own newline ends it, it does not start one
    while limit > 0:
        start = max(0, limit - BLOCK)
        f.seek(start)
        block = f.read(limit - start)
        at = len(block)
        while (at := block.rfind(b"\n", 0, at)) >= 0:
            found += 1
            if found == n:
                return start + at + 1, n
        limit = start
    return 0, found + 1


@dataclass
class Snapshot:
    """Every file of a log as it is at one instant, oldest first."""

    segments: list[Segment] = field(default_factory=list)

    def tail(self, n: int) -> list[Segment]:
        """The segments that hold the last `n` lines, narrowed to them."""
        kept: list[Segment] = []
        for segment in reversed(self.segments):
            if n <= 0:
                break
            n -= segment.keep_last(n)
            kept.insert(0, segment)
        return kept

    def close(self) -> None:
        for segment in self.segments:
            segment.file.close()


def _open(path: Path, compressed: bool) -> BinaryIO:
    if compressed:
        return cast(BinaryIO, gzip.open(path, "rb"))
    return open(path, "rb")


def snapshot(path: Path, max_file: int, writer: LogFile | None) -> Snapshot:
    """Open the log's files: rotated ones (plain, else compressed) and the
    current one, bounded by what the writer has written."""
    snap = Snapshot()
    for index in range(max_file - 1, 0, -1):
        for compressed in (False, True):
            name = rotated_name(path, index, compressed)
            with contextlib.suppress(FileNotFoundError):
                snap.segments.append(Segment(_open(name, compressed), compressed))
                break
    with contextlib.suppress(FileNotFoundError):
        current = open(path, "rb")  # noqa: SIM115 - closed with the snapshot
        snap.segments.append(Segment(current, False,
                                     end=writer.size if writer is not None else None))
    return snap
