"""Wiring: builds the services on top of the drivers for one data root."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from hbd.config import Config
from hbd.drivers.accel import choose_accel
from hbd.drivers.guest import GuestDriver, QemuGuestDriver
from hbd.drivers.template import TemplateStore
from hbd.drivers.vm import Confinement, QemuMicrovmDriver
from hbd.errors import InvalidParameter
from hbd.events import EventBus
from hbd.services.build.builder import Builder
from hbd.services.container.execs import ExecService
from hbd.services.container.files import ContainerFiles
from hbd.services.container.scratch import ScratchDisks
from hbd.services.container.service import ContainerService
from hbd.services.image.distribution import Distribution
from hbd.services.image.registry import RegistryClient, RegistrySettings
from hbd.services.image.store import ImageStore
from hbd.services.network.dns import DnsServer, NetworkView
from hbd.services.network.model import is_default_bridge
from hbd.services.network.service import NetworkService, instance_tag
from hbd.services.plugin.service import PluginService
from hbd.services.pod.service import PodService
from hbd.services.quota import QuotaGuard
from hbd.services.system.disk_usage import DiskUsage
from hbd.services.system.service import SystemService
from hbd.services.volume.direct import DirectVolumes
from hbd.services.volume.service import VolumeService
from hbd.store import StateStore

log = logging.getLogger(__name__)


def private_root(root: Path) -> None:
    """data-root and exec-root as dockerd keeps them: 0710 root's. Nothing
    else reaches into them: a jailed QEMU gets its files as descriptors."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o710)


@dataclass
class Daemon:
    config: Config
    guest_driver: GuestDriver | None = None
    accel: str = ""
    templates: TemplateStore | None = None
    confinement: Confinement | None = None
    state: StateStore = field(init=False)
    events: EventBus = field(init=False)
    images: ImageStore = field(init=False)
    registry: RegistryClient = field(init=False)
    distribution: Distribution = field(init=False)
    networks: NetworkService = field(init=False)
    dns: DnsServer = field(init=False)
    volumes: VolumeService = field(init=False)
    plugins: PluginService = field(init=False)
    containers: ContainerService = field(init=False)
    execs: ExecService = field(init=False)
    files: ContainerFiles = field(init=False)
    builder: Builder = field(init=False)
    system: SystemService = field(init=False)
    disk_usage: DiskUsage = field(init=False)
    pods: PodService = field(init=False)

    async def start(self) -> None:
        config = self.config
        for root in (config.data_root, config.exec_root):
            private_root(root)
        self.state = StateStore(config.data_root / "state")
        self.events = EventBus()
        self.images = ImageStore(self.state, config.data_root / "image", self.events)
        self.registry = RegistryClient(RegistrySettings(
            mirrors=list(config.registry.mirrors),
            insecure=list(config.registry.insecure_registries)))
        self.distribution = Distribution(self.images, self.registry)
        scratch = ScratchDisks(config.data_root / "vm")
        await scratch.prepare()
        if self.guest_driver is None:
            kernel = config.vm.kernel_path()
            for path in (kernel, config.vm.initrd_path()):
                if not path.exists():
                    raise InvalidParameter(
                        f"{path} is missing: build the guest with kernels/build.sh")
            self.accel = await choose_accel(config.vm.accel, config.vm.qemu, kernel,
                                            config.exec_root)
            vm_driver = QemuMicrovmDriver(config.vm.qemu, self._confinement())
            templates = TemplateStore(
                vm_driver, config.data_root / "templates",
                f"hbt{instance_tag(config.data_root)}", config.vm.boot_timeout)
            await templates.start()
            self.templates = templates
            self.guest_driver = QemuGuestDriver(vm_driver, config.vm.boot_timeout,
                                                config.vm.boot_retries, templates)
        else:
            self.accel = self.accel or "fake"
        log.info("guest accelerator: %s", self.accel)
        self.networks = NetworkService(self.state, self.events,
                                       instance_tag(config.data_root),
                                       config.network.tenant_transfer_range)
        await self.networks.start()
        self.dns = DnsServer(self._dns_views)
        self.networks.on_change.append(self.dns.refresh)
        await self.dns.reconcile()
        self.volumes = VolumeService(
            self.state, config.data_root / "volumes", self.events,
            QuotaGuard(config.quotas, config.vm.vcpus, config.vm.memory_mib),
            direct=DirectVolumes(Path(config.volumes.direct_volumes)))
        self.plugins = PluginService(self.state, config.data_root / "plugins", self.events,
                                     self.registry)
        self.containers = ContainerService(config, self.state, self.images, self.networks,
                                           self.volumes, self.events, self.guest_driver,
                                           scratch, self.accel)
        # Images, volumes and networks ask which containers use them; the
        # container service answers (they are below it and do not import it).
        self.images.container_usage = self.containers.store.image_usage
        self.volumes.container_users = self.containers.volume_users
        self.networks.users = self.containers
        self.execs = ExecService(self.containers, self.events)
        self.files = ContainerFiles(self.containers)
        self.builder = Builder(self.images, self.containers, self.files, self.distribution,
                               self.state, config.data_root / "build")
        self.system = SystemService(config, self.state, self.images, self.containers,
                                    self.events, self.accel)
        self.disk_usage = DiskUsage(self.images, self.containers, self.volumes, self.builder)
        self.pods = PodService(config.cri, self.containers, self.execs, self.images,
                               self.networks)
        await self.containers.restore()
        await self.containers.sandboxes.prepare()

    def _confinement(self) -> Confinement:
        if not self.config.vm.jail:
            log.warning("vm.jail is off: guests' QEMU runs as root, unconfined")
            return Confinement()
        confinement = Confinement.full(
            self.config.exec_root, f"hbd-{instance_tag(self.config.data_root)}")
        if confinement.cgroups is not None:
            confinement.cgroups.sweep()
        self.confinement = confinement
        return confinement

    def _dns_views(self) -> list[NetworkView]:
        """Per bridge network: its gateway, the names of running containers on
        it, which other networks (gateways) each of them is on, and the
        aliases of their legacy links there."""
        views = []
        for n in self.networks.networks.values():
            if n.driver != "bridge" or not n.gateway:
                continue
            names: dict[str, list[str]] = {}
            clients: dict[str, list[tuple[str, str]]] = {}
            links: dict[str, dict[str, str]] = {}
            for run in self.networks.runs.values():
                endpoint = run.endpoints.get(n.name)
                if endpoint is None:
                    continue
                others = [(self.networks.namespace_of(e.network_id), e.gateway)
                          for name, e in run.endpoints.items() if name != n.name]
                for address in endpoint.addresses:
                    clients[address] = others
                aliases = {alias.lower(): target for alias, target in endpoint.links.items()}
                for address in (a for e in run.endpoints.values() for a in e.addresses):
                    links[address] = aliases
                if is_default_bridge(n.name):  # dockerd serves no names on a default bridge
                    continue
                for name in endpoint.dns_names:
                    names.setdefault(name.lower(), []).extend(endpoint.addresses)
            views.append(NetworkView(n.gateway, n.name, names, clients, links,
                                     n.namespace))
        return views

    async def stop(self) -> None:
        await self.containers.shutdown()
        if self.templates is not None:
            await self.templates.close()
        if self.confinement is not None and self.confinement.cgroups is not None:
            self.confinement.cgroups.remove_parents()
        self.dns.close()
        await self.registry.close()
