"""`docker exec`: extra processes inside a running container's guest.

Exec instances live in memory, as in dockerd, and are forgotten when their
container stops. A process's output is forwarded to the one client attached
to its start request; its exit is recorded before that stream ends, so the
CLI's inspect right after the stream sees the exit code. The process has a
tty if it was created with one; the start request's `Tty` only says how its
output is framed (the API layer's business).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hbd.drivers.agent import AgentError, ExitStatus, ProcessSpec
from hbd.drivers.flow import Drain, StreamQueue
from hbd.errors import Conflict, InvalidParameter, SystemError_, no_such_exec
from hbd.events import EventBus
from hbd.services.container import config as cc
from hbd.services.container import tenancy
from hbd.services.container.detach import parse_detach_keys
from hbd.services.container.model import Container, Run
from hbd.services.container.service import ContainerService
from hbd.services.scope import OPERATOR, Scope
from hbd.tasks import spawn

EXEC_CONFIG_FIELDS = ("User", "Privileged", "Tty", "ConsoleSize", "AttachStdin",
                      "AttachStdout", "AttachStderr", "DetachKeys", "Env", "WorkingDir", "Cmd")


def go_field_names(body: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Go's JSON decoder takes a key for a field whatever its case, an exact
    match first: docker-py sends `detachKeys` for DetachKeys."""
    by_folded = {name.lower(): name for name in fields}
    out = dict(body)
    for key, value in body.items():
        name = by_folded.get(key.lower())
        if name is not None and name not in body:
            out[name] = value
    return out


@dataclass
class ExecInstance:
    id: str
    container: Container
    args: list[str]
    env: list[str]
    user: str
    cwd: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool
    privileged: bool
    detach_keys: bytes
    console: tuple[int, int]
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    proc: int = 0
    run: Run | None = None
    # Bounded: a client that reads slowly slows the process down (hbd.drivers.flow).
    _queue: StreamQueue[tuple[int, bytes]] = field(default_factory=StreamQueue)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    # -- ProcessOutput ----------------------------------------------------------

    def on_output(self, stream: int, data: bytes) -> Drain:
        if (stream == 1 and self.stdout) or (stream == 2 and self.stderr):
            return self._queue.put((stream, data), len(data))
        return None

    def on_output_eof(self, stream: int) -> None:
        pass

    def end_output(self) -> None:
        self._queue.end()

    def stop_output(self) -> None:
        """Its client left (or detached): the process runs on, its output goes
        nowhere, and what was queued for the client no longer holds the channel."""
        self.stdout = self.stderr = False
        self._queue.close()

    def on_exit(self, status: ExitStatus) -> None:
        self.running = False
        self.exit_code = status.exit_code
        self._queue.end()
        self.done.set()

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        async for item in self._queue.items():
            yield item

    def inspect(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "tty": self.tty, "entrypoint": self.args[0], "arguments": self.args[1:],
                "privileged": self.privileged, "user": self.user,
            },
            "OpenStdin": self.stdin,
            "OpenStderr": self.stderr,
            "OpenStdout": self.stdout,
            "CanRemove": False,
            "ContainerID": self.container.id,
            # dockerd's []byte, which Go's JSON writes as base64.
            "DetachKeys": base64.b64encode(self.detach_keys).decode(),
            "Pid": self.pid,
        }


class ExecService:
    def __init__(self, containers: ContainerService, events: EventBus) -> None:
        self.containers = containers
        self.events = events
        self.execs: dict[str, ExecInstance] = {}
        containers.on_stopped.append(self._forget_container)

    def _forget_container(self, c: Container, removed: bool) -> None:
        """The container's run ended: its execs died with the guest (SIGKILL, as
        containerd reports them). Instances that had already finished are
        forgotten; those ending now stay until the next stop, so a client that
        inspects right after its stream ends still finds them."""
        for exec_id, instance in list(self.execs.items()):
            if instance.container is not c:
                continue
            if instance.running:
                instance.on_exit(ExitStatus(137, 9, False))
                if not removed:
                    continue
            del self.execs[exec_id]

    def get(self, exec_id: str, scope: Scope = OPERATOR) -> ExecInstance:
        """An exec instance, if its container is the asker's to see."""
        instance = self.execs.get(exec_id)
        if instance is None or not scope.sees(instance.container.name):
            raise no_such_exec(exec_id)
        return instance

    def _event(self, instance: ExecInstance, action: str, **extra: str) -> None:
        c = instance.container
        self.events.publish("container", action, c.id,
                            {**c.event_attributes(), "execID": instance.id, **extra})

    def create(self, ref: str, body: dict[str, Any], scope: Scope = OPERATOR) -> str:
        if not isinstance(body, dict):
            raise InvalidParameter("invalid JSON: exec config must be an object")
        body = go_field_names(body, EXEC_CONFIG_FIELDS)
        tenancy.check_exec_policy(bool(body.get("Privileged")), scope)
        c = self.containers.get(scope.qualify(ref))
        if not c.state.running:
            raise Conflict(f"Container {c.id} is not running")
        if c.state.paused:
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
        args = body.get("Cmd")
        if isinstance(args, str):
            args = [args]
        if not args or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidParameter("No exec command specified")
        env = body.get("Env") or []
        if not isinstance(env, list):
            raise InvalidParameter("invalid Env: must be a list of strings")
        console = body.get("ConsoleSize") or [0, 0]
        keys = str(body.get("DetachKeys") or "")
        try:
            detach_keys = parse_detach_keys(keys) if keys else b""
        except ValueError as e:
            raise SystemError_(f"Invalid escape keys ({keys}) provided") from e
        instance = ExecInstance(
            id=secrets.token_hex(32), container=c, args=list(args),
            env=cc.replace_or_append_env(self.containers.process_env(c), env),
            user=str(body.get("User") or c.config.get("User") or ""),
            cwd=str(body.get("WorkingDir") or c.config.get("WorkingDir") or "/"),
            tty=bool(body.get("Tty")), stdin=bool(body.get("AttachStdin")),
            stdout=bool(body.get("AttachStdout")), stderr=bool(body.get("AttachStderr")),
            privileged=bool(body.get("Privileged")),
            detach_keys=detach_keys,
            console=(int(console[0]), int(console[1])),
        )
        self.execs[instance.id] = instance
        self._event(instance, f"exec_create: {' '.join(instance.args)}")
        return instance.id

    async def start(self, exec_id: str, detach: bool,
                    console: tuple[int, int] | None = None, scope: Scope = OPERATOR
                    ) -> ExecInstance:
        """Start the process; raises for errors that the API reports as such."""
        instance = self.get(exec_id, scope)
        if instance.running:
            raise Conflict(f"Error: Exec command {exec_id} is already running")
        if instance.exit_code is not None:
            raise Conflict(f"Error: Exec command {exec_id} has already run")
        c = instance.container
        run = c.run
        if run is None or not c.state.running:
            raise Conflict(f"Container {c.id} is not running")
        if c.state.paused:
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
        if console:
            instance.console = console
        if detach:
            instance.stdout = instance.stderr = instance.stdin = False
        instance.proc = run.guest.take_proc()
        instance.run = run
        instance.running = True
        self._event(instance, f"exec_start: {' '.join(instance.args)}")
        spec = ProcessSpec(
            proc=instance.proc, args=instance.args, env=instance.env, cwd=instance.cwd,
            user=instance.user, tty=instance.tty, stdin=instance.stdin,
            height=instance.console[0], width=instance.console[1],
            privileged=instance.privileged,
        )
        try:
            instance.pid = (await run.guest.start(spec, instance)).pid
        except AgentError as e:
            instance.running = False
            instance.exit_code = 126 if ("permission denied" in e.message or
                                         "is a directory" in e.message) else 127
            if e.kind not in ("exec", "user"):
                instance.exit_code = 126
            instance.end_output()
            instance.done.set()
            raise SystemError_("OCI runtime exec failed: exec failed: unable to start "
                               f"container process: {e.message}: unknown") from e
        spawn(self._reap(instance))
        return instance

    async def _reap(self, instance: ExecInstance) -> None:
        await instance.done.wait()
        self._event(instance, "exec_die", exitCode=str(instance.exit_code))
        if instance.run is not None:
            with contextlib.suppress(AgentError):
                await instance.run.guest.release(instance.proc)

    async def kill(self, instance: ExecInstance) -> None:
        """SIGKILL the exec's process, if it still runs (a caller's deadline
        passed: a CRI ExecSync timeout must leave nothing behind)."""
        if instance.run is not None and instance.running:
            with contextlib.suppress(AgentError):
                await instance.run.guest.signal(instance.proc, 9)

    async def write_stdin(self, instance: ExecInstance, data: bytes) -> None:
        if instance.run is not None and instance.running:
            with contextlib.suppress(AgentError):
                await instance.run.guest.write_stdin(instance.proc, data)

    async def close_stdin(self, instance: ExecInstance) -> None:
        if instance.run is not None and instance.running:
            with contextlib.suppress(AgentError):
                await instance.run.guest.close_stdin(instance.proc)

    async def resize(self, exec_id: str, height: int, width: int,
                     scope: Scope = OPERATOR) -> None:
        instance = self.get(exec_id, scope)
        if instance.run is None or not instance.running:
            raise Conflict(f"Exec {exec_id} is not running")
        try:
            await instance.run.guest.resize(instance.proc, height, width)
        except AgentError as e:
            raise SystemError_(f"cannot resize exec {exec_id}: {e.message}") from e
