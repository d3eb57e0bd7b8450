"""Named network namespaces (`ip netns`'s: a bind mount under /run/netns, so
a namespace outlives the process that made it, hbd included) and running
code inside one. Knows nothing of Docker.

The namespace a socket belongs to is the one of the thread that creates it,
and stays that for the socket's life whichever thread uses it later; sysctls
under /proc/sys/net are those of the thread that opens them. So work in a
namespace (libnftables, whose context opens its netlink socket; sysctls;
sockets handed to asyncio afterwards) runs in a thread of its own that has
entered the namespace (setns applies to the calling thread only) and ends
with it: no pooled thread is ever left in a namespace.

Nothing here forks. pyroute2 can make a namespace, or a netlink socket in
one, itself (netns.create, AsyncIPRoute's `netns`), but it forks a child to
do so and stops it with SIGTERM: a child of hbd's event loop shares its
signal wakeup descriptor, and that signal reaches hbd's loop as if hbd had
been told to stop. So a namespace is made by a thread that unshares its own
and bind-mounts it, and netlink sockets come from `socket_in`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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


CLONE_NEWNET = 0x40000000


def _create(name: str) -> None:
    """In a thread of its own: a new namespace for the thread, bound to the name."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot make network namespace {name}: {os.strerror(error)}")
    pyroute2_netns.attach(name, f"{os.getpid()}/task/{threading.get_native_id()}")


async def ensure(name: str) -> None:
    """The named namespace, made if it is not there."""
    if exists(name):
        return
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def thread_main() -> None:
        error: BaseException | None = None
        try:
            _create(name)
        except BaseException as e:  # handed to the awaiting coroutine
            error = e
        loop.call_soon_threadsafe(_settle, future, None, error)

    # The thread leaves with the namespace it made: nothing else ever runs in it.
    threading.Thread(target=thread_main, name=f"netns create {name}", daemon=True).start()
    await future


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

    def thread_main() -> None:
        try:
            _enter(namespace)
            result = work(*args)
        except BaseException as e:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, future, None, e)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=thread_main, name=f"netns {namespace}", daemon=True).start()
    return await future


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():  # its awaiter was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


async def socket_in(namespace: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket of the namespace (a netlink one for AsyncIPRoute's `fileno`, say)."""
    return await run_in(namespace, socket.socket, family, kind, proto)


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
