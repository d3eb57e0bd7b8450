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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest

from tests.daemon_fixture import RunningDaemon
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
