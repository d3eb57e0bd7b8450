"""What idle containers cost the host: hbd side by side with dockerd + runc and
dockerd + gVisor (runsc, where installed), in one run.

    python3 -m bench.idle [--containers N] [--settle S] [--window W] [--engines hbd,runc,runsc]

Each engine starts N `busybox sleep 3600` containers, one after another,
checks that each answers `docker exec true`, lets them settle S seconds
(30), then watches them for W seconds (30) and reports, per container:

  PSS, RSS    host memory (/proc/PID/smaps_rollup) of the container's processes
              (bench/hostcost.py says which); PSS splits pages that processes
              share, so N containers sum to what they really take
  CPU %       of one host core, over the window (every thread's scheduler time)
  wakeups/s   context switches of those processes
and the engine daemon's own CPU over the same window (hbd; dockerd with its
containerd). hbd's rows break its QEMU's PSS into anonymous memory (its heap
and TCG translation cache), shmem (guest RAM the guest has touched) and files.

The target (shared/DESIGN.md §4): an idle container at most 12 MiB of PSS and
0.1 % of a core under TCG; gVisor's sandbox takes 16 MiB and 0.05 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DOCKER_CLI,
    RUNSC,
    RUNSC_RUNTIME,
    docker_env,
    dockerd_pid,
    real_dockerd,
    run,
)
from bench.hostcost import (
    CpuSample,
    Memory,
    container_parts,
    cpu_sample,
    process_memory,
    with_children,
)
from tests.daemon_fixture import BUSYBOX_TAR, hbd_daemon


@dataclass
class EngineResult:
    engine: str
    containers: int
    start_s: float = 0.0
    exec_s: list[float] = field(default_factory=list)
    window_s: float = 0.0
    # per part of a container ("QEMU", "virtiofsd"; "shim and below"), summed
    memory: dict[str, Memory] = field(default_factory=dict)
    cpu: dict[str, CpuSample] = field(default_factory=dict)
    daemon_cpu: CpuSample = field(default_factory=CpuSample)

    def total_memory(self) -> Memory:
        total = Memory()
        for m in self.memory.values():
            total += m
        return total

    def total_cpu(self) -> CpuSample:
        total = CpuSample()
        for c in self.cpu.values():
            total += c
        return total


def measure_engine(engine: str, env: dict[str, str], daemon_pids: list[int], containers: int,
                   settle: float, window: float, run_args: list[str]) -> EngineResult:
    result = EngineResult(engine, containers)
    ids: list[str] = []
    try:
        start = time.perf_counter()
        for _ in range(containers):
            ids.append(run([DOCKER_CLI, "run", "-d", *run_args, "busybox", "sleep", "3600"],
                           env=env).stdout.decode().strip())
        result.start_s = time.perf_counter() - start
        for cid in ids:
            t = time.perf_counter()
            run([DOCKER_CLI, "exec", cid, "true"], env=env)
            result.exec_s.append(time.perf_counter() - t)
        parts = [container_parts(engine, env, cid) for cid in ids]
        time.sleep(settle)
        names = list(parts[0])
        before = {n: sum((cpu_sample(p[n]) for p in parts), CpuSample()) for n in names}
        daemon_before = cpu_sample(daemon_pids)
        t = time.monotonic()
        time.sleep(window)
        result.window_s = time.monotonic() - t
        after = {n: sum((cpu_sample(p[n]) for p in parts), CpuSample()) for n in names}
        result.daemon_cpu = cpu_sample(daemon_pids) - daemon_before
        result.cpu = {n: after[n] - before[n] for n in names}
        result.memory = {n: sum((process_memory(p[n]) for p in parts), Memory())
                         for n in names}
    finally:
        if ids:
            run([DOCKER_CLI, "rm", "-f", *ids], env=env, check=False)
    return result


def percent(cpu: CpuSample, seconds: float, per: int = 1) -> float:
    return cpu.cpu_ns / 1e9 / seconds * 100 / per


def report(results: list[EngineResult], settle: float) -> str:
    lines = [f"idle containers: `busybox sleep 3600`, {settle:.0f} s to settle, then "
             f"{results[0].window_s:.0f} s watched; figures per container",
             f"{'engine':<26} {'N':>4} {'PSS MiB':>8} {'RSS MiB':>8} {'CPU %':>7} "
             f"{'wakeups/s':>9} {'daemon CPU %':>12} {'exec s (med)':>12}"]
    for r in results:
        n = r.containers
        mem, cpu = r.total_memory(), r.total_cpu()
        lines.append(
            f"{r.engine:<26} {n:>4} {mem.pss / n:8.1f} {mem.rss / n:8.1f} "
            f"{percent(cpu, r.window_s, n):7.3f} {cpu.switches / r.window_s / n:9.2f} "
            f"{percent(r.daemon_cpu, r.window_s):12.3f} {statistics.median(r.exec_s):12.3f}")
        if len(r.memory) > 1:
            for part, m in r.memory.items():
                lines.append(
                    f"  {part:<24} {'':>4} {m.pss / n:8.1f} {m.rss / n:8.1f} "
                    f"{percent(r.cpu[part], r.window_s, n):7.3f} "
                    f"{r.cpu[part].switches / r.window_s / n:9.2f}")
        qemu = r.memory.get("QEMU")
        if qemu is not None:
            lines.append(f"  QEMU PSS: anon {qemu.anon / n:.1f} (heap, TCG code cache), "
                         f"shmem {qemu.shmem / n:.1f} (guest RAM touched), "
                         f"file {qemu.file / n:.1f} MiB")
    lines.append("start of all N, one after another (s): "
                 + ", ".join(f"{r.engine} {r.start_s:.1f}" for r in results))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--engines", default="hbd,runc,runsc")
    parser.add_argument("--hbd-config", type=Path, default=None,
                        help="an hbd.toml for the hbd under test (e.g. another tcg_tb_size_mib)")
    args = parser.parse_args()
    engines = args.engines.split(",")
    results = []
    if "hbd" in engines:
        extra = ("--config", str(args.hbd_config)) if args.hbd_config else ()
        with hbd_daemon(extra_args=extra) as daemon:
            results.append(measure_engine("hbd", daemon.env(), [daemon.process.pid],
                                          args.containers, args.settle, args.window, []))
    docker_engines = [e for e in engines if e in ("runc", "runsc")]
    if "runsc" in docker_engines and RUNSC is None:
        print("runsc is not installed (apt install runsc): no gVisor row", file=sys.stderr)
        docker_engines.remove("runsc")
    if docker_engines:
        with real_dockerd(RUNSC_RUNTIME if RUNSC else None) as host:
            env = docker_env(host)
            run([DOCKER_CLI, "load", "-q", "-i", str(BUSYBOX_TAR)], env=env)
            daemon = with_children(dockerd_pid(host))
            for engine in docker_engines:
                label = {"runc": "dockerd+runc", "runsc": "dockerd+gVisor (ptrace)"}[engine]
                results.append(measure_engine(
                    label, env, daemon, args.containers, args.settle, args.window,
                    ["--runtime", engine]))
    print(report(results, args.settle))


if __name__ == "__main__":
    main()
