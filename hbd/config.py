"""Daemon settings: defaults here, overridden by hbd.toml, overridden by flags.

`hbd.toml` at the repository root documents every setting with its default;
`tests/unit/test_config.py` checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbd.errors import InvalidParameter

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DaemonSettings:
    hosts: list[str] = field(default_factory=lambda: ["unix:///run/hbd.sock"])
    data_root: str = "/var/lib/hbd"
    exec_root: str = "/run/hbd"
    log_level: str = "info"
    # TLS on tcp:// listeners, as dockerd's --tls/--tlsverify/--tlscacert/--tlscert/--tlskey.
    tls: bool = False
    tls_verify: bool = False
    tls_cacert: str = ""
    tls_cert: str = ""
    tls_key: str = ""


@dataclass
class VMSettings:
    accel: str = "auto"
    kernel: str = ""
    initrd: str = ""
    qemu: str = "qemu-system-x86_64"
    memory_mib: int = 256
    vcpus: int = 1
    boot_timeout: float = 30.0
    boot_retries: int = 1
    tcg_tb_size_mib: int = 24
    nic_slots: int = 4
    guest_trace: bool = False
    templates: bool = True
    jail: bool = True

    def kernel_path(self) -> Path:
        return Path(self.kernel) if self.kernel else REPO_ROOT / "kernels" / "out" / "vmlinux"

    def initrd_path(self) -> Path:
        return Path(self.initrd) if self.initrd else REPO_ROOT / "kernels" / "out" / "initrd.cpio"


@dataclass
class RegistryConfig:
    mirrors: list[str] = field(default_factory=list)
    insecure_registries: list[str] = field(default_factory=list)


@dataclass
class CriSettings:
    """The Kubernetes CRI v1 service (kubelet's --container-runtime-endpoint)."""

    endpoint: str = ""                 # unix:///path; "" serves no CRI
    network: str = "k8s-pods"          # the bridge network pods are on (made if missing)
    subnet: str = ""                   # its subnet when hbd makes it ("": any free one)
    sandbox_image: str = "hbd/pause:1"
    # The image archive loaded when sandbox_image is missing ("": images/out/pause.tar).
    sandbox_image_archive: str = ""
    # Where the streaming server (exec, attach, port-forward URLs) listens; port 0: any free.
    streaming_address: str = "127.0.0.1"
    streaming_port: int = 0

    def sandbox_archive_path(self) -> Path:
        return (Path(self.sandbox_image_archive) if self.sandbox_image_archive
                else REPO_ROOT / "images" / "out" / "pause.tar")


@dataclass
class VolumeSettings:
    """Volumes beyond the Engine API's named ones."""

    # Where storage drivers register direct-assigned volumes (Kata's
    # convention: <dir>/<base64url of the volume path>/mountInfo.json).
    direct_volumes: str = "/run/hbd/direct-volumes"


@dataclass
class NetworkSettings:
    """Host networking beyond the Docker networks themselves."""

    # Each tenant project's networks live in a network namespace of its own,
    # joined to the host by a veth pair addressed with a /30 of this range.
    tenant_transfer_range: str = "100.64.0.0/10"

    def check(self, where: str) -> None:
        try:
            transfer = ipaddress.IPv4Network(self.tenant_transfer_range)
        except ValueError as e:
            raise InvalidParameter(f"{where}: tenant_transfer_range: {e}") from e
        if transfer.prefixlen > 30:
            raise InvalidParameter(f"{where}: tenant_transfer_range must hold a /30 at least")


@dataclass
class KeystoneSettings:
    """Tenants authenticated by Keystone on some listeners (issue: multi-tenancy)."""

    url: str = ""                      # e.g. http://127.0.0.1:5000; "" = no tenants
    service_user: str = ""
    service_password: str = ""
    service_project: str = "service"
    # Which of daemon.hosts are tenant listeners (the others are the operator's).
    tenant_hosts: list[str] = field(default_factory=list)
    reader_roles: list[str] = field(default_factory=lambda: ["reader"])
    member_roles: list[str] = field(default_factory=lambda: ["member", "admin"])
    # How long a validated token is trusted without asking again, and how
    # many are remembered.
    cache_seconds: float = 60.0
    cache_size: int = 1024


QUOTA_KINDS = ("containers", "vcpus", "memory_mib", "volume_gib")


@dataclass
class QuotaSettings:
    """Per-project limits of tenants' objects (0: no limit); `projects`
    overrides them for a project, by its id or name."""

    containers: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    volume_gib: int = 0
    projects: dict[str, Any] = field(default_factory=dict)

    def check(self, where: str) -> None:
        for project, limits in self.projects.items():
            if not isinstance(limits, dict):
                raise InvalidParameter(f"{where}: projects.{project} must be a table")
            for key, value in limits.items():
                if key not in QUOTA_KINDS:
                    raise InvalidParameter(f"{where}: projects.{project}: unknown quota "
                                           f"{key!r}")
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidParameter(f"{where}: projects.{project}.{key} must be an "
                                           "int, at least 0")

    def limit(self, kind: str, project_id: str, project_name: str) -> int:
        """The project's limit of one kind (QUOTA_KINDS); 0: none."""
        override = self.projects.get(project_id) or self.projects.get(project_name) or {}
        return int(override.get(kind, getattr(self, kind)))


def parse_port_ranges(text: str, where: str) -> tuple[tuple[int, int], ...]:
    """"8000-8999,9443": inclusive (first, last) port ranges."""
    ranges = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise InvalidParameter(f"{where}: bad port range {part.strip()!r}") from None
        if not 1 <= low <= high <= 65535:
            raise InvalidParameter(f"{where}: bad port range {part.strip()!r}")
        ranges.append((low, high))
    return tuple(ranges)


@dataclass
class TenantSettings:
    """What tenants' containers may publish: host ports and host addresses."""

    publish_ports: str = "1024-65535"   # ranges, e.g. "8000-8999,9443"
    publish_addresses: list[str] = field(default_factory=list)  # []: any address

    def check(self, where: str) -> None:
        parse_port_ranges(self.publish_ports, f"{where} publish_ports")
        for address in self.publish_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise InvalidParameter(f"{where} publish_addresses: {address!r} is not an IP "
                                       "address") from None


@dataclass
class Config:
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    vm: VMSettings = field(default_factory=VMSettings)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    cri: CriSettings = field(default_factory=CriSettings)
    volumes: VolumeSettings = field(default_factory=VolumeSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    keystone: KeystoneSettings = field(default_factory=KeystoneSettings)
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    tenants: TenantSettings = field(default_factory=TenantSettings)

    @property
    def data_root(self) -> Path:
        return Path(self.daemon.data_root)

    @property
    def exec_root(self) -> Path:
        return Path(self.daemon.exec_root)


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(section)}
    for key, raw in values.items():
        if key not in known:
            raise InvalidParameter(f"{where}: unknown setting {key!r}")
        expected = type(getattr(section, key))
        value = float(raw) if expected is float and isinstance(raw, int) else raw
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise InvalidParameter(
                f"{where}: {key} must be {expected.__name__}, not {type(value).__name__}"
            )
        setattr(section, key, value)


def load_config(path: Path | None) -> Config:
    config = Config()
    if path is None:
        return config
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise InvalidParameter(f"cannot read config {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise InvalidParameter(f"invalid config {path}: {e}") from e
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for name, values in raw.items():
        if name not in sections or not isinstance(values, dict):
            raise InvalidParameter(f"{path}: unknown section [{name}]")
        _apply(sections[name], values, f"{path} [{name}]")
    config.quotas.check(f"{path} [quotas]")
    config.tenants.check(f"{path} [tenants]")
    config.network.check(f"{path} [network]")
    return config
