"""Issue 4: pull and push through a real registry with the CLI and the SDK."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest
import zstandard

from tests.daemon_fixture import BUSYBOX_TAR, RunningDaemon
from tests.registry_fixture import PASSWORD, USER, Registry, free_port, registry


@pytest.fixture(scope="module")
def open_registry() -> Iterator[Registry]:
    with registry("none") as reg:
        yield reg


def blobs_on_disk(hbd: RunningDaemon) -> set[str]:
    return set(os.listdir(hbd.data_root / "image" / "blobs" / "sha256"))


def test_push_pull_run_by_tag_and_digest(hbd: RunningDaemon, open_registry: Registry) -> None:
    ref = f"{open_registry.host}/e2e/busybox:push"
    hbd.docker("tag", "busybox", ref)
    pushed = hbd.docker("push", ref).stdout.decode()
    assert f"The push refers to repository [{open_registry.host}/e2e/busybox]" in pushed
    digest = pushed.strip().splitlines()[-1].split("digest: ")[1].split()[0]
    hbd.docker("rmi", ref)
    pulled = hbd.docker("pull", f"{open_registry.host}/e2e/busybox@{digest}").stdout.decode()
    assert f"Digest: {digest}" in pulled
    pulled = hbd.docker("pull", ref).stdout.decode()
    assert "Image is up to date" in pulled or "Downloaded newer image" in pulled
    out = hbd.docker("run", "--rm", ref, "echo", "from the registry").stdout
    assert out == b"from the registry\n"
    info = json.loads(hbd.docker("image", "inspect", ref).stdout)[0]
    assert f"{open_registry.host}/e2e/busybox@{digest}" in info["RepoDigests"]
    # Pushing again finds every layer there already.
    assert "Layer already exists" in hbd.docker("push", ref).stdout.decode()
    hbd.docker("rmi", ref)


def test_cross_repository_mount(hbd: RunningDaemon, open_registry: Registry) -> None:
    first = f"{open_registry.host}/mount/a:1"
    second = f"{open_registry.host}/mount/b:1"
    hbd.docker("tag", "busybox", first)
    hbd.docker("push", first)
    hbd.docker("tag", "busybox", second)
    # Mounted from whichever repository of this registry has it (mount/a, or
    # one an earlier test pushed), never uploaded again.
    pushed = hbd.docker("push", second).stdout.decode()
    assert "Mounted from " in pushed and "Pushed" not in pushed
    hbd.docker("rmi", first, second)


def test_sdk_pull_and_push(sdk: docker.DockerClient, open_registry: Registry) -> None:
    repo = f"{open_registry.host}/sdk/bb"
    sdk.images.get("busybox").tag(repo, "v1")
    lines = list(sdk.images.push(repo, tag="v1", stream=True, decode=True))
    assert any("aux" in line for line in lines), lines
    sdk.images.remove(f"{repo}:v1")
    image = sdk.images.pull(repo, tag="v1")
    assert f"{repo}:v1" in image.tags
    sdk.images.remove(f"{repo}:v1")


@pytest.mark.parametrize("auth", ["basic", "token"])
def test_login_and_authenticated_push_pull(hbd: RunningDaemon, auth: str,
                                           tmp_path: Path) -> None:
    env_config = {"DOCKER_CONFIG": str(tmp_path)}
    with registry(auth) as reg:
        ref = f"{reg.host}/private/bb:{auth}"

        def docker_cli(*args: str, check: bool = True):  # type: ignore[no-untyped-def]
            result = subprocess.run(["docker", *args], capture_output=True,
                                    env={**hbd.env(), **env_config}, timeout=120)
            if check:
                assert result.returncode == 0, result.stderr
            return result

        docker_cli("tag", "busybox", ref)
        denied = docker_cli("push", ref, check=False)
        assert denied.returncode != 0
        wrong = docker_cli("login", "-u", USER, "-p", "wrong", reg.host, check=False)
        assert wrong.returncode != 0 and b"incorrect username or password" in wrong.stderr
        docker_cli("login", "-u", USER, "-p", PASSWORD, reg.host)
        docker_cli("push", ref)
        docker_cli("rmi", ref)
        docker_cli("pull", ref)
        docker_cli("logout", reg.host)
        missing = docker_cli("pull", f"{reg.host}/private/nothing:1", check=False)
        assert b"pull access denied" in missing.stderr or b"not found" in missing.stderr
        docker_cli("rmi", ref)


def test_unknown_tag_is_a_clear_error(hbd: RunningDaemon, open_registry: Registry) -> None:
    out = hbd.docker("pull", f"{open_registry.host}/e2e/none:missing", check=False)
    assert out.returncode != 0
    assert b"not found" in out.stderr


# -- a registry that lies -------------------------------------------------------------


def _layer(content: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("file")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def lying_registry(fault: str) -> Iterator[str]:
    """Serves one image, v1, with the fault asked for: wrong-digest, truncated,
    malformed-manifest, wrong-diff-id."""
    layers = [_layer(b"one" * 1000), _layer(b"two" * 1000)]
    compressed = [gzip.compress(layer, mtime=0) for layer in layers]
    diff_ids = [_digest(layer) for layer in layers]
    if fault == "wrong-diff-id":
        diff_ids[1] = _digest(b"something else")
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    blobs = {_digest(b): b for b in [config, *compressed]}
    served = dict(blobs)
    if fault == "wrong-digest":
        served[_digest(compressed[1])] = gzip.compress(_layer(b"evil" * 1000), mtime=0)
    if fault == "truncated":
        served[_digest(compressed[1])] = compressed[1][: len(compressed[1]) // 2]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": len(config), "digest": _digest(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(c), "digest": _digest(c)} for c in compressed],
    }).encode()
    if fault == "malformed-manifest":
        manifest = b'{"schemaVersion": 2, "config": '

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = b"{}", "application/json"
            if self.path.endswith("/manifests/v1"):
                body, kind = manifest, "application/vnd.docker.distribution.manifest.v2+json"
            elif "/blobs/" in self.path:
                body = served.get(self.path.rsplit("/", 1)[1], b"")
                kind = "application/octet-stream"
            elif self.path != "/v2/":
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{port}/liar/image:v1"
    finally:
        server.shutdown()


@pytest.mark.parametrize("fault", ["wrong-digest", "truncated", "malformed-manifest",
                                   "wrong-diff-id"])
def test_a_lying_registry_stores_nothing(hbd: RunningDaemon, fault: str) -> None:
    before = blobs_on_disk(hbd)
    images_before = hbd.docker("images", "-q", "--no-trunc").stdout
    with lying_registry(fault) as ref:
        out = hbd.docker("pull", ref, check=False)
    assert out.returncode != 0, out.stdout
    message = (out.stdout + out.stderr).decode().lower()
    assert any(word in message for word in ("digest", "truncated", "malformed", "diff_id",
                                            "gzip", "verification")), message
    assert blobs_on_disk(hbd) == before
    assert hbd.docker("images", "-q", "--no-trunc").stdout == images_before


# -- zstd layers -----------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _files_layer(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("layers")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for name, content in files.items():
            info = tarfile.TarInfo(f"layers/{name}")
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


def _upload(base: str, blob: bytes) -> None:
    """The registry's monolithic upload: POST for a location, PUT with ?digest=."""
    with urllib.request.urlopen(urllib.request.Request(f"{base}/blobs/uploads/",
                                                       method="POST", data=b"")) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
    url = location if location.startswith("http") else \
        base.split("/v2/", 1)[0] + location
    url += ("&" if "?" in url else "?") + f"digest={_digest(blob)}"
    put = urllib.request.Request(url, method="PUT", data=blob,
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(put) as resp:
        assert resp.status == 201


def _manifest(base: str, tag: str) -> dict[str, object]:
    get = urllib.request.Request(f"{base}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    with urllib.request.urlopen(get) as resp:
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        document: dict[str, object] = json.loads(resp.read())
        return document


def test_pull_run_push_save_an_oci_image_with_a_zstd_layer(
        hbd: RunningDaemon, open_registry: Registry, tmp_path: Path) -> None:
    """busybox (gzip), a gzip layer, and on top a zstd layer of several frames
    that replaces a file of the one under it; uploaded over the registry's API."""
    with tarfile.open(BUSYBOX_TAR) as archive:
        docker_manifest = json.load(archive.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        base_config = json.load(archive.extractfile(docker_manifest["Config"]))  # type: ignore[arg-type]
        busybox_blob = archive.extractfile(docker_manifest["Layers"][0]).read()  # type: ignore[union-attr]
    gzip_tar = _files_layer({"gzip.txt": b"from the gzip layer\n",
                             "replaced.txt": b"gzip wrote this\n"})
    zstd_tar = _files_layer({"zstd.txt": b"from the zstd layer\n" + b"z" * 300_000,
                             "replaced.txt": b"zstd replaced it\n"})
    compressor = zstandard.ZstdCompressor(level=3)
    half = len(zstd_tar) // 2
    zstd_blob = compressor.compress(zstd_tar[:half]) + compressor.compress(zstd_tar[half:])
    layers = [("application/vnd.oci.image.layer.v1.tar+gzip", busybox_blob),
              ("application/vnd.oci.image.layer.v1.tar+gzip", gzip.compress(gzip_tar, mtime=0)),
              ("application/vnd.oci.image.layer.v1.tar+zstd", zstd_blob)]
    config = json.dumps({**base_config, "rootfs": {"type": "layers", "diff_ids": [
        *base_config["rootfs"]["diff_ids"], _digest(gzip_tar), _digest(zstd_tar)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "size": len(config), "digest": _digest(config)},
        "layers": [{"mediaType": m, "size": len(b), "digest": _digest(b)} for m, b in layers],
    }).encode()
    base = f"http://{open_registry.host}/v2/zstd/app"
    for blob in [config, *(b for _, b in layers)]:
        _upload(base, blob)
    put = urllib.request.Request(f"{base}/manifests/v1", method="PUT", data=manifest,
                                 headers={"Content-Type": OCI_MANIFEST})
    with urllib.request.urlopen(put) as resp:
        assert resp.status == 201

    ref = f"{open_registry.host}/zstd/app:v1"
    pulled = hbd.docker("pull", ref).stdout.decode()
    assert f"Digest: {_digest(manifest)}" in pulled, pulled
    out = hbd.docker("run", "--rm", ref, "sh", "-c",
                     "head -n1 /layers/zstd.txt; cat /layers/gzip.txt /layers/replaced.txt")
    assert out.stdout == (b"from the zstd layer\nfrom the gzip layer\nzstd replaced it\n")

    # Pushed elsewhere in the registry: every blob mounted as it is (no
    # recompression), the zstd one under its own media type.
    copy = f"{open_registry.host}/zstd/copy:v1"
    hbd.docker("tag", ref, copy)
    pushed = hbd.docker("push", copy).stdout.decode()
    assert "Mounted from zstd/app" in pushed and "Pushed" not in pushed, pushed
    copied = _manifest(f"http://{open_registry.host}/v2/zstd/copy", "v1")
    assert copied["layers"] == json.loads(manifest)["layers"]

    # docker save keeps the media types (and bytes) of the layers.
    saved = tmp_path / "saved.tar"
    hbd.docker("save", "-o", str(saved), copy)
    with tarfile.open(saved) as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
        oci = json.load(archive.extractfile(  # type: ignore[arg-type]
            "blobs/sha256/" + index["manifests"][0]["digest"][7:]))
    assert [(d["mediaType"], d["digest"]) for d in oci["layers"]] == [
        (m, _digest(b)) for m, b in layers]
    hbd.docker("rmi", ref, copy)
