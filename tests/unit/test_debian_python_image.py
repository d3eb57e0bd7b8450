"""images/debian-python: the archive install.sh builds is a loadable, slim Debian + python3.

These tests read images/out/debian-python.tar as built (a bootstrap downloads
from the Debian mirror, so the tests do not build it themselves) and skip only
when it has not been built.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hbd.events import EventBus
from hbd.services.image.archive import EPOCH
from hbd.services.image.store import ImageStore
from hbd.store import StateStore
from tests.fakes import Body

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO / "images" / "out" / "debian-python.tar"
REF = "debian-python:bookworm"
# kept on purpose: libc's locale aliases, install-info's index, apt's lock file
KEPT = {"usr/share/locale/locale.alias", "usr/share/info/dir", "var/cache/apt/archives/lock"}


@dataclass
class Built:
    files: dict[str, bytes]  # archive member -> contents
    manifest: dict[str, Any]
    config: dict[str, Any]
    layer: bytes  # the uncompressed layer tar
    members: dict[str, tarfile.TarInfo]  # layer path -> entry


def _blob(files: dict[str, bytes], digest: str) -> bytes:
    return files["blobs/sha256/" + digest.split(":", 1)[1]]


@pytest.fixture(scope="module")
def built() -> Built:
    if not ARCHIVE.exists():
        pytest.skip(f"{ARCHIVE} not built (images/build.sh debian-python)")
    with tarfile.open(ARCHIVE) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    manifest = json.loads(files["manifest.json"])[0]
    config = json.loads(files[manifest["Config"]])
    layer = gzip.decompress(files[manifest["Layers"][0]])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    return Built(files, manifest, config, layer, members)


def test_archive_is_consistent_for_docker_and_oci(built: Built) -> None:
    for name, data in built.files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1], name
    assert built.manifest["RepoTags"] == [REF]
    assert built.config["rootfs"] == {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(built.layer).hexdigest()]}
    index = json.loads(built.files["index.json"])
    oci = json.loads(_blob(built.files, index["manifests"][0]["digest"]))
    assert oci["config"]["digest"] == "sha256:" + built.manifest["Config"].rsplit("/", 1)[1]
    assert [x["digest"] for x in oci["layers"]] == [
        "sha256:" + p.rsplit("/", 1)[1] for p in built.manifest["Layers"]]


def test_config_runs_python3(built: Built) -> None:
    assert built.config["architecture"] == "amd64"
    assert built.config["os"] == "linux"
    cfg = built.config["config"]
    assert cfg["Cmd"] == ["python3"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert "/usr/bin" in env["PATH"].split(":")
    assert env["LANG"] == "C.UTF-8"


def test_layer_holds_python3_on_merged_usr(built: Built) -> None:
    m = built.members
    assert m["bin"].issym() and m["bin"].linkname == "usr/bin"
    assert m["usr/bin/python3"].issym() and m["usr/bin/python3"].linkname == "python3.11"
    python = m["usr/bin/python3.11"]
    assert python.isfile() and python.mode & 0o111
    assert built.layer[python.offset_data:python.offset_data + 4] == b"\x7fELF"
    for path in ("usr/lib/python3.11/os.py", "usr/lib/python3.11/ssl.py",
                 "usr/lib/python3.11/__pycache__/os.cpython-311.pyc",  # compiled: fast start
                 "usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
                 "usr/bin/sh", "usr/bin/apt-get", "etc/services"):
        assert path in m, path
    assert m["etc/ssl/certs/ca-certificates.crt"].size > 100_000  # update-ca-certificates ran
    status = _read(built, "var/lib/dpkg/status")
    for package in ("python3", "ca-certificates", "netbase", "usr-is-merged"):
        assert f"Package: {package}\nStatus: install ok installed\n" in status, package
    # merged /usr the debootstrap way, not through usrmerge (which drags perl in)
    assert "Package: usrmerge\n" not in status
    assert "Package: perl\n" not in status


def _read(built: Built, path: str) -> str:
    info = built.members[path]
    return built.layer[info.offset_data:info.offset_data + info.size].decode()


def test_layer_is_trimmed_like_debian_slim(built: Built) -> None:
    files = [n for n, i in built.members.items() if not i.isdir()]
    docs = [n for n in files if n.startswith("usr/share/doc/") and not n.endswith("/copyright")
            and not built.members[n].issym()]
    assert docs == []
    for prefix in ("usr/share/man/", "usr/share/info/", "usr/share/locale/", "var/log/",
                   "var/lib/apt/lists/", "var/cache/apt/", "dev/", "tmp/", "run/"):
        leftovers = [n for n in files if n.startswith(prefix) and n not in KEPT]
        assert leftovers == [], prefix
    for path in ("etc/machine-id", "etc/hostname", "var/cache/ldconfig/aux-cache",
                 "etc/apt/sources.list"):
        assert path not in built.members, path
    assert "path-exclude=/usr/share/doc/*" in _read(built, "etc/dpkg/dpkg.cfg.d/docker")
    sources = _read(built, "etc/apt/sources.list.d/debian.sources")
    assert "Suites: bookworm bookworm-updates" in sources or "Suites: bookworm\n" in sources
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in sources
    assert "usr/share/keyrings/debian-archive-keyring.gpg" in built.members
    # what keeps the bytes reproducible: fixed times and owners by number only
    assert {i.mtime for i in built.members.values()} == {EPOCH}
    assert {i.uname for i in built.members.values()} == {""}
    assert len(built.files[built.manifest["Layers"][0]]) < 60_000_000  # ~44 MB compressed now



async def test_hbd_loads_it(built: Built, tmp_path: Path) -> None:
    store = ImageStore(StateStore(tmp_path / "state"), tmp_path / "image", EventBus())
    assert await store.load(Body(ARCHIVE.read_bytes())) == [f"Loaded image: {REF}\n"]
    disks = list((tmp_path / "image" / "disks").iterdir())
    assert len(disks) == 1 and disks[0].stat().st_size > 100_000_000


def test_python3_runs_in_the_unpacked_layer(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "root"
    # plain tarfile: several times faster than hbd's careful unpacker, which
    # test_hbd_loads_it already runs over this layer
    # filter= (no warning on 3.12+) is missing from Debian 12's python3 (3.11.2)
    trusted: dict[str, Any] = (
        {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {})
    with tarfile.open(fileobj=io.BytesIO(built.layer)) as tar:
        tar.extractall(root, **trusted)
    code = ("import ssl, sqlite3, socket, sys; print(sys.version_info[:2],"
            " socket.getservbyname('http'), sys.getfilesystemencoding())")
    chroot = shutil.which("chroot")
    if os.geteuid() == 0 and chroot:
        argv = [chroot, str(root), "/usr/bin/python3", "-c", code]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    else:
        # not root: the image's own loader and libraries, its stdlib via PYTHONHOME
        # (getservbyname reads the host's /etc/services then: same answer)
        lib = root / "usr/lib/x86_64-linux-gnu"
        argv = [str(lib / "ld-linux-x86-64.so.2"), "--library-path", str(lib),
                str(root / "usr/bin/python3.11"), "-c", code]
        env = {"PYTHONHOME": str(root / "usr"), "LANG": "C.UTF-8"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(3, 11) 80 utf-8"
