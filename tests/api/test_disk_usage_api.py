"""`system df` and the space every prune reports, on daemons of their own (the
prunes would take the images the other API tests use).

With the fake guest driver nothing writes to a scratch disk; a test that
needs a container to have written appends to its disk file, which is what a
guest's writes do to it as far as the host can see.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.api.conftest import ApiDaemon, serve_api_daemon
from tests.conformance import validate_response
from tests.fakes import human_size, text_tar

MIB = 1024 * 1024


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiDaemon]:
    with serve_api_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
def raw(api: ApiDaemon) -> Iterator[docker.APIClient]:
    c = docker.APIClient(base_url=api.host, version="1.47")
    yield c
    c.close()


def _df(raw: docker.APIClient, **params: Any) -> dict[str, Any]:
    r = raw._get(raw._url("/system/df"), params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    validate_response(body, "/system/df", "get")
    return body


def _import(raw: docker.APIClient, name: str, files: dict[str, str]) -> str:
    raw.import_image_from_data(text_tar(files).getvalue(), repository=name)
    return str(raw.inspect_image(name)["Id"])


def _build(raw: docker.APIClient, dockerfile: str, tag: str) -> None:
    list(raw.build(fileobj=text_tar({"Dockerfile": dockerfile}), custom_context=True,
                   tag=tag, decode=True))


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _write_to_scratch(api: ApiDaemon, container_id: str, size: int) -> int:
    """Grow the container's scratch disk by `size` bytes; its SizeRw after."""
    data_root = Path(api.daemon.config.data_root)
    disk = data_root / "containers" / container_id / "scratch.qcow2"
    with open(disk, "ab") as f:
        f.write(os.urandom(size))
    return _allocated(disk) - _allocated(data_root / "vm" / "scratch-overlay.qcow2")


# -- system df ---------------------------------------------------------------------

def test_images_layers_shared_sizes_and_container_counts(raw: docker.APIClient) -> None:
    busybox = raw.inspect_image("busybox")
    other = _import(raw, "i9df/other:1", {"a.txt": "x" * 5000})
    # A config-only build: an image with exactly busybox's layers, and a
    # cached intermediate step (ENV) that `docker images` does not list.
    _build(raw, "FROM busybox\nENV A=1\nLABEL i9=1\n", "i9df/built:1")
    built = raw.inspect_image("i9df/built:1")
    raw.create_container("busybox", "true")
    raw.create_container("busybox", "true")
    raw.create_container("i9df/built:1", "true")

    df = _df(raw)
    rows = {row["Id"]: row for row in df["Images"]}
    assert set(rows) == {busybox["Id"], other, built["Id"]}  # no intermediate step
    assert df["LayersSize"] == busybox["Size"] + raw.inspect_image(other)["Size"]
    assert rows[busybox["Id"]]["Containers"] == 2 and rows[built["Id"]]["Containers"] == 1
    assert rows[other]["Containers"] == 0
    assert rows[busybox["Id"]]["SharedSize"] == busybox["Size"]  # the built image has it too
    assert rows[built["Id"]]["SharedSize"] == busybox["Size"]
    assert rows[other]["SharedSize"] == 0
    assert rows[other]["Size"] == raw.inspect_image(other)["Size"] > 5000


def test_build_cache_records(raw: docker.APIClient) -> None:
    _build(raw, "FROM busybox\nENV A=1\nLABEL i9=1\n", "i9df/built:1")
    built = raw.inspect_image("i9df/built:1")["Id"]
    cache = _df(raw)["BuildCache"]
    assert [c["Description"] for c in cache] == ["/bin/sh -c #(nop)  ENV A=1",
                                                 "/bin/sh -c #(nop)  LABEL i9=1"]
    env_step, label_step = cache
    assert label_step["Parents"] == [env_step["ID"]] and env_step["Parents"] is None
    # Their layers are busybox's, which images hold: nothing is the cache's alone.
    assert all(c["Size"] == 0 and c["Shared"] and not c["InUse"] for c in cache)
    assert all(c["Type"] == "regular" for c in cache)
    prune = raw._result(raw._post(raw._url("/build/prune")), json=True)
    assert sorted(prune["CachesDeleted"]) == sorted(c["ID"] for c in cache)
    assert prune["SpaceReclaimed"] == 0
    assert _df(raw)["BuildCache"] == []
    # The intermediate step image went with the cache; the tagged one stays.
    ids = {i["Id"] for i in raw.images(all=True)}
    assert built in ids and len(ids) == 2


def test_container_sizes(api: ApiDaemon, raw: docker.APIClient) -> None:
    image_size = raw.inspect_image("busybox")["Size"]
    quiet = raw.create_container("busybox", "true")["Id"]
    busy = raw.create_container("busybox", "true")["Id"]
    size_rw = _write_to_scratch(api, busy, 3 * MIB)
    rows = {row["Id"]: row for row in _df(raw)["Containers"]}
    assert "SizeRw" not in rows[quiet]  # 0: left out, as dockerd does
    assert rows[quiet]["SizeRootFs"] == image_size
    assert rows[busy]["SizeRw"] == size_rw >= 3 * MIB
    assert rows[busy]["SizeRootFs"] == image_size + size_rw
    assert rows[busy]["Names"] and rows[busy]["Image"] == "busybox"


def test_volume_usage(raw: docker.APIClient) -> None:
    shared = raw.create_volume("i9shared")
    data = Path(shared["Mountpoint"])
    (data / "blob").write_bytes(b"z" * 300_000)
    os.link(data / "blob", data / "hard")  # one file, counted once
    os.symlink("blob", data / "sym")  # a link counts its target's name: 4 bytes
    (data / "sub").mkdir()
    block = raw.create_volume("i9block", driver_opts={"type": "block", "size": "64m"})
    raw.create_container("busybox", "true", host_config=raw.create_host_config(
        binds=["i9shared:/d"]))
    volumes = {v["Name"]: v for v in _df(raw)["Volumes"]}
    assert volumes["i9shared"]["UsageData"] == {"Size": 300_004, "RefCount": 1}
    assert volumes["i9block"]["UsageData"] == {
        "Size": _allocated(Path(block["Mountpoint"])), "RefCount": 0}
    assert volumes["i9shared"]["Mountpoint"] == shared["Mountpoint"]


def test_type_picks_what_is_counted(raw: docker.APIClient) -> None:
    raw.create_volume("i9only")
    df = _df(raw, type="volume")
    assert [v["Name"] for v in df["Volumes"]] == ["i9only"]
    assert df["Images"] is None and df["Containers"] is None and df["BuildCache"] is None
    assert _df(raw, type=["image", "container"])["Volumes"] is None
    bad = raw._get(raw._url("/system/df"), params={"type": "bogus"})
    assert bad.status_code == 400 and bad.json() == {"message": "unknown object type: bogus"}


# -- prunes ---------------------------------------------------------------------------

def _prune(raw: docker.APIClient, what: str, **filters: str) -> dict[str, Any]:
    params = {"filters": docker.utils.convert_filters(filters)} if filters else {}
    result: dict[str, Any] = raw._result(raw._post(raw._url(f"/{what}/prune"),
                                                   params=params), json=True)
    return result


def test_container_prune_reclaims_what_containers_wrote(api: ApiDaemon,
                                                        raw: docker.APIClient) -> None:
    a = raw.create_container("busybox", "true")["Id"]
    b = raw.create_container("busybox", "true")["Id"]
    raw.create_container("busybox", "true")
    written = _write_to_scratch(api, a, 2 * MIB) + _write_to_scratch(api, b, MIB)
    result = _prune(raw, "containers")
    assert len(result["ContainersDeleted"]) == 3
    assert result["SpaceReclaimed"] == written >= 3 * MIB


def test_image_prune_reclaims_the_layers_it_freed(raw: docker.APIClient) -> None:
    busybox = raw.inspect_image("busybox")
    other = _import(raw, "i9prune/other:1", {"a.txt": "y" * 20000})
    other_size = raw.inspect_image(other)["Size"]
    _build(raw, "FROM busybox\nLABEL i9=1\n", "i9prune/built:1")  # busybox's layers
    keep = raw.create_container("i9prune/built:1", "true")["Id"]
    result = _prune(raw, "images", dangling="false")
    deleted = {r["Deleted"] for r in result["ImagesDeleted"] if "Deleted" in r}
    assert {busybox["Id"], other} <= deleted
    # busybox's layer stays: the built image a container uses has it.
    assert result["SpaceReclaimed"] == other_size > 20000
    raw.remove_container(keep)
    result = _prune(raw, "images", dangling="false")
    assert result["SpaceReclaimed"] == busybox["Size"]
    assert _df(raw)["LayersSize"] == 0


def test_volume_prune_reclaims_the_volumes_sizes(raw: docker.APIClient) -> None:
    shared = raw.create_volume("i9gone")
    (Path(shared["Mountpoint"]) / "f").write_bytes(b"q" * 123_456)
    block = raw.create_volume("i9gone-block", driver_opts={"type": "block", "size": "64m"})
    block_size = _allocated(Path(block["Mountpoint"]))
    raw.create_volume("i9kept")
    raw.create_container("busybox", "true", host_config=raw.create_host_config(
        binds=["i9kept:/k"]))
    result = _prune(raw, "volumes", all="true")
    assert sorted(result["VolumesDeleted"]) == ["i9gone", "i9gone-block"]
    assert result["SpaceReclaimed"] == 123_456 + block_size


def test_system_prune_totals_every_kind(api: ApiDaemon, raw: docker.APIClient) -> None:
    cid = raw.create_container("busybox", "true", volumes=["/anon"])["Id"]
    written = _write_to_scratch(api, cid, MIB)
    df = _df(raw)
    [anonymous] = df["Volumes"]
    (Path(anonymous["Mountpoint"]) / "f").write_bytes(b"a" * 50_000)
    out = api.docker("system", "prune", "-a", "-f", "--volumes").stdout.decode()
    expected = written + df["LayersSize"] + 50_000
    assert f"Total reclaimed space: {human_size(expected)}" in out
    assert _df(raw)["LayersSize"] == 0 and _df(raw)["Volumes"] == []

