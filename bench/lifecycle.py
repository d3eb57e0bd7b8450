"""Lifecycle latencies through hbd, side by side with dockerd + runc, one run.

    python3 bench/lifecycle.py [--runs N] [--containers N]

Rows:
  docker exec c true        one exec into a running container (CLI end to end)
  docker run -d x N         N detached `busybox sleep` containers, one after another
  docker ps (N running)     listing them
and, for hbd, the host memory of the N idle guests (QEMU RSS, summed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DOCKER_CLI,
    Timing,
    docker_env,
    measure,
    real_dockerd,
    run,
    table,
)
from tests.daemon_fixture import BUSYBOX_TAR, hbd_daemon


def run_quiet(argv: list[str], env: dict[str, str]) -> None:
    run(argv, env=env)


def qemu_rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def bench_engine(label: str, host: str, runs: int, containers: int) -> tuple[list[Timing], str]:
    env = docker_env(host)
    rows = []
    cid = run([DOCKER_CLI, "run", "-d", "busybox", "sleep", "3600"], env=env).stdout.decode(
    ).strip()
    rows.append(measure(f"{label}: docker exec c true", runs,
                        lambda: run_quiet([DOCKER_CLI, "exec", cid, "true"], env)))
    run([DOCKER_CLI, "rm", "-f", cid], env=env)
    ids: list[str] = []

    def start_all() -> None:
        for _ in range(containers):
            ids.append(run([DOCKER_CLI, "run", "-d", "busybox", "sleep", "3600"],
                           env=env).stdout.decode().strip())

    start = time.perf_counter()
    start_all()
    rows.append(Timing(f"{label}: docker run -d x {containers}",
                       [time.perf_counter() - start]))
    listed = run([DOCKER_CLI, "ps", "-q"], env=env).stdout.split()
    assert len(listed) >= containers, listed
    rows.append(measure(f"{label}: docker ps ({containers} running)", runs,
                        lambda: run_quiet([DOCKER_CLI, "ps"], env)))
    note = ""
    if label == "hbd":
        pids = [int(run([DOCKER_CLI, "inspect", "-f", "{{.State.Pid}}", i], env=env
                        ).stdout) for i in ids]
        time.sleep(5)  # let the guests go idle
        rss = qemu_rss_mib(pids)
        note = (f"hbd: {containers} idle guests use {rss:.0f} MiB of host RSS "
                f"({rss / containers:.1f} MiB each, guest RAM included)")
    run([DOCKER_CLI, "rm", "-f", *ids], env=env)
    return rows, note


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--containers", type=int, default=20)
    args = parser.parse_args()
    with hbd_daemon() as daemon:
        hbd_rows, note = bench_engine("hbd", daemon.host, args.runs, args.containers)
    with real_dockerd() as host:
        run([DOCKER_CLI, "load", "-q", "-i", str(BUSYBOX_TAR)], env=docker_env(host))
        runc_rows, _ = bench_engine("runc", host, args.runs, args.containers)
    rows = [row for pair in zip(hbd_rows, runc_rows, strict=True) for row in pair]
    print(table(rows))
    for h, r in zip(hbd_rows, runc_rows, strict=True):
        print(f"{h.name.split(': ', 1)[1]}: hbd/runc = {h.median / r.median:.2f}x")
    print(note)


if __name__ == "__main__":
    main()
