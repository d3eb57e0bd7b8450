"""Filter pieces every object type shares: labels, and what `prune --filter` takes."""

from __future__ import annotations

from typing import Any

from hbd.errors import InvalidParameter
from hbd.services.timefmt import parse_rfc3339


def labels_match(wanted: list[str], labels: dict[str, str]) -> bool:
    for label in wanted:
        key, sep, value = label.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


class PruneFilter:
    """until=<timestamp>, label=k[=v], label!=k[=v]."""

    def __init__(self, filters: dict[str, list[str]]) -> None:
        for key in filters:
            if key not in ("until", "label", "label!"):
                raise InvalidParameter(f"invalid filter '{key}'")
        self.until = 0.0
        for value in filters.get("until", []):
            try:
                self.until = float(value)
            except ValueError:
                self.until = parse_rfc3339(value)
                if not self.until:
                    raise InvalidParameter(f"invalid filter 'until={value}'") from None
        self.labels = filters.get("label", [])
        self.not_labels = filters.get("label!", [])

    def __call__(self, created: str, config: dict[str, Any]) -> bool:
        if self.until and parse_rfc3339(created) >= self.until:
            return False
        labels = config.get("Labels") or {}
        if not labels_match(self.labels, labels):
            return False
        return not (self.not_labels and labels_match(self.not_labels, labels))
