"""What a tenant's container create asks for, as its tenancy bounds it.

A tenant names its own objects only (hbd.services.scope): every container
and network that its create body refers to is qualified with its project
before anything looks it up, so another tenant's is absent (404 or, where
dockerd answers 400 for a missing one, 400), never found. Volumes are
qualified where mounts are resolved (mounts.py), as their names are parsed
there.
"""

from __future__ import annotations

from typing import Any

from hbd.services.container.namespaces import CONTAINER_PREFIX, peer_ref
from hbd.services.network.service import network_ref_in
from hbd.services.scope import Scope


def qualify_references(host_config: dict[str, Any], endpoints: dict[str, dict[str, Any]],
                       scope: Scope) -> dict[str, dict[str, Any]]:
    """HostConfig's container and network references made the tenant's own
    (in place), and the endpoints keyed by the tenant's own networks."""
    if not scope.is_tenant:
        return endpoints
    for key in ("NetworkMode", "PidMode", "IpcMode"):
        mode = str(host_config.get(key) or "")
        if peer_ref(mode):
            host_config[key] = CONTAINER_PREFIX + scope.qualify(peer_ref(mode))
        elif key == "NetworkMode" and mode:
            host_config[key] = network_ref_in(scope, mode)
    for key in ("Links", "VolumesFrom"):
        if host_config.get(key):
            host_config[key] = _qualified_firsts(host_config[key], scope)
    return {network_ref_in(scope, name): settings for name, settings in endpoints.items()}


def _qualified_firsts(specs: Any, scope: Scope) -> list[str]:
    """`name[:rest]` specs (links, volumes-from) with each name qualified."""
    out = []
    for spec in specs or []:
        name, colon, rest = str(spec).partition(":")
        out.append(scope.qualify(name) + colon + rest)
    return out

