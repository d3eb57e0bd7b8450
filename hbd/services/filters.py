"""Filter pieces every object type shares: labels, and what `prune --filter` takes."""

from __future__ import annotations

from typing import Any

from hbd.errors import InvalidParameter, SystemError_
from hbd.services.timefmt import parse_go_timestamp, parse_rfc3339


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
        self.until = self._until(filters.get("until", []))
        self.labels = filters.get("label", [])
        self.not_labels = filters.get("label!", [])

    @staticmethod
    def _until(values: list[str]) -> float:
        """dockerd's getUntilFromPruneFilters (its errors are 500s)."""
        if not values:
            return 0.0
        if len(values) > 1:
            raise SystemError_("more than one until filter specified")
        try:
            return parse_go_timestamp(values[0])
        except ValueError as e:
            raise SystemError_(str(e)) from None

    def __call__(self, created: str, config: dict[str, Any]) -> bool:
        if self.until and parse_rfc3339(created) > self.until:
            return False
        labels = config.get("Labels") or {}
        if not labels_match(self.labels, labels):
            return False
        return not (self.not_labels and labels_match(self.not_labels, labels))
