"""`/events` filters, as dockerd's daemon/events/filter.go applies them."""

from __future__ import annotations

from typing import Any

from hbd.errors import InvalidParameter

KNOWN = {"config", "container", "daemon", "event", "image", "label", "network", "node",
         "plugin", "scope", "secret", "service", "type", "volume"}


class EventFilter:
    def __init__(self, filters: dict[str, list[str]]) -> None:
        for key in filters:
            if key not in KNOWN:
                raise InvalidParameter(f"invalid filter '{key}'")
        self.filters = filters

    def _any(self, key: str, *values: str) -> bool:
        wanted = self.filters.get(key)
        if not wanted:
            return True
        return any(v in wanted for v in values if v)

    def __call__(self, message: dict[str, Any]) -> bool:
        actor = message.get("Actor", {})
        attrs: dict[str, str] = actor.get("Attributes", {})
        actor_id = str(actor.get("ID", ""))
        type_ = str(message.get("Type", ""))
        action = str(message.get("Action", ""))
        if not self._any("type", type_):
            return False
        # "health_status: healthy" matches the filter "health_status".
        if not self._any("event", action, action.split(":", 1)[0]):
            return False
        if not self._any("scope", str(message.get("scope", ""))):
            return False
        for key in ("container", "image", "network", "volume"):
            if key in self.filters and type_ == key:
                names = (actor_id, actor_id[:12], attrs.get("name", ""))
                if not self._any(key, *names):
                    return False
            elif key in self.filters and type_ != key:
                if key == "image" and type_ == "container":
                    if not self._any("image", attrs.get("image", "")):
                        return False
                elif key == "container" and type_ in ("network", "volume"):
                    if not self._any("container", attrs.get("container", "")):
                        return False
                else:
                    return False
        for label in self.filters.get("label", []):
            key, sep, value = label.partition("=")
            if key not in attrs or (sep and attrs[key] != value):
                return False
        return True
