"""Host side of the guest protocol (kernels/init/PROTOCOL.md). Knows nothing of Docker.

One `AgentClient` per connection to a guest's `hbd.0` virtio-serial port
(a unix socket on the host). Requests are answered by ACK or ERROR with the
same id; process output and events arrive as they happen and go to the
`ProcessOutput` registered for each process. Everything the guest sends is
untrusted input, and the guest's init may have been replaced by an
attacker's:

- frames are split by offset (`FrameDecoder`), at most `MAX_FRAME` bytes of
  payload; a longer frame, or a control payload that is not a JSON object,
  marks the guest broken (`on_broken`), and its owner destroys it;
- output and exits for process ids hbd never started (nor learnt from
  STATE) are dropped and counted; output held for a known process nobody
  has attached to yet is bounded (`UNCLAIMED_LIMIT`, for all of them);
- a consumer of output that cannot keep up makes the reader wait
  (`hbd.drivers.flow`), so the guest, not hbd, holds what is not consumed;
- every request has a deadline (`DEADLINES`); one that expires marks the
  guest broken. Time the reader spends waiting for slow consumers does not
  count against it: replies may be queued behind the output they wait for.

Output is acknowledged (OUTPUT_ACK, by count of frames per process) once
its consumer has taken it, and the guest keeps what is not acknowledged: a
new hbd after a crash names, per process, where its consumer got to
(`OutputResume`), and the guest sends the rest again, so nothing the
guest wrote into a dead hbd's socket is lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from hbd.drivers.flow import Drain

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2
HEADER = struct.Struct("<IHHI")
MAX_FRAME = 1024 * 1024
STREAM_CHUNK = 64 * 1024
STDIN_WINDOW = 256 * 1024
SYNC_MAGIC = b"hbd-sync-v1\0\0\0\0\0"
# HELLO's feature (and the builtin) of an init that opens port-forward
# connections inside the guest (PROTOCOL.md §4).
FEATURE_CONNECT = "connect"
# Where CREATE's `init` binds the guest init, which runs as docker-init there.
DOCKER_INIT = "/sbin/docker-init"
# Output held for processes nobody has attached to yet (after a reconnect),
# at most this much for all of them together.
UNCLAIMED_LIMIT = 16 * 1024 * 1024
# What one read of the channel takes at most.
READ_CHUNK = 256 * 1024
# Dropped frames are logged at most this often (seconds).
DROP_LOG_INTERVAL = 10.0

T_HELLO, T_SANDBOX, T_START, T_SIGNAL, T_RESIZE = 0x01, 0x02, 0x03, 0x04, 0x05
T_STATE, T_RELEASE, T_STATS, T_POWEROFF, T_PING = 0x06, 0x07, 0x08, 0x09, 0x0A
T_PS, T_UPDATE, T_CREATE, T_DESTROY, T_NETWORK = 0x0B, 0x0C, 0x0D, 0x0E, 0x0F
T_FREEZE, T_FILES = 0x10, 0x11
T_STDIN, T_STDIN_EOF, T_OUTPUT_ACK = 0x20, 0x21, 0x22
T_ACK, T_ERROR, T_EVENT, T_SYNC = 0x80, 0x81, 0x82, 0x83
T_STDOUT, T_STDERR, T_STDOUT_EOF, T_STDERR_EOF, T_STDIN_ACK = 0xA0, 0xA1, 0xA2, 0xA3, 0xA4

# Seconds a guest has to answer each request, generous for TCG on a loaded
# 2-core host (a boot takes ~1 s there, a clone ~0.5 s): CREATE may wait 10 s
# for a disk and copy a volume's content up; DESTROY kills, unmounts and
# syncs; FREEZE waits for every task to freeze.
DEFAULT_DEADLINE = 30.0
DEADLINES = {T_CREATE: 120.0, T_DESTROY: 120.0, T_START: 60.0, T_NETWORK: 60.0,
             T_FREEZE: 60.0, T_FILES: 60.0, T_SANDBOX: 60.0}


class AgentError(Exception):
    """An ERROR reply (kind per PROTOCOL §9), or a broken channel."""

    def __init__(self, kind: str, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.errno = errno


class AgentDisconnected(AgentError):
    def __init__(self, message: str = "guest channel closed") -> None:
        super().__init__("system", message, 0)


class GuestBroken(AgentDisconnected):
    """The guest broke the protocol or missed a deadline: it is not to be
    trusted with another request, and its owner destroys it."""


@dataclass(frozen=True)
class Frame:
    type: int
    ident: int
    payload: bytes


class FrameDecoder:
    """Splits the channel's byte stream into frames (PROTOCOL §2).

    Bytes are appended to one buffer and frames are cut from it by offset;
    the consumed prefix is dropped once per `feed`, so a stream of many small
    frames costs linear time, and what is held is at most one partial frame
    plus the last chunk. A header announcing more than `max_payload` bytes
    raises GuestBroken at once, before any of its payload is waited for."""

    def __init__(self, max_payload: int = MAX_FRAME) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of a frame not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        offset = 0
        end = len(self._buffer)
        while end - offset >= HEADER.size:
            length, type_, _, ident = HEADER.unpack_from(self._buffer, offset)
            if length > self.max_payload:
                raise GuestBroken(f"guest sent a frame of {length} bytes "
                                  f"(at most {self.max_payload})")
            start = offset + HEADER.size
            if end - start < length:
                break
            frames.append(Frame(type_, ident, bytes(self._buffer[start:start + length])))
            offset = start + length
        # Dropping a bytearray's prefix moves its start, it does not copy the rest.
        del self._buffer[:offset]
        return frames


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    signal: int
    oom_killed: bool


@dataclass(frozen=True)
class ProcState:
    proc: int
    container: str
    pid: int
    main: bool
    running: bool
    exit_code: int
    signal: int
    oom_killed: bool


@dataclass(frozen=True)
class GuestInfo:
    version: int
    kernel: str
    boot_ms: int
    # What the init does beyond version 2 as first written (PROTOCOL.md §2,
    # HELLO's `features`): an init booted before hbd was upgraded lists less.
    features: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OutputResume:
    """Where a returning host wants a process's output from: the number of
    its output frames (from 0, PROTOCOL.md §6) its consumer has kept."""
    container: str
    proc: int
    frames: int

    def payload(self) -> dict[str, Any]:
        return {"container": self.container, "proc": self.proc, "from": self.frames}


@dataclass
class ProcessSpec:
    proc: int
    args: list[str]
    env: list[str]
    # The container (its id in the guest) the process belongs to.
    container: str = ""
    cwd: str = "/"
    user: str = ""
    tty: bool = False
    stdin: bool = False
    height: int = 0
    width: int = 0
    main: bool = False
    # A program built into the guest init (tar-create, tar-extract, stat,
    # changes, tar-changes, tar-export) instead of `args[0]`; see PROTOCOL §4.
    builtin: str = ""
    # An exec with every capability (PROTOCOL §4), not the container's set.
    privileged: bool = False


@dataclass
class FileSpec:
    path: str
    data: bytes
    mode: int = 0o644


@dataclass
class MountSpec:
    type: Literal["disk", "share", "tmpfs", "device"]
    target: str
    # disk and device: its serial; share: an entry of the guest's shared filesystem.
    source: str = ""
    options: str = ""
    readonly: bool = False
    # An empty volume first takes the content of the path it covers.
    copy_up: bool = False
    # Mount this path of the source (relative, resolved beneath it) instead of its root.
    subpath: str = ""
    # disk: its filesystem ("": ext4), mount flags (MS_* bits) and options.
    fstype: str = ""
    fs_flags: int = 0
    fs_options: str = ""
    # device: the permission bits of its node.
    mode: int = 0o660
    # A read-only share's paths (relative) that stay writable: the host's own
    # writable mounts under a non-recursively read-only bind (PROTOCOL.md §3).
    writable: list[str] = field(default_factory=list)


@dataclass
class NicSlot:
    """A NIC the guest boots with, found by MAC and renamed to `name`."""

    mac: str
    name: str


@dataclass
class SandboxSetup:
    """SANDBOX: the guest as a whole (PROTOCOL §3)."""

    nics: list[NicSlot] = field(default_factory=list)
    shared_fs: str = ""
    # SCSI LUNs of the disks it booted with, beyond the conventional 1 and 2.
    scan: list[int] = field(default_factory=list)
    # Host randomness credited to the guest's RNG before any container runs.
    entropy: bytes = b""
    # The host's wall clock (ns since the epoch), set as the message goes.
    time_ns: int = 0

    def payload(self) -> dict[str, Any]:
        return {"nics": [asdict(n) for n in self.nics], "shared_fs": self.shared_fs,
                "scan": self.scan, "entropy": base64.b64encode(self.entropy).decode(),
                "time_ns": self.time_ns}


@dataclass
class InterfaceSpec:
    """A NIC slot handed to a network namespace as `name` (eth0…)."""

    nic: str
    name: str
    mac: str
    addresses: list[str]
    mtu: int = 1500


@dataclass
class InterfaceRemoval:
    name: str
    nic: str


@dataclass
class RouteSpec:
    destination: str
    gateway: str


@dataclass
class NetworkUpdate:
    """NETWORK: a network namespace's interfaces and gateway routes."""

    netns: str
    attach: list[InterfaceSpec] = field(default_factory=list)
    detach: list[InterfaceRemoval] = field(default_factory=list)
    # None leaves the routes as they are; a list replaces them.
    routes: list[RouteSpec] | None = None
    delete: bool = False

    def payload(self) -> dict[str, Any]:
        out = asdict(self)
        if self.routes is None:
            del out["routes"]
        return out


@dataclass
class Rlimit:
    """One setrlimit: `type` is the resource without RLIMIT_; -1 is unlimited."""

    type: str
    soft: int
    hard: int


@dataclass
class SecuritySpec:
    """CREATE's security fields (PROTOCOL §3): what the init applies to every
    process of the container. Empty capabilities: every one, as before."""

    # bounding, effective, permitted, inheritable, ambient: capability numbers.
    capabilities: dict[str, list[int]] = field(default_factory=dict)
    no_new_privileges: bool = False
    # A classic BPF program (struct sock_filter[]); b"" for none.
    seccomp: bytes = b""
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "no_new_privileges": self.no_new_privileges,
            "seccomp": base64.b64encode(self.seccomp).decode(),
            "masked_paths": self.masked_paths,
            "readonly_paths": self.readonly_paths,
        }
        if self.capabilities:
            out["capabilities"] = self.capabilities
        return out


@dataclass
class ContainerSetup:
    """CREATE: one container's root, mounts, files, namespaces and limits."""

    container: str
    netns: str
    hostname: str
    domainname: str = ""
    image_disk: str = "image"
    scratch_disk: str = "scratch"
    readonly_rootfs: bool = False
    pidns: str = ""
    ipcns: str = ""
    files: list[FileSpec] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    memory_limit: int = 0
    cpu_quota: int = -1
    cpu_period: int = 100_000
    pids_limit: int = -1
    cpu_weight: int = 0
    memory_low: int = 0
    shm_size: int = 64 * 1024 * 1024
    # What every process of the container gets, main and exec (PROTOCOL §3).
    group_add: list[str] = field(default_factory=list)
    # Kubernetes' SupplementalGroupsPolicy Strict: no groups from /etc/group.
    groups_strict: bool = False
    rlimits: list[Rlimit] = field(default_factory=list)
    oom_score_adj: int = 0
    # /sbin/docker-init in the container (docker run --init).
    init: bool = False
    security: SecuritySpec = field(default_factory=SecuritySpec)

    def payload(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "netns": self.netns,
            "pidns": self.pidns,
            "ipcns": self.ipcns,
            "hostname": self.hostname,
            "domainname": self.domainname,
            "rootfs": {"image": self.image_disk, "scratch": self.scratch_disk,
                       "readonly": self.readonly_rootfs},
            "files": file_payloads(self.files),
            "mounts": [asdict(m) for m in self.mounts],
            "sysctls": self.sysctls,
            "memory_limit": self.memory_limit,
            "cpu_quota": self.cpu_quota,
            "cpu_period": self.cpu_period,
            "pids_limit": self.pids_limit,
            "cpu_weight": self.cpu_weight,
            "memory_low": self.memory_low,
            "shm_size": self.shm_size,
            "group_add": self.group_add,
            "groups_strict": self.groups_strict,
            "rlimits": [asdict(r) for r in self.rlimits],
            "oom_score_adj": self.oom_score_adj,
            "init": self.init,
            **self.security.payload(),
        }


def file_payloads(files: list[FileSpec]) -> list[dict[str, Any]]:
    return [{"path": f.path, "data": base64.b64encode(f.data).decode(), "mode": f.mode}
            for f in files]


@dataclass
class ResourceUpdate:
    """New limits for the container cgroup; -1 leaves one as it is, 0 lifts it."""

    memory_limit: int = -1
    cpu_quota: int = -1
    cpu_period: int = 100_000
    pids_limit: int = -1
    # 0 restores the default weight (100); 0 lifts the reservation.
    cpu_weight: int = -1
    memory_low: int = -1


class ProcessOutput(Protocol):
    def on_output(self, stream: int, data: bytes) -> Drain:
        """Take a chunk; a consumer that is behind returns what to wait for
        before more comes (hbd.drivers.flow)."""
        ...

    def on_output_eof(self, stream: int) -> None: ...

    def on_exit(self, status: ExitStatus) -> None: ...


def _frame(type_: int, ident: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), type_, 0, ident) + payload


@dataclass(frozen=True)
class ProcessUser:
    """The identity a process runs as, as the guest resolved it (START)."""

    uid: int
    gid: int
    groups: tuple[int, ...]  # the supplementary groups, in the order set


@dataclass(frozen=True)
class Started:
    """START's answer: the process's pid in the guest and its identity
    (None for a builtin, and from an init that does not tell it)."""

    pid: int
    user: ProcessUser | None = None


def _started(reply: dict[str, Any]) -> Started:
    user = reply.get("user")
    if not isinstance(user, dict):
        return Started(_int(reply.get("pid")))
    groups = user.get("groups")
    return Started(_int(reply.get("pid")), ProcessUser(
        _int(user.get("uid")), _int(user.get("gid")),
        tuple(_int(g) for g in groups) if isinstance(groups, list) else ()))


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _proc_state(raw: Any) -> ProcState | None:
    if not isinstance(raw, dict):
        return None
    return ProcState(
        proc=_int(raw.get("proc")), container=str(raw.get("container") or ""),
        pid=_int(raw.get("pid")), main=raw.get("main") is True,
        running=raw.get("running") is True, exit_code=_int(raw.get("exit_code")),
        signal=_int(raw.get("signal")), oom_killed=raw.get("oom_killed") is True,
    )


class AgentClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[dict[str, Any]], None] | None,
                 on_broken: Callable[[str], None] | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        # Told once, with the reason, when the guest breaks the protocol, misses
        # a deadline or drops the channel while hbd still uses it.
        self.on_broken = on_broken
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._outputs: dict[int, ProcessOutput] = {}
        # Processes hbd started or learnt from STATE: frames for others are dropped.
        self._known: set[int] = set()
        # Until the handshake's STATE has told which processes exist, output is
        # held (bounded) rather than dropped.
        self._learning = True
        self._unclaimed: dict[int, list[tuple[str, Any]]] = {}
        self._unclaimed_bytes = 0
        # Per process, the number of the next output frame (PROTOCOL.md §6):
        # the guest's numbering, from where HELLO's reply says it resumes.
        self._next_frame: dict[int, int] = {}
        self._ack_due: set[int] = set()
        # Set once every consumer that will attach after a reconnect has.
        self._claimed = False
        self._inflight: dict[int, int] = {}
        self._credit_waiters: list[asyncio.Future[None]] = []
        self._closed = asyncio.Event()
        self._closing = False
        self._reader_task: asyncio.Task[None] | None = None
        # Time the reader spent waiting for slow consumers, which no deadline counts.
        self._stalled_total = 0.0
        self._stalled_since: float | None = None
        self.dropped_frames = 0
        self._dropped_logged = 0
        self._drop_logged_at = 0.0
        self.broken_reason = ""
        self.guest_info = GuestInfo(0, "", 0)
        self.processes: list[ProcState] = []

    # -- connection ------------------------------------------------------------

    @classmethod
    async def connect(cls, socket_path: Path, *, timeout: float = 60.0,
                      on_event: Callable[[dict[str, Any]], None] | None = None,
                      boot: list[tuple[int, dict[str, Any]]] | None = None,
                      resume: list[OutputResume] | None = None) -> AgentClient:
        """Connect, resynchronise (HELLO/SYNC) and read the guest's STATE.

        `boot` requests (SANDBOX, NETWORK, CREATE of a new guest) are sent in
        the same breath as HELLO: the guest reads them in order, which saves
        round trips on the boot path. Any of them failing fails the connect.
        `resume` says where output is wanted from for processes whose
        consumers kept their place across an hbd restart."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(
                        str(socket_path), limit=4 * MAX_FRAME)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    await asyncio.sleep(0.005)
            client = cls(reader, writer, on_event)
            try:
                await client._handshake(boot or [], resume or [])
            except BaseException:
                await client.close()
                raise
        return client

    def _queue_request(self, type_: int, body: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        ident = self._take_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        self._writer.write(_frame(type_, ident, json.dumps(body).encode()))
        return future

    async def _handshake(self, boot: list[tuple[int, dict[str, Any]]],
                         resume: list[OutputResume]) -> None:
        nonce = secrets.token_hex(16)
        hello = self._queue_request(T_HELLO, {
            "version": PROTOCOL_VERSION, "nonce": nonce, "output_acks": True,
            "resume": [r.payload() for r in resume]})
        booted = [self._queue_request(type_, body) for type_, body in boot]
        state = self._queue_request(T_STATE, {})
        await self._writer.drain()
        # Bytes of a frame an earlier host half read may come first: skip
        # everything up to our SYNC, which is followed by the HELLO reply.
        marker = SYNC_MAGIC + nonce.encode()
        buffered = b""
        while True:
            chunk = await self._reader.read(65536)
            if not chunk:
                raise AgentDisconnected("guest closed the channel during the handshake")
            buffered += chunk
            at = buffered.find(marker)
            if at >= 0:
                break
            buffered = buffered[-(len(marker) + HEADER.size):]
        leftover = buffered[at + len(marker):]
        self._reader_task = asyncio.ensure_future(self._read_loop(leftover))
        reply = await hello
        features = reply.get("features")
        self.guest_info = GuestInfo(
            _int(reply.get("version")), str(reply.get("kernel", "")), _int(reply.get("boot_ms")),
            frozenset(f for f in features if isinstance(f, str))
            if isinstance(features, list) else frozenset())
        if self.guest_info.version != PROTOCOL_VERSION:
            raise AgentError("system", f"guest speaks protocol {self.guest_info.version}, "
                                       f"hbd speaks {PROTOCOL_VERSION}")
        self._learn_output_numbering(reply.get("output"))
        # The guest answers each of them (or the channel breaks, failing all).
        for outcome in await asyncio.gather(*booted, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        self.processes = self._proc_states(await state)
        self._known.update(p.proc for p in self.processes)
        self._learning = False
        for proc in [p for p in self._unclaimed if p not in self._known]:
            self._forget_unclaimed(proc)
        self._send_output_acks()

    def _learn_output_numbering(self, resumed: Any) -> None:
        """HELLO's reply: from which frame each process's output comes now.
        (Nothing is handed to a consumer before this: none is attached.)"""
        for entry in resumed if isinstance(resumed, list) else []:
            if isinstance(entry, dict):
                proc, frames = _int(entry.get("proc")), _int(entry.get("from"))
                if proc > 0 and frames >= 0:
                    self._next_frame[proc] = frames

    def output_claimed(self) -> None:
        """Every consumer that will attach after this reconnect has: output
        of the other processes (execs an earlier hbd ran) is dropped from now
        on, and the guest may forget it."""
        self._claimed = True
        for proc in [p for p in self._unclaimed if p not in self._outputs]:
            self._forget_unclaimed(proc)
        self._send_output_acks()

    def output_from(self, proc: int) -> int:
        """The number of the next output frame of `proc` to reach its
        consumer: where the guest resumed it, for one started before we
        connected and not attached yet."""
        return self._next_frame.get(proc, 0)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self._closing = True
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._shutdown("closed by hbd")
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    def _shutdown(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AgentDisconnected(reason))
        self._pending.clear()
        self._wake_writers()

    def _break(self, reason: str) -> None:
        """The guest cannot be trusted any more: fail every call, tell the owner."""
        if self.closed or self._closing:
            return
        self.broken_reason = reason
        log.warning("guest channel broken: %s", reason)
        self._shutdown(reason)
        self._writer.close()
        if self.on_broken is not None:
            self.on_broken(reason)

    def _wake_writers(self) -> None:
        waiters, self._credit_waiters = self._credit_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- incoming ----------------------------------------------------------------

    async def _read_loop(self, leftover: bytes) -> None:
        decoder = FrameDecoder()
        chunk = leftover
        reason = "guest channel closed"
        try:
            while True:
                for frame in decoder.feed(chunk):
                    drain = self._dispatch(frame.type, frame.ident, frame.payload)
                    if drain is not None:
                        await self._wait_for_consumers(drain)
                    elif frame.type in (T_STDOUT, T_STDERR):
                        # A flood of output must not hold the event loop for a
                        # whole read: API requests get their turn between frames.
                        await asyncio.sleep(0)
                self._send_output_acks()
                chunk = await self._reader.read(READ_CHUNK)
                if not chunk:
                    break
        except asyncio.CancelledError:
            raise
        except AgentError as e:
            reason = e.message
        except (ConnectionError, OSError) as e:
            reason = f"guest channel: {e}"
        else:
            # EOF: QEMU closed the socket (it is exiting) or hbd closed it.
            self._shutdown(reason)
            return
        self._break(reason)

    async def _wait_for_consumers(self, drain: Drain) -> None:
        """Stop reading until a slow consumer has caught up; deadlines pause."""
        assert drain is not None
        self._stalled_since = time.monotonic()
        try:
            await drain
        finally:
            self._stalled_total += time.monotonic() - self._stalled_since
            self._stalled_since = None

    def _guest_clock(self) -> float:
        """Monotonic time less the time spent waiting for consumers: what
        deadlines are measured in."""
        now = time.monotonic()
        stalled = self._stalled_total
        if self._stalled_since is not None:
            stalled += now - self._stalled_since
        return now - stalled

    def _json(self, payload: bytes) -> dict[str, Any]:
        try:
            value = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: JSON nested deeper than the parser recurses.
            raise GuestBroken("guest sent malformed JSON") from None
        if not isinstance(value, dict):
            raise GuestBroken("guest sent JSON that is not an object")
        return value

    def _drop(self, type_: int, ident: int) -> None:
        """A frame for a process hbd does not know: counted, logged now and then."""
        self.dropped_frames += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            log.warning("guest sent %d frame(s) for unknown processes (last: type 0x%02x, "
                        "id %d); dropped", self.dropped_frames - self._dropped_logged,
                        type_, ident)
            self._drop_logged_at = now
            self._dropped_logged = self.dropped_frames

    def _hold(self, proc: int, item: tuple[str, Any]) -> None:
        """Keep output of a known process until its sink is attached (after a
        reconnect output can come before hbd re-attaches), within the limit;
        past it, only how many frames were lost (their numbers still count)."""
        held = self._unclaimed.setdefault(proc, [])
        if item[0] == "out":
            size = len(item[1][1])
            if self._unclaimed_bytes + size > UNCLAIMED_LIMIT:
                self.dropped_frames += 1
                if held and held[-1][0] == "lost":
                    held[-1] = ("lost", held[-1][1] + 1)
                else:
                    held.append(("lost", 1))
                return
            self._unclaimed_bytes += size
        held.append(item)

    def _forget_unclaimed(self, proc: int) -> None:
        for kind, value in self._unclaimed.pop(proc, []):
            if kind == "out":
                self._unclaimed_bytes -= len(value[1])
            if kind in ("out", "eof", "lost"):
                self._output_taken(proc, value if kind == "lost" else 1)

    def _output_taken(self, proc: int, frames: int = 1) -> None:
        """Output frames of `proc` are with their consumer (or gone for good):
        the guest may forget them."""
        self._next_frame[proc] = self._next_frame.get(proc, 0) + frames
        self._ack_due.add(proc)

    def _send_output_acks(self) -> None:
        if not self._ack_due or self._writer.is_closing():
            return
        self._writer.write(b"".join(
            _frame(T_OUTPUT_ACK, proc, struct.pack("<Q", self._next_frame[proc]))
            for proc in self._ack_due if proc in self._next_frame))
        self._ack_due.clear()

    def _to_sink(self, proc: int, item: tuple[str, Any]) -> Drain:
        """Deliver output or exit to the process's sink."""
        sink = self._outputs.get(proc)
        kind, value = item
        if sink is None and self._claimed:
            if kind != "exit":
                self._output_taken(proc, value if kind == "lost" else 1)
            return None
        if sink is None:
            self._hold(proc, item)
            return None
        drain: Drain = None
        if kind == "out":
            drain = sink.on_output(value[0], value[1])
        elif kind == "eof":
            sink.on_output_eof(value)
        elif kind == "exit":
            sink.on_exit(value)
        if kind != "exit":
            self._output_taken(proc, value if kind == "lost" else 1)
        return drain

    def _dispatch(self, type_: int, ident: int, payload: bytes) -> Drain:
        if type_ in (T_STDOUT, T_STDERR, T_STDOUT_EOF, T_STDERR_EOF, T_STDIN_ACK) and \
                ident not in self._known and not self._learning:
            self._drop(type_, ident)
            if type_ != T_STDIN_ACK and ident in self._next_frame:
                self._output_taken(ident)
        elif type_ in (T_STDOUT, T_STDERR):
            return self._to_sink(ident, ("out", (1 if type_ == T_STDOUT else 2, payload)))
        elif type_ in (T_STDOUT_EOF, T_STDERR_EOF):
            self._to_sink(ident, ("eof", 1 if type_ == T_STDOUT_EOF else 2))
        elif type_ == T_STDIN_ACK and len(payload) == 4:
            (count,) = struct.unpack("<I", payload)
            self._inflight[ident] = max(0, self._inflight.get(ident, 0) - count)
            self._wake_writers()
        elif type_ in (T_ACK, T_ERROR):
            self._reply(type_, ident, self._json(payload))
        elif type_ == T_EVENT:
            self._event(self._json(payload))
        # SYNC after the handshake, and types from a newer guest, are ignored.
        return None

    def _reply(self, type_: int, ident: int, body: dict[str, Any]) -> None:
        future = self._pending.pop(ident, None)
        if future is None or future.done():
            return
        if type_ == T_ACK:
            future.set_result(body)
        else:
            future.set_exception(AgentError(str(body.get("kind", "system")),
                                            str(body.get("message", "guest error")),
                                            _int(body.get("errno"))))

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "exit":
            proc = _int(event.get("proc"))
            if proc not in self._known and not self._learning:
                self._drop(T_EVENT, proc)
                return
            self._to_sink(proc, ("exit", ExitStatus(
                _int(event.get("exit_code")), _int(event.get("signal")),
                event.get("oom_killed") is True)))
        if self._on_event is not None:
            self._on_event(event)

    # -- requests ------------------------------------------------------------------

    def _take_id(self) -> int:
        ident = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        return ident

    async def _send(self, frame: bytes) -> None:
        if self.closed:
            raise AgentDisconnected()
        try:
            self._writer.write(frame)
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            self._shutdown(str(e))
            raise AgentDisconnected(str(e)) from e

    async def request(self, type_: int, body: dict[str, Any]) -> dict[str, Any]:
        """Send a request and wait for its ACK (ERROR raises AgentError). A
        guest that does not answer within the type's deadline is broken."""
        ident = self._take_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        deadline = DEADLINES.get(type_, DEFAULT_DEADLINE)
        try:
            reply: dict[str, Any] = await self._within_deadline(
                self._send_and_wait(_frame(type_, ident, json.dumps(body).encode()), future),
                deadline, f"request 0x{type_:02x}")
            return reply
        finally:
            self._pending.pop(ident, None)

    async def _send_and_wait(self, frame: bytes,
                             future: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        await self._send(frame)
        return await future

    async def _within_deadline(self, call: Any, deadline: float, what: str) -> Any:
        """`call` within `deadline` seconds of guest time (_guest_clock)."""
        task = asyncio.ensure_future(call)
        started = self._guest_clock()
        try:
            while True:
                remaining = deadline - (self._guest_clock() - started)
                if remaining <= 0:
                    message = f"guest did not answer {what} within {deadline:.0f}s"
                    self._break(message)
                    raise GuestBroken(message)
                done, _ = await asyncio.wait({task}, timeout=remaining)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def create(self, spec: ContainerSetup) -> None:
        await self.request(T_CREATE, spec.payload())

    async def destroy(self, container: str) -> None:
        await self.request(T_DESTROY, {"container": container})

    async def network(self, update: NetworkUpdate) -> None:
        await self.request(T_NETWORK, update.payload())

    async def freeze(self, container: str, frozen: bool) -> None:
        await self.request(T_FREEZE, {"container": container, "frozen": frozen})

    async def rewrite_files(self, container: str, files: list[FileSpec]) -> None:
        await self.request(T_FILES, {"container": container, "files": file_payloads(files)})

    async def start(self, spec: ProcessSpec, output: ProcessOutput) -> Started:
        """Start a process; its output goes to `output` from the first byte."""
        self._forget_unclaimed(spec.proc)
        self._outputs[spec.proc] = output
        self._known.add(spec.proc)
        self._next_frame[spec.proc] = 0  # the guest numbers a new process's output from 0
        try:
            reply = await self.request(T_START, asdict(spec))
        except BaseException:
            self._outputs.pop(spec.proc, None)
            self._known.discard(spec.proc)
            raise
        return _started(reply)

    def attach_output(self, proc: int, output: ProcessOutput) -> None:
        """Output of a process started before hbd connected goes to `output`,
        what arrived before first. (What it held is already counted against
        UNCLAIMED_LIMIT: its drains are not waited for.)"""
        self._outputs[proc] = output
        self._known.add(proc)
        for item in self._unclaimed.pop(proc, []):
            if item[0] == "out":
                self._unclaimed_bytes -= len(item[1][1])
            self._to_sink(proc, item)
        self._send_output_acks()

    async def write_stdin(self, proc: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            chunk = bytes(view[:STREAM_CHUNK])
            # At most STDIN_WINDOW bytes unacknowledged: a process that stops
            # reading its stdin stops us, not the whole channel.
            while not self.closed and self._inflight.get(proc, 0) + len(chunk) > STDIN_WINDOW:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._credit_waiters.append(waiter)
                await waiter
            if self.closed:
                raise AgentDisconnected()
            self._inflight[proc] = self._inflight.get(proc, 0) + len(chunk)
            await self._send(_frame(T_STDIN, proc, chunk))
            view = view[len(chunk):]

    async def close_stdin(self, proc: int) -> None:
        await self._send(_frame(T_STDIN_EOF, proc))

    async def signal(self, proc: int, signum: int, all: bool = False) -> None:
        await self.request(T_SIGNAL, {"proc": proc, "signal": signum, "all": all})

    async def resize(self, proc: int, height: int, width: int) -> None:
        await self.request(T_RESIZE, {"proc": proc, "height": height, "width": width})

    @staticmethod
    def _proc_states(reply: dict[str, Any]) -> list[ProcState]:
        raw = reply.get("processes")
        states = [_proc_state(p) for p in raw] if isinstance(raw, list) else []
        return [s for s in states if s is not None]

    async def state(self) -> list[ProcState]:
        return self._proc_states(await self.request(T_STATE, {}))

    async def release(self, proc: int) -> None:
        self._outputs.pop(proc, None)
        self._forget_unclaimed(proc)
        self._inflight.pop(proc, None)
        self._known.discard(proc)
        self._next_frame.pop(proc, None)
        self._ack_due.discard(proc)
        await self.request(T_RELEASE, {"proc": proc})

    async def stats(self, container: str) -> dict[str, Any]:
        return await self.request(T_STATS, {"container": container})

    async def ps(self, container: str) -> dict[str, Any]:
        return await self.request(T_PS, {"container": container})

    async def update(self, container: str, resources: ResourceUpdate) -> None:
        await self.request(T_UPDATE, {"container": container, **asdict(resources)})

    async def poweroff(self) -> None:
        await self.request(T_POWEROFF, {"sync": True})

    async def ping(self) -> None:
        await self.request(T_PING, {})


async def connect_unless(exited: Awaitable[object], socket_path: Path, *, timeout: float,
                         boot: list[tuple[int, dict[str, Any]]]) -> AgentClient | None:
    """`AgentClient.connect` to a booting guest, or None as soon as `exited`
    (its VMM's exit) completes first: a dead guest is not waited for until
    the boot timeout."""
    connect = asyncio.ensure_future(AgentClient.connect(socket_path, timeout=timeout,
                                                        boot=boot))
    died = asyncio.ensure_future(exited)
    try:
        done, _ = await asyncio.wait({connect, died}, return_when=asyncio.FIRST_COMPLETED)
        return connect.result() if connect in done else None
    finally:
        died.cancel()
        if not connect.done():
            connect.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connect
