"""`docker ps --filter` and `container prune --filter`, as dockerd applies them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from hbd.errors import InvalidParameter, NotFound
from hbd.services.timefmt import parse_rfc3339

if TYPE_CHECKING:
    from hbd.services.container.service import Container, ContainerService

PS_FILTERS = {"ancestor", "before", "expose", "exited", "health", "id", "isolation",
              "is-task", "label", "name", "network", "publish", "since", "status", "volume"}
STATUSES = {"created", "restarting", "running", "removing", "paused", "exited", "dead"}
HEALTH = {"starting", "healthy", "unhealthy", "none"}


def labels_match(wanted: list[str], labels: dict[str, str]) -> bool:
    for label in wanted:
        key, sep, value = label.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


class ContainerFilter:
    def __init__(self, filters: dict[str, list[str]], service: ContainerService) -> None:
        for key in filters:
            if key not in PS_FILTERS:
                raise InvalidParameter(f"invalid filter '{key}'")
        for status in filters.get("status", []):
            if status not in STATUSES:
                raise InvalidParameter(f"invalid filter 'status={status}'")
        for health in filters.get("health", []):
            if health not in HEALTH:
                raise InvalidParameter(f"Unrecognised filter value for health: {health}")
        self.filters = filters
        try:
            self.exited = {int(v) for v in filters.get("exited", [])}
        except ValueError:
            raise InvalidParameter("invalid filter 'exited'") from None
        self.before = [service.get(ref).created for ref in filters.get("before", [])]
        self.since = [service.get(ref).created for ref in filters.get("since", [])]
        self.ancestors: set[str] = set()
        for ref in filters.get("ancestor", []):
            try:
                self.ancestors.add(service.images.get(ref).id)
            except NotFound:
                self.ancestors.add(ref)
        self.names = [re.compile(n) for n in filters.get("name", [])]

    def __call__(self, c: Container) -> bool:
        f = self.filters
        if "id" in f and not any(c.id.startswith(v) for v in f["id"]):
            return False
        if self.names and not any(p.search(c.name.lstrip("/")) for p in self.names):
            return False
        if "status" in f and c.state.status not in f["status"]:
            return False
        if self.exited and (c.state.running or c.state.started_at.startswith("0001") or
                            c.state.exit_code not in self.exited):
            return False
        if not labels_match(f.get("label", []), c.config.get("Labels") or {}):
            return False
        if self.ancestors and not (c.image_id in self.ancestors or
                                   c.config.get("Image") in self.ancestors):
            return False
        if any(c.created >= t for t in self.before):
            return False
        if any(c.created <= t for t in self.since):
            return False
        if "health" in f:
            health = c.health_status()
            if health not in f["health"]:
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
