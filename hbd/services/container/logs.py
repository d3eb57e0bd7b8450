"""Container logs as dockerd keeps them: the log drivers hbd serves, the
records, and `docker logs`.

`json-file` writes dockerd's format, one JSON object per line:
`{"log":"hello\\n","stream":"stdout","time":"…Z"}`, in
`<container dir>/<id>-json.log`, rotated by `max-size`/`max-file` (see
logfile.py). `local` keeps the same records under `local-logs/container.log`
with the local driver's defaults (5 files of 20 MiB, compressed); its file
format is private to the daemon in dockerd too, so clients see no difference.
`none` keeps nothing, and `docker logs` says it cannot read. `cri` (hbd's
own, which the CRI service gives pods' containers) writes the Kubernetes CRI
log format at the path kubelet chose, `<time> <stream> <F|P> <text>`, F for
a whole line and P for part of one; kubelet rotates that file itself.

Output is split into lines as dockerd's log copier does; a final fragment
without a newline is logged as it is when its stream ends. Lines longer than
`MAX_LINE` are cut into several records, as dockerd does at 16 KiB.
"""

from __future__ import annotations

import asyncio
import json
import json.encoder
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbd.errors import NotImplementedByHbd, SystemError_
from hbd.services import goparse
from hbd.services.container.logfile import LogFile, Rotation, Segment, Snapshot, snapshot
from hbd.services.container.outputmark import OutputMark, OutputMarkFile
from hbd.services.timefmt import parse_rfc3339_ns, rfc3339_nano

# What json.dumps(..., ensure_ascii=False) makes of a str (its C encoder).
_json_string: Callable[[str], str] = json.encoder.encode_basestring

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
STREAM_NAMES = {1: "stdout", 2: "stderr"}
LOCAL_DEFAULTS = Rotation(max_size=20 * 1024 * 1024, max_file=5, compress=True)


@dataclass
class LogRecord:
    stream: int
    data: bytes
    time_ns: int


def encode(stream: int, data: bytes, time_ns: int) -> bytes:
    return (json.dumps({
        "log": data.decode("utf-8", errors="replace"),
        "stream": STREAM_NAMES[stream],
        "time": rfc3339_nano(time_ns),
    }, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def encode_cri(stream: int, data: bytes, time_ns: int) -> bytes:
    tag, text = (b"F", data[:-1]) if data.endswith(b"\n") else (b"P", data)
    return b"%s %s %s %s\n" % (rfc3339_nano(time_ns).encode(), STREAM_NAMES[stream].encode(),
                               tag, text)


def decode_cri(line: bytes) -> LogRecord | None:
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) != 4 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
        return None
    try:
        time_ns = parse_rfc3339_ns(parts[0].decode())
    except ValueError:
        return None
    text = parts[3] + b"\n" if parts[2] == b"F" else parts[3]
    return LogRecord(2 if parts[1] == b"stderr" else 1, text, time_ns)


def encode_cri_many(stream: int, pieces: list[bytes], time_ns: int) -> list[bytes]:
    return [encode_cri(stream, p, time_ns) for p in pieces]


def encode_many(stream: int, pieces: list[bytes], time_ns: int) -> list[bytes]:
    """`encode` of many records of one time, the JSON around each made once."""
    tail = (f',"stream":"{STREAM_NAMES[stream]}","time":"{rfc3339_nano(time_ns)}"}}\n'
            ).encode()
    return [b'{"log":' + _json_string(p.decode("utf-8", errors="replace")).encode() + tail
            for p in pieces]


# A byte a JSON string cannot hold as it is (json.dumps escapes '"', '\\' and
# controls), or one of a UTF-8 sequence, which would need checking; '\n' aside.
_NOT_PLAIN = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e\n]')


def plain_records(stream: int, lines: bytes, time_ns: int) -> list[bytes] | None:
    """`encode_many` of complete lines of printable ASCII, none longer than a
    record, without decoding or escaping each: a flood of such output (`yes`)
    costs a few operations per line. None when `lines` is not of that kind."""
    if _NOT_PLAIN.search(lines):
        return None
    split = lines.split(b"\n")
    split.pop()  # after the last newline
    if max(map(len, split)) >= MAX_LINE:
        return None
    head = b'{"log":"'
    tail = (f'\\n","stream":"{STREAM_NAMES[stream]}","time":"{rfc3339_nano(time_ns)}"}}\n'
            ).encode()
    return [head + line + tail for line in split]


def plain_blob(stream: int, lines: bytes, time_ns: int) -> bytes | None:
    """`plain_records` joined, made in one operation."""
    if _NOT_PLAIN.search(lines):
        return None
    split = lines.split(b"\n")
    split.pop()
    if max(map(len, split)) >= MAX_LINE:
        return None
    head = b'{"log":"'
    tail = (f'\\n","stream":"{STREAM_NAMES[stream]}","time":"{rfc3339_nano(time_ns)}"}}\n'
            ).encode()
    return head + (tail + head).join(split) + tail


def _cut(buf: bytes, start: int, end: int, pieces: list[bytes]) -> None:
    """buf[start:end] as records of at most MAX_LINE bytes."""
    while end - start > MAX_LINE:
        pieces.append(buf[start:start + MAX_LINE])
        start += MAX_LINE
    pieces.append(buf[start:end])


def decode(line: bytes) -> LogRecord | None:
    """A json-file record, or a CRI one (those start with their time, not "{")."""
    if not line.startswith(b"{"):
        return decode_cri(line)
    try:
        obj = json.loads(line)
        return LogRecord(2 if obj["stream"] == "stderr" else 1, obj["log"].encode(),
                         parse_rfc3339_ns(obj["time"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# -- drivers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LogDriver:
    """Where a container's output goes, from its (create-checked) LogConfig."""

    name: str
    path: Path | None  # None: the output is not kept
    rotation: Rotation = field(default_factory=Rotation)

    def open(self, marks: OutputMarkFile | None = None) -> LogWriter:
        """A writer; with `marks`, one that records after each frame how far
        the output got (outputmark.py)."""
        return LogWriter(LogFile(self.path, self.rotation) if self.path is not None else None,
                         encode_cri_many if self.name == "cri" else encode_many,
                         marks if self.path is not None else None)

    def readable(self) -> None:
        if self.path is None:
            raise NotImplementedByHbd("configured logging driver does not support reading")


def json_file_name(container_id: str) -> str:
    return f"{container_id}-json.log"


def log_driver(log_config: dict[str, Any], directory: Path, container_id: str) -> LogDriver:
    """The driver and its options' values, which dockerd reads when the logger
    starts: a bad value fails the start, with dockerd's words."""
    name = str(log_config.get("Type") or "json-file")
    opts = dict(log_config.get("Config") or {})
    try:
        if name == "json-file":
            return LogDriver(name, directory / json_file_name(container_id),
                             json_file_rotation(opts))
        if name == "local":
            return LogDriver(name, directory / "local-logs" / "container.log",
                             local_rotation(opts))
        if name == "none":
            return LogDriver(name, None)
        if name == "cri":
            return LogDriver(name, cri_log_path(opts))
        raise ValueError(f"hbd does not serve the {name} logging driver")
    except ValueError as e:
        raise SystemError_(f"failed to initialize logging driver: {e}") from e


def cri_log_path(opts: dict[str, str]) -> Path:
    path = opts.get("path", "")
    if not path.startswith("/"):
        raise ValueError("the cri log driver needs an absolute path option")
    return Path(path)


def json_file_rotation(opts: dict[str, str]) -> Rotation:
    """json-file's max-size, max-file and compress, checked as its New() does."""
    max_size = -1
    if "max-size" in opts:
        max_size = goparse.size(opts["max-size"])
        if max_size <= 0:
            raise ValueError("max-size must be a positive number")
    max_file = 1
    if "max-file" in opts:
        max_file = goparse.atoi(opts["max-file"])
        if max_file < 1:
            raise ValueError("max-file cannot be less than 1")
    compress = False
    if "compress" in opts:
        compress = goparse.parse_bool(opts["compress"])
        if compress and (max_file == 1 or max_size == -1):
            raise ValueError("compress cannot be true when max-file is less than 2 or "
                             "max-size is not set")
    return Rotation(max_size, max_file, compress)


def local_rotation(opts: dict[str, str]) -> Rotation:
    """The local driver's options over its defaults, checked as its New() does."""
    max_size, max_file, compress = (LOCAL_DEFAULTS.max_size, LOCAL_DEFAULTS.max_file,
                                    LOCAL_DEFAULTS.compress)
    if "max-size" in opts:
        max_size = _wrapped(goparse.size, opts["max-size"],
                            f"invalid value for max-size: {opts['max-size']}")
    if "max-file" in opts:
        max_file = _wrapped(goparse.atoi, opts["max-file"],
                            f"invalid value for max-file: {opts['max-file']}")
    if "compress" in opts:
        compress = _wrapped(goparse.parse_bool, opts["compress"],
                            "error reading compress log option")
    if max_size < 0:
        raise ValueError("max size should be a positive number")
    if max_file < 0:
        raise ValueError("max file count cannot be less than 0")
    if compress and max_file <= 1:
        raise ValueError("compression cannot be enabled when max file count is 1")
    return Rotation(max_size, max_file, compress)


def _wrapped(parse: Any, text: str, context: str) -> Any:
    """Go's errors.Wrap: the context, then the parser's own words."""
    try:
        return parse(text)
    except ValueError as e:
        raise ValueError(f"{context}: {e}") from e


# -- writing ----------------------------------------------------------------------------


class LogWriter:
    """Turns one run's output into records in its log file (or nowhere)."""

    def __init__(self, log: LogFile | None,
                 encoder: Callable[[int, list[bytes], int], list[bytes]] = encode_many,
                 marks: OutputMarkFile | None = None) -> None:
        self.log = log
        self._encode = encoder
        self._closed = False
        self._failed = False
        self._pending: dict[int, bytes] = {1: b"", 2: b""}
        self._changed = asyncio.Event()
        self._marks = marks
        self._mark: OutputMark | None = None

    def resume(self, mark: OutputMark) -> None:
        """Go on from where an earlier hbd's writer was: its unfinished lines."""
        self._pending = {1: mark.pending.get(1, b""), 2: mark.pending.get(2, b"")}
        self._mark = mark

    def mark(self, proc: int, frames: int) -> None:
        """`frames` output frames of `proc` are in the log (or held here)."""
        if self._marks is not None:
            self._mark = OutputMark(proc, frames, dict(self._pending))
            self._marks.write(self._mark)

    @property
    def closed(self) -> bool:
        return self._closed

    def _emit(self, stream: int, pieces: list[bytes], now_ns: int) -> None:
        if pieces:
            self._write_records(self._encode(stream, pieces, now_ns))

    def _plain(self, stream: int, lines: bytes, now_ns: int) -> list[bytes] | None:
        """Records of plain lines: as one blob when no rotation can fall among
        them (the log rotates between records only)."""
        if self.log is None:
            return []
        if self._encode is not encode_many:  # the fast paths write json-file records
            return None
        rotation = self.log.rotation
        if rotation.max_size < 0 or self.log.size + len(lines) * 2 + 256 * lines.count(
                b"\n") < rotation.max_size:
            blob = plain_blob(stream, lines, now_ns)
            return None if blob is None else [blob]
        return plain_records(stream, lines, now_ns)

    def _write_records(self, records: list[bytes]) -> None:
        if self.log is None or not records:
            return
        try:
            self.log.append_many(records)
        except OSError as e:
            # As dockerd: the records are lost, the container runs on (said once).
            if not self._failed:
                log.warning("cannot write the log %s: %s", self.log.path, e)
                self._failed = True

    def write(self, stream: int, data: bytes) -> None:
        """Cut the stream into records (lines, at most MAX_LINE bytes each)
        and write them; the rest of an unfinished line waits for more. Cut by
        offset and written at once: a flood of short lines (`yes`) costs
        linear time and one write per chunk, so the writer keeps up with
        anything the channel carries."""
        if self.closed:
            return
        buf = self._pending[stream] + data if self._pending[stream] else data
        now_ns = time.time_ns()
        start = buf.rfind(b"\n") + 1  # what ends with a newline is records
        plain = self._plain(stream, buf[:start], now_ns) if start else None
        if plain is not None:
            self._write_records(plain)
        else:
            pieces: list[bytes] = []
            at = 0
            while (nl := buf.find(b"\n", at)) >= 0:
                _cut(buf, at, nl + 1, pieces)
                at = nl + 1
            self._emit(stream, pieces, now_ns)
        pieces = []
        while len(buf) - start >= MAX_LINE:
            pieces.append(buf[start:start + MAX_LINE])
            start += MAX_LINE
        self._pending[stream] = buf[start:]
        self._emit(stream, pieces, now_ns)
        self._notify()

    def end_stream(self, stream: int) -> None:
        if self._pending[stream] and not self.closed:
            self._emit(stream, [self._pending[stream]], time.time_ns())
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
        self._closed = True
        if self.log is not None:
            self.log.close()
        if self._marks is not None:
            if self._mark is not None:  # the unfinished lines are logged now
                self.mark(self._mark.proc, self._mark.frames)
            self._marks.close()
        self._notify()


# -- reading ----------------------------------------------------------------------------


@dataclass
class LogQuery:
    stdout: bool = True
    stderr: bool = True
    since_ns: int = 0
    until_ns: int = 0
    tail: int = -1  # the last N records (of both streams, as dockerd counts); < 0: all
    follow: bool = False

    def wants(self, rec: LogRecord) -> bool:
        if (rec.stream == 1 and not self.stdout) or (rec.stream == 2 and not self.stderr):
            return False
        return not (self.since_ns and rec.time_ns < self.since_ns)

    def past_until(self, rec: LogRecord) -> bool:
        return bool(self.until_ns) and rec.time_ns > self.until_ns


def _open_file(writer: LogWriter | None) -> LogFile | None:
    """The file a run's writer still writes (a closed one's is complete)."""
    return writer.log if writer is not None and not writer.closed else None


def open_snapshot(driver: LogDriver, writer: LogWriter | None) -> Snapshot | None:
    """The log's files as they are now (None: the driver keeps none)."""
    if driver.path is None:
        return None
    return snapshot(driver.path, driver.rotation.max_file, _open_file(writer))


def backlog(snap: Snapshot, query: LogQuery) -> Iterator[LogRecord]:
    """What a snapshot holds for the query, as dockerd reads it: the last `tail`
    records of all files, then since/until and the streams."""
    if query.tail == 0:
        return
    segments = snap.tail(query.tail) if query.tail > 0 else snap.segments
    for rec in _records(_lines_of(segments)):
        if query.past_until(rec):
            return
        if query.wants(rec):
            yield rec


async def replay_snapshot(snap: Snapshot | None,
                          query: LogQuery) -> AsyncGenerator[LogRecord, None]:
    """A snapshot's records, for a client that takes them one by one."""
    if snap is None:
        return
    try:
        for rec in backlog(snap, query):
            yield rec
    finally:
        snap.close()


async def query_logs(driver: LogDriver, query: LogQuery,
                     writer: LogWriter | None) -> AsyncGenerator[LogRecord, None]:
    """What `docker logs` returns: the backlog; with follow, new records until
    the writer closes. Memory does not grow with the log's size."""
    # Taken together, before any await: the follower starts where the snapshot ends.
    snap = open_snapshot(driver, writer)
    if snap is None:
        return
    log_file = _open_file(writer)
    follower = log_file.follow() if log_file is not None and query.follow else None
    try:
        for rec in backlog(snap, query):
            yield rec
        snap.close()  # before a long follow
        if follower is None or writer is None:
            return
        while True:
            # Both taken before reading: a write or close while we read (or while
            # the consumer holds a record) sets this event, so nothing is missed.
            changed = writer.changed
            was_closed = writer.closed
            for rec in _records(follower.lines()):
                if query.past_until(rec):
                    return
                if query.wants(rec):
                    yield rec
            if was_closed:
                return
            await changed.wait()
    finally:
        snap.close()
        if follower is not None and log_file is not None:
            log_file.unfollow(follower)


def _lines_of(segments: list[Segment]) -> Iterator[bytes]:
    for segment in segments:
        yield from segment.lines()


def _records(lines: Iterable[bytes]) -> Iterator[LogRecord]:
    for line in lines:
        record = decode(line)
        if record is not None:
            yield record
