"""Address spaces: each tenant's networks live in a network namespace of its
own, so that two tenants may use the same subnet and no packet has a path
from one to the other.

The operator's networks are bridges in the host's namespace, as ever. A
tenant project's networks are bridges in its namespace
(`hbd<tag>-<8 hex of a hash of the project id>`, named so that it outlives
hbd), which reaches the host by an uplink, a veth pair (`hu<tag><the same 8
hex>` at both ends) addressed from a small subnet of the transfer range
(hbd.toml: `network.tenant_transfer_range`), the host end first. Inside:
the default route through the host end, masquerade of its bridges out of
the uplink, the same isolation, loopback guard and anti-spoofing as on the
host, and the second half of each published port's DNAT (from the uplink's
address to the container). On the host: the uplink is one more bridge to
the rules (masqueraded, isolated from every other bridge and uplink), the
first half of the DNAT (from the published address to the uplink's), and a
namespace reaches the host only by its own uplink's address.

Subnets are unique per space: a tenant's choice is checked against its own
networks and its uplink only, and the default pools are searched per space.

Pure functions here; the network service does the work.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from hbd.drivers.nftrules import BridgeRules, PortForward, PortPin, Ruleset, Uplink

HOST = ""  # the host's namespace: the operator's networks
DEFAULT_TRANSFER_RANGE = "100.64.0.0/10"
TRANSFER_PREFIX = 30


@dataclass
class AddressSpace:
    """One tenant project's namespace and its uplink."""

    project: str
    namespace: str
    uplink: str  # the veth's name, the same at both ends
    subnet: str  # the uplink's, from the transfer range

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def host_address(self) -> str:
        """The uplink's host end: the namespace's default gateway."""
        return str(next(self.network.hosts()))

    @property
    def inner_address(self) -> str:
        """The uplink's end in the namespace: where the host sends published ports."""
        return str(list(self.network.hosts())[1])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, rec: dict[str, Any]) -> AddressSpace:
        return cls(str(rec["project"]), str(rec["namespace"]), str(rec["uplink"]),
                   str(rec["subnet"]))


def space_names(tag: str, project: str) -> tuple[str, str]:
    """The namespace and uplink names of a project's space in the daemon of `tag`."""
    digest = hashlib.sha256(project.encode()).hexdigest()[:8]
    return f"hbd{tag}-{digest}", f"hu{tag}{digest}"


def free_subnet(pools: Iterable[ipaddress.IPv4Network],
                used: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network | None:
    """The first pool that overlaps nothing `used`."""
    taken = list(used)
    return next((p for p in pools if not any(p.overlaps(u) for u in taken)), None)


def transfer_subnet(transfer_range: ipaddress.IPv4Network,
                    used: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network | None:
    """A /30 of the range for a new uplink, clear of `used` (the other
    uplinks' and whatever the host routes)."""
    taken = [u for u in used if u.overlaps(transfer_range)]
    if transfer_range.prefixlen > TRANSFER_PREFIX:
        return None
    for candidate in transfer_range.subnets(new_prefix=TRANSFER_PREFIX):
        clash = next((u for u in taken if candidate.overlaps(u)), None)
        if clash is None:
            return candidate
    return None


@dataclass
class SpaceRules:
    """What the rules of every namespace are made of, each item with the
    namespace it belongs to (HOST or a space's)."""

    spaces: list[AddressSpace] = field(default_factory=list)
    bridges: list[tuple[str, BridgeRules]] = field(default_factory=list)
    # Published ports as the user sees them: to the container's address in its space.
    forwards: list[tuple[str, PortForward]] = field(default_factory=list)
    pins: list[tuple[str, PortPin]] = field(default_factory=list)
    transfer_range: str = DEFAULT_TRANSFER_RANGE


def rulesets(parts: SpaceRules) -> dict[str, Ruleset]:
    """The Ruleset of the host's namespace (HOST) and of each space's.

    A port a tenant's container publishes is DNATed twice: on the host from
    where it is published to the uplink's inner address (same port), in the
    space from there to the container."""
    out = {HOST: Ruleset(transfer_range=parts.transfer_range)}
    by_namespace = {s.namespace: s for s in parts.spaces}
    for space in parts.spaces:
        out[space.namespace] = Ruleset(uplink=space.uplink)
        out[HOST].uplinks.append(Uplink(space.uplink, space.subnet, space.host_address))
    for namespace, bridge in parts.bridges:
        if namespace in out:
            out[namespace].bridges.append(bridge)
    for namespace, pin in parts.pins:
        if namespace in out:
            out[namespace].pins.append(pin)
    for namespace, f in parts.forwards:
        tenant = by_namespace.get(namespace)
        if namespace == HOST:
            out[HOST].forwards.append(f)
        elif tenant is not None:
            out[HOST].forwards.append(PortForward(f.protocol, f.host_ip, f.host_port,
                                                  tenant.inner_address, f.host_port))
            out[namespace].forwards.append(PortForward(f.protocol, tenant.inner_address,
                                                       f.host_port, f.guest_ip,
                                                       f.guest_port))
    return out
