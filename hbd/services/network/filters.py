"""`docker network ls --filter` and `network prune --filter`."""

from __future__ import annotations

from hbd.errors import InvalidParameter
from hbd.services.filters import PruneFilter, labels_match
from hbd.services.network.model import Network, NetworkUsers

LIST_FILTERS = {"dangling", "driver", "id", "label", "name", "scope", "type"}


class NetworkFilter:
    def __init__(self, filters: dict[str, list[str]], users: NetworkUsers,
                 prune: bool = False) -> None:
        self.users = users
        self.prune_filter = PruneFilter(filters) if prune else None
        if not prune:
            for key in filters:
                if key not in LIST_FILTERS:
                    raise InvalidParameter(f"invalid filter '{key}'")
            for value in filters.get("type", []):
                if value not in ("custom", "builtin"):
                    raise InvalidParameter(f"invalid filter: 'type'='{value}'")
        self.filters = filters

    def __call__(self, n: Network) -> bool:
        if self.prune_filter is not None:
            return self.prune_filter(n.created, {"Labels": n.labels})
        f = self.filters
        if "driver" in f and n.driver not in f["driver"]:
            return False
        if "id" in f and not any(n.id.startswith(v) for v in f["id"]):
            return False
        if "name" in f and not any(v in n.name for v in f["name"]):
            return False
        if "scope" in f and "local" not in f["scope"]:
            return False
        if "type" in f and ("builtin" if n.builtin else "custom") not in f["type"]:
            return False
        if not labels_match(f.get("label", []), n.labels):
            return False
        if "dangling" in f:
            dangling = f["dangling"][0].lower() in ("true", "1")
            used = bool(self.users.configured_on(n.name)) or n.builtin
            if dangling == used:
                return False
        return True
