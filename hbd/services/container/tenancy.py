"""What a tenant's container create asks for, as its tenancy bounds it.

Policy: a tenant's container may not reach the host, nor be more than a
Docker container by default is. Refused with 403, in the words dockerd uses
when an authorization plugin refuses a request ("authorization denied by
plugin NAME: MESSAGE"): host bind mounts (-v /path, --mount type=bind),
--privileged (and privileged execs), --network host, devices (--device,
--device-cgroup-rule, --gpus) and capabilities beyond Docker's default set
(--cap-add; --cap-drop is always fine). Published ports are bound as the
tenant asks, within what the operator allows ([tenants] in hbd.toml,
PublishPolicy): host ports in its ranges, on its host addresses; an
ephemeral host port only where the host's ephemeral range is all allowed.
`container:X` of another tenant's X is no policy matter: X is absent for it
(404), as every other reference.

A tenant names its own objects only (hbd.services.scope): every container
and network that its create body refers to is qualified with its project
before anything looks it up, so another tenant's is absent (404 or, where
dockerd answers 400 for a missing one, 400), never found. Volumes are
qualified where mounts are resolved (mounts.py), as their names are parsed
there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbd.config import TenantSettings, parse_port_ranges
from hbd.errors import Forbidden
from hbd.services.container import capabilities
from hbd.services.container.namespaces import CONTAINER_PREFIX, peer_ref
from hbd.services.network.model import PublishedPort
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


def refused(what: str, allowed: str = "") -> Forbidden:
    return Forbidden(f"authorization denied by plugin {POLICY}: {what} is not allowed for "
                     "tenant containers" + (f" (the operator allows {allowed})" if allowed
                                            else ""))


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


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
ALL_ADDRESSES = (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))


def host_ephemeral_range() -> tuple[int, int]:
    """The host's ephemeral ports, where a port published without a host port lands."""
    try:
        low, high = (int(n) for n in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


@dataclass(frozen=True)
class PublishPolicy:
    """The host ports and addresses a tenant's container may publish on."""

    ranges: tuple[tuple[int, int], ...] = ((1024, 65535),)
    addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()
    ephemeral: tuple[int, int] = (32768, 60999)

    @classmethod
    def from_settings(cls, settings: TenantSettings) -> PublishPolicy:
        return cls(parse_port_ranges(settings.publish_ports, "[tenants] publish_ports"),
                   frozenset(ipaddress.ip_address(a) for a in settings.publish_addresses),
                   host_ephemeral_range())

    def _port_allowed(self, low: int, high: int) -> bool:
        return any(first <= low and high <= last for first, last in self.ranges)

    @property
    def _ranges_text(self) -> str:
        return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in self.ranges)

    def check(self, ports: Iterable[PublishedPort], scope: Scope) -> None:
        """A tenant's published ports against the policy (the operator's are free)."""
        if not scope.is_tenant:
            return
        for port in ports:
            if port.host_port == 0 and not self._port_allowed(*self.ephemeral):
                raise refused(f"an ephemeral host port for {port.container_port}/"
                              f"{port.protocol}", self._ranges_text)
            if port.host_port and not self._port_allowed(port.host_port, port.host_port):
                raise refused(f"host port {port.host_port}", self._ranges_text)
            self._check_address(port.host_ip)

    def _check_address(self, host_ip: str) -> None:
        if not self.addresses:
            return
        try:
            wanted = [ipaddress.ip_address(host_ip)] if host_ip else list(ALL_ADDRESSES)
        except ValueError:
            return  # not an address: the bad spec's 400 comes from where ports are parsed
        if not any(w in self.addresses for w in wanted):
            shown = ", ".join(sorted(str(a) for a in self.addresses))
            raise refused(f"host address {host_ip or '0.0.0.0'}", shown)
