"""`/info` and `/version`: what this daemon is and holds."""

from __future__ import annotations

import os
import platform
import secrets
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import hbd
from hbd import API_VERSION, MIN_API_VERSION
from hbd.config import Config
from hbd.events import EventBus
from hbd.services.container import hostconfig
from hbd.services.container.service import ContainerService
from hbd.services.image.store import ImageStore
from hbd.services.scope import OPERATOR, Scope
from hbd.services.system.events_filter import EventFilter
from hbd.services.timefmt import rfc3339_nano
from hbd.store import StateStore

ENGINE_VERSION = f"27.5.1-hbd.{hbd.__version__}"


def _os_release() -> tuple[str, str]:
    name, version = "Linux", ""
    try:
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        name = fields.get("PRETTY_NAME", name).strip('"')
        version = fields.get("VERSION_ID", "").strip('"')
    except OSError:
        pass
    return name, version


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class EventSubscription:
    """`/events` for one client: the kept events it asked for (`since`), then
    the live ones, both through its filters and time window."""

    history: list[dict[str, Any]]
    live: AsyncGenerator[dict[str, Any], None]


async def _matching(live: AsyncGenerator[dict[str, Any], None],
                    wanted: Callable[[dict[str, Any]], dict[str, Any] | None]
                    ) -> AsyncGenerator[dict[str, Any], None]:
    try:
        async for message in live:
            shown = wanted(message)
            if shown is not None:
                yield shown
    finally:
        await live.aclose()


def _actor_name(message: dict[str, Any]) -> str:
    """The name of the object an event is about (which says whose it is):
    its `name` attribute, else its ID (a volume's ID is its name)."""
    actor = message.get("Actor") or {}
    return str((actor.get("Attributes") or {}).get("name") or actor.get("ID") or "")


class SystemService:
    def __init__(self, config: Config, state: StateStore, images: ImageStore,
                 containers: ContainerService, events: EventBus, accel: str) -> None:
        self.config = config
        self.images = images
        self.containers = containers
        self.events = events
        self.accel = accel
        record = state.get("daemon", "engine")
        if record is None:
            record = {"id": secrets.token_hex(32)}
            state.put("daemon", "engine", record)
        self.engine_id = str(record["id"])

    def version(self) -> dict[str, Any]:
        kernel = platform.release()
        return {
            "Platform": {"Name": "hbd (Hummingbird microvm engine)"},
            "Components": [
                {"Name": "Engine", "Version": ENGINE_VERSION, "Details": {
                    "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                    "Os": "linux", "Arch": "amd64", "KernelVersion": kernel,
                    "Experimental": "false", "GitCommit": "", "GoVersion": "",
                    "BuildTime": "",
                }},
                {"Name": "qemu-microvm", "Version": self.accel, "Details": {
                    "Accelerator": self.accel}},
            ],
            "Version": ENGINE_VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": f"python{platform.python_version()}",
            "Os": "linux",
            "Arch": "amd64",
            "KernelVersion": kernel,
            "BuildTime": "",
        }

    def subscribe_events(self, since: float, until: float, filters: dict[str, list[str]],
                         scope: Scope = OPERATOR) -> EventSubscription:
        """`since`/`until`: unix seconds, 0 for none. A tenant gets the events of
        its own objects, with its own names (filters apply to those)."""
        matches = EventFilter(filters)
        # Subscribe before replaying history so nothing falls in between.
        history, live = self.events.subscribe_with_history()

        def wanted(message: dict[str, Any]) -> dict[str, Any] | None:
            t = int(message["timeNano"]) / 1e9
            if (since and t < since) or (until and t > until) or \
                    not scope.sees(_actor_name(message)):
                return None
            shown = scope.shown(message)
            return shown if matches(shown) else None

        replay = [m for m in map(wanted, history) if m is not None] if since else []
        return EventSubscription(replay, _matching(live, wanted))

    def _runtimes(self) -> dict[str, Any]:
        """hbd's runtime, and the names dockerd hosts give theirs as its aliases
        (a compose file with `runtime: runc` runs unchanged, in a guest)."""
        runtimes: dict[str, Any] = {hostconfig.DEFAULT_RUNTIME: {"path": self.config.vm.qemu}}
        for alias in hostconfig.RUNTIME_ALIASES:
            runtimes[alias] = {"path": self.config.vm.qemu,
                               "status": {"hbd.alias-of": hostconfig.DEFAULT_RUNTIME}}
        return runtimes

    def info(self, scope: Scope = OPERATOR) -> dict[str, Any]:
        containers = self.containers.store.visible(scope)  # a tenant counts its own
        running = sum(1 for c in containers if c.state.running and not c.state.paused)
        paused = sum(1 for c in containers if c.state.paused)
        os_name, os_version = _os_release()
        return {
            "ID": self.engine_id,
            "Containers": len(containers),
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": len(containers) - running - paused,
            "Images": len(self.images.all_images(scope)),
            "Driver": "hbd-ext4",
            "DriverStatus": [["Image disks", "ext4, read-only, one per image"],
                             ["Container disks", "qcow2 overlay of an ext4 template"]],
            "DockerRootDir": str(self.config.data_root),
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "null"],
                        "Authorization": None, "Log": ["json-file", "local"]},
            "MemoryLimit": True, "SwapLimit": False, "KernelMemoryTCP": False,
            "CpuCfsPeriod": True, "CpuCfsQuota": True, "CPUShares": True, "CPUSet": False,
            "PidsLimit": True, "OomKillDisable": False, "IPv4Forwarding": True,
            "BridgeNfIptables": False, "BridgeNfIp6tables": False, "Debug": False,
            "NFd": len(os.listdir("/proc/self/fd")), "NGoroutines": 0,
            "SystemTime": rfc3339_nano(),
            # Each guest's cgroup v2 tree is managed directly (no systemd in the guest):
            # "cgroupfs", which kubelet and cri-dockerd accept ("none" they refuse).
            "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs", "CgroupVersion": "2",
            "NEventsListener": 0,
            "KernelVersion": platform.release(),
            "OperatingSystem": os_name, "OSVersion": os_version, "OSType": "linux",
            "Architecture": platform.machine(),
            "NCPU": os.cpu_count() or 1,
            "MemTotal": _mem_total(),
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {
                "AllowNondistributableArtifactsCIDRs": None,
                "AllowNondistributableArtifactsHostnames": None,
                "InsecureRegistryCIDRs": ["127.0.0.0/8", "::1/128",
                                          *self.config.registry.insecure_registries],
                "IndexConfigs": {"docker.io": {
                    "Name": "docker.io", "Mirrors": list(self.config.registry.mirrors),
                    "Secure": True, "Official": True}},
                "Mirrors": list(self.config.registry.mirrors),
            },
            "GenericResources": None,
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
            "Name": platform.node(),
            "Labels": [],
            "ExperimentalBuild": False,
            "ServerVersion": ENGINE_VERSION,
            "Runtimes": self._runtimes(),
            "DefaultRuntime": hostconfig.DEFAULT_RUNTIME,
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                      "ControlAvailable": False, "Error": "", "RemoteManagers": None},
            "LiveRestoreEnabled": True,
            "Isolation": "",
            "InitBinary": "docker-init",
            "ContainerdCommit": {"ID": ""}, "RuncCommit": {"ID": ""},
            "InitCommit": {"ID": ""},
            # dockerd's seccomp entry first: clients read it to learn that
            # containers get Docker's default profile (they do, in their guests).
            "SecurityOptions": ["name=seccomp,profile=default",
                                f"name=microvm,accel={self.accel}"],
            "DefaultAddressPools": [],
            "Warnings": [] if self.accel != "tcg" else [
                "WARNING: guests run under TCG (software emulation): KVM is unavailable "
                "or cannot boot the guest kernel here"],
            "CDISpecDirs": [],
        }
