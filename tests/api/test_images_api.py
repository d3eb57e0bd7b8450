"""Image endpoints with the fake guest driver (dockerd 20.10's answers as expected)."""

from __future__ import annotations

import json
from collections.abc import Iterator

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
