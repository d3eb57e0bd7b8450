"""Named network namespaces (`ip netns`'s: a bind mount under /run/netns, so
a namespace outlives the process that made it, hbd included) and running
code inside one. Knows nothing of Docker.

The namespace a socket belongs to is the one of the thread that creates it,
and stays that for the socket's life whichever thread uses it later; sysctls
under /proc/sys/net are those of the thread that opens them. So work in a
namespace (libnftables, whose context opens its netlink socket; sysctls;
sockets handed to asyncio afterwards) runs in a thread of its own that has
entered the namespace (setns applies to the calling thread only) and ends
with it: no pooled thread is ever left in a namespace. pyroute2's
AsyncIPRoute makes its netlink socket in a namespace by itself (its `netns`
argument), so links, addresses and routes need none of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


async def ensure(name: str) -> None:
    """The named namespace, made if it is not there."""
    if not exists(name):
        await asyncio.to_thread(pyroute2_netns.create, name)


async def remove(name: str) -> None:
    """The named namespace gone (there or not). Its links go with it once no
    socket or process holds it any more."""
    if exists(name):
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(pyroute2_netns.remove, name)


def names_with_prefix(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def _enter(name: str) -> None:
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pyroute2_netns.setns(fd, flags=0)
    finally:
        os.close(fd)


async def run_in(namespace: str, work: Callable[..., T], *args: object) -> T:
    """`work(*args)` run in the namespace ("" : hbd's own), off the event loop."""
    if not namespace:
        return await asyncio.to_thread(work, *args)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def thread_main() -> None:
        try:
            _enter(namespace)
            result = work(*args)
        except BaseException as e:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=thread_main, name=f"netns {namespace}", daemon=True).start()
    return await future


def _bound_socket(kind: int, address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def bound_socket(namespace: str, kind: int, address: tuple[str, int]) -> socket.socket:
    """A socket of `kind` (SOCK_DGRAM, or SOCK_STREAM: listening) bound to
    `address` in the namespace, non-blocking, for the event loop."""
    if not namespace:
        return _bound_socket(kind, address)
    return await run_in(namespace, _bound_socket, kind, address)
