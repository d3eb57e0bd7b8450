"""Image endpoints with the fake guest driver: the `reference` filter, and
`docker load` of what is not an image (dockerd 20.10's answers as expected)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.api.conftest import ApiDaemon


@pytest.fixture
def raw(api_daemon: ApiDaemon) -> Iterator[docker.APIClient]:
    c = docker.APIClient(base_url=api_daemon.host, version="1.47")
    yield c
    c.close()


# -- docker images NAME ------------------------------------------------------------

@pytest.fixture
def tagged(raw: docker.APIClient) -> Iterator[str]:
    """busybox with several more tags, in several repositories."""
    extra = [("busybox", "i9ref"), ("i9ref/other", "x"), ("localhost:5000/i9ref/bb", "y")]
    for repo, tag in extra:
        raw.tag("busybox:latest", repo, tag)
    yield raw.inspect_image("busybox:latest")["Id"]
    for repo, tag in extra:
        raw.remove_image(f"{repo}:{tag}")


def _listed(raw: docker.APIClient, pattern: str, image_id: str) -> list[str] | None:
    """The RepoTags `docker images PATTERN` lists for the image (None: not listed)."""
    rows = raw.images(filters={"reference": pattern})
    return next((row["RepoTags"] for row in rows if row["Id"] == image_id), None)


@pytest.mark.parametrize(("pattern", "expected"), [
    ("busybox", ["busybox:i9ref", "busybox:latest"]),
    ("busy*", ["busybox:i9ref", "busybox:latest"]),
    ("busybox:latest", ["busybox:latest"]),
    ("busybox:i9*", ["busybox:i9ref"]),
    ("i9ref/*", ["i9ref/other:x"]),
    ("localhost:5000/i9ref/bb", ["localhost:5000/i9ref/bb:y"]),
    ("*", ["busybox:i9ref", "busybox:latest"]),  # * does not cross a /
    ("*/bb", None),
    ("docker.io/library/busybox", None),  # patterns match the familiar form only
    ("busybox:[^l]*", ["busybox:i9ref"]),
])
def test_reference_filter_lists_only_matching_tags(raw: docker.APIClient, tagged: str,
                                                   pattern: str,
                                                   expected: list[str] | None) -> None:
    assert _listed(raw, pattern, tagged) == expected


def test_without_a_filter_every_tag_is_listed_sorted(raw: docker.APIClient,
                                                     tagged: str) -> None:
    # dockerd sorts by the full name: docker.io/i9ref/… < docker.io/library/… < localhost…
    rows = [r for r in raw.images() if r["Id"] == tagged]
    assert [t for t in rows[0]["RepoTags"] if "i9ref" in t or t == "busybox:latest"] == [
        "i9ref/other:x", "busybox:i9ref", "busybox:latest", "localhost:5000/i9ref/bb:y"]
    assert raw.inspect_image(tagged)["RepoTags"] == rows[0]["RepoTags"]


def test_bad_reference_pattern_is_dockerds_500(raw: docker.APIClient, tagged: str) -> None:
    r = raw._get(raw._url("/images/json"), params={"filters": json.dumps(
        {"reference": ["busybox:["]})})
    assert r.status_code == 500
    assert r.json() == {"message": "syntax error in pattern"}


def test_cli_lists_one_row_per_matching_tag(api_daemon: ApiDaemon, tagged: str) -> None:
    out = api_daemon.docker("images", "--format", "{{.Repository}}:{{.Tag}}",
                            "busybox:latest").stdout.decode().split()
    assert out == ["busybox:latest"]


# -- docker load of what is not an image ----------------------------------------------

def _tar(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _load(raw: docker.APIClient, body: bytes) -> tuple[int, list[dict[str, Any]]]:
    r = raw._post(raw._url("/images/load"), data=body, params={"quiet": "1"},
                  headers={"Content-Type": "application/x-tar"})
    return r.status_code, [json.loads(line) for line in r.text.splitlines() if line]


DIRECTORY = _tar({"./a": b"hi\n", "./sub/b": b"x\n"}, dirs=("./", "./sub"))
NOT_IMAGES = [
    # (body, what dockerd says; {root} is the directory it extracted to)
    (DIRECTORY, "open {root}/sub/json: no such file or directory"),
    (gzip.compress(DIRECTORY), "open {root}/sub/json: no such file or directory"),
    (_tar({}), "open {root}/repositories: no such file or directory"),
    (b"", "open {root}/repositories: no such file or directory"),
    (_tar({"top.txt": b"hi\n"}), "open {root}/repositories: no such file or directory"),
    (bytes(range(256)) * 12, "Error processing tar file(exit status 1): "
                             "archive/tar: invalid tar header"),
    (b"hello\n", "Error processing tar file(exit status 1): unexpected EOF"),
    (DIRECTORY[:1000], "Error processing tar file(exit status 1): unexpected EOF"),
    (gzip.compress(DIRECTORY)[:100], "Error processing tar file(exit status 1): "
                                     "unexpected EOF"),
    (_tar({"manifest.json": b'{"a": 1}'}),
     "json: cannot unmarshal object into Go value of type []tarexport.manifestItem"),
    (_tar({"manifest.json": b'[{"Config": "c.json", "RepoTags": ["x:y"], '
                            b'"Layers": ["l.tar"]}]'}),
     "open {root}/c.json: no such file or directory"),
]


@pytest.mark.parametrize(("body", "expected"), NOT_IMAGES)
def test_load_of_a_non_image_fails_in_the_stream(raw: docker.APIClient, body: bytes,
                                                 expected: str) -> None:
    before = {i["Id"] for i in raw.images(all=True)}
    status, messages = _load(raw, body)
    assert status == 200  # dockerd answers 200 and reports the failure in the stream
    assert len(messages) == 1 and messages[0]["error"] == \
        messages[0]["errorDetail"]["message"]
    root, sep, rest = messages[0]["error"].partition("/docker-import-")
    if "{root}" in expected:
        assert sep and root.startswith("open /")
        expected = expected.format(root=root.removeprefix("open ") + sep +
                                   rest.split("/", 1)[0])
    assert messages[0]["error"] == expected
    assert {i["Id"] for i in raw.images(all=True)} == before


def test_load_failure_through_the_cli_and_sdk(api_daemon: ApiDaemon,
                                              client: docker.DockerClient) -> None:
    result = api_daemon.docker("load", input=DIRECTORY, check=False)
    assert result.returncode == 1
    assert result.stderr.decode().strip().endswith("/sub/json: no such file or directory")
    with pytest.raises(docker.errors.ImageLoadError, match="invalid tar header"):
        client.images.load(bytes(range(256)) * 12)


# -- commit and import --change: refused before any guest work ------------------------

@pytest.fixture
def container(client: docker.DockerClient) -> Iterator[str]:
    c = client.containers.create("busybox", ["sh", "-c", "echo hi"], environment={"A": "1"})
    yield c.id
    c.remove(force=True)


@pytest.mark.parametrize(("change", "message"), [
    ("RUN true", "run is not a valid change command"),
    ("ENV A=1 B", 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
    ("EXPOSE 80/xyz", "Invalid proto: xyz"),
    ("HEALTHCHECK --retries=0 CMD true", "--retries must be at least 1 (not 0)"),
    ("", "file with no instructions"),
])
def test_commit_with_a_bad_change_is_dockers_400(raw: docker.APIClient, container: str,
                                                 change: str, message: str) -> None:
    before = {i["Id"] for i in raw.images(all=True)}
    r = raw._post(raw._url("/commit"), params={"container": container, "repo": "never",
                                                "changes": change})
    assert r.status_code == 400 and r.json() == {"message": message}
    assert {i["Id"] for i in raw.images(all=True)} == before


def test_commit_with_a_mistyped_config_is_refused(client: docker.DockerClient,
                                                  container: str) -> None:
    with pytest.raises(docker.errors.APIError) as e:
        client.containers.get(container).commit("never", conf={"Env": "A=2"})
    assert e.value.status_code == 400
    assert "ContainerConfigWrapper.Env" in str(e.value.explanation)


def test_cli_commit_change_error(api_daemon: ApiDaemon, container: str) -> None:
    result = api_daemon.docker("commit", "-c", "FROM busybox", container, check=False)
    assert result.returncode == 1
    assert "from is not a valid change command" in result.stderr.decode()


def test_import_applies_changes_as_dockerd(api_daemon: ApiDaemon,
                                           raw: docker.APIClient) -> None:
    api_daemon.docker("import", "-c", "ENV A=1", "-c", "ENV B=$A", "-c", 'CMD ["x"]',
                      "-c", "EXPOSE 80", "-", "i9import:changes", input=DIRECTORY)
    try:
        config = raw.inspect_image("i9import:changes")["Config"]
        assert config["Env"] == ["A=1", "B=1"] and config["Cmd"] == ["x"]
        assert config["ExposedPorts"] == {"80/tcp": {}}
    finally:
        raw.remove_image("i9import:changes")
    result = api_daemon.docker("import", "-c", "RUN x", "-", "i9import:bad", input=DIRECTORY,
                               check=False)
    assert result.returncode == 1 and "run is not a valid change command" in \
        result.stderr.decode()
