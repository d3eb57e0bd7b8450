"""What a container is: its record (persisted in the state store) and, while
it runs, a `Run`: its place in a sandbox (guest), the log writer
and the streams of clients attached to it. A run lasts from the main
process's start to its exit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hbd.drivers.agent import ExitStatus
from hbd.drivers.flow import Drain, StreamQueue, combine
from hbd.errors import Conflict
from hbd.services.container.health import HealthMonitor, HealthState
from hbd.services.container.logs import LogWriter
from hbd.services.container.mounts import MountPoint
from hbd.services.container.network import run_from_record, run_record
from hbd.services.container.sandbox import ContainerInGuest
from hbd.services.network.model import RunNetworking
from hbd.services.scope import split_owner
from hbd.services.timefmt import ZERO_TIME, human_duration, parse_rfc3339


@dataclass
class ContainerState:
    status: str = "created"
    running: bool = False
    paused: bool = False
    restarting: bool = False
    oom_killed: bool = False
    dead: bool = False
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    # The identity the main process started as, as its guest resolved it
    # (uid -1: not known): the CRI's ContainerStatus.user.
    uid: int = -1
    gid: int = -1
    groups: list[int] = field(default_factory=list)

    def view(self, health: HealthState | None = None) -> dict[str, Any]:
        out = {
            "Status": self.status, "Running": self.running, "Paused": self.paused,
            "Restarting": self.restarting, "OOMKilled": self.oom_killed, "Dead": self.dead,
            "Pid": self.pid, "ExitCode": self.exit_code, "Error": self.error,
            "StartedAt": self.started_at, "FinishedAt": self.finished_at,
        }
        if health is not None:
            out["Health"] = health.view()
        return out

    def describe(self, health: str = "none") -> str:
        """`docker ps` STATUS (dockerd's State.String)."""
        now = time.time()
        if self.running:
            if self.restarting:
                ago = human_duration(now - parse_rfc3339(self.finished_at))
                return f"Restarting ({self.exit_code}) {ago} ago"
            up = human_duration(now - parse_rfc3339(self.started_at))
            if self.paused:
                return f"Up {up} (Paused)"
            if health != "none":
                return f"Up {up} ({health})"
            return f"Up {up}"
        if self.status == "removing":
            return "Removal In Progress"
        if self.dead:
            return "Dead"
        if self.started_at == ZERO_TIME:
            return "Created"
        if self.finished_at == ZERO_TIME:
            return ""
        ago = human_duration(now - parse_rfc3339(self.finished_at))
        return f"Exited ({self.exit_code}) {ago} ago"


class Attachment:
    """One client attached to a container's streams (`attach`, `run` without
    -d). Its queue is bounded: a client that reads slowly slows the container
    down (hbd.drivers.flow), as dockerd's attach pipes do."""

    def __init__(self, stdout: bool, stderr: bool) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self._queue: StreamQueue[tuple[int, bytes]] = StreamQueue()

    def feed(self, stream: int, data: bytes) -> Drain:
        if (stream == 1 and self.stdout) or (stream == 2 and self.stderr):
            return self._queue.put((stream, data), len(data))
        return None

    def end(self) -> None:
        self._queue.end()

    def close(self) -> None:
        """The client has gone: what it did not read is dropped, nothing waits on it."""
        self._queue.close()

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        async for item in self._queue.items():
            yield item


class Run:
    """One run of a container: implements the agent's ProcessOutput for the main process."""

    def __init__(self, container: Container, guest: ContainerInGuest,
                 log_writer: LogWriter, output_frames: int = 0) -> None:
        self.container = container
        self.guest = guest
        self.log = log_writer
        # Output frames of the main process taken so far (the guest's
        # numbering: more than 0 when re-attached after an hbd restart).
        self.output_frames = output_frames
        self.exited: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        # Set once the container's state says the run is over.
        self.finished = asyncio.Event()
        self.health: HealthMonitor | None = None
        # RAM of the guest it booted (0: it joined another container's guest).
        self.memory_mib = 0

    def on_output(self, stream: int, data: bytes) -> Drain:
        # The log writer keeps up (it writes before returning); attached
        # clients may ask the channel to wait for them.
        self.log.write(stream, data)
        self._took_frame()
        return combine([attachment.feed(stream, data)
                        for attachment in list(self.container.attachments)])

    def on_output_eof(self, stream: int) -> None:
        self.log.end_stream(stream)
        self._took_frame()

    def _took_frame(self) -> None:
        self.output_frames += 1
        self.log.mark(self.guest.main_proc, self.output_frames)

    def on_exit(self, status: ExitStatus) -> None:
        if not self.exited.done():
            self.exited.set_result(status)


@dataclass
class Link:
    """A legacy link (`--link name:alias`) to another container, its child."""

    child_id: str
    alias: str
    # The child's name when linked: shown, and named in errors, once it is gone.
    child_name: str


@dataclass
class Container:
    id: str
    name: str
    created: str
    image_id: str
    config: dict[str, Any]
    host_config: dict[str, Any]
    path: str
    args: list[str]
    state: ContainerState = field(default_factory=ContainerState)
    restart_count: int = 0
    # Network name -> EndpointSettings, as configured at create/connect.
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # While running: endpoints and published ports (persisted for re-attach).
    run_network: RunNetworking | None = None
    mounts: list[MountPoint] = field(default_factory=list)
    health: HealthState | None = None
    # Legacy links, registered at create (not on user-defined networks).
    links: list[Link] = field(default_factory=list)
    # No supplementary groups from the image's /etc/group (the CRI's
    # SupplementalGroupsPolicy Strict; the Engine API has no such setting).
    groups_strict: bool = False
    # Runtime only, never persisted.
    run: Run | None = field(default=None, repr=False)
    attachments: set[Attachment] = field(default_factory=set, repr=False)
    exit_waiters: list[asyncio.Future[int]] = field(default_factory=list, repr=False)
    remove_waiters: list[asyncio.Future[int]] = field(default_factory=list, repr=False)
    # The one lock of a container: see hbd/services/container/service.py.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    teardown: asyncio.Task[None] | None = field(default=None, repr=False)
    removing: bool = field(default=False, repr=False)
    # Stopped through the API: the restart policy leaves it be (dockerd's
    # HasBeenManuallyStopped).
    manually_stopped: bool = field(default=False, repr=False)
    restart_delay: float = field(default=0.0, repr=False)
    restart_task: asyncio.Task[None] | None = field(default=None, repr=False)
    run_started: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Called with the finished run while its guest is still up, once (a
    # build's RUN step takes the container's changes from it then).
    before_poweroff: Callable[[Run], Awaitable[None]] | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "created": self.created,
            "image_id": self.image_id, "config": self.config, "host_config": self.host_config,
            "path": self.path, "args": self.args, "state": asdict(self.state),
            "restart_count": self.restart_count, "networks": self.networks,
            "run_network": run_record(self.run_network) if self.run_network else None,
            "mounts": [asdict(m) for m in self.mounts],
            "health": asdict(self.health) if self.health else None,
            "manually_stopped": self.manually_stopped,
            "links": [asdict(link) for link in self.links],
            "groups_strict": self.groups_strict,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Container:
        return cls(
            id=rec["id"], name=rec["name"], created=rec["created"], image_id=rec["image_id"],
            config=rec["config"], host_config=rec["host_config"], path=rec["path"],
            args=rec["args"], state=ContainerState(**rec["state"]),
            restart_count=rec.get("restart_count", 0), networks=rec.get("networks", {}),
            run_network=run_from_record(rec["run_network"]) if rec.get("run_network")
            else None,
            mounts=[MountPoint(**m) for m in rec.get("mounts", [])],
            health=HealthState(**rec["health"]) if rec.get("health") else None,
            manually_stopped=rec.get("manually_stopped", False),
            links=[Link(**link) for link in rec.get("links", [])],
            groups_strict=rec.get("groups_strict", False),
        )

    def health_status(self) -> str:
        """none | starting | healthy | unhealthy."""
        return self.health.status if self.health is not None else "none"

    @property
    def hostname(self) -> str:
        return str(self.config.get("Hostname") or self.id[:12])

    @property
    def tty(self) -> bool:
        return bool(self.config.get("Tty"))

    @property
    def own_name(self) -> str:
        """The name as its owner gave it (no `/`, no tenant qualifier): what DNS answers to."""
        return split_owner(self.name.lstrip("/"))[0]

    def event_attributes(self) -> dict[str, str]:
        attrs = {"image": str(self.config.get("Image", "")), "name": self.name.lstrip("/")}
        attrs.update({str(k): str(v) for k, v in (self.config.get("Labels") or {}).items()})
        return attrs

    def running_run(self) -> Run:
        """The run of a container that is up (not restarting), else Conflict."""
        if self.run is None or not self.state.running or self.state.restarting:
            raise Conflict(f"Container {self.id} is not running")
        return self.run
