"""What the API shows of containers: inspect, the `ps` list, and a network's
members."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hbd.services.container import links
from hbd.services.container import network as cn
from hbd.services.container.filters import ContainerFilter
from hbd.services.container.model import Container
from hbd.services.container.store import ContainerStore
from hbd.services.image.store import ImageStore
from hbd.services.network.service import NetworkService
from hbd.services.scope import OPERATOR, Scope
from hbd.services.timefmt import parse_rfc3339
from hbd.services.volume.service import VolumeService


@dataclass
class ContainerViews:
    store: ContainerStore
    images: ImageStore
    networks: NetworkService
    volumes: VolumeService

    def inspect(self, ref: str, scope: Scope = OPERATOR) -> dict[str, Any]:
        return scope.shown(self._inspect(self.store.get(scope.qualify(ref))))

    def _inspect(self, c: Container) -> dict[str, Any]:
        hc = dict(c.host_config)
        hc["Links"] = links.view(c, self.store)
        return {
            "Id": c.id,
            "Created": c.created,
            "Path": c.path,
            "Args": c.args,
            "State": c.state.view(c.health),
            "Image": c.image_id,
            "ResolvConfPath": "",
            "HostnamePath": "",
            "HostsPath": "",
            "LogPath": self.store.log_path_shown(c),
            "Name": c.name,
            "RestartCount": c.restart_count,
            "Driver": "hbd-ext4",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": None,
            "HostConfig": hc,
            "GraphDriver": {"Name": "hbd-ext4", "Data": {
                "ImageDisk": str(self.images.disk_path(self.images.images[c.image_id]))
                if c.image_id in self.images.images else "",
                "ScratchDisk": str(self.store.dir(c) / "scratch.qcow2"),
            }},
            "Mounts": [m.view(self.volumes) for m in c.mounts],
            "Config": self._config_view(c),
            "NetworkSettings": cn.network_settings(self.networks, c.networks, c.config,
                                                   c.run_network),
        }

    @staticmethod
    def _config_view(c: Container) -> dict[str, Any]:
        """Config, with the MAC of the NetworkMode network as MacAddress (what
        API clients before 1.44 set there), as dockerd shows it."""
        mac = c.config.get("MacAddress") or cn.desired_mac(c.host_config, c.networks)
        return {**c.config, "MacAddress": mac} if mac else c.config

    def summary(self, c: Container) -> dict[str, Any]:
        command = " ".join([c.path, *c.args]) if c.args else c.path
        return {
            "Id": c.id,
            "Names": [c.name],
            "Image": c.config.get("Image", ""),
            "ImageID": c.image_id,
            "Command": command,
            "Created": int(parse_rfc3339(c.created)),
            "Ports": cn.summary_ports(c.run_network, c.config),
            "Labels": c.config.get("Labels") or {},
            "State": c.state.status,
            "Status": c.state.describe(c.health_status()),
            "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode", "default")},
            "Mounts": [m.view(self.volumes) for m in c.mounts],
            "NetworkSettings": {"Networks": cn.network_settings(
                self.networks, c.networks, c.config, c.run_network)["Networks"]},
        }

    def list_summaries(self, all_: bool = False, limit: int = -1,
                       filters: dict[str, list[str]] | None = None,
                       scope: Scope = OPERATOR) -> list[dict[str, Any]]:
        matches = ContainerFilter(filters or {}, self.store,
                                  lambda ref: self.images.get(ref, scope), scope)
        items = sorted(self.store.visible(scope), key=lambda c: c.created, reverse=True)
        # A status or exited filter implies --all, as in dockerd.
        show_all = all_ or limit > 0 or "status" in matches.filters or \
            "exited" in matches.filters
        items = [c for c in items if (show_all or c.state.running) and matches(c)]
        if limit > 0:
            items = items[:limit]
        return scope.shown([self.summary(c) for c in items])

    def network_members(self, network_name: str) -> dict[str, dict[str, Any]]:
        """`network inspect` Containers: running members with their endpoints."""
        out = {}
        for c in self.store.containers.values():
            run = c.run_network
            endpoint = run.endpoints.get(network_name) if run is not None else None
            if endpoint is None:
                continue
            out[c.id] = {"Name": c.name.lstrip("/"), "EndpointID": endpoint.endpoint_id,
                         "MacAddress": endpoint.mac,
                         "IPv4Address": f"{endpoint.ip}/{endpoint.prefix}",
                         "IPv6Address": f"{endpoint.ip6}/{endpoint.prefix6}"
                         if endpoint.ip6 else ""}
        return out
