"""`docker images --filter`: dangling, label, reference, before, since."""

from __future__ import annotations

import fnmatch
from typing import Protocol

from hbd.errors import InvalidParameter
from hbd.services.filters import labels_match
from hbd.services.image.model import Image
from hbd.services.image.reference import parse_reference

KNOWN = {"dangling", "label", "reference", "before", "since", "until"}


class ImageLookup(Protocol):
    """Resolves an image by reference or ID (what the filters name)."""

    def get(self, ref_or_id: str) -> Image: ...


class ImageFilter:
    def __init__(self, filters: dict[str, list[str]], store: ImageLookup) -> None:
        for key in filters:
            if key not in KNOWN:
                raise InvalidParameter(f"invalid filter '{key}'")
        self.filters = filters
        self.dangling: bool | None = None
        for value in filters.get("dangling", []):
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidParameter(
                    f"invalid filter 'dangling={value}'")
            self.dangling = value.lower() in ("true", "1")
        self.before = [store.get(ref).created_unix for ref in filters.get("before", [])]
        self.since = [store.get(ref).created_unix for ref in filters.get("since", [])]

    def _reference_matches(self, img: Image) -> bool:
        patterns = self.filters.get("reference")
        if not patterns:
            return True
        for full in img.repo_tags + img.repo_digests:
            ref = parse_reference(full)
            candidates = [ref.familiar_name, ref.familiar]
            for pattern in patterns:
                if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
                    return True
        return False

    def __call__(self, img: Image) -> bool:
        if self.dangling is not None and self.dangling != (not img.repo_tags):
            return False
        labels = img.container_config.get("Labels") or {}
        if not labels_match(self.filters.get("label", []), labels):
            return False
        if any(img.created_unix >= t for t in self.before):
            return False
        if any(img.created_unix <= t for t in self.since):
            return False
        return self._reference_matches(img)
