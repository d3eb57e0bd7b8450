"""What a network is, and what a container's run holds on its networks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Protocol

from hbd.errors import NotFound

DEFAULT_BRIDGE = "bridge"
PREDEFINED = ("bridge", "host", "none")


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

    @property
    def network(self) -> ipaddress.IPv4Network | None:
        return ipaddress.IPv4Network(self.subnet) if self.subnet else None

    @property
    def builtin(self) -> bool:
        return self.name in PREDEFINED


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

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Endpoint:
        return cls(rec["network_id"], rec["endpoint_id"], rec["ip"], rec["prefix"],
                   rec["gateway"], rec["mac"], rec.get("ifname", "eth0"), rec["aliases"],
                   rec["dns_names"])


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
