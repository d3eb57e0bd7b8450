"""What a pod and a pod's container are, as the CRI describes them, with no
protobuf: the CRI router (hbd/api/cri) fills these from its messages."""

from __future__ import annotations

from dataclasses import dataclass, field

# Namespace modes of a pod (runtime.v1.NamespaceMode).
POD, CONTAINER, NODE, TARGET = 0, 1, 2, 3


@dataclass
class Metadata:
    name: str
    uid: str = ""
    namespace: str = ""
    attempt: int = 0


@dataclass
class PortMapping:
    protocol: str          # tcp | udp | sctp
    container_port: int
    host_port: int = 0
    host_ip: str = ""


@dataclass
class PodConfig:
    metadata: Metadata
    hostname: str = ""
    log_directory: str = ""
    dns_servers: list[str] = field(default_factory=list)
    dns_searches: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    port_mappings: list[PortMapping] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    network_mode: int = POD
    pid_mode: int = CONTAINER
    ipc_mode: int = POD
    sysctls: dict[str, str] = field(default_factory=dict)


# The CRI's MountPropagation.
PROPAGATION_PRIVATE, PROPAGATION_HOST_TO_CONTAINER, PROPAGATION_BIDIRECTIONAL = 0, 1, 2


@dataclass
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False
    # Read-only all the way down (the source's own mounts too); else a
    # read-only mount is read-only at its top only, as runc's "ro" bind.
    recursive_read_only: bool = False
    propagation: int = PROPAGATION_PRIVATE
    # An image volume (KEP 4639): the image (as PullImage named it) mounted
    # read-only instead of a host path, or its `image_sub_path`.
    image: str = ""
    image_sub_path: str = ""


@dataclass
class Device:
    """A host device for the container (kubelet's raw block volumes): hbd
    takes block devices, attached to the pod's guest."""

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass
class Resources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""


@dataclass
class SecurityContext:
    privileged: bool = False
    readonly_rootfs: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    supplemental_groups: list[int] = field(default_factory=list)
    # SupplementalGroupsPolicy Strict: the image's /etc/group adds no groups.
    groups_strict: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    no_new_privs: bool = False
    # The CRI's seccomp profile: RuntimeDefault, Unconfined (also when the
    # request has none, as in containerd) or Localhost, a JSON profile file
    # on this host at seccomp_localhost_path.
    seccomp: str = "Unconfined"
    seccomp_localhost_path: str = ""
    # Paths masked and made read-only ([]: Docker's defaults).
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    # TARGET pid mode: the container whose pid namespace it shares.
    pid_mode: int = CONTAINER
    target_id: str = ""


@dataclass
class ContainerConfig:
    metadata: Metadata
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    working_dir: str = ""
    envs: list[tuple[str, str]] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: Resources = field(default_factory=Resources)
    security: SecurityContext = field(default_factory=SecurityContext)


@dataclass
class PodStatus:
    id: str
    metadata: Metadata
    ready: bool
    created_ns: int
    ip: str
    additional_ips: list[str]
    labels: dict[str, str]
    annotations: dict[str, str]
    network_mode: int
    pid_mode: int
    ipc_mode: int


# Container states (runtime.v1.ContainerState).
CREATED, RUNNING, EXITED, UNKNOWN = 0, 1, 2, 3


@dataclass
class ContainerStatus:
    id: str
    pod_id: str
    metadata: Metadata
    state: int
    created_ns: int
    started_ns: int
    finished_ns: int
    exit_code: int
    image: str        # as the config asked for it
    image_id: str
    image_ref: str
    reason: str
    message: str
    labels: dict[str, str]
    annotations: dict[str, str]
    mounts: list[Mount]
    log_path: str
    pid: int = 0
    user: ContainerUser | None = None


@dataclass
class ContainerUser:
    """The identity the container's first process started as."""

    uid: int
    gid: int
    supplemental_groups: list[int]


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


@dataclass
class Usage:
    """CPU and memory of a container (or a pod: the sum of its containers)."""

    timestamp_ns: int
    cpu_ns: int = 0                 # CPU time used since it started
    memory_usage: int = 0
    memory_working_set: int = 0     # usage less inactive file pages, as cAdvisor counts
    writable_bytes: int = 0         # what it wrote to its root filesystem


@dataclass
class ContainerStats:
    id: str
    pod_id: str
    metadata: Metadata
    labels: dict[str, str]
    annotations: dict[str, str]
    usage: Usage


@dataclass
class PodStats:
    pod: PodStatus
    usage: Usage
    containers: list[ContainerStats]


# What happened to a pod or a container (runtime.v1.ContainerEventType); a
# pod's own events carry its id as the container's.
CONTAINER_CREATED_EVENT, CONTAINER_STARTED_EVENT = 0, 1
CONTAINER_STOPPED_EVENT, CONTAINER_DELETED_EVENT = 2, 3


@dataclass
class ContainerEvent:
    container_id: str
    kind: int
    created_ns: int
    pod: PodStatus | None           # None once the pod is gone
    containers: list[ContainerStatus]   # the pod's, as they are now
