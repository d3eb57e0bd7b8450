"""Healthchecks, as dockerd's daemon/health.go runs them: a probe process in
the container every Interval, `Retries` failures in a row make it unhealthy,
failures during StartPeriod do not count."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hbd.drivers.agent import AgentError, ExitStatus, ProcessSpec
from hbd.services.timefmt import rfc3339_nano
from hbd.tasks import spawn

log = logging.getLogger(__name__)

NS = 1_000_000_000
DEFAULT_INTERVAL = 30 * NS
DEFAULT_TIMEOUT = 30 * NS
DEFAULT_START_INTERVAL = 5 * NS
DEFAULT_RETRIES = 3
MAX_OUTPUT = 4096
MAX_LOG_ENTRIES = 5

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"


@dataclass
class HealthState:
    status: str = STARTING
    failing_streak: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {"Status": self.status, "FailingStreak": self.failing_streak, "Log": self.log}


def probe_command(test: list[str]) -> list[str] | None:
    """None when the healthcheck is disabled (NONE or empty)."""
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        return test[1:] or None
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return None


class _Collector:
    """ProcessOutput for a probe: keeps the first MAX_OUTPUT bytes."""

    def __init__(self) -> None:
        self.output = b""
        self.exited: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()

    def on_output(self, stream: int, data: bytes) -> None:
        if len(self.output) < MAX_OUTPUT:
            self.output += data[: MAX_OUTPUT - len(self.output)]

    def on_output_eof(self, stream: int) -> None:
        pass

    def on_exit(self, status: ExitStatus) -> None:
        if not self.exited.done():
            self.exited.set_result(status)


class HealthMonitor:
    """Runs a container's healthcheck while its run lasts."""

    def __init__(self, healthcheck: dict[str, Any], run: Any, env: list[str], user: str,
                 cwd: str, on_status: Callable[[str], None]) -> None:
        self.command = probe_command(list(healthcheck.get("Test") or []))
        self.interval = (healthcheck.get("Interval") or DEFAULT_INTERVAL) / NS
        self.timeout = (healthcheck.get("Timeout") or DEFAULT_TIMEOUT) / NS
        self.start_period = (healthcheck.get("StartPeriod") or 0) / NS
        self.start_interval = (healthcheck.get("StartInterval") or DEFAULT_START_INTERVAL) / NS
        self.retries = healthcheck.get("Retries") or DEFAULT_RETRIES
        self.run = run
        self.env = env
        self.user = user
        self.cwd = cwd
        self.on_status = on_status
        self.state = HealthState()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.command is not None

    def start(self) -> None:
        if self.enabled:
            self._task = spawn(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            in_start_period = loop.time() - started < self.start_period
            # During the start period, probe at StartInterval (API >= 1.44).
            await asyncio.sleep(self.start_interval if in_start_period and
                                self.state.status == STARTING else self.interval)
            try:
                await self._probe(in_start_period=loop.time() - started < self.start_period)
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe must never take the monitor down
                log.exception("healthcheck failed to run")

    async def _probe(self, in_start_period: bool) -> None:
        assert self.command is not None
        start = rfc3339_nano()
        collector = _Collector()
        proc = self.run.guest.take_proc()
        spec = ProcessSpec(proc=proc, args=self.command, env=self.env, cwd=self.cwd,
                           user=self.user)
        try:
            await self.run.guest.start(spec, collector)
            status = await asyncio.wait_for(asyncio.shield(collector.exited), self.timeout)
            exit_code, output = status.exit_code, collector.output.decode(errors="replace")
        except TimeoutError:
            with contextlib.suppress(AgentError):
                await self.run.guest.signal(proc, 9)
            exit_code = -1
            output = f"Health check exceeded timeout ({self.timeout:g}s)"
        except AgentError as e:
            exit_code, output = (127 if e.kind == "exec" else 1), e.message
        finally:
            with contextlib.suppress(AgentError):
                await self.run.guest.release(proc)
        self._record(start, exit_code, output, in_start_period)

    def _record(self, start: str, exit_code: int, output: str, in_start_period: bool) -> None:
        st = self.state
        entry = {"Start": start, "End": rfc3339_nano(), "ExitCode": exit_code,
                 "Output": output}
        st.log = [*st.log, entry][-MAX_LOG_ENTRIES:]
        old = st.status
        if exit_code == 0:
            st.failing_streak = 0
            st.status = HEALTHY
        elif not (in_start_period and st.status == STARTING):
            st.failing_streak += 1
            if st.failing_streak >= self.retries:
                st.status = UNHEALTHY
        if st.status != old:
            self.on_status(st.status)
