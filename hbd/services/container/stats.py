"""`docker top` and `docker stats`: what the guest reports, and the views of it."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from hbd.drivers.agent import AgentError
from hbd.errors import Conflict, SystemError_
from hbd.services.container.model import Container
from hbd.services.timefmt import rfc3339_nano

DEFAULT_CPU_PERIOD = 100_000
STATS_INTERVAL = 1.0


def cpu_quota(host_config: dict[str, Any]) -> tuple[int, int]:
    """(quota µs, period µs) for the container cgroup: -1 quota when unlimited."""
    period = int(host_config.get("CpuPeriod") or DEFAULT_CPU_PERIOD)
    if host_config.get("NanoCpus"):
        return math.ceil(int(host_config["NanoCpus"]) * period / 1e9), period
    if host_config.get("CpuQuota") and int(host_config["CpuQuota"]) > 0:
        return int(host_config["CpuQuota"]), period
    return -1, period


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def top_view(snapshot: dict[str, Any], now: float) -> dict[str, Any]:
    """`ps -ef` columns, as dockerd's top returns them by default."""
    hz = snapshot.get("hz") or 100
    uptime = (snapshot.get("uptime_ms") or 0) / 1000
    boot = now - uptime
    rows = []
    for p in sorted(snapshot.get("processes") or [], key=lambda p: p.get("pid", 0)):
        started = boot + (p.get("start_ticks") or 0) / hz
        rows.append([
            str(p.get("user", "")), str(p.get("pid", "")), str(p.get("ppid", "")), "0",
            time.strftime("%H:%M", time.gmtime(started)),
            "?" if not p.get("tty") else "pts/0",
            _clock((p.get("cpu_ticks") or 0) / hz), str(p.get("cmd", "")),
        ])
    return {"Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
            "Processes": rows}


def _cpu(sample: dict[str, Any] | None) -> dict[str, Any]:
    cpu = (sample or {}).get("cpu") or {}
    return {
        "cpu_usage": {"total_usage": cpu.get("usage_ns", 0),
                      "usage_in_kernelmode": cpu.get("kernel_ns", 0),
                      "usage_in_usermode": cpu.get("user_ns", 0)},
        "system_cpu_usage": cpu.get("system_ns", 0),
        "online_cpus": cpu.get("online", 0),
        "throttling_data": {"periods": cpu.get("periods", 0),
                            "throttled_periods": cpu.get("throttled_periods", 0),
                            "throttled_time": cpu.get("throttled_ns", 0)},
    }


def stats_view(container_id: str, name: str, sample: dict[str, Any] | None,
               previous: dict[str, Any] | None, read_ns: int, previous_ns: int
               ) -> dict[str, Any]:
    """One `docker stats` record (cgroup v2 shape). Zeros for a stopped container."""
    memory = (sample or {}).get("memory") or {}
    networks = (sample or {}).get("networks") or {}
    out: dict[str, Any] = {
        "read": rfc3339_nano(read_ns) if sample else "0001-01-01T00:00:00Z",
        "preread": rfc3339_nano(previous_ns) if previous else "0001-01-01T00:00:00Z",
        "pids_stats": {"current": (sample or {}).get("pids", 0)} if sample else {},
        "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None,
                        "io_queue_recursive": None, "io_service_time_recursive": None,
                        "io_wait_time_recursive": None, "io_merged_recursive": None,
                        "io_time_recursive": None, "sectors_recursive": None},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu(sample),
        "precpu_stats": _cpu(previous),
        "memory_stats": {
            "usage": memory.get("usage", 0),
            "stats": {"anon": memory.get("anon", 0), "file": memory.get("file", 0),
                      "inactive_file": memory.get("inactive_file", 0),
                      "active_file": memory.get("active_file", 0)},
            "limit": memory.get("limit", 0),
        } if sample else {},
        "name": name,
        "id": container_id,
    }
    if sample and (sample.get("pids_limit") or 0) > 0:
        out["pids_stats"]["limit"] = sample["pids_limit"]
    if networks:
        out["networks"] = networks
    return out


async def top(c: Container) -> dict[str, Any]:
    run = c.running_run()
    if c.state.paused:
        raise Conflict(f"Container {c.id} is paused, unpause the container before top")
    try:
        snapshot = await run.guest.ps()
    except AgentError as e:
        raise SystemError_(f"Cannot top container {c.id}: {e.message}") from e
    return top_view(snapshot, time.time())


async def stats_sample(c: Container) -> dict[str, Any] | None:
    """One reading of the guest's figures, or None when it is not running."""
    run = c.run
    if run is None or not c.state.running or c.state.paused:
        return None
    try:
        return await run.guest.stats()
    except AgentError:
        return None


async def stats_records(c: Container, registered: Callable[[str], bool], stream: bool,
                        one_shot: bool, shown_name: str = ""
                        ) -> AsyncGenerator[dict[str, Any], None]:
    """One record, or one a second while `stream` and the container is
    `registered`; dockerd's precpu is the previous one. `shown_name`: the
    container's name as the asker knows it (its stored name by default)."""
    previous: dict[str, Any] | None = None
    previous_ns = 0
    while True:
        sample = await stats_sample(c)
        now_ns = time.time_ns()
        if stream or one_shot or previous is not None or sample is None:
            yield stats_view(c.id, shown_name or c.name, sample, previous, now_ns, previous_ns)
            if not stream:
                return
        previous, previous_ns = sample, now_ns
        await asyncio.sleep(STATS_INTERVAL)
        if not registered(c.id):
            return
