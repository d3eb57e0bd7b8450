"""`docker pull` of a multi-layer image from a local registry: hbd vs dockerd, one run.

    python3 -m bench.pull [--runs N] [--layers N] [--layer-mib N]
    python3 bench/pull.py ...           (the same)

A real registry (Debian docker-registry, tests/registry_fixture.py) on
127.0.0.1, which both daemons treat as insecure by default. The image is
busybox plus --layers layers of --layer-mib MiB of random (incompressible)
bytes each, written on the host by images/build_image.py's writer, loaded
into hbd and pushed from there once. Then each daemon pulls it --runs times
(after one warm-up pull), the two daemons taking turns; the image is removed
after every pull, so every pull downloads, verifies and unpacks every layer
(dockerd into overlay2, hbd into the image's ext4 disk).

Rows: seconds per `docker pull` (CLI end to end), then throughput in MB/s of
the compressed bytes the registry serves (manifest sizes), and hbd/dockerd.
The target (shared/DESIGN.md §4) is hbd >= 0.9 times dockerd's throughput.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOCKER_CLI, Timing, docker_env, real_dockerd, run, table
from images.build_image import layer_from_tree, write_archive
from tests.daemon_fixture import BUSYBOX_TAR, hbd_daemon
from tests.registry_fixture import Registry, registry

REPOSITORY = "bench/layered"
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


def busybox_layer() -> bytes:
    """The uncompressed layer tar of images/out/busybox.tar (its only layer)."""
    with tarfile.open(BUSYBOX_TAR) as archive:
        member = archive.extractfile("manifest.json")
        assert member is not None
        (layer_path,) = json.loads(member.read())[0]["Layers"]
        blob = archive.extractfile(layer_path)
        assert blob is not None
        return gzip.decompress(blob.read())


def build_image(out: Path, ref: str, layers: int, layer_mib: int) -> None:
    """busybox + `layers` layers, each one file of `layer_mib` MiB of random bytes."""
    contents = [busybox_layer()]
    for i in range(layers):
        with tempfile.TemporaryDirectory() as tree:
            data = Path(tree) / "data"
            data.mkdir()
            with open(data / f"layer{i}.bin", "wb") as f:
                for _ in range(layer_mib):
                    f.write(os.urandom(1 << 20))
            contents.append(layer_from_tree(Path(tree)))
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                 "/sbin:/bin"], "Cmd": ["sh"]},
              "history": [{"created_by": "bench/pull.py"} for _ in contents]}
    write_archive(out, ref, contents, config)


def pushed_manifest(reg: Registry, tag: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://{reg.host}/v2/{REPOSITORY}/manifests/{tag}",
                                     headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=10) as resp:
        manifest: dict[str, Any] = json.loads(resp.read())
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mib", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp, registry() as reg, \
            hbd_daemon(load_busybox=False) as daemon, real_dockerd() as dockerd_host:
        ref = f"{reg.host}/{REPOSITORY}:v1"
        archive = Path(tmp) / "layered.tar"
        start = time.perf_counter()
        build_image(archive, ref, args.layers, args.layer_mib)
        print(f"built {archive.stat().st_size / 1e6:.0f} MB image archive in "
              f"{time.perf_counter() - start:.1f}s", flush=True)
        hbd_env = daemon.env()
        run([DOCKER_CLI, "load", "-q", "-i", str(archive)], env=hbd_env)
        run([DOCKER_CLI, "push", "-q", ref], env=hbd_env)
        run([DOCKER_CLI, "rmi", ref], env=hbd_env)
        manifest = pushed_manifest(reg, "v1")
        blobs = [manifest["config"], *manifest["layers"]]
        size, nlayers = sum(b["size"] for b in blobs), len(manifest["layers"])
        blob_dir = daemon.data_root / "image" / "blobs" / "sha256"
        engines = {"hbd": hbd_env, "dockerd": docker_env(dockerd_host)}
        samples: dict[str, list[float]] = {name: [] for name in engines}
        for i in range(args.runs + 1):  # the first round warms up
            for name, env in engines.items():
                start = time.perf_counter()
                run([DOCKER_CLI, "pull", "-q", ref], env=env)
                elapsed = time.perf_counter() - start
                if i:
                    samples[name].append(elapsed)
                if name == "hbd":  # absent before (checked below), so downloaded
                    missing = {b["digest"].removeprefix("sha256:") for b in blobs} - set(
                        os.listdir(blob_dir))
                    assert not missing, f"hbd pulled without storing {missing}"
                run([DOCKER_CLI, "rmi", ref], env=env)
                left = run([DOCKER_CLI, "image", "ls", "-q"], env=env).stdout.split()
                assert not left, f"{name} kept images after rmi: {left}"
            kept = {b["digest"].removeprefix("sha256:") for b in blobs} & set(
                os.listdir(blob_dir))
            assert not kept, f"hbd kept blobs after rmi: {kept}"
    rows = [Timing(f"{name}: docker pull ({nlayers} layers, {size / 1e6:.0f} MB)",
                   samples[name]) for name in engines]
    print(table(rows, baseline=rows[1]))
    hbd_mbps, dockerd_mbps = (size / 1e6 / t.median for t in rows)
    print(f"\nthroughput (median): hbd {hbd_mbps:.1f} MB/s, dockerd {dockerd_mbps:.1f} MB/s")
    print(f"hbd / dockerd throughput: {hbd_mbps / dockerd_mbps:.2f}x  (target >= 0.9x)")


if __name__ == "__main__":
    main()
