"""Container logs in dockerd's json-file format, kept on the host.

One JSON object per line: `{"log":"hello\\n","stream":"stdout","time":"…Z"}`.
Output is split into lines as dockerd's log copier does; a final fragment
without a newline is logged as it is when its stream ends. Lines longer than
`MAX_LINE` are cut into several records, as dockerd does at 16 KiB.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from hbd.services.timefmt import parse_rfc3339_ns, rfc3339_nano

MAX_LINE = 16 * 1024
STREAM_NAMES = {1: "stdout", 2: "stderr"}


@dataclass
class LogRecord:
    stream: int
    data: bytes
    time_ns: int


class JsonFileWriter:
    """Appends one container run's output to its log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._pending: dict[int, bytes] = {1: b"", 2: b""}
        self._changed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _emit(self, stream: int, data: bytes, now_ns: int) -> None:
        record = json.dumps({
            "log": data.decode("utf-8", errors="replace"),
            "stream": STREAM_NAMES[stream],
            "time": rfc3339_nano(now_ns),
        }, ensure_ascii=False, separators=(",", ":")) + "\n"
        os.write(self._fd, record.encode())

    def write(self, stream: int, data: bytes) -> None:
        if self.closed:
            return
        now_ns = time.time_ns()
        buf = self._pending[stream] + data
        while (nl := buf.find(b"\n")) >= 0:
            line, buf = buf[: nl + 1], buf[nl + 1:]
            while len(line) > MAX_LINE:
                self._emit(stream, line[:MAX_LINE], now_ns)
                line = line[MAX_LINE:]
            self._emit(stream, line, now_ns)
        while len(buf) >= MAX_LINE:
            self._emit(stream, buf[:MAX_LINE], now_ns)
            buf = buf[MAX_LINE:]
        self._pending[stream] = buf
        self._notify()

    def end_stream(self, stream: int) -> None:
        if self._pending[stream] and not self.closed:
            self._emit(stream, self._pending[stream], time.time_ns())
            self._pending[stream] = b""
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def changed(self) -> asyncio.Event:
        """An event set by the next write or close."""
        return self._changed

    def close(self) -> None:
        if self.closed:
            return
        for stream in (1, 2):
            self.end_stream(stream)
        os.close(self._fd)
        self._fd = -1
        self._notify()


def read_records(path: Path, offset: int = 0) -> Iterator[tuple[LogRecord, int]]:
    """Complete records from `offset` on, each with the offset after it."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                return  # a record still being written
            offset += len(line)
            try:
                obj = json.loads(line)
                record = LogRecord(2 if obj["stream"] == "stderr" else 1,
                                   obj["log"].encode(), parse_rfc3339_ns(obj["time"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            yield record, offset


@dataclass
class LogQuery:
    stdout: bool = True
    stderr: bool = True
    since_ns: int = 0
    until_ns: int = 0
    tail: int = -1
    follow: bool = False

    def wants(self, rec: LogRecord) -> bool:
        if (rec.stream == 1 and not self.stdout) or (rec.stream == 2 and not self.stderr):
            return False
        if self.since_ns and rec.time_ns < self.since_ns:
            return False
        return not (self.until_ns and rec.time_ns > self.until_ns)


async def query_logs(path: Path, query: LogQuery,
                     writer: JsonFileWriter | None) -> AsyncIterator[LogRecord]:
    """What `docker logs` returns; with follow, new records until the writer closes."""
    offset = 0
    backlog: list[LogRecord] = []
    for rec, end in read_records(path):
        offset = end
        if query.wants(rec):
            backlog.append(rec)
    if query.tail >= 0:
        backlog = backlog[len(backlog) - query.tail:] if query.tail else []
    for rec in backlog:
        yield rec
    if not query.follow or writer is None:
        return
    while True:
        # Both taken before reading: a write or close while we read (or while
        # the consumer holds a record) sets this event, so nothing is missed.
        changed = writer.changed
        was_closed = writer.closed
        for rec, end in read_records(path, offset):
            offset = end
            if query.until_ns and rec.time_ns > query.until_ns:
                return
            if query.wants(rec):
                yield rec
        if was_closed:
            return
        await changed.wait()
