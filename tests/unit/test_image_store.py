"""ImageStore: loading both archive formats, verification, tags and deletes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from hbd.errors import Conflict, InvalidParameter, NotFound
from hbd.events import EventBus
from hbd.services.image.store import ImageStore
from hbd.store import StateStore
from tests.fakes import Body

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images"))
from build_image import write_archive


def layer(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_for(layers: list[bytes], cmd: str = "sh") -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": [cmd]},
                       "rootfs": {"type": "layers",
                                  "diff_ids": [sha(x) for x in layers]}}).encode()


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def legacy_archive(tags: list[str], layers: list[bytes], cmd: str = "sh") -> bytes:
    """What dockerd 20.10's `docker save` writes: <id>/layer.tar, manifest.json."""
    config = config_for(layers, cmd)
    files = {f"{sha(config)[7:]}.json": config}
    paths = []
    for i, data in enumerate(layers):
        files[f"l{i}/VERSION"] = b"1.0"
        files[f"l{i}/layer.tar"] = data
        paths.append(f"l{i}/layer.tar")
    files["manifest.json"] = json.dumps([{"Config": f"{sha(config)[7:]}.json",
                                          "RepoTags": tags, "Layers": paths}]).encode()
    return tar_of(files)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(StateStore(tmp_path / "state"), tmp_path / "image", EventBus())


async def test_legacy_archive_loads_and_builds_a_disk(store: ImageStore) -> None:
    data = legacy_archive(["demo:1"], [layer({"bin/a": b"a"}), layer({"bin/b": b"b"})])
    messages = await store.load(Body(data))
    assert messages == ["Loaded image: demo:1\n"]
    img = store.get("demo:1")
    assert len(img.layers) == 2
    assert store.disk_path(img).exists()
    assert store.inspect(img)["RootFS"]["Layers"] == [x.diff_id for x in img.layers]


async def test_oci_layout_without_manifest_json(store: ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "oci.tar"
    write_archive(archive, "oci-only:2", [layer({"f": b"x"})], {"os": "linux",
                                                                "architecture": "amd64"})
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                 for m in tar if m.isfile() and m.name not in ("manifest.json",
                                                               "repositories")}
    assert await store.load(Body(gzip.compress(tar_of(files)))) == [
        "Loaded image: oci-only:2\n"]
    assert store.get("oci-only:2").layers[0].media_type.endswith("gzip")


async def test_wrong_diff_id_is_refused_and_leaves_nothing(store: ImageStore) -> None:
    good = layer({"f": b"1"})
    config = config_for([layer({"other": b"2"})])
    data = tar_of({"c.json": config, "l/layer.tar": good,
                   "manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["x:1"],
                                                 "Layers": ["l/layer.tar"]}]).encode()})
    with pytest.raises(InvalidParameter, match="invalid diffID"):
        await store.load(Body(data))
    assert list(store.blobs.digests()) == []
    assert store.images == {}


@pytest.mark.parametrize("data", [b"not a tar" * 50, tar_of({"hello.txt": b"hi"}),
                                  tar_of({"manifest.json": b"{broken"})])
async def test_non_images_are_refused(store: ImageStore, data: bytes) -> None:
    with pytest.raises(InvalidParameter):
        await store.load(Body(data))
    assert store.images == {}
    assert list(store.blobs.digests()) == []


async def test_hostile_layer_fails_the_load(store: ImageStore) -> None:
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("link")
        info.type = tarfile.LNKTYPE
        info.linkname = "/etc/shadow"
        tar.addfile(info)
    data = legacy_archive(["evil:1"], [evil.getvalue()])
    with pytest.raises(InvalidParameter, match="failed to unpack"):
        await store.load(Body(data))
    assert store.images == {}


async def test_tag_untag_and_delete_like_dockerd(store: ImageStore) -> None:
    await store.load(Body(legacy_archive(["app:1"], [layer({"f": b"x"})])))
    img = store.get("app:1")
    store.tag("app:1", "registry.local:5000/team/app", "prod")
    assert set(store.inspect(img)["RepoTags"]) == {"app:1", "registry.local:5000/team/app:prod"}
    # Two repositories: removing by ID needs force.
    with pytest.raises(Conflict, match="referenced in multiple repositories"):
        await store.delete(img.id[7:19])
    assert await store.delete("registry.local:5000/team/app:prod") == [
        {"Untagged": "registry.local:5000/team/app:prod"}]
    # A container uses it: the last tag cannot go without force.
    store.container_usage = lambda image_id, scope: [("c" * 64, False)]
    with pytest.raises(Conflict, match="container cccccccccccc is using its referenced image"):
        await store.delete("app:1")
    store.container_usage = lambda image_id, scope: [("c" * 64, True)]
    with pytest.raises(Conflict, match=r"cannot be forced.*running container"):
        await store.delete(img.id, force=True)
    store.container_usage = lambda image_id, scope: []
    records = await store.delete("app:1")
    assert records == [{"Untagged": "app:1"}, {"Deleted": img.id}]
    with pytest.raises(NotFound, match="No such image: app:1"):
        store.get("app:1")
    assert list(store.blobs.digests()) == []


async def test_retagging_moves_the_tag(store: ImageStore) -> None:
    await store.load(Body(legacy_archive(["v:1"], [layer({"f": b"1"})], cmd="one")))
    first = store.get("v:1")
    await store.load(Body(legacy_archive(["v:1"], [layer({"f": b"2"})], cmd="two")))
    second = store.get("v:1")
    assert first.id != second.id
    assert first.repo_tags == []
    assert store.summary(first)["RepoTags"] == []


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    store = ImageStore(StateStore(tmp_path / "state"), tmp_path / "image", EventBus())
    await store.load(Body(legacy_archive(["keep:1"], [layer({"f": b"x"})])))
    again = ImageStore(StateStore(tmp_path / "state"), tmp_path / "image", EventBus())
    assert again.get("keep:1").id == store.get("keep:1").id
