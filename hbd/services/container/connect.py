"""`docker network connect` and `disconnect`: a stopped container's
configuration for its next start, or, for a running one, a NIC slot of its
guest moved in or out of its network namespace at once, with DNS, its
/etc/hosts and inspect following."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hbd.errors import Forbidden, InvalidParameter, SystemError_
from hbd.services.container import network as cn
from hbd.services.container.model import Container, Run
from hbd.services.container.namespaces import peer_ref
from hbd.services.container.sandboxes import EndpointPlan, SandboxManager
from hbd.services.container.start import rewrite_hosts
from hbd.services.container.store import ContainerStore
from hbd.services.network.model import Network
from hbd.services.network.service import NetworkService


@dataclass
class Connections:
    store: ContainerStore
    networks: NetworkService
    sandboxes: SandboxManager

    async def connect(self, ref: str, network_ref: str, settings: dict[str, Any]) -> None:
        c = self.store.get(ref)
        n = self.networks.get(network_ref)
        mode = str(c.host_config.get("NetworkMode") or "")
        if peer_ref(mode):
            raise Forbidden("container sharing network namespace with another container or "
                            "host cannot be connected to any other network")
        if n.name in c.networks:
            raise Forbidden(f"endpoint with name {c.name.lstrip('/')} already exists in "
                            f"network {n.name}")
        if not c.networks and mode == "none":
            raise InvalidParameter("container cannot be connected to multiple networks with "
                                   "one of the networks in private (none) mode")
        attach = cn.attachments_for_create({"NetworkMode": n.name},
                                           cn.endpoints_config({"EndpointsConfig":
                                                                {n.name: settings or {}}}),
                                           self.networks)
        run = c.run
        if run is not None and c.state.running and c.run_network is not None:
            await self._connect_running(c, run, n, attach[n.name])
        c.networks.update(attach)
        self.store.save(c)
        self.store.events.publish("network", "connect", n.id,
                                  {"container": c.id, "name": n.name, "type": n.driver})

    async def _connect_running(self, c: Container, run: Run, n: Network,
                               settings: dict[str, Any]) -> None:
        assert c.run_network is not None
        endpoint = await self.networks.add_endpoint(
            c.id, c.run_network, n.name, settings, [c.own_name, c.id[:12]])
        try:
            await self.sandboxes.connect(run.guest, EndpointPlan(
                n.name, endpoint, n.bridge, n.internal, n.namespace))
        except BaseException:
            await self.networks.remove_endpoint(c.id, c.run_network, n.name)
            raise
        await rewrite_hosts(self.store, self.sandboxes, c)

    async def disconnect(self, ref: str, network_ref: str, force: bool = False) -> None:
        c = self.store.get(ref)
        n = self.networks.get(network_ref)
        run = c.run
        running = run is not None and c.state.running
        if n.name not in c.networks:
            if running:
                raise SystemError_(f"container {c.id} is not connected to network {n.name}")
            raise Forbidden(f"container {c.id} is not connected to network {n.name}")
        if run is not None and running and c.run_network is not None and \
                n.name in c.run_network.endpoints:
            await self.sandboxes.disconnect(run.guest, n.name)
            await self.networks.remove_endpoint(c.id, c.run_network, n.name)
            await rewrite_hosts(self.store, self.sandboxes, c)
        del c.networks[n.name]
        self.store.save(c)
        self.store.events.publish("network", "disconnect", n.id,
                                  {"container": c.id, "name": n.name, "type": n.driver})
