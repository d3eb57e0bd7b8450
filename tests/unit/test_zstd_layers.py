"""Issue 4: zstd-compressed layers through the unpacker, the image store (load,
save, disk build) and pull/push, with an in-memory registry session (no VM)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from hbd.events import EventBus
from hbd.services.image.archive import OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from hbd.services.image.distribution import Distribution, Platform
from hbd.services.image.layers import (
    INFLATE_PIECE,
    GzipInflater,
    LayerError,
    ZstdInflater,
    unpack_layer,
)
from hbd.services.image.reference import parse_reference
from hbd.services.image.registry import Credentials, Manifest, RegistryError
from hbd.services.image.store import ImageStore
from hbd.store import StateStore
from tests.fakes import Body

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SKIPPABLE = struct.pack("<II", 0x184D2A50, 4) + b"skip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zstd_frames(data: bytes, frames: int = 3) -> bytes:
    """Several frames and a skippable one between, as zstd:chunked writes them."""
    step = len(data) // frames + 1
    parts = [zstandard.ZstdCompressor(level=3).compress(data[i:i + step])
             for i in range(0, len(data), step)]
    return parts[0] + SKIPPABLE + b"".join(parts[1:])


def inflate(inflater: GzipInflater | ZstdInflater, data: bytes, chunk: int) -> bytes:
    return b"".join(piece for i in range(0, len(data), chunk)
                    for piece in inflater.pieces(data[i:i + chunk]))


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(StateStore(tmp_path / "state"), tmp_path / "image", EventBus())


# -- inflaters and the unpacker ------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 777, 1 << 20])
def test_inflaters_take_frames_and_members_in_chunks_of_any_size(chunk: int) -> None:
    data = tar_of({"a": b"alpha" * 5000, "b": bytes(range(256)) * 300})
    z = ZstdInflater()
    assert inflate(z, zstd_frames(data), chunk) == data and z.eof
    g = GzipInflater()
    half = len(data) // 2
    members = gzip.compress(data[:half], mtime=0) + gzip.compress(data[half:], mtime=0)
    assert inflate(g, members, chunk) == data and g.eof


def test_a_zstd_bomb_comes_out_in_bounded_pieces() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(96 * 1024 * 1024))
    assert len(bomb) < 8192
    z = ZstdInflater()
    sizes = [len(piece) for piece in z.pieces(bomb)]
    assert sum(sizes) == 96 * 1024 * 1024 and max(sizes) <= INFLATE_PIECE
    g = GzipInflater()
    sizes = [len(p) for p in g.pieces(gzip.compress(bytes(40 * 1024 * 1024), mtime=0))]
    assert sum(sizes) == 40 * 1024 * 1024 and max(sizes) <= INFLATE_PIECE and g.eof


def test_truncated_and_corrupt_zstd() -> None:
    good = zstd_frames(tar_of({"f": b"x" * 10000}), frames=1)
    z = ZstdInflater()
    b"".join(z.pieces(good[:-7]))
    assert not z.eof  # the caller's "truncated"
    with pytest.raises(LayerError, match="not valid zstd"):
        b"".join(ZstdInflater().pieces(good[:4] + b"\xff" * 64))
    with pytest.raises(LayerError, match="not valid zstd"):
        b"".join(ZstdInflater().pieces(good + b"trailing junk"))


def test_unpack_a_multi_frame_zstd_layer(tmp_path: Path) -> None:
    blob = tmp_path / "layer"
    blob.write_bytes(zstd_frames(tar_of({"etc/zstd.txt": b"from zstd\n",
                                         "big": b"0123456789" * 100_000})))
    root = tmp_path / "root"
    root.mkdir()
    stats = unpack_layer(blob, root)
    assert (root / "etc/zstd.txt").read_bytes() == b"from zstd\n"
    assert (root / "big").stat().st_size == 1_000_000 and stats.entries == 2
    bad = tmp_path / "bad"
    bad.write_bytes(blob.read_bytes()[:16] + b"\x00" * 200)
    with pytest.raises(LayerError):
        unpack_layer(bad, tmp_path / "root")


# -- docker load / docker save -------------------------------------------------------


def oci_archive(layers: list[tuple[str, bytes]], diff_ids: list[str], tag: str) -> bytes:
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": media, "digest": sha(blob), "size": len(blob)}
                   for media, blob in layers]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": sha(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": tag}}]}).encode()
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for blob in [config, manifest, *(b for _, b in layers)]:
        files[f"blobs/sha256/{sha(blob)[7:]}"] = blob
    return tar_of(files)



def two_layers() -> tuple[list[bytes], list[tuple[str, bytes]]]:
    tars = [tar_of({"bin/base": b"gzip layer\n"}), tar_of({"etc/zstd.txt": b"zstd layer\n"})]
    return tars, [(OCI_LAYER_GZIP, gzip.compress(tars[0], mtime=0)),
                  (OCI_LAYER_ZSTD, zstd_frames(tars[1]))]


async def test_load_builds_the_disk_and_save_keeps_the_zstd_media_type(
        store: ImageStore, tmp_path: Path) -> None:
    tars, blobs = two_layers()
    archive = oci_archive(blobs, [sha(t) for t in tars], "docker.io/library/zl:1")
    # The whole archive zstd-compressed too, as `docker load` of dockerd takes it.
    assert await store.load(Body(zstandard.ZstdCompressor().compress(archive))) == [
        "Loaded image: zl:1\n"]
    img = store.get("zl:1")
    assert [layer.digest for layer in img.layers] == [sha(b) for _, b in blobs]
    assert [layer.diff_id for layer in img.layers] == [sha(t) for t in tars]
    assert "zstd" in img.layers[1].media_type and "gzip" in img.layers[0].media_type
    assert store.disk_path(img).exists()
    saved = io.BytesIO()
    store.save(["zl:1"], saved)
    with tarfile.open(fileobj=io.BytesIO(saved.getvalue())) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile(  # type: ignore[arg-type]
            "blobs/sha256/" + index["manifests"][0]["digest"][7:]))
    assert [(d["mediaType"], d["digest"]) for d in manifest["layers"]] == [
        (media, sha(blob)) for media, blob in blobs]
    # And what it saved loads again (into a fresh store).
    again = ImageStore(StateStore(tmp_path / "s2"), tmp_path / "i2", EventBus())
    assert await again.load(Body(saved.getvalue())) == ["Loaded image: zl:1\n"]
    assert again.get("zl:1").id == img.id


async def test_load_refuses_a_truncated_zstd_layer(store: ImageStore) -> None:
    tars, blobs = two_layers()
    blobs[1] = (OCI_LAYER_ZSTD, blobs[1][1][:-9])
    with pytest.raises(Exception, match="truncated zstd"):
        await store.load(Body(oci_archive(blobs, [sha(t) for t in tars], "zl:bad")))
    assert store.images == {} and list(store.blobs.digests()) == []


# -- pull and push with an in-memory registry ------------------------------------------


class FakeSession:
    def __init__(self, blobs: dict[str, bytes], manifest: bytes) -> None:
        self.blobs = blobs
        self.manifest = manifest
        self.pushed: dict[str, tuple[bytes, str]] = {}

    async def get_manifest(self, reference: str) -> Manifest:
        doc = json.loads(self.manifest)
        return Manifest(self.manifest, doc["mediaType"], sha(self.manifest), doc)

    async def blob_stream(self, digest: str) -> AsyncIterator[bytes]:
        data = self.blobs[digest]
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    async def blob_exists(self, digest: str) -> bool:
        return digest in self.blobs

    async def mount_blob(self, digest: str, repo: str) -> bool:
        return False

    async def upload_blob(self, digest: str, size: int,
                          chunks: Callable[[], AsyncIterator[bytes]]) -> None:
        data = b"".join([c async for c in chunks()])
        assert sha(data) == digest and len(data) == size
        self.blobs[digest] = data

    async def put_manifest(self, reference: str, raw: bytes, media_type: str) -> str:
        self.pushed[reference] = (raw, media_type)
        return sha(raw)


class FakeClient:
    def __init__(self, session: FakeSession) -> None:
        self.session = session

    async def sessions(self, ref: Any, credentials: Any, actions: str) -> list[FakeSession]:
        return [self.session]


def registry_image(blobs: list[tuple[str, bytes]], diff_ids: list[str]) -> FakeSession:
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": m, "digest": sha(b), "size": len(b)} for m, b in blobs],
    }).encode()
    return FakeSession({sha(b): b for b in [config, *(b for _, b in blobs)]}, manifest)


async def pull(store: ImageStore, session: FakeSession, name: str) -> list[dict[str, Any]]:
    dist = Distribution(store, FakeClient(session))  # type: ignore[arg-type]
    return [m async for m in dist.pull(parse_reference(name), Platform(), Credentials())]


async def test_pull_a_zstd_layer_then_push_it_as_it_is(store: ImageStore) -> None:
    tars, blobs = two_layers()
    session = registry_image(blobs, [sha(t) for t in tars])
    messages = await pull(store, session, "registry.test:5000/z/img:1")
    assert any("Downloaded newer image" in str(m.get("status")) for m in messages)
    img = store.get("registry.test:5000/z/img:1")
    assert [(layer.media_type, layer.digest) for layer in img.layers] == [
        (m, sha(b)) for m, b in blobs]
    assert store.disk_path(img).exists()
    # Push elsewhere: the same blobs under their own media types, in an OCI manifest.
    store.tag(img.id, "registry.test:5000/z/copy", "2")
    target = FakeSession({}, b"")
    dist = Distribution(store, FakeClient(target))  # type: ignore[arg-type]
    [m async for m in dist.push("registry.test:5000/z/copy", "2", Credentials())]
    raw, media = target.pushed["2"]
    manifest = json.loads(raw)
    assert media == manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    assert [(d["mediaType"], d["digest"]) for d in manifest["layers"]] == [
        (m, sha(b)) for m, b in blobs]
    assert all(target.blobs[sha(b)] == b for _, b in blobs)


async def test_push_of_a_gzip_only_image_stays_docker_schema2(store: ImageStore) -> None:
    tars, blobs = two_layers()
    session = registry_image(blobs[:1], [sha(tars[0])])
    await pull(store, session, "registry.test:5000/g/img:1")
    target = FakeSession({}, b"")
    dist = Distribution(store, FakeClient(target))  # type: ignore[arg-type]
    [m async for m in dist.push("registry.test:5000/g/img", "1", Credentials())]
    raw, media = target.pushed["1"]
    assert media == "application/vnd.docker.distribution.manifest.v2+json"
    assert json.loads(raw)["layers"][0]["mediaType"] == \
        "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.mark.parametrize("fault", ["corrupt", "truncated", "wrong-diff-id"])
async def test_a_bad_zstd_layer_fails_the_pull_and_stores_nothing(
        store: ImageStore, fault: str) -> None:
    tars, blobs = two_layers()
    zstd_blob = blobs[1][1]
    diff_ids = [sha(t) for t in tars]
    if fault == "corrupt":  # the registry's digest matches these bytes: only zstd can tell
        blobs[1] = (OCI_LAYER_ZSTD, zstd_blob[:40] + bytes(b ^ 0x5A for b in zstd_blob[40:]))
    elif fault == "truncated":
        blobs[1] = (OCI_LAYER_ZSTD, zstd_blob[:-5])
    else:
        diff_ids[1] = sha(b"something else")
    session = registry_image(blobs, diff_ids)
    expected = {"corrupt": "is not valid zstd", "truncated": "is truncated",
                "wrong-diff-id": "does not match diff_id"}[fault]
    with pytest.raises(RegistryError, match=expected):
        await pull(store, session, "registry.test:5000/z/bad:1")
    assert store.images == {} and list(store.blobs.digests()) == []
    assert list((store.blobs.root / "tmp").iterdir()) == []
