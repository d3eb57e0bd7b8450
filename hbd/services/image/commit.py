"""The config of the image `docker commit` makes, as dockerd makes it.

The starting point is the container's config, or the config in the request
body when there is one (docker-py's `commit(conf=...)`). The `--change`
instructions apply to that; a body config is then completed from the
container's config field by field (moby's daemon/commit.go `merge`, which
dockerd runs with or without a body).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hbd.errors import InvalidParameter
from hbd.services.container import config as cc
from hbd.services.image.changes import apply_changes
from hbd.services.image.model import Image
from hbd.services.timefmt import rfc3339_nano

# What belongs to a container's run, not to the image it leaves behind.
_RUN_ONLY = ("Hostname", "AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin",
             "StdinOnce")
_HEALTH_FIELDS = ("Test", "Interval", "Timeout", "StartPeriod", "Retries")


@dataclass
class CommitRequest:
    """What `POST /commit` asks for, beside the container."""

    comment: str = ""
    author: str = ""
    body: dict[str, Any] | None = None  # a container config, or None/{} for none
    changes: tuple[str, ...] = ()


def committed_config(base: Image, container_id: str, container_config: dict[str, Any],
                     created_by: str, request: CommitRequest) -> dict[str, Any]:
    """The new image's config blob, but for its rootfs (the caller adds the layer)."""
    given = body_config(request.body)
    config = apply_changes(given if given is not None else container_config,
                           list(request.changes))
    merge(config, container_config)
    image: dict[str, Any] = copy.deepcopy(base.config)
    image["config"] = {k: v for k, v in config.items()
                       if k not in _RUN_ONLY and v not in (None, "", [], {})}
    image["created"] = rfc3339_nano()
    image["container"] = container_id
    for key, value in (("author", request.author), ("comment", request.comment)):
        if value:
            image[key] = value
    image["history"] = [*(image.get("history") or []), {
        "created": image["created"], "created_by": created_by,
        **({"comment": request.comment} if request.comment else {}),
        **({"author": request.author} if request.author else {})}]
    return image


def body_config(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The request body's config, typed as Go decodes it; None for none."""
    if not body:
        return None
    cc.check_types(body, cc.CONFIG_TYPES, "ContainerConfigWrapper")
    labels = body.get("Labels") or {}
    for value in labels.values():
        if value is not None and not isinstance(value, str):
            raise InvalidParameter(f"json: cannot unmarshal {_json_kind(value)} into Go "
                                   "struct field ContainerConfigWrapper.Labels of type string")
    return cc.normalize_config(body)


def _json_kind(value: Any) -> str:
    """What Go's decoder calls a JSON value's kind in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "array" if isinstance(value, list) else "object"


def merge(user: dict[str, Any], container: dict[str, Any]) -> None:
    """Fill what the body's config left out from the container's config."""
    for key in ("User", "WorkingDir", "StopSignal"):
        if not user.get(key):
            user[key] = container.get(key)
    for key in ("ExposedPorts", "Volumes"):
        user[key] = {**(container.get(key) or {}), **(user.get(key) or {})} or None
    user["Env"] = _merge_env(user.get("Env") or [], container.get("Env") or []) or None
    user["Labels"] = {**(container.get("Labels") or {}), **(user.get("Labels") or {})}
    if not user.get("Entrypoint"):
        if not user.get("Cmd"):
            user["Cmd"] = container.get("Cmd")
        if user.get("Entrypoint") is None:
            user["Entrypoint"] = container.get("Entrypoint")
    user["Healthcheck"] = _merge_health(user.get("Healthcheck"), container.get("Healthcheck"))


def _merge_env(user: list[str], container: list[str]) -> list[str]:
    names = {e.split("=", 1)[0] for e in user}
    return [*user, *(e for e in container if e.split("=", 1)[0] not in names)]


def _merge_health(user: dict[str, Any] | None, container: dict[str, Any] | None
                  ) -> dict[str, Any] | None:
    if not container or user is None:
        return user or container
    return {**user, **{k: container[k] for k in _HEALTH_FIELDS
                       if not user.get(k) and container.get(k)}}
