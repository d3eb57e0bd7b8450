"""Lifecycle latencies through hbd, side by side with dockerd + runc and
dockerd + gVisor (runsc, where installed), one run.

    python3 bench/lifecycle.py [--runs N] [--containers N]

Rows:
  docker exec c true        one exec into a running container (CLI end to end)
  docker run -d x N         N detached `busybox sleep` containers, one after another
  docker ps (N running)     listing them
and host memory (RSS and PSS, /proc/PID/smaps_rollup): of one idle container
(hbd: its QEMU and its virtiofsd; runc: its containerd-shim and its process)
and of the N idle containers, per container (gVisor: its shim and
everything below it: runsc's sandbox, gofer and the container's process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DOCKER_CLI,
    RUNSC,
    RUNSC_RUNTIME,
    Timing,
    docker_env,
    measure,
    real_dockerd,
    run,
    table,
    wait_template,
)
from bench.hostcost import (
    Memory,
    container_parts,
    hbd_guest_pids,
    parent_pid,
    process_memory,
    with_children,
)
from tests.daemon_fixture import BUSYBOX_TAR, hbd_daemon


def run_quiet(argv: list[str], env: dict[str, str]) -> None:
    run(argv, env=env)


def guest_memory(qemu_pid: int) -> tuple[Memory, Memory]:
    """(QEMU, virtiofsd) of the hbd guest whose QEMU is `qemu_pid`."""
    qemu, virtiofsd = hbd_guest_pids(qemu_pid)
    return process_memory(qemu), process_memory(virtiofsd)


def container_memory(label: str, env: dict[str, str], cid: str) -> list[tuple[str, Memory]]:
    """What one container costs the host: (what, memory) rows."""
    if label == "gVisor":
        below = process_memory(container_parts("runsc", env, cid)["shim and below"])
        return [("shim, sandbox, gofer, process", below), ("total", below)]
    pid = int(run([DOCKER_CLI, "inspect", "-f", "{{.State.Pid}}", cid], env=env).stdout)
    if label == "hbd":
        qemu, virtiofsd = guest_memory(pid)
        return [("QEMU", qemu), ("virtiofsd", virtiofsd), ("total", qemu + virtiofsd)]
    # runc: the container's process and the containerd-shim it runs under
    shim, process = process_memory([parent_pid(pid)]), process_memory(with_children(pid))
    return [("containerd-shim", shim), ("container processes", process),
            ("total", shim + process)]


IDLE_SECONDS = 5  # for the guests to go idle before their memory is read


def bench_engine(label: str, host: str, runs: int, containers: int, runtime: str = ""
                 ) -> tuple[list[Timing], list[tuple[str, Memory]], list[tuple[str, Memory]]]:
    """(timings, memory of one idle container, memory of `containers` idle ones)."""
    env = docker_env(host)
    rows = []
    detached = [DOCKER_CLI, "run", "-d", *(["--runtime", runtime] if runtime else []),
                "busybox", "sleep", "3600"]
    cid = run(detached, env=env).stdout.decode().strip()
    rows.append(measure(f"{label}: docker exec c true", runs,
                        lambda: run_quiet([DOCKER_CLI, "exec", cid, "true"], env)))
    time.sleep(IDLE_SECONDS)
    one = container_memory(label, env, cid)
    run([DOCKER_CLI, "rm", "-f", cid], env=env)
    ids: list[str] = []

    def start_all() -> None:
        for _ in range(containers):
            ids.append(run(detached, env=env).stdout.decode().strip())

    start = time.perf_counter()
    start_all()
    rows.append(Timing(f"{label}: docker run -d x {containers}",
                       [time.perf_counter() - start]))
    listed = run([DOCKER_CLI, "ps", "-q"], env=env).stdout.split()
    assert len(listed) >= containers, listed
    rows.append(measure(f"{label}: docker ps ({containers} running)", runs,
                        lambda: run_quiet([DOCKER_CLI, "ps"], env)))
    time.sleep(IDLE_SECONDS)
    many: dict[str, Memory] = {}
    for i in ids:
        for what, memory in container_memory(label, env, i):
            many[what] = many.get(what, Memory()) + memory
    run([DOCKER_CLI, "rm", "-f", *ids], env=env)
    return rows, one, list(many.items())


def named(engine: str, rows: list[tuple[str, Memory]]) -> list[tuple[str, Memory]]:
    return [(f"{engine}: {what}", m) for what, m in rows]


def memory_table(title: str, rows: list[tuple[str, Memory]], per: int = 1) -> str:
    lines = [f"{title:<44} {'RSS MiB':>8} {'PSS MiB':>8} {'procs':>6}"]
    for what, m in rows:
        lines.append(f"{what:<44} {m.rss / per:8.1f} {m.pss / per:8.1f} "
                     f"{m.processes / per:6.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--no-templates", action="store_true",
                        help="every hbd guest boots (hbd.toml: vm.templates = false)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hbd.toml"
        config.write_text(f"[vm]\ntemplates = {str(not args.no_templates).lower()}\n")
        with hbd_daemon(extra_args=("--config", str(config))) as daemon:
            if not args.no_templates:
                wait_template(daemon)
            hbd_rows, hbd_one, hbd_many = bench_engine("hbd", daemon.host, args.runs,
                                                       args.containers)
    gvisor: tuple[list[Timing], list[tuple[str, Memory]], list[tuple[str, Memory]]] | None = None
    with real_dockerd(RUNSC_RUNTIME if RUNSC else None) as host:
        run([DOCKER_CLI, "load", "-q", "-i", str(BUSYBOX_TAR)], env=docker_env(host))
        runc_rows, runc_one, runc_many = bench_engine("runc", host, args.runs, args.containers)
        if RUNSC:
            gvisor = bench_engine("gVisor", host, args.runs, args.containers, "runsc")
        else:
            print("runsc is not installed (apt install runsc): no gVisor rows", file=sys.stderr)
    gvisor_rows, gvisor_one, gvisor_many = gvisor or ([], [], [])
    engines = [hbd_rows, runc_rows] + ([gvisor_rows] if gvisor_rows else [])
    rows = [row for same_step in zip(*engines, strict=True) for row in same_step]
    print(table(rows))
    for h, r in zip(hbd_rows, runc_rows, strict=True):
        print(f"{h.name.split(': ', 1)[1]}: hbd/runc = {h.median / r.median:.2f}x")
    print()
    print(memory_table(f"one idle container ({IDLE_SECONDS} s idle)",
                       named("hbd", hbd_one) + named("runc", runc_one) +
                       named("gVisor", gvisor_one)))
    print()
    print(memory_table(f"{args.containers} idle containers, per container",
                       named("hbd", hbd_many) + named("runc", runc_many) +
                       named("gVisor", gvisor_many), args.containers))
    print("(hbd: guest RAM is in QEMU's RSS; PSS splits the pages the guests share, "
          "QEMU's and virtiofsd's own code among them)")

if __name__ == "__main__":
    main()
