"""Density: as many idle containers on hbd as the run asks for, each checked
with `docker exec true`, then all removed, and nothing left behind.

    python3 -m bench.density [--containers 500] [--parallel 4] [--reserve-mib 3072]
                             [--hbd-config hbd.toml]

Steps, on a private hbd (tests/daemon_fixture.py):
  1. start  `docker run -d busybox sleep 36000`, `parallel` at a time; the
            run stops starting more while the host's MemAvailable is below
            `reserve` (and says so: that is where the host is full)
  2. idle   after `settle` seconds: host memory the containers take
            (MemAvailable before minus now, and the sum of their PSS), and
            the CPU their processes and hbd use over `window` seconds
  3. exec   `docker exec c true` in every container, one after another:
            latency distribution, and how many took over 1 s (the target:
            none, shared/DESIGN.md §4)
  4. remove `docker rm -f`, `parallel` batches at a time
  5. check  no QEMU or virtiofsd of this hbd left, no taps of its networks,
            no mounts under its run or data directories, no run directories
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOCKER_CLI, run
from bench.hostcost import container_parts, cpu_sample, process_memory
from hbd.drivers.jail import JAIL_DIR_NAME
from hbd.services.container.sandboxes import SHARE_SPACE_DIR
from hbd.services.network.service import instance_tag
from tests.daemon_fixture import hbd_daemon


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def leftovers(exec_root: Path, data_root: Path) -> list[str]:
    """What a removed container may leave behind, of this hbd's."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(exec_root).encode() in argv and (b"qemu-system" in argv or b"virtiofsd" in argv):
            found.append(f"process {proc.name}: {argv[:80]!r}")
    tag = instance_tag(data_root)
    for link in Path("/sys/class/net").iterdir():
        if link.name.startswith(f"ht{tag}"):
            found.append(f"tap {link.name}")
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1]
        if target.startswith((str(exec_root) + "/", str(data_root) + "/")):
            found.append(f"mount {target}")
    for entry in exec_root.iterdir():
        # The jail's one empty directory and the share space's pin are the
        # daemon's, not a guest's.
        if entry.is_dir() and entry.name not in (JAIL_DIR_NAME, SHARE_SPACE_DIR):
            found.append(f"run directory {entry}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--reserve-mib", type=float, default=3072)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--hbd-config", type=Path, default=None,
                        help="an hbd.toml for the hbd under test (e.g. another tcg_tb_size_mib)")
    args = parser.parse_args()
    extra = ("--config", str(args.hbd_config)) if args.hbd_config else ()
    with hbd_daemon(extra_args=extra) as daemon:
        env = daemon.env()
        available_before = mem_available_mib()
        ids: list[str] = []
        failures: list[str] = []
        starts: list[float] = []
        stopped_for_memory = False

        def start_one(_: int) -> None:
            t = time.perf_counter()
            result = run([DOCKER_CLI, "run", "-d", "busybox", "sleep", "36000"], env=env,
                         check=False)
            if result.returncode == 0:
                ids.append(result.stdout.decode().strip())
                starts.append(time.perf_counter() - t)
            else:
                failures.append(result.stderr.decode(errors="replace").strip()[-300:])

        began = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            batch = 0
            while batch < args.containers:
                if mem_available_mib() < args.reserve_mib:
                    stopped_for_memory = True
                    break
                size = min(args.parallel, args.containers - batch)
                list(pool.map(start_one, range(size)))
                batch += size
                if ids and len(ids) % 50 < size:
                    print(f"  {len(ids)} running, {time.perf_counter() - began:.0f} s, "
                          f"MemAvailable {mem_available_mib():.0f} MiB", flush=True)
        start_total = time.perf_counter() - began
        n = len(ids)
        print(f"started {n} of {args.containers} in {start_total:.0f} s"
              f"{' (stopped: host memory below the reserve)' if stopped_for_memory else ''}; "
              f"{len(failures)} failed" + (f", first: {failures[0]}" if failures else ""))
        if not n:
            return
        time.sleep(args.settle)
        parts = [container_parts("hbd", env, cid) for cid in ids]
        pids = [pid for p in parts for pids in p.values() for pid in pids]
        before, hbd_before = cpu_sample(pids), cpu_sample([daemon.process.pid])
        t = time.monotonic()
        time.sleep(args.window)
        window = time.monotonic() - t
        cpu = cpu_sample(pids) - before
        hbd_cpu = cpu_sample([daemon.process.pid]) - hbd_before
        memory = process_memory(pids)
        taken = available_before - mem_available_mib()
        print(f"idle: host MemAvailable down {taken:.0f} MiB ({taken / n:.1f} per container); "
              f"PSS of their processes {memory.pss:.0f} MiB ({memory.pss / n:.1f} per container)")
        print(f"idle CPU over {window:.0f} s: containers {cpu.cpu_ns / 1e9 / window * 100:.1f} % "
              f"of a core in all ({cpu.cpu_ns / 1e9 / window * 100 / n:.3f} % each, "
              f"{cpu.switches / window / n:.2f} wakeups/s each), hbd "
              f"{hbd_cpu.cpu_ns / 1e9 / window * 100:.2f} %")

        latencies: list[float] = []
        exec_failures = 0
        for cid in ids:
            t = time.perf_counter()
            ok = run([DOCKER_CLI, "exec", cid, "true"], env=env, check=False).returncode == 0
            latencies.append(time.perf_counter() - t)
            exec_failures += not ok
        print(f"exec true x {n}: median {statistics.median(latencies):.3f} s, "
              f"p90 {percentile(latencies, 90):.3f}, p99 {percentile(latencies, 99):.3f}, "
              f"max {max(latencies):.3f}; over 1 s: {sum(x > 1 for x in latencies)}; "
              f"failed: {exec_failures}")
        if starts:
            print(f"docker run -d: median {statistics.median(starts):.2f} s, "
                  f"max {max(starts):.2f} s (with {args.parallel} at a time)")

        began = time.perf_counter()
        batches = [ids[i:i + 25] for i in range(0, n, 25)]
        with ThreadPoolExecutor(args.parallel) as pool:
            removed = list(pool.map(
                lambda b: run([DOCKER_CLI, "rm", "-f", *b], env=env, check=False).returncode,
                batches))
        print(f"removed {n} in {time.perf_counter() - began:.0f} s"
              f"{'' if not any(removed) else ' (some rm failed)'}")
        left = run([DOCKER_CLI, "ps", "-aq"], env=env).stdout.split()
        time.sleep(2)
        found = leftovers(daemon.exec_root, daemon.data_root)
        print(f"left behind: {len(left)} containers listed, "
              + ("nothing else" if not found else f"{len(found)} things:\n  "
                 + "\n  ".join(found[:20])))


if __name__ == "__main__":
    main()
