"""The `reference` filter of `docker images` on tags and digests, as dockerd's
FamiliarMatch applies it to each reference of an image."""

from __future__ import annotations

import pytest

from hbd.errors import SystemError_
from hbd.services.image.filters import ImageFilter
from hbd.services.image.model import Image

DIGEST = "sha256:" + "d" * 64
IMAGE = Image("sha256:" + "a" * 64, {"created": "2024-01-01T00:00:00Z"}, [],
              repo_tags=["docker.io/library/app:1", "docker.io/library/app:2",
                         "registry.local:5000/team/app:1"],
              repo_digests=[f"docker.io/library/app@{DIGEST}",
                            f"registry.local:5000/team/app@{DIGEST}"])


def _no_lookup(ref_or_id: str) -> Image:
    raise AssertionError("no before/since here")


def _all_refs(img: Image) -> tuple[list[str], list[str]]:
    return img.repo_tags, img.repo_digests


def _filter(filters: dict[str, list[str]]) -> ImageFilter:
    return ImageFilter(filters, _no_lookup, _all_refs)


def _refs(pattern: str) -> tuple[list[str], list[str]]:
    return _filter({"reference": [pattern]}).matching_refs(IMAGE)


def test_a_name_matches_its_tags_and_digests() -> None:
    assert _refs("app") == (IMAGE.repo_tags[:2], IMAGE.repo_digests[:1])


def test_a_tag_matches_that_tag_only() -> None:
    assert _refs("app:2") == (["docker.io/library/app:2"], [])
    assert _refs(f"app@{DIGEST}") == ([], [f"docker.io/library/app@{DIGEST}"])


def test_patterns_stop_at_slashes() -> None:
    assert _refs("*/app") == ([], [])
    assert _refs("registry.local:5000/*/app") == (
        ["registry.local:5000/team/app:1"], [f"registry.local:5000/team/app@{DIGEST}"])


def test_without_a_match_the_image_is_not_listed() -> None:
    matches = _filter({"reference": ["other"]})
    assert not matches(IMAGE)
    assert _filter({}).matching_refs(IMAGE) == (IMAGE.repo_tags, IMAGE.repo_digests)


def test_a_bad_pattern_is_dockerds_500() -> None:
    with pytest.raises(SystemError_, match=r"^syntax error in pattern$"):
        _refs("app:[")
