"""Connecting a stopped container to a network and disconnecting it: the
configuration its next start brings up (a microvm has no NIC hotplug)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hbd.errors import Conflict, Forbidden
from hbd.services.container import network as cn
from hbd.services.container.store import ContainerStore
from hbd.services.network.service import NetworkService


@dataclass
class Connections:
    store: ContainerStore
    networks: NetworkService

    def connect(self, ref: str, network_ref: str, settings: dict[str, Any]) -> None:
        c = self.store.get(ref)
        n = self.networks.get(network_ref)
        if c.state.running:
            raise Conflict(
                f"cannot connect running container {c.name.lstrip('/')} to network {n.name}: "
                "a microvm has no hotplug; stop the container, connect it, start it again")
        if n.name in c.networks:
            raise Forbidden(f"endpoint with name {c.name.lstrip('/')} already exists in "
                            f"network {n.name}")
        if not c.networks and c.host_config.get("NetworkMode") == "none":
            raise Forbidden("container cannot be disconnected from host network or "
                            "connected to host network")
        attach = cn.attachments_for_create({"NetworkMode": n.name},
                                           {"EndpointsConfig": {n.name: settings or {}}},
                                           self.networks)
        c.networks.update(attach)
        self.store.save(c)
        self.store.events.publish("network", "connect", n.id,
                                  {"container": c.id, "name": n.name, "type": n.driver})

    def disconnect(self, ref: str, network_ref: str, force: bool = False) -> None:
        c = self.store.get(ref)
        n = self.networks.get(network_ref)
        if c.state.running and not force:
            raise Conflict(
                f"cannot disconnect running container {c.name.lstrip('/')} from network "
                f"{n.name}: a microvm has no hotplug; stop the container first")
        if n.name not in c.networks:
            raise Forbidden(f"container {c.id} is not connected to network {n.name}")
        del c.networks[n.name]
        self.store.save(c)
        self.store.events.publish("network", "disconnect", n.id,
                                  {"container": c.id, "name": n.name, "type": n.driver})
