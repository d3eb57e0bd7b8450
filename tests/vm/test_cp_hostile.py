"""Issue 11: docker cp with a hostile archive or a hostile container.

The guest init unpacks every entry in a directory resolved inside the
container's root (openat2 RESOLVE_IN_ROOT), as dockerd's chrooted unpack
does: symlinks on the way, the archive's or the container's, are followed
but never above that root. Deep trees, deeper than any path, neither crash
`docker cp` out nor stop one from replacing them."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import docker
import pytest

from tests.daemon_fixture import RunningDaemon


def _tar(*entries: tuple[str, str, str]) -> bytes:
    """(name, kind, data or link target): kind file, sym or hard."""
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, value in entries:
            entry = tarfile.TarInfo(name)
            if kind == "sym":
                entry.type, entry.linkname = tarfile.SYMTYPE, value
                tar.addfile(entry)
            elif kind == "hard":
                entry.type, entry.linkname = tarfile.LNKTYPE, value
                tar.addfile(entry)
            else:
                entry.size = len(value)
                tar.addfile(entry, io.BytesIO(value.encode()))
    return payload.getvalue()


@pytest.fixture
def box(hbd: RunningDaemon) -> Iterator[str]:
    cid = hbd.docker("run", "-d", "busybox", "sleep", "600").stdout.decode().strip()
    yield cid
    hbd.docker("rm", "-f", cid, check=False)


def _sh(sdk: docker.DockerClient, cid: str, script: str) -> str:
    result = sdk.containers.get(cid).exec_run(["sh", "-c", script])
    return result.output.decode()


def test_symlinks_in_parents_resolve_in_the_container_root(sdk: docker.DockerClient,
                                                           box: str) -> None:
    api = sdk.api
    # The archive's own absolute symlink, then a file through it: as in
    # dockerd, the link is followed inside the container (its /etc).
    assert api.put_archive(box, "/tmp", _tar(("a", "sym", "/etc"), ("a/from-abs", "file", "1")))
    # A symlink the container made, climbing far above its root: it stops
    # at the root, as dockerd's chroot stops it.
    _sh(sdk, box, "mkdir -p /tmp/d && ln -s ../../../../../../../.. /tmp/d/up")
    assert api.put_archive(box, "/tmp/d", _tar(("up/from-rel", "file", "2")))
    # A hard link to a file through the container's symlink: inside, too.
    _sh(sdk, box, "echo secret > /tmp/target")
    assert api.put_archive(box, "/tmp/d", _tar(("h", "hard", "up/tmp/target")))
    assert _sh(sdk, box, "cat /etc/from-abs /from-rel /tmp/d/h") == "12secret\n"
    # /proc's magic links are not followed at all.
    _sh(sdk, box, "ln -s /proc/self/root /tmp/magic")
    with pytest.raises(docker.errors.APIError):
        api.put_archive(box, "/tmp", _tar(("magic/from-magic", "file", "3")))
    assert _sh(sdk, box, "test -e /from-magic || echo absent") == "absent\n"


def test_archive_entries_that_leave_are_refused(sdk: docker.DockerClient, box: str) -> None:
    api = sdk.api
    # Refused by dockerd too: ".." out of the extraction point, a symlink
    # pointing above it (lexically), a hard link out.
    for payload in (_tar(("../escape", "file", "x")),
                    _tar(("s", "sym", "../../../etc/passwd")),
                    _tar(("h", "hard", "../etc/passwd"))):
        with pytest.raises(docker.errors.APIError):
            api.put_archive(box, "/tmp", payload)
    assert _sh(sdk, box, "test -e /escape || test -e /tmp/s || test -e /tmp/h || echo none") == \
        "none\n"
    # A symlink, then a file of the same name: the file replaces the link
    # and nothing is written through it.
    assert api.put_archive(box, "/tmp", _tar(("l", "sym", "/etc/passwd"), ("l", "file", "new")))
    assert _sh(sdk, box, "cat /tmp/l; test -L /tmp/l || echo plain; head -c 5 /etc/passwd") == \
        "newplain\nroot:"


def test_a_tree_deeper_than_any_path(hbd: RunningDaemon, sdk: docker.DockerClient,
                                     box: str) -> None:
    # 2101 levels, 4200 characters: beyond PATH_MAX, so made in two halves.
    out = _sh(sdk, box, "A=$(i=0; while [ $i -lt 1050 ]; do printf a/; i=$((i+1)); done) && "
                        "mkdir -p /deep/$A /t/$A && echo bottom > /t/${A}f && mv /t /deep/$A && "
                        "echo made")
    assert out == "made\n"
    # docker cp out: every entry a path can name (the guest's archive writer
    # kept a frame per level on the stack, 12 KiB each).
    stream = hbd.docker("cp", f"{box}:/deep", "-", timeout=300).stdout
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        names = tar.getnames()
    assert len(names) > 1900 and max(len(n) for n in names) > 3800
    # docker diff walks it too.
    diff = hbd.docker("diff", box, timeout=300).stdout.decode()
    assert "A /deep/a/a" in diff
    # A file over it: the whole tree goes.
    assert sdk.api.put_archive(box, "/", _tar(("deep", "file", "flat")))
    assert _sh(sdk, box, "cat /deep") == "flat"
