"""What a tenant's container create asks for, as its tenancy bounds it.

Policy: a tenant's container may not reach the host, nor be more than a
Docker container by default is. Refused with 403, in the words dockerd uses
when an authorization plugin refuses a request ("authorization denied by
plugin NAME: MESSAGE"): host bind mounts (-v /path, --mount type=bind),
--privileged (and privileged execs), --network host, devices (--device,
--device-cgroup-rule, --gpus) and capabilities beyond Docker's default set
(--cap-add; --cap-drop is always fine). `container:X` of another tenant's X
is no policy matter: X is absent for it (404), as every other reference.

A tenant names its own objects only (hbd.services.scope): every container
and network that its create body refers to is qualified with its project
before anything looks it up, so another tenant's is absent (404 or, where
dockerd answers 400 for a missing one, 400), never found. Volumes are
qualified where mounts are resolved (mounts.py), as their names are parsed
there.
"""

from __future__ import annotations

from typing import Any

from hbd.errors import Forbidden
from hbd.services.container import capabilities
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


POLICY = "hbd-tenancy"


def refused(what: str) -> Forbidden:
    return Forbidden(f"authorization denied by plugin {POLICY}: {what} is not allowed for "
                     "tenant containers")


def check_policy(host_config: dict[str, Any], scope: Scope) -> None:
    """A tenant's HostConfig (as requested) against the tenant policy."""
    if not scope.is_tenant:
        return
    for spec in host_config.get("Binds") or []:
        if str(spec).startswith("/"):
            raise refused(f"host bind mount {str(spec).split(':')[0]}")
    for mount in host_config.get("Mounts") or []:
        if isinstance(mount, dict) and mount.get("Type") == "bind":
            raise refused(f"host bind mount {mount.get('Source') or ''}".rstrip())
    if host_config.get("Privileged"):
        raise refused("--privileged")
    if str(host_config.get("NetworkMode") or "") == "host":
        raise refused("--network host")
    if host_config.get("Devices") or host_config.get("DeviceCgroupRules") or \
            host_config.get("DeviceRequests"):
        raise refused("access to devices")
    extra = [cap for cap in capabilities.normalize(host_config.get("CapAdd") or [], "CapAdd")
             if cap not in capabilities.DEFAULT]
    if extra:
        raise refused(f"--cap-add {', '.join(extra)} (beyond Docker's default capabilities)")


def check_exec_policy(privileged: bool, scope: Scope) -> None:
    if scope.is_tenant and privileged:
        raise refused("a privileged exec")
