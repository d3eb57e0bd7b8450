"""Watching a process hbd started (or inherited) until it exits, without polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


class ProcessWatch:
    """Sets `exited` when the process `pid` is gone (pidfd readable), and
    reaps it when it is hbd's child. After an hbd restart the process is
    somebody else's child, and waitid says so."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._exited = asyncio.Event()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._exited.set()
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        assert self._pidfd is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        os.close(self._pidfd)
        self._pidfd = None
        self._exited.set()

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    async def wait(self) -> None:
        await self._exited.wait()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def terminate(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; returns once it is gone."""
        if not self.running:
            return
        self.kill(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait(), timeout)
        except TimeoutError:
            self.kill(signal.SIGKILL)
            await self.wait()

    def close(self) -> None:
        """Stop watching (hbd is shutting down; the process keeps running)."""
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def cmdline_of(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None
