"""`docker ps --filter`, as dockerd applies it."""

from __future__ import annotations

import re
from typing import Protocol

from hbd.errors import InvalidParameter, NotFound
from hbd.services.container.model import Container
from hbd.services.filters import labels_match
from hbd.services.image.filters import ImageLookup
from hbd.services.scope import OPERATOR, Scope

PS_FILTERS = {"ancestor", "before", "expose", "exited", "health", "id", "isolation",
              "is-task", "label", "name", "network", "publish", "since", "status", "volume"}
STATUSES = {"created", "restarting", "running", "removing", "paused", "exited", "dead"}
HEALTH = {"starting", "healthy", "unhealthy", "none"}


class ContainerLookup(Protocol):
    """Resolves the containers that `before` and `since` name."""

    def get(self, ref: str) -> Container: ...


class ContainerFilter:
    def __init__(self, filters: dict[str, list[str]], containers: ContainerLookup,
                 images: ImageLookup, scope: Scope = OPERATOR) -> None:
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
        self.scope = scope
        try:
            self.exited = {int(v) for v in filters.get("exited", [])}
        except ValueError:
            raise InvalidParameter("invalid filter 'exited'") from None
        self.before = [containers.get(scope.qualify(ref)).created
                       for ref in filters.get("before", [])]
        self.since = [containers.get(scope.qualify(ref)).created
                      for ref in filters.get("since", [])]
        self.ancestors: set[str] = set()
        for ref in filters.get("ancestor", []):
            try:
                self.ancestors.add(images(ref).id)
            except NotFound:
                self.ancestors.add(ref)
        self.names = [re.compile(n) for n in filters.get("name", [])]

    def __call__(self, c: Container) -> bool:
        f = self.filters
        if "id" in f and not any(c.id.startswith(v) for v in f["id"]):
            return False
        if self.names and not any(p.search(self.scope.shown(c.name).lstrip("/"))
                                  for p in self.names):
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
