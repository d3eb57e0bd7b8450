"""Sizing QEMU's TCG translation cache (`-accel tcg,tb-size=`, hbd.toml's
vm.tcg_tb_size_mib) by measurement: one hbd per size, in one run.

    python3 -m bench.tbsize [--sizes 4,8,16,32] [--containers 3] [--settle 20]

Per size, each of N containers is started with `docker run -d busybox sleep
3600` (one after another; each start is timed), then timed:
  exec true      `docker exec c true` (median of 5 per container)
  exec work      `docker exec c sh -c '...'`: a shell loop running ls, sort,
                 md5sum, seq: more distinct guest code than `true`, so a cache
                 too small shows as re-translation
and after `settle` seconds idle: QEMU's PSS (anonymous part: heap and the
translation cache) and RSS, per container. A guest fills its cache while it
boots (the boot runs far more distinct code than an idle guest ever does
afterwards), so the cache's size is, to a page, what it costs an idle guest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOCKER_CLI, run
from bench.hostcost import Memory, container_parts, process_memory
from tests.daemon_fixture import hbd_daemon

WORK = ("for i in 1 2 3; do ls -l /bin >/dev/null; seq 1 300 | sort -r | md5sum >/dev/null; "
        "done")


def one_size(size: int, containers: int, settle: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config:
        config.write(f"[vm]\ntcg_tb_size_mib = {size}\n")
        config.flush()
        with hbd_daemon(extra_args=("--config", config.name)) as daemon:
            env = daemon.env()
            ids, starts, execs, works = [], [], [], []
            try:
                for _ in range(containers):
                    t = time.perf_counter()
                    ids.append(run([DOCKER_CLI, "run", "-d", "busybox", "sleep", "3600"],
                                   env=env).stdout.decode().strip())
                    starts.append(time.perf_counter() - t)
                for cid in ids:
                    for _ in range(5):
                        t = time.perf_counter()
                        run([DOCKER_CLI, "exec", cid, "true"], env=env)
                        execs.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    run([DOCKER_CLI, "exec", cid, "sh", "-c", WORK], env=env)
                    works.append(time.perf_counter() - t)
                time.sleep(settle)
                qemu = Memory()
                for cid in ids:
                    qemu += process_memory(container_parts("hbd", env, cid)["QEMU"])
            finally:
                if ids:
                    run([DOCKER_CLI, "rm", "-f", *ids], env=env, check=False)
    n = containers
    return {"start": statistics.median(starts), "exec": statistics.median(execs),
            "work": statistics.median(works), "pss": qemu.pss / n, "anon": qemu.anon / n,
            "rss": qemu.rss / n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4,8,16,32")
    parser.add_argument("--containers", type=int, default=3)
    parser.add_argument("--settle", type=float, default=20.0)
    args = parser.parse_args()
    rows = [(int(s), one_size(int(s), args.containers, args.settle))
            for s in args.sizes.split(",")]
    print(f"TCG translation cache size, {args.containers} containers per size "
          f"(medians; memory per container after {args.settle:.0f} s idle)")
    print(f"{'tb-size MiB':>11} {'run -d s':>9} {'exec true s':>11} {'exec work s':>11} "
          f"{'QEMU PSS':>9} {'of it anon':>10} {'QEMU RSS':>9}")
    for size, r in rows:
        print(f"{size:>11} {r['start']:9.3f} {r['exec']:11.3f} {r['work']:11.3f} "
              f"{r['pss']:9.1f} {r['anon']:10.1f} {r['rss']:9.1f}")


if __name__ == "__main__":
    main()
