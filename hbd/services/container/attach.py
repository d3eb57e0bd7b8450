"""A container's streams for clients: attach (output, stdin), logs, and
`wait` for its exit or removal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from hbd.drivers.agent import AgentError
from hbd.errors import Conflict, InvalidParameter
from hbd.services.container.logs import (
    LogDriver,
    LogQuery,
    LogRecord,
    open_snapshot,
    query_logs,
    replay_snapshot,
)
from hbd.services.container.model import Attachment, Container


def attach(c: Container, ref: str, stdout: bool, stderr: bool) -> Attachment:
    """A new client of the container's output; dockerd's errors (with the
    reference as the client gave it) for a container it cannot attach to."""
    if c.state.paused:
        raise Conflict(f"container {ref} is paused, unpause the container before attach")
    if c.state.restarting:
        raise Conflict(f"container {ref} is restarting, wait until the container is running")
    attachment = Attachment(stdout, stderr)
    c.attachments.add(attachment)
    return attachment


def detach(c: Container, attachment: Attachment) -> None:
    c.attachments.discard(attachment)
    attachment.close()


async def write_stdin(c: Container, data: bytes) -> None:
    """Attached stdin: held until the container runs, as dockerd's stdin pipe does."""
    if not c.config.get("OpenStdin"):
        return
    await c.run_started.wait()
    run = c.run
    if run is not None:
        with contextlib.suppress(AgentError):
            await run.guest.write_stdin(run.guest.main_proc, data)


async def close_stdin(c: Container) -> None:
    if not (c.config.get("OpenStdin") and c.config.get("StdinOnce")):
        return
    await c.run_started.wait()
    run = c.run
    if run is not None:
        with contextlib.suppress(AgentError):
            await run.guest.close_stdin(run.guest.main_proc)


def logs(c: Container, driver: LogDriver, query: LogQuery) -> AsyncGenerator[LogRecord, None]:
    """The log, followed (with `follow`) through the running writer."""
    writer = c.run.log if c.run is not None else None
    return query_logs(driver, query, writer)


def replay(c: Container, driver: LogDriver, query: LogQuery) -> AsyncGenerator[LogRecord, None]:
    """The log as it is at this call (not when the records are read)."""
    return replay_snapshot(open_snapshot(driver, c.run.log if c.run is not None else None), query)


def wait_future(c: Container, condition: str) -> asyncio.Future[int]:
    """A future for `POST /wait`, registered before the response headers go out."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    if condition in ("", "not-running"):
        if not c.state.running:
            fut.set_result(c.state.exit_code)
        else:
            c.exit_waiters.append(fut)
    elif condition == "next-exit":
        c.exit_waiters.append(fut)
    elif condition == "removed":
        c.remove_waiters.append(fut)
    else:
        raise InvalidParameter(f"invalid condition: {condition!r}")
    return fut
