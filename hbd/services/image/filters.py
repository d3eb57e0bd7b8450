"""`docker images --filter`: dangling, label, reference, before, since."""

from __future__ import annotations

from collections.abc import Callable

from hbd.errors import InvalidParameter, SystemError_
from hbd.services.filters import labels_match
from hbd.services.image import pathmatch
from hbd.services.image.model import Image
from hbd.services.image.owners import split_owned
from hbd.services.image.reference import Reference

KNOWN = {"dangling", "label", "reference", "before", "since", "until"}


# Resolves an image by reference or ID (what the filters name), as the asker sees it.
ImageLookup = Callable[[str], Image]
# The image's tag and digest keys (owners.py) the asker sees.
VisibleRefs = Callable[[Image], tuple[list[str], list[str]]]


class ImageFilter:
    def __init__(self, filters: dict[str, list[str]], lookup: ImageLookup,
                 refs: VisibleRefs) -> None:
        for key in filters:
            if key not in KNOWN:
                raise InvalidParameter(f"invalid filter '{key}'")
        self.filters = filters
        self.refs = refs
        self.dangling: bool | None = None
        for value in filters.get("dangling", []):
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidParameter(
                    f"invalid filter 'dangling={value}'")
            self.dangling = value.lower() in ("true", "1")
        self.before = [lookup(ref).created_unix for ref in filters.get("before", [])]
        self.since = [lookup(ref).created_unix for ref in filters.get("since", [])]

    def matching_refs(self, img: Image) -> tuple[list[str], list[str]]:
        """The image's tags and digests that the `reference` filter lets through
        (all of them without one): dockerd lists only those."""
        patterns = self.filters.get("reference")
        tags, digests = self.refs(img)
        if not patterns:
            return tags, digests
        return ([t for t in tags if _familiar_match(patterns, split_owned(t)[0])],
                [d for d in digests if _familiar_match(patterns, split_owned(d)[0])])

    def __call__(self, img: Image) -> bool:
        if self.dangling is not None and self.dangling != (not self.refs(img)[0]):
            return False
        labels = img.container_config.get("Labels") or {}
        if not labels_match(self.filters.get("label", []), labels):
            return False
        if any(img.created_unix >= t for t in self.before):
            return False
        if any(img.created_unix <= t for t in self.since):
            return False
        if "reference" not in self.filters:
            return True
        tags, digests = self.matching_refs(img)
        return bool(tags or digests)


def _familiar_match(patterns: list[str], ref: Reference) -> bool:
    """reference.FamiliarMatch: a pattern matches "name:tag" (or "name@digest")
    or the bare familiar name, the way Go's path.Match does."""
    try:
        return any(pathmatch.match(p, ref.familiar) or pathmatch.match(p, ref.familiar_name)
                   for p in patterns)
    except pathmatch.BadPattern as e:
        raise SystemError_(str(e)) from e  # dockerd answers 500 with Go's words
