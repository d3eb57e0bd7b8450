"""Issues 4 and 5: docker cp, export/import, diff, commit, save/load, history, prune."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import docker
import pytest

from tests.daemon_fixture import RunningDaemon


@pytest.fixture
def box(hbd: RunningDaemon) -> str:  # type: ignore[misc]
    cid = hbd.docker("run", "-d", "busybox", "sh", "-c",
                     "echo hello > /hello.txt; mkdir -p /data/sub; echo deep > /data/sub/f; "
                     "rm /bin/vi; sleep 600").stdout.decode().strip()
    # The shell sets the files up just after the start: wait for it.
    hbd.docker("exec", cid, "sh", "-c", "until test -f /data/sub/f; do sleep 0.1; done")
    yield cid
    hbd.docker("rm", "-f", cid, check=False)


def test_cp_out_and_in_of_a_running_container(hbd: RunningDaemon, box: str,
                                              tmp_path: Path) -> None:
    hbd.docker("cp", f"{box}:/hello.txt", str(tmp_path / "hello.txt"))
    assert (tmp_path / "hello.txt").read_text() == "hello\n"
    hbd.docker("cp", f"{box}:/data", str(tmp_path / "data"))
    assert (tmp_path / "data" / "sub" / "f").read_text() == "deep\n"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "one").write_text("1")
    (tmp_path / "in" / "two").write_text("2")
    hbd.docker("cp", str(tmp_path / "in"), f"{box}:/tmp/")
    assert hbd.docker("exec", box, "cat", "/tmp/in/one", "/tmp/in/two").stdout == b"12"
    missing = hbd.docker("cp", f"{box}:/no/such/file", str(tmp_path / "x"), check=False)
    assert missing.returncode != 0 and b"Could not find the file /no/such/file" in \
        missing.stderr


def test_cp_with_a_stopped_container(hbd: RunningDaemon, box: str, tmp_path: Path) -> None:
    hbd.docker("stop", "-t", "1", box)
    hbd.docker("cp", f"{box}:/hello.txt", str(tmp_path / "h"))
    assert (tmp_path / "h").read_text() == "hello\n"
    (tmp_path / "note").write_text("while stopped")
    hbd.docker("cp", str(tmp_path / "note"), f"{box}:/root/note")
    hbd.docker("start", box)
    assert hbd.docker("exec", box, "cat", "/root/note").stdout == b"while stopped"


def test_archive_api_stat_header_and_put(sdk: docker.DockerClient, box: str) -> None:
    api = sdk.api
    response = api.head(api._url("/containers/{0}/archive", box), params={"path": "/data"})
    header = json.loads(base64.b64decode(response.headers["X-Docker-Container-Path-Stat"]))
    assert header["name"] == "data" and header["mode"] & (1 << 31)  # a directory
    chunks, stat_info = api.get_archive(box, "/hello.txt")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        assert tar.extractfile("hello.txt").read() == b"hello\n"  # type: ignore[union-attr]
    assert stat_info["size"] == 6
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        entry = tarfile.TarInfo("owned")
        entry.size, entry.uid, entry.gid = 2, 1000, 1000
        tar.addfile(entry, io.BytesIO(b"ok"))
    assert api.put_archive(box, "/tmp", payload.getvalue())
    out = sdk.containers.get(box).exec_run(["stat", "-c", "%u %s", "/tmp/owned"]).output
    assert out == b"0 2\n"  # owners become root without copyUIDGID, as in dockerd
    with pytest.raises(docker.errors.APIError):
        api.put_archive(box, "/hello.txt", payload.getvalue())  # not a directory


def test_diff_shows_added_changed_deleted(hbd: RunningDaemon, box: str) -> None:
    changes = hbd.docker("diff", box).stdout.decode().splitlines()
    assert "A /hello.txt" in changes
    assert "A /data/sub/f" in changes
    assert "D /bin/vi" in changes and "C /bin" in changes
    assert not any(line.endswith(("/etc/hosts", "/etc/resolv.conf", "/etc/hostname"))
                   for line in changes), changes


def test_commit_with_changes_then_run(hbd: RunningDaemon, box: str) -> None:
    image_id = hbd.docker("commit", "-c", 'CMD ["cat", "/hello.txt"]', "-c", "ENV STAGE=two",
                          "-m", "snapshot", box, "committed:e2e").stdout.decode().strip()
    assert image_id.startswith("sha256:")
    assert hbd.docker("run", "--rm", "committed:e2e").stdout == b"hello\n"
    out = hbd.docker("run", "--rm", "committed:e2e", "sh", "-c",
                     "echo $STAGE; test -e /bin/vi || echo vi-gone").stdout
    assert out == b"two\nvi-gone\n"
    history = hbd.docker("history", "--no-trunc", "--format", "{{.Comment}}",
                         "committed:e2e").stdout.decode().splitlines()
    assert history[0] == "snapshot"
    assert json.loads(hbd.docker("inspect", box).stdout)[0]["State"]["Running"] is True
    hbd.docker("rmi", "committed:e2e")


def test_export_import_round_trip(hbd: RunningDaemon, box: str, tmp_path: Path) -> None:
    archive = tmp_path / "fs.tar"
    hbd.docker("export", "-o", str(archive), box)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "hello.txt" in names and "bin/busybox" in names
    assert not any(n.startswith("proc/") for n in names)
    image_id = hbd.docker("import", "-c", 'CMD ["cat", "/data/sub/f"]', str(archive),
                          "imported:e2e").stdout.decode().strip()
    assert image_id.startswith("sha256:")
    assert hbd.docker("run", "--rm", "imported:e2e").stdout == b"deep\n"
    hbd.docker("rmi", "imported:e2e")


def test_save_load_several_images(hbd: RunningDaemon, tmp_path: Path) -> None:
    hbd.docker("tag", "busybox", "saved-one:1")
    hbd.docker("commit", hbd.docker("create", "busybox", "true").stdout.decode().strip(),
               "saved-two:2")
    archive = tmp_path / "images.tar"
    hbd.docker("save", "-o", str(archive), "saved-one:1", "saved-two:2")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert {"oci-layout", "index.json"} <= set(tar.getnames())
    assert sorted(t for m in manifest for t in m["RepoTags"]) == ["saved-one:1", "saved-two:2"]
    hbd.docker("rmi", "saved-one:1", "saved-two:2")
    loaded = hbd.docker("load", "-i", str(archive)).stdout.decode()
    assert "Loaded image: saved-one:1" in loaded and "Loaded image: saved-two:2" in loaded
    assert hbd.docker("run", "--rm", "saved-two:2", "true").returncode == 0
    hbd.docker("rmi", "saved-one:1", "saved-two:2")


def test_rmi_of_an_image_in_use_and_prune(hbd: RunningDaemon) -> None:
    hbd.docker("tag", "busybox", "inuse:1")
    image_id = json.loads(hbd.docker("image", "inspect", "inuse:1").stdout)[0]["Id"]
    cid = hbd.docker("create", "inuse:1", "true").stdout.decode().strip()
    refused = hbd.docker("rmi", image_id, check=False)
    assert refused.returncode != 0 and b"conflict" in refused.stderr
    hbd.docker("rmi", "inuse:1")  # busybox still names it: only untagged
    hbd.docker("rm", cid)
    # A dangling image (its only tag moved away) goes with `image prune`.
    dangling_cid = hbd.docker("create", "busybox", "true").stdout.decode().strip()
    first = hbd.docker("commit", dangling_cid, "moving:1").stdout.decode().strip()
    hbd.docker("commit", "-c", "ENV X=1", dangling_cid, "moving:1")
    hbd.docker("rm", dangling_cid)
    pruned = hbd.docker("image", "prune", "-f").stdout.decode()
    assert first.split(":")[1][:12] in pruned or first in pruned
    hbd.docker("rmi", "moving:1")
