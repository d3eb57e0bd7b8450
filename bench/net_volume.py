"""Container networking and storage: hbd vs dockerd + runc, side by side in one run.

    python3 -m bench.net_volume [--runs N] [--files N] [--seconds S] [--no-direct]
                                [--no-network] [--no-files]
    python3 bench/net_volume.py ...     (the same)

Network (iperf3, host <-> container): a container runs `iperf3 -s` with its
port published on 127.0.0.1; the host runs `iperf3 -c 127.0.0.1 -t S -J`,
once sending (host -> container) and once with -R (container -> host). The
image holds only the host's /usr/bin/iperf3, the libraries `ldd` lists and
the dynamic loader, written by images/build_image.py's writer. dockerd runs
with --iptables=false on a bridge network of its own, so its published port
goes through docker-proxy, as dockerd's loopback traffic always does; hbd's
through its nftables DNAT. Unless --no-direct, the same again to the
container's address on its bridge (no port publishing in the way).

Files (busybox sh in a container): create --files small files, `find | wc -l`,
`cat` them all, `rm -r` them, in the container's own rootfs, on a named
volume and on a bind mount of a host directory; for hbd also on a block
volume (`docker volume create -o type=block`). hbd's named volumes and bind
mounts are host directories over virtiofs, its rootfs and block volumes ext4
on disks on the guest's SCSI bus. The phases are timed inside the container
($EPOCHREALTIME), so guest boot is excluded; the whole `docker run --rm` is
timed from the host as well. Medians of --runs. The target (shared/DESIGN.md
§4): small-file work on a bind mount within 2x of runc's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOCKER_CLI, docker_env, real_dockerd, run
from images.build_image import layer_from_tree, write_archive
from tests.daemon_fixture import BUSYBOX_TAR, hbd_daemon
from tests.registry_fixture import free_port

IPERF3 = Path("/usr/bin/iperf3")
IPERF_IMAGE = "bench/iperf3:latest"
PHASES = ("create", "find", "cat", "rm")
# $1: the directory to work in, $2: how many files. One line per phase mark.
FILE_SCRIPT = """cd "$1" && mkdir w && cd w || exit 1
echo start $EPOCHREALTIME
i=0
while [ $i -lt $2 ]; do echo "small file $i" > f$i; i=$((i+1)); done
echo create $EPOCHREALTIME
n=$(find . -type f | wc -l)
echo find $EPOCHREALTIME
cat f* > /dev/null || exit 1
echo cat $EPOCHREALTIME
cd .. && rm -r w || exit 1
echo rm $EPOCHREALTIME
echo count $n
"""


# -- the iperf3 image ------------------------------------------------------------


def shared_libraries(binary: Path) -> list[Path]:
    """What `ldd` lists for `binary`: the libraries and the dynamic loader."""
    out = run(["ldd", str(binary)]).stdout.decode()
    found = []
    for line in out.splitlines():
        words = line.split()
        if "=>" in words:
            path = words[words.index("=>") + 1]
        elif words and words[0].startswith("/"):
            path = words[0]  # the loader
        else:
            continue  # linux-vdso.so.1: in the kernel, not a file
        if path.startswith("/"):
            found.append(Path(path))
    return found


def build_iperf_image(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for d in ("dev", "etc", "proc", "sys", "tmp"):
            (tree / d).mkdir()
        os.chmod(tree / "tmp", 0o1777)
        for source in [IPERF3, *shared_libraries(IPERF3)]:
            target = tree / source.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.resolve(), target)  # the file, under the name ldd uses
            os.chmod(target, 0o755)
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Entrypoint": ["/usr/bin/iperf3"], "Cmd": ["-s"],
                             "ExposedPorts": {"5201/tcp": {}}},
                  "history": [{"created_by": "bench/net_volume.py (host iperf3 + libraries)"}]}
        write_archive(out, IPERF_IMAGE, [layer_from_tree(tree)], config)


# -- network ---------------------------------------------------------------------


@contextlib.contextmanager
def container(env: dict[str, str], *args: str) -> Iterator[str]:
    """`docker run -d args`, removed (-f) on the way out; yields its ID."""
    cid = run([DOCKER_CLI, "run", "-d", *args], env=env).stdout.decode().strip()
    try:
        yield cid
    finally:
        run([DOCKER_CLI, "rm", "-f", cid], env=env, check=False)


def wait_listening(env: dict[str, str], cid: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while b"Server listening" not in run([DOCKER_CLI, "logs", cid], env=env).stdout:
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 -s in {cid[:12]} did not start in {timeout:.0f}s")
        time.sleep(0.2)


def iperf(server: str, port: int, seconds: int, reverse: bool) -> tuple[float, int]:
    """(Gbit/s received, TCP retransmits) of one iperf3 test against server:port."""
    argv = ["iperf3", "-c", server, "-p", str(port), "-t", str(seconds), "-J",
            *(["-R"] if reverse else [])]
    for attempt in range(3):
        # The server takes a moment after a test before it accepts the next one.
        time.sleep(1)
        result = subprocess.run(argv, capture_output=True, timeout=seconds + 60)
        report = json.loads(result.stdout or b"{}")
        if result.returncode == 0 and "error" not in report:
            break
        if attempt == 2:
            raise RuntimeError(f"{' '.join(argv)}: {report.get('error') or result.stderr!r}")
    end = report["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, \
        int(end["sum_sent"].get("retransmits", 0))


def bench_network(label: str, env: dict[str, str], network: list[str], seconds: int,
                  direct: bool) -> list[tuple[str, str, float, int]]:
    """(engine, path and direction, Gbit/s, retransmits) rows."""
    port = free_port()
    rows = []
    with container(env, *network, "-p", f"127.0.0.1:{port}:5201", IPERF_IMAGE,
                   "-s", "--forceflush") as cid:
        wait_listening(env, cid)
        targets = [("127.0.0.1 published", "127.0.0.1", port)]
        if direct:
            ip = run([DOCKER_CLI, "inspect", "-f",
                      "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid],
                     env=env).stdout.decode().split()[0]
            targets.append(("bridge address", ip, 5201))
        for path, server, server_port in targets:
            for reverse in (False, True):
                direction = "container -> host" if reverse else "host -> container"
                gbps, retransmits = iperf(server, server_port, seconds, reverse)
                rows.append((label, f"{path}, {direction}", gbps, retransmits))
                print(f"  {label}: {path} ({server}:{server_port}), {direction}: "
                      f"{gbps:.2f} Gbit/s, {retransmits} retransmits", flush=True)
    return rows


# -- files -----------------------------------------------------------------------


def file_run(env: dict[str, str], mount: list[str], directory: str, files: int
             ) -> tuple[dict[str, float], float]:
    """({phase: seconds} measured in the container, seconds of the whole docker run)."""
    start = time.perf_counter()
    out = run([DOCKER_CLI, "run", "--rm", *mount, "busybox", "sh", "-c", FILE_SCRIPT, "sh",
               directory, str(files)], env=env).stdout.decode()
    whole = time.perf_counter() - start
    marks: dict[str, float] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        marks[key] = float(value)
    if marks.get("count") != files:
        raise RuntimeError(f"find counted {marks.get('count')} files, not {files}:\n{out}")
    phases, last = {}, marks["start"]
    for phase in PHASES:
        phases[phase] = marks[phase] - last
        last = marks[phase]
    return phases, whole


# Where the workload runs: (key, what the mount is, for each engine), in table order.
PLACES = {
    "rootfs": {"hbd": "ext4 image + scratch overlay, SCSI", "runc": "overlay2"},
    "named volume": {"hbd": "shared, virtiofs", "runc": "host directory"},
    "block volume": {"hbd": "-o type=block, ext4 on SCSI"},
    "bind mount": {"hbd": "virtiofs", "runc": "host directory"},
}


def bench_files(label: str, env: dict[str, str], runs: int, files: int, bind_dir: Path
                ) -> list[tuple[str, str, dict[str, float], float]]:
    """(engine, where, {phase: median s}, median whole-run s) rows."""
    shared = f"bench-files-{secrets.token_hex(4)}"
    block = f"bench-block-{secrets.token_hex(4)}"
    mounts = {"rootfs": ([], "/root"),
              "named volume": (["-v", f"{shared}:/data"], "/data"),
              "block volume": (["-v", f"{block}:/data"], "/data"),
              "bind mount": (["-v", f"{bind_dir}:/data"], "/data")}
    places = [where for where, engines in PLACES.items() if label in engines]
    run([DOCKER_CLI, "volume", "create", shared], env=env)
    if "block volume" in places:
        run([DOCKER_CLI, "volume", "create", "-o", "type=block", block], env=env)
    try:
        rows = []
        for where in places:
            mount, directory = mounts[where]
            samples = [file_run(env, mount, directory, files) for _ in range(runs)]
            phases = {p: statistics.median(s[0][p] for s in samples) for p in PHASES}
            whole = statistics.median(s[1] for s in samples)
            rows.append((label, where, phases, whole))
            print(f"  {label}: {where}: " + ", ".join(f"{p} {phases[p]:.3f}s" for p in PHASES)
                  + f"; docker run {whole:.2f}s", flush=True)
        return rows
    finally:
        run([DOCKER_CLI, "volume", "rm", "-f", shared, block], env=env, check=False)


def print_files(file_rows: list[tuple[str, str, dict[str, float], float]], files: int,
                runs: int) -> None:
    print(f"\n{files} small files, busybox sh; seconds inside the container "
          f"(median of {runs}), then the whole docker run --rm")
    print(f"{'engine: where (what it is)':<52}" + "".join(f"{p:>8}" for p in PHASES)
          + f"{'run':>8}")
    for engine, where, phases, whole in file_rows:
        name = f"{engine}: {where} ({PLACES[where][engine]})"
        print(f"{name:<52}" + "".join(f"{phases[p]:8.3f}" for p in PHASES) + f"{whole:8.2f}")
    by_key = {(engine, where): (phases, whole) for engine, where, phases, whole in file_rows}
    print(f"\n{'hbd / runc, same place':<52}" + "".join(f"{p:>8}" for p in PHASES)
          + f"{'run':>8}")
    for where in PLACES:
        if ("hbd", where) not in by_key or ("runc", where) not in by_key:
            continue
        (hp, hw), (rp, rw) = by_key[("hbd", where)], by_key[("runc", where)]
        print(f"{where:<52}" + "".join(f"{hp[p] / rp[p]:7.2f}x" for p in PHASES)
              + f"{hw / rw:7.2f}x")
    if ("hbd", "bind mount") in by_key and ("runc", "bind mount") in by_key:
        hp, rp = by_key[("hbd", "bind mount")][0], by_key[("runc", "bind mount")][0]
        worst = max(PHASES, key=lambda p: hp[p] / rp[p])
        print(f"bind mount, worst phase: {worst} {hp[worst] / rp[worst]:.2f}x runc "
              f"(target <= 2x)")
    if ("hbd", "named volume") in by_key and ("hbd", "block volume") in by_key:
        sp, bp = by_key[("hbd", "named volume")][0], by_key[("hbd", "block volume")][0]
        print(f"{'hbd: virtiofs volume / block volume':<52}"
              + "".join(f"{sp[p] / bp[p]:7.2f}x" for p in PHASES))


# -- both engines ------------------------------------------------------------------


def bench_engine(label: str, env: dict[str, str], network: list[str], args: argparse.Namespace,
                 image: Path) -> tuple[list[tuple[str, str, float, int]],
                                       list[tuple[str, str, dict[str, float], float]]]:
    net_rows, file_rows = [], []
    if args.network:
        run([DOCKER_CLI, "load", "-q", "-i", str(image)], env=env)
        net_rows = bench_network(label, env, network, args.seconds, args.direct)
    if args.files_work:
        with tempfile.TemporaryDirectory(prefix="bench-bind-") as bind_dir:
            file_rows = bench_files(label, env, args.runs, args.files, Path(bind_dir))
    return net_rows, file_rows


def print_net(net_rows: list[tuple[str, str, float, int]], seconds: int) -> None:
    print(f"\niperf3 -t {seconds}, one stream, TCP; Gbit/s received")
    print(f"{'what':<52} {'hbd':>8} {'runc':>8} {'hbd/runc':>9}")
    by_key = {(engine, what): (gbps, rt) for engine, what, gbps, rt in net_rows}
    for what in dict.fromkeys(what for _, what, _, _ in net_rows):
        h, r = by_key[("hbd", what)][0], by_key[("runc", what)][0]
        print(f"{what:<52} {h:8.2f} {r:8.2f} {h / r:8.2f}x")


@contextlib.contextmanager
def bridge_network(env: dict[str, str]) -> Iterator[list[str]]:
    """A bridge network on the private dockerd (it runs with --bridge=none)."""
    name = f"bench-net-{secrets.token_hex(4)}"
    run([DOCKER_CLI, "network", "create", name], env=env)
    try:
        yield ["--network", name]
    finally:
        run([DOCKER_CLI, "network", "rm", name], env=env, check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="runs of each file workload")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=5, help="of each iperf3 test")
    parser.add_argument("--no-direct", dest="direct", action="store_false",
                        help="skip iperf3 to the container's bridge address")
    parser.add_argument("--no-network", dest="network", action="store_false",
                        help="skip iperf3 altogether")
    parser.add_argument("--no-files", dest="files_work", action="store_false",
                        help="skip the small-file workload")
    args = parser.parse_args()
    net_rows: list[tuple[str, str, float, int]] = []
    file_rows: list[tuple[str, str, dict[str, float], float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-netvol-") as tmp:
        image = Path(tmp) / "iperf3.tar"
        build_iperf_image(image)
        with hbd_daemon() as daemon:
            n, f = bench_engine("hbd", daemon.env(), [], args, image)
            net_rows += n
            file_rows += f
        with real_dockerd() as host:
            env = docker_env(host)
            run([DOCKER_CLI, "load", "-q", "-i", str(BUSYBOX_TAR)], env=env)
            with bridge_network(env) as network:
                n, f = bench_engine("runc", env, network, args, image)
                net_rows += n
                file_rows += f
    if net_rows:
        print_net(net_rows, args.seconds)
    if file_rows:
        print_files(file_rows, args.files, args.runs)


if __name__ == "__main__":
    main()
