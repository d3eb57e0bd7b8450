"""images/: the busybox recipe builds a deterministic, self-consistent archive."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hbd.services.image.layers import unpack_layer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if not Path("/bin/busybox").exists() and shutil.which("apt-get") is None:
        pytest.skip("busybox-static is not installed")
    out = []
    for i in range(2):
        directory = tmp_path_factory.mktemp(f"img{i}")
        subprocess.run([sys.executable, str(REPO / "images" / "build.py"), "busybox",
                        str(directory)], check=True, capture_output=True)
        out.append(directory / "busybox.tar")
    return out


def test_builds_are_identical(built: list[Path]) -> None:
    a, b = (hashlib.sha256(p.read_bytes()).hexdigest() for p in built)
    assert a == b


def test_layout_and_manifest_agree(built: list[Path], tmp_path: Path) -> None:
    with tarfile.open(built[0]) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    manifest = json.loads(files["manifest.json"])[0]
    assert manifest["RepoTags"] == ["busybox:latest"]
    config = json.loads(files[manifest["Config"]])
    assert config["config"]["Cmd"] == ["sh"]
    index = json.loads(files["index.json"])
    oci = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
    assert oci["config"]["digest"] == "sha256:" + manifest["Config"].rsplit("/", 1)[1]
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["Layers"]) == 1
    root = tmp_path / "root"
    root.mkdir()
    layer = tmp_path / "layer"
    layer.write_bytes(files[manifest["Layers"][0]])
    unpack_layer(layer, root)
    assert (root / "bin" / "sh").stat().st_ino == (root / "bin" / "busybox").stat().st_ino
    assert "nobody:x:65534:65534" in (root / "etc" / "passwd").read_text()
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
