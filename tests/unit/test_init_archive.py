"""The guest init's tar code (kernels/init/archive.c) on the host, through
kernels/fuzz/archive_tool.c built with ASan and UBSan where the compiler
has them: what docker cp and COPY unpack, and where."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INIT = REPO / "kernels" / "init"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("tool") / "archive_tool"
    sources = [str(REPO / "kernels" / "fuzz" / "archive_tool.c"), str(INIT / "json.c"),
               str(INIT / "util.c")]
    base = [cc, "-g", "-O1", "-std=gnu11", f"-I{INIT}", "-o", str(out), *sources]
    if subprocess.run(base[:1] + SANITIZE + base[1:], capture_output=True).returncode != 0:
        subprocess.run(base, check=True)  # no sanitizer runtime here: plain
    return out


def _tar(*entries: tarfile.TarInfo | tuple[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w", format=fmt) as tar:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tar.addfile(e)
            else:
                info = tarfile.TarInfo(e[0])
                info.size = len(e[1])
                tar.addfile(info, io.BytesIO(e[1]))
    return payload.getvalue()


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _extract(tool: Path, root: Path, dest: str, data: bytes, *options: str
             ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(tool), "extract", str(root), dest, *options], input=data,
                          capture_output=True)


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """A root to unpack in, and beside it a directory with a canary."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "canary").write_text("canary")
    return root, outside


def _untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["canary"]
    assert (outside / "canary").read_text() == "canary"
    assert (outside / "canary").stat().st_nlink == 1


def test_plain_entries_and_an_old_tar_s_regular_file(tool: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    data = bytearray(_tar(("d/f", b"hello"), _link("d/s", "f"), _link("d/h", "d/f", hard=True),
                          ("old", b"v7"), fmt=tarfile.USTAR_FORMAT))
    # The last entry's typeflag becomes NUL, a regular file in old tars.
    at = data.rfind(b"old\0")
    data[at + 156] = 0
    result = _extract(tool, root, "/", bytes(data))
    assert result.returncode == 0, result.stderr
    assert (root / "d" / "f").read_bytes() == b"hello"
    assert os.readlink(root / "d" / "s") == "f"
    assert (root / "d" / "h").stat().st_ino == (root / "d" / "f").stat().st_ino
    assert (root / "old").read_bytes() == b"v7"


def test_symlinks_on_the_way_resolve_inside_the_root(tool: Path, box: tuple[Path, Path]) -> None:
    root, outside = box
    # What a container left: symlinks out of its root, relative and absolute.
    (root / "tmp").mkdir()
    (root / "etc").mkdir()
    os.symlink("../../../outside", root / "tmp" / "up")
    os.symlink(str(outside), root / "abs")
    data = _tar(_link("a", "/etc"), ("a/from-archive", b"1"), ("up/from-container", b"2"),
                _link("h", "up/canary", hard=True))
    (root / "outside").mkdir()
    (root / "outside" / "canary").write_text("inner")
    result = _extract(tool, root, "/tmp", data)
    assert result.returncode == 0, result.stderr
    assert (root / "etc" / "from-archive").read_bytes() == b"1"
    assert (root / "outside" / "from-container").read_bytes() == b"2"
    assert (root / "tmp" / "h").read_text() == "inner"
    # The absolute one names a directory inside the root, which is missing.
    result = _extract(tool, root, "/", _tar(("abs/x", b"3")))
    assert result.returncode == 1 and b"cannot create abs/x" in result.stderr
    _untouched(outside)


@pytest.mark.parametrize("entries, message", [
    ([("../escape", b"x")], b"refusing archive entry"),
    ([_link("s", "x/../../escape")], b"invalid symlink"),
    ([_link("d/s", "../../escape")], b"invalid symlink"),
    ([_link("h", "../outside/canary", hard=True)], b"refusing hard link"),
])
def test_entries_that_leave_are_refused(tool: Path, box: tuple[Path, Path], entries: list,
                                        message: bytes) -> None:  # type: ignore[type-arg]
    root, outside = box
    result = _extract(tool, root, "/", _tar(*entries))
    assert result.returncode == 1 and message in result.stderr
    assert not (root / "escape").exists() and not (root / "s").exists()
    _untouched(outside)


def test_dot_dot_inside_is_cleaned_as_dockerd_cleans_it(tool: Path, box: tuple[Path, Path]
                                                        ) -> None:
    root, outside = box
    result = _extract(tool, root, "/", _tar(("a/../f", b"1"), _link("h", "x/../f", hard=True)))
    assert result.returncode == 0, result.stderr
    assert (root / "f").read_bytes() == b"1" and (root / "h").stat().st_nlink == 2
    assert not (root / "a").exists()
    _untouched(outside)


def test_a_symlink_then_a_file_of_its_name(tool: Path, box: tuple[Path, Path]) -> None:
    root, outside = box
    os.symlink(str(outside / "canary"), root / "l")
    result = _extract(tool, root, "/", _tar(_link("m", "/outside/canary"), ("l", b"new"),
                                            ("m", b"new")))
    assert result.returncode == 0, result.stderr
    assert not (root / "l").is_symlink() and (root / "l").read_bytes() == b"new"
    assert (root / "m").read_bytes() == b"new"
    _untouched(outside)


def test_long_names(tool: Path, box: tuple[Path, Path]) -> None:
    root, _ = box
    long = "n" * 200 + "/" + "m" * 200
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        result = _extract(tool, root, "/", _tar((long, b"x"), _link("ln", "t" * 300), fmt=fmt))
        assert result.returncode == 0, result.stderr
        assert (root / long).read_bytes() == b"x" and os.readlink(root / "ln") == "t" * 300
    # Longer than any path: refused, not cut short into another name.
    result = _extract(tool, root, "/", _tar(("a/" * 2100 + "f", b"x")))
    assert result.returncode == 1 and b"too long" in result.stderr


def _deep(top: Path, levels: int) -> None:
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(levels):
        os.mkdir("a", dir_fd=fd)
        child = os.open("a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)


def test_a_tree_deeper_than_any_path(tool: Path, box: tuple[Path, Path]) -> None:
    root, outside = box
    _deep(root / "deep", 2100)  # 4200 characters
    created = subprocess.run([str(tool), "create", str(root / "deep")], capture_output=True)
    assert created.returncode == 0, created.stderr
    with tarfile.open(fileobj=io.BytesIO(created.stdout)) as tar:
        assert len(tar.getnames()) > 1900
    # A file over it: the whole tree goes.
    result = _extract(tool, root, "/", _tar(("deep", b"flat")))
    assert result.returncode == 0, result.stderr
    assert (root / "deep").read_bytes() == b"flat"
    _untouched(outside)
