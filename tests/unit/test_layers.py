"""The layer unpacker against hostile and ordinary tars, plus a fuzz test."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbd.services.image.layers import LayerError, UnpackLimits, flatten_layers, unpack_layer


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "",
          mode: int = 0o644, uid: int = 0, gid: int = 0,
          pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.linkname = link
    info.mtime = 1_700_000_000
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    if pax:
        info.pax_headers = pax
    return info, data


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes]], compress: bool = False) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    data = raw.getvalue()
    return io.BytesIO(gzip.compress(data) if compress else data)


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    """root inside a parent with a sentinel sibling: anything escaping shows up."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("keep")
    return root


def snapshot(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} | {"."}


def outside_untouched(root: Path) -> None:
    parent = root.parent
    assert sorted(p.name for p in parent.iterdir()) == ["outside", "root"]
    assert (parent / "outside" / "secret").read_text() == "keep"
    assert sorted(p.name for p in (parent / "outside").iterdir()) == ["secret"]


def test_ordinary_layer_keeps_everything(jail: Path) -> None:
    tar = make_tar([
        entry("bin", tarfile.DIRTYPE, mode=0o755),
        entry("bin/busybox", data=b"\x7fELF", mode=0o755),
        entry("bin/sh", tarfile.LNKTYPE, link="bin/busybox"),
        entry("bin/ls", tarfile.SYMTYPE, link="busybox"),
        entry("usr/bin/su", data=b"su", mode=0o4755, uid=0),
        entry("home/user/file", data=b"x", uid=1000, gid=1000),
        entry("dev/null", tarfile.CHRTYPE, mode=0o666),
        entry("tmp", tarfile.DIRTYPE, mode=0o1777),
        entry("fifo", tarfile.FIFOTYPE),
        entry("cap", data=b"", pax={"SCHILY.xattr.user.note": "hello"}),
    ], compress=True)
    stats = unpack_layer(tar, jail)
    assert stats.entries == 10
    assert (jail / "bin" / "busybox").read_bytes() == b"\x7fELF"
    assert os.stat(jail / "bin" / "sh").st_ino == os.stat(jail / "bin" / "busybox").st_ino
    assert os.readlink(jail / "bin" / "ls") == "busybox"
    assert stat.S_IMODE(os.stat(jail / "usr" / "bin" / "su").st_mode) == 0o4755
    assert os.stat(jail / "home" / "user" / "file").st_uid == 1000
    assert stat.S_ISCHR(os.lstat(jail / "dev" / "null").st_mode)
    assert stat.S_IMODE(os.stat(jail / "tmp").st_mode) == 0o1777
    assert stat.S_ISFIFO(os.lstat(jail / "fifo").st_mode)
    assert os.getxattr(jail / "cap", "user.note") == b"hello"
    assert os.stat(jail / "bin").st_mtime == 1_700_000_000


def test_dotdot_and_absolute_names_stay_inside(jail: Path) -> None:
    unpack_layer(make_tar([entry("../outside/evil", data=b"x"),
                           entry("/abs", data=b"y"),
                           entry("a/../../../../b", data=b"z")]), jail)
    outside_untouched(jail)
    assert (jail / "outside" / "evil").read_bytes() == b"x"
    assert (jail / "abs").read_bytes() == b"y"
    assert (jail / "b").read_bytes() == b"z"


def test_symlinked_parent_is_resolved_inside_root(jail: Path) -> None:
    absolute = str(jail.parent / "outside")
    unpack_layer(make_tar([entry("a", tarfile.SYMTYPE, link=absolute),
                           entry("a/secret", data=b"pwned"),
                           entry("up", tarfile.SYMTYPE, link="../../.."),
                           entry("up/escaped", data=b"pwned")]), jail)
    outside_untouched(jail)
    # Followed as a chroot would: inside root.
    assert (jail / absolute.lstrip("/") / "secret").read_bytes() == b"pwned"
    assert (jail / "escaped").read_bytes() == b"pwned"


def test_symlink_loops_are_errors(jail: Path) -> None:
    # Inside the root, etc -> /etc names itself: ELOOP, as in a chroot.
    with pytest.raises(LayerError, match="symbolic links"):
        unpack_layer(make_tar([entry("etc", tarfile.SYMTYPE, link="/etc"),
                               entry("etc/passwd", data=b"pwned")]), jail)
    outside_untouched(jail)


def test_symlink_replaced_by_file_does_not_write_through(jail: Path) -> None:
    unpack_layer(make_tar([entry("x", tarfile.SYMTYPE, link="../outside/secret"),
                           entry("x", data=b"new")]), jail)
    outside_untouched(jail)
    assert (jail / "x").read_bytes() == b"new"


def test_hard_links_must_point_inside(jail: Path) -> None:
    with pytest.raises(LayerError, match="hard link to missing"):
        unpack_layer(make_tar([entry("h", tarfile.LNKTYPE,
                                     link=str(jail.parent / "outside" / "secret"))]), jail)
    outside_untouched(jail)
    with pytest.raises(LayerError):
        unpack_layer(make_tar([entry("l", tarfile.SYMTYPE, link="/"),
                               entry("h", tarfile.LNKTYPE, link="l/../../outside/secret")]),
                     jail)
    outside_untouched(jail)


def test_hard_link_through_symlink_stays_inside(jail: Path) -> None:
    unpack_layer(make_tar([entry("real", data=b"data"),
                           entry("dir", tarfile.SYMTYPE, link="/"),
                           entry("h", tarfile.LNKTYPE, link="dir/real")]), jail)
    assert os.stat(jail / "h").st_ino == os.stat(jail / "real").st_ino
    outside_untouched(jail)


def test_whiteouts_and_opaque_directories(jail: Path) -> None:
    lower = make_tar([entry("keep", data=b"k"), entry("gone", data=b"g"),
                      entry("dir/old", data=b"o"), entry("dir/sub/deep", data=b"d")])
    upper = make_tar([entry(".wh.gone"), entry("dir/new", data=b"n"),
                      entry("dir/.wh..wh..opq"), entry("dir/after", data=b"a")])
    unpack_layer(lower, jail)
    unpack_layer(upper, jail)
    assert (jail / "keep").exists() and not (jail / "gone").exists()
    assert sorted(p.name for p in (jail / "dir").iterdir()) == ["after", "new"]


def test_whiteout_cannot_reach_outside(jail: Path) -> None:
    unpack_layer(make_tar([entry("../outside/.wh.secret")]), jail)
    outside_untouched(jail)
    for bad in (".wh..", ".wh.", "x/.wh.."):
        with pytest.raises(LayerError, match="invalid whiteout"):
            unpack_layer(make_tar([entry(bad)]), jail)
    unpack_layer(make_tar([entry("l", tarfile.SYMTYPE, link=str(jail.parent / "outside")),
                           entry("l/.wh.secret")]), jail)
    outside_untouched(jail)


def test_type_changes_follow_moby(jail: Path) -> None:
    unpack_layer(make_tar([entry("p", data=b"file"), entry("d", tarfile.DIRTYPE),
                           entry("d/child", data=b"c")]), jail)
    unpack_layer(make_tar([entry("p", tarfile.DIRTYPE), entry("p/in", data=b"i"),
                           entry("d", data=b"now a file")]), jail)
    assert (jail / "p" / "in").read_bytes() == b"i"
    assert (jail / "d").read_bytes() == b"now a file"


def test_limits(jail: Path) -> None:
    with pytest.raises(LayerError, match="more than 100 bytes"):
        unpack_layer(make_tar([entry("big", data=b"x" * 101)]), jail,
                     UnpackLimits(max_bytes=100))
    with pytest.raises(LayerError, match="more than 2 entries"):
        unpack_layer(make_tar([entry(f"f{i}") for i in range(3)]), jail,
                     UnpackLimits(max_entries=2))
    with pytest.raises(LayerError, match="path longer"):
        unpack_layer(make_tar([entry("a/" * 60 + "x")]), jail, UnpackLimits(max_path_len=100))


def test_decompression_bomb_is_bounded(jail: Path) -> None:
    bomb = make_tar([entry("zeros", data=b"\0" * 10_000_000)], compress=True)
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(LayerError):
        unpack_layer(bomb, jail, UnpackLimits(max_bytes=1_000_000))


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, gzip.compress(b"garbage")])
def test_garbage_is_a_layer_error(jail: Path, data: bytes) -> None:
    with pytest.raises(LayerError):
        unpack_layer(io.BytesIO(data if data else b"\0" * 10), jail)


def test_truncated_layer_is_a_layer_error(jail: Path) -> None:
    whole = make_tar([entry("f", data=b"x" * 100_000)], compress=True).getvalue()
    with pytest.raises(LayerError):
        unpack_layer(io.BytesIO(whole[: len(whole) // 2]), jail)


def test_flatten_applies_in_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    paths = []
    for i, content in enumerate([b"first", b"second"]):
        path = tmp_path / f"layer{i}.tar"
        path.write_bytes(make_tar([entry("f", data=content)]).getvalue())
        paths.append(path)
    stats = flatten_layers(paths, root)
    assert (root / "f").read_bytes() == b"second" and stats.entries == 2


# -- fuzzing -----------------------------------------------------------------------

NAMES = st.lists(st.sampled_from(["a", "b", "..", ".", "", "c", ".wh.a", ".wh..wh..opq",
                                  "/", "outside", "secret"]),
                 min_size=1, max_size=5).map("/".join)
LINKS = st.one_of(NAMES, st.sampled_from(["/", "../..", "/etc", "../outside",
                                          "../../outside/secret"]))
ENTRIES = st.lists(
    st.tuples(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                               tarfile.LNKTYPE]), NAMES, LINKS),
    min_size=1, max_size=12)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ENTRIES)
def test_fuzz_never_escapes(tmp_path_factory: pytest.TempPathFactory,
                            entries: list[tuple[bytes, str, str]]) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "root"
    root.mkdir()
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_text("keep")
    before = snapshot(base / "outside")
    tar = make_tar([entry(name or ".", kind, data=b"x", link=link)
                    for kind, name, link in entries])
    with contextlib.suppress(LayerError):
        unpack_layer(tar, root)
    assert sorted(p.name for p in base.iterdir()) == ["outside", "root"]
    assert snapshot(base / "outside") == before
    assert (base / "outside" / "secret").read_text() == "keep"
