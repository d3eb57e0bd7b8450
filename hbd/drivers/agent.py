"""Host side of the guest protocol (kernels/init/PROTOCOL.md). Knows nothing of Docker.

One `AgentClient` per connection to a guest's `hbd.0` virtio-serial port
(a unix socket on the host). Requests are answered by ACK or ERROR with the
same id; process output and events arrive as they happen and go to the
`ProcessOutput` registered for each process. Everything the guest sends is
untrusted input: sizes are bounded and JSON is checked before use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2
HEADER = struct.Struct("<IHHI")
MAX_FRAME = 1024 * 1024
STREAM_CHUNK = 64 * 1024
STDIN_WINDOW = 256 * 1024
SYNC_MAGIC = b"hbd-sync-v1\0\0\0\0\0"
# Where CREATE's `init` binds the guest init, which runs as docker-init there.
DOCKER_INIT = "/sbin/docker-init"
# Output held for a process nobody has attached to yet, at most this much.
UNCLAIMED_LIMIT = 16 * 1024 * 1024

T_HELLO, T_SANDBOX, T_START, T_SIGNAL, T_RESIZE = 0x01, 0x02, 0x03, 0x04, 0x05
T_STATE, T_RELEASE, T_STATS, T_POWEROFF, T_PING = 0x06, 0x07, 0x08, 0x09, 0x0A
T_PS, T_UPDATE, T_CREATE, T_DESTROY, T_NETWORK = 0x0B, 0x0C, 0x0D, 0x0E, 0x0F
T_FREEZE, T_FILES = 0x10, 0x11
T_STDIN, T_STDIN_EOF = 0x20, 0x21
T_ACK, T_ERROR, T_EVENT, T_SYNC = 0x80, 0x81, 0x82, 0x83
T_STDOUT, T_STDERR, T_STDOUT_EOF, T_STDERR_EOF, T_STDIN_ACK = 0xA0, 0xA1, 0xA2, 0xA3, 0xA4


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
    type: Literal["disk", "share", "tmpfs"]
    target: str
    # disk: its serial; share: an entry of the guest's shared filesystem.
    source: str = ""
    options: str = ""
    readonly: bool = False
    # An empty volume first takes the content of the path it covers.
    copy_up: bool = False
    # Mount this path of the source (relative, resolved beneath it) instead of its root.
    subpath: str = ""


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
    def on_output(self, stream: int, data: bytes) -> None: ...

    def on_output_eof(self, stream: int) -> None: ...

    def on_exit(self, status: ExitStatus) -> None: ...


def _frame(type_: int, ident: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), type_, 0, ident) + payload


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
                 on_event: Callable[[dict[str, Any]], None] | None) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._outputs: dict[int, ProcessOutput] = {}
        self._unclaimed: dict[int, list[tuple[str, Any]]] = {}
        self._inflight: dict[int, int] = {}
        self._credit_waiters: list[asyncio.Future[None]] = []
        self._closed = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self.guest_info = GuestInfo(0, "", 0)
        self.processes: list[ProcState] = []

    # -- connection ------------------------------------------------------------

    @classmethod
    async def connect(cls, socket_path: Path, *, timeout: float = 60.0,
                      on_event: Callable[[dict[str, Any]], None] | None = None,
                      boot: list[tuple[int, dict[str, Any]]] | None = None) -> AgentClient:
        """Connect, resynchronise (HELLO/SYNC) and read the guest's STATE.

        `boot` requests (SANDBOX, NETWORK, CREATE of a new guest) are sent in
        the same breath as HELLO: the guest reads them in order, which saves
        round trips on the boot path. Any of them failing fails the connect."""
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
                await client._handshake(boot or [])
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

    async def _handshake(self, boot: list[tuple[int, dict[str, Any]]]) -> None:
        nonce = secrets.token_hex(16)
        hello = self._queue_request(T_HELLO, {"version": PROTOCOL_VERSION, "nonce": nonce})
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
        self.guest_info = GuestInfo(_int(reply.get("version")), str(reply.get("kernel", "")),
                                    _int(reply.get("boot_ms")))
        if self.guest_info.version != PROTOCOL_VERSION:
            raise AgentError("system", f"guest speaks protocol {self.guest_info.version}, "
                                       f"hbd speaks {PROTOCOL_VERSION}")
        # The guest answers each of them (or the channel breaks, failing all).
        for outcome in await asyncio.gather(*booted, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        self.processes = self._proc_states(await state)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
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

    def _wake_writers(self) -> None:
        waiters, self._credit_waiters = self._credit_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- incoming ----------------------------------------------------------------

    async def _read_loop(self, leftover: bytes) -> None:
        buffered = leftover
        try:
            while True:
                while len(buffered) >= HEADER.size:
                    length, type_, _, ident = HEADER.unpack_from(buffered)
                    if length > MAX_FRAME:
                        raise AgentError("system", f"guest sent a {length}-byte frame")
                    if len(buffered) < HEADER.size + length:
                        break
                    payload = buffered[HEADER.size:HEADER.size + length]
                    buffered = buffered[HEADER.size + length:]
                    self._dispatch(type_, ident, payload)
                chunk = await self._reader.read(4 * MAX_FRAME)
                if not chunk:
                    break
                buffered += chunk
        except asyncio.CancelledError:
            raise
        except (AgentError, ConnectionError, OSError) as e:
            log.warning("guest channel broken: %s", e)
        finally:
            self._shutdown("guest channel closed")

    def _json(self, payload: bytes) -> dict[str, Any]:
        try:
            value = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise AgentError("system", "guest sent malformed JSON") from None
        if not isinstance(value, dict):
            raise AgentError("system", "guest sent JSON that is not an object")
        return value

    def _to_sink(self, proc: int, item: tuple[str, Any]) -> None:
        """Deliver output or exit to the process's sink; keep it until one is
        attached (after a reconnect, output can arrive before hbd re-attaches)."""
        sink = self._outputs.get(proc)
        if sink is None:
            held = self._unclaimed.setdefault(proc, [])
            size = sum(len(data) for kind, data in held if kind == "out")
            if item[0] != "out" or size < UNCLAIMED_LIMIT:
                held.append(item)
            return
        kind, value = item
        if kind == "out":
            sink.on_output(value[0], value[1])
        elif kind == "eof":
            sink.on_output_eof(value)
        else:
            sink.on_exit(value)

    def _dispatch(self, type_: int, ident: int, payload: bytes) -> None:
        if type_ in (T_STDOUT, T_STDERR):
            self._to_sink(ident, ("out", (1 if type_ == T_STDOUT else 2, payload)))
        elif type_ in (T_STDOUT_EOF, T_STDERR_EOF):
            self._to_sink(ident, ("eof", 1 if type_ == T_STDOUT_EOF else 2))
        elif type_ == T_STDIN_ACK and len(payload) == 4:
            (count,) = struct.unpack("<I", payload)
            self._inflight[ident] = max(0, self._inflight.get(ident, 0) - count)
            self._wake_writers()
        elif type_ in (T_ACK, T_ERROR):
            body = self._json(payload)
            future = self._pending.pop(ident, None)
            if future is None or future.done():
                return
            if type_ == T_ACK:
                future.set_result(body)
            else:
                future.set_exception(AgentError(str(body.get("kind", "system")),
                                                str(body.get("message", "guest error")),
                                                _int(body.get("errno"))))
        elif type_ == T_EVENT:
            event = self._json(payload)
            if event.get("type") == "exit":
                self._to_sink(_int(event.get("proc")), ("exit", ExitStatus(
                    _int(event.get("exit_code")), _int(event.get("signal")),
                    event.get("oom_killed") is True)))
            if self._on_event is not None:
                self._on_event(event)
        # SYNC after the handshake, and types from a newer guest, are ignored.

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
        ident = self._take_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            await self._send(_frame(type_, ident, json.dumps(body).encode()))
            return await future
        finally:
            self._pending.pop(ident, None)

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

    async def start(self, spec: ProcessSpec, output: ProcessOutput) -> int:
        """Start a process; its output goes to `output` from the first byte."""
        self._unclaimed.pop(spec.proc, None)
        self._outputs[spec.proc] = output
        try:
            reply = await self.request(T_START, asdict(spec))
        except BaseException:
            self._outputs.pop(spec.proc, None)
            raise
        return _int(reply.get("pid"))

    def attach_output(self, proc: int, output: ProcessOutput) -> None:
        self._outputs[proc] = output
        for item in self._unclaimed.pop(proc, []):
            self._to_sink(proc, item)

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
        self._unclaimed.pop(proc, None)
        self._inflight.pop(proc, None)
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
