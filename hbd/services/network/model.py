"""What a network is, and what a container's run holds on its networks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hbd.errors import NotFound, SystemError_
from hbd.services.scope import split_owner

DEFAULT_BRIDGE = "bridge"
PREDEFINED = ("bridge", "host", "none")
# The predefined networks every tenant shares: neither carries traffic. Each
# tenant has a default bridge of its own (`bridge@<project>`, hbd.services.scope).
SHARED = ("host", "none")


def is_default_bridge(name: str) -> bool:
    """The operator's default bridge, or a tenant's own."""
    return split_owner(name)[0] == DEFAULT_BRIDGE


def default_bridge_in(names: Iterable[str]) -> str | None:
    """Which of these networks (a container's) is a default bridge."""
    return next((name for name in names if is_default_bridge(name)), None)


class NetworkNotFound(NotFound):
    pass


def network_not_found(ref: str) -> NetworkNotFound:
    return NetworkNotFound(f"network {ref} not found")


@dataclass
class Network:
    id: str
    name: str
    driver: str
    created: str
    bridge: str = ""
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    internal: bool = False
    attachable: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    ipam_options: dict[str, str] = field(default_factory=dict)
    # IPv6: the subnet may be configured without IPv6 being enabled (dockerd
    # keeps it, and gives containers no IPv6 address then).
    enable_ipv6: bool = False
    subnet6: str = ""
    gateway6: str = ""  # as configured: "" means the subnet's first address
    ip_range6: str = ""
    # IPAM AuxiliaryAddresses: name -> address, never leased to a container.
    aux: dict[str, str] = field(default_factory=dict)
    aux6: dict[str, str] = field(default_factory=dict)
    # The host network namespace of its bridge: "" the host's; a tenant's
    # address space's (network/spaces.py) for a tenant's network.
    namespace: str = ""

    @property
    def network(self) -> ipaddress.IPv4Network | None:
        return ipaddress.IPv4Network(self.subnet) if self.subnet else None

    @property
    def network6(self) -> ipaddress.IPv6Network | None:
        return ipaddress.IPv6Network(self.subnet6) if self.subnet6 else None

    @property
    def ipv6(self) -> bool:
        """Whether containers on it get IPv6 addresses."""
        return self.enable_ipv6 and bool(self.subnet6)

    @property
    def ipv6_gateway(self) -> str:
        """The bridge's IPv6 address, the containers' IPv6 gateway."""
        if not self.ipv6:
            return ""
        return self.gateway6 or str(ipaddress.IPv6Network(self.subnet6).network_address + 1)

    @property
    def builtin(self) -> bool:
        """Predefined: the operator's three, and each tenant's default bridge."""
        return split_owner(self.name)[0] in PREDEFINED

    @property
    def shared(self) -> bool:
        """One of the predefined networks every tenant sees."""
        return self.name in SHARED


@dataclass
class Endpoint:
    """A container's attachment to one network for one run."""

    network_id: str
    endpoint_id: str
    ip: str
    prefix: int
    gateway: str
    mac: str
    ifname: str  # the interface's name in the container: eth0, eth1…
    aliases: list[str]
    dns_names: list[str]
    ip6: str = ""
    prefix6: int = 0
    gateway6: str = ""
    link_local: list[str] = field(default_factory=list)  # CIDRs (--link-local-ip)
    # Legacy links on a user-defined network: alias -> the name it stands for,
    # resolved by DNS for this container only.
    links: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Endpoint:
        return cls(rec["network_id"], rec["endpoint_id"], rec["ip"], rec["prefix"],
                   rec["gateway"], rec["mac"], rec.get("ifname", "eth0"), rec["aliases"],
                   rec["dns_names"], rec.get("ip6", ""), rec.get("prefix6", 0),
                   rec.get("gateway6", ""), list(rec.get("link_local", [])),
                   dict(rec.get("links", {})))

    @property
    def addresses(self) -> list[str]:
        """Its leased addresses (IPv4, and IPv6 when the network has it)."""
        return [a for a in (self.ip, self.ip6) if a]

    @property
    def cidrs(self) -> list[str]:
        """Every address of the interface: the IPv4 one first (the others are
        aliases of it in the guest), then link-local ones, then IPv6."""
        own = [f"{self.ip}/{self.prefix}"]
        link4 = [c for c in self.link_local if ":" not in c]
        link6 = [c for c in self.link_local if ":" in c]
        return own + link4 + ([f"{self.ip6}/{self.prefix6}"] if self.ip6 else []) + link6


def parse_link(text: str) -> tuple[str, str]:
    """A legacy link, `name:alias` or `name`, as (name, alias): dockerd's
    opts.ParseLink, which also takes inspect's own `/name:/parent/alias`."""
    if not text:
        raise SystemError_("empty string specified for links")
    parts = text.split(":")
    if len(parts) > 2:
        raise SystemError_(f"bad format for links: {text}")
    if len(parts) == 1:
        return text, text
    name, alias = parts
    if name.startswith("/"):
        return name[1:], alias.rsplit("/", 1)[-1]
    return name, alias


@dataclass
class PublishedPort:
    container_port: int
    protocol: str
    host_ip: str
    host_port: int


@dataclass
class RunNetworking:
    """A running container's endpoints (network name -> endpoint, in the order
    it joined them) and published ports: what to undo after its run."""

    nameserver: str
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    ports: list[PublishedPort] = field(default_factory=list)

    def next_ifname(self) -> str:
        taken = {e.ifname for e in self.endpoints.values()}
        return next(f"eth{i}" for i in range(len(taken) + 1) if f"eth{i}" not in taken)


class NetworkUsers(Protocol):
    """What the network service asks of the containers: which are configured on
    a network, and the running ones' endpoints there. The container service
    answers; handed in so that networks do not depend on containers."""

    def configured_on(self, network_name: str) -> list[str]: ...

    def network_members(self, network_name: str) -> dict[str, dict[str, Any]]: ...
