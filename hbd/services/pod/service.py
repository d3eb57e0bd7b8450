"""Pods as hbd runs them: one guest per pod.

A pod sandbox is an infrastructure container (the sandbox image's /pause)
that owns the pod's guest, network namespace, hostname and, when the pod
shares them, its IPC and PID namespaces; the pod's containers join it with
`container:<pod>` namespace modes, exactly what `docker run --network
container:X` does (hbd/services/container/sandboxes.py). dockershim and
cri-dockerd built the CRI on the Engine API the same way, so a pod is also
visible, and debuggable, with the docker CLI.

A container's volumes come as kubelet hands them over: host paths (Binds),
shared into the guest or, for a block device node or a direct-assigned
volume's path, attached to it as a disk; raw block volumes (`devices`) as
HostConfig.Devices (hbd/services/container/start.py, sandboxes.py).

What the CRI knows about a pod or a container and the Engine API does not
(its CRI metadata, annotations, the image name as kubelet asked for it, its
log path) is kept in labels under `io.hbd.cri.`: one record per object, in
the container store. Labels kubelet set are returned without those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hbd.config import CriSettings
from hbd.drivers.agent import FEATURE_CONNECT
from hbd.errors import Conflict, DeadlineExceeded, HbdError, InvalidParameter, NotFound
from hbd.services.container import stats
from hbd.services.container.execs import ExecService
from hbd.services.container.model import Container
from hbd.services.container.mounts import MountPoint
from hbd.services.container.service import ContainerService
from hbd.services.image.store import ImageStore
from hbd.services.network.service import NetworkService
from hbd.services.pod import model as m
from hbd.services.pod.streams import (
    AttachStreams,
    ExecStreams,
    GuestPortConnection,
    TcpPortConnection,
)
from hbd.services.timefmt import parse_rfc3339_ns

log = logging.getLogger(__name__)

PREFIX = "io.hbd.cri."
KIND = PREFIX + "kind"                # "pod" | "container"
POD_ID = PREFIX + "pod"               # a container's pod
METADATA = PREFIX + "metadata"        # JSON of Metadata
ANNOTATIONS = PREFIX + "annotations"  # JSON object
IMAGE = PREFIX + "image"              # the image as the container config named it
LOG_PATH = PREFIX + "log-path"
NAMESPACES = PREFIX + "namespaces"    # JSON [network, pid, ipc] modes of a pod

# The container service's events that are the CRI's container events.
EVENT_KINDS = {"create": m.CONTAINER_CREATED_EVENT, "start": m.CONTAINER_STARTED_EVENT,
               "die": m.CONTAINER_STOPPED_EVENT, "destroy": m.CONTAINER_DELETED_EVENT}

# Seconds a stopped pod's containers get before SIGKILL when the CRI gives none.
POD_STOP_TIMEOUT = 10
NAME_PART = re.compile(r"[^a-zA-Z0-9_.-]")


class FileBody:
    """An image archive on disk, read as `ImageStore.load` reads a request body."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def iter_chunked(self, size: int) -> AsyncIterator[bytes]:
        with open(self.path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, size):
                yield chunk


def _name(kind: str, md: m.Metadata, pod: m.Metadata) -> str:
    """dockershim's container names: k8s_<container>_<pod>_<namespace>_<uid>_<attempt>."""
    parts = [kind, pod.name, pod.namespace, pod.uid, str(md.attempt)]
    return "k8s_" + "_".join(NAME_PART.sub("-", p) for p in parts)


def _check_image_volume(mount: m.Mount) -> None:
    """The CRI's rules for image volumes: an image instead of a host path,
    read-only by definition."""
    if not mount.image:
        return
    if mount.host_path:
        raise InvalidParameter(f"image volume {mount.container_path} names a host path too: "
                               "host_path must be empty when image is set")
    if not mount.readonly:
        raise InvalidParameter(f"image volume {mount.container_path} must be read-only")


def _image_mount(mount: m.Mount) -> dict[str, Any]:
    """A CRI image volume as the Engine API's image mount (API 1.48)."""
    return {"Type": "image", "Source": mount.image, "Target": mount.container_path,
            "ReadOnly": True, "ImageOptions": {"Subpath": mount.image_sub_path}}


def _mount_status(mp: MountPoint) -> m.Mount:
    """A container's mount as ContainerStatus tells it; an image volume by
    the image's id, which is PullImage's image_ref."""
    if mp.type == "image":
        return m.Mount(mp.destination, "", True, image=mp.source, image_sub_path=mp.subpath)
    return m.Mount(mp.destination, mp.source, not mp.rw,
                   recursive_read_only=not mp.rw and not mp.readonly_non_recursive,
                   propagation=m.PROPAGATION_HOST_TO_CONTAINER if mp.follows_host
                   else m.PROPAGATION_PRIVATE)


def _check_recursive_read_only(mount: m.Mount) -> None:
    """The CRI's rules for recursive_read_only, as containerd enforces them."""
    if not mount.recursive_read_only:
        return
    if not mount.readonly:
        raise InvalidParameter(f"recursive read-only mount {mount.container_path} must be "
                               "read-only: readonly must be set too")
    if mount.propagation != m.PROPAGATION_PRIVATE:
        raise InvalidParameter(f"recursive read-only mount {mount.container_path} needs "
                               "private propagation")


def _read_only_bind(mount: m.Mount) -> dict[str, Any]:
    """A CRI read-only mount as the Engine API's: read-only at its top only
    (runc's "ro" bind, what containerd gives), or all the way down when
    kubelet asks for recursive_read_only."""
    return {"Type": "bind", "Source": mount.host_path, "Target": mount.container_path,
            "ReadOnly": True,
            "BindOptions": {"ReadOnlyNonRecursive": not mount.recursive_read_only,
                            "ReadOnlyForceRecursive": mount.recursive_read_only,
                            "Propagation": _bind_propagation(mount)}}


def _bind_propagation(mount: m.Mount, prefix: str = "") -> str:
    """The Engine API's propagation mode of a CRI mount ("" for private, the
    default); the Engine API refuses rshared, which a guest cannot give."""
    mode = {m.PROPAGATION_HOST_TO_CONTAINER: "rslave",
            m.PROPAGATION_BIDIRECTIONAL: "rshared"}.get(mount.propagation, "")
    return prefix + mode if mode else ""


def _labels_of(c: Container) -> dict[str, str]:
    return {str(k): str(v) for k, v in (c.config.get("Labels") or {}).items()}


def _user_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if not k.startswith(PREFIX)}


def _metadata(labels: dict[str, str]) -> m.Metadata:
    return m.Metadata(**json.loads(labels.get(METADATA, '{"name": ""}')))


def _namespace_modes(labels: dict[str, str]) -> list[int]:
    """A pod's [network, pid, ipc] modes (the CRI's defaults when unrecorded)."""
    return [int(mode) for mode in json.loads(labels.get(NAMESPACES, "[0, 1, 0]"))]


def _annotations(labels: dict[str, str]) -> dict[str, str]:
    return dict(json.loads(labels.get(ANNOTATIONS, "{}")))


def _user(sec: m.SecurityContext) -> str:
    """USER[:GROUP] for the Engine API; a group alone is refused, as containerd
    does (the Engine API would run it as root in that group)."""
    user = sec.run_as_username
    if sec.run_as_user is not None:
        user = str(sec.run_as_user)
    if sec.run_as_group is None:
        return user
    if not user:
        raise InvalidParameter(f"user group {sec.run_as_group} is specified without user")
    return f"{user}:{sec.run_as_group}"


class PodService:
    def __init__(self, settings: CriSettings, containers: ContainerService,
                 execs: ExecService, images: ImageStore, networks: NetworkService) -> None:
        self.settings = settings
        self.containers = containers
        self.execs = execs
        self.images = images
        self.networks = networks

    # -- set-up ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        """The pod network and the sandbox image, made or loaded when missing."""
        try:
            self.networks.get(self.settings.network)
        except NotFound:
            ipam: dict[str, Any] = {"Driver": "default", "Config": []}
            if self.settings.subnet:
                ipam["Config"] = [{"Subnet": self.settings.subnet}]
            await self.networks.create({"Name": self.settings.network, "Driver": "bridge",
                                        "IPAM": ipam, "Labels": {KIND: "network"}})
        try:
            self.images.get(self.settings.sandbox_image)
        except NotFound:
            archive = self.settings.sandbox_archive_path()
            if not archive.is_file():
                raise InvalidParameter(
                    f"sandbox image {self.settings.sandbox_image} is missing and "
                    f"{archive} does not exist (images/build.sh pause)") from None
            await self.images.load(FileBody(archive))

    # -- pods -----------------------------------------------------------------------------

    async def run_pod(self, cfg: m.PodConfig) -> str:
        if cfg.network_mode == m.NODE:
            raise InvalidParameter("hbd runs each pod in its own virtual machine: "
                                   "host network is not available")
        if m.NODE in (cfg.pid_mode, cfg.ipc_mode):
            raise InvalidParameter("hbd runs each pod in its own virtual machine: "
                                   "host PID and IPC namespaces are not available")
        labels = {**cfg.labels, KIND: "pod", METADATA: json.dumps(asdict(cfg.metadata)),
                  ANNOTATIONS: json.dumps(cfg.annotations),
                  NAMESPACES: json.dumps([cfg.network_mode, cfg.pid_mode, cfg.ipc_mode])}
        ports: dict[str, list[dict[str, str]]] = {}
        for p in cfg.port_mappings:
            if p.host_port > 0:
                ports.setdefault(f"{p.container_port}/{p.protocol}", []).append(
                    {"HostIp": p.host_ip, "HostPort": str(p.host_port)})
        body: dict[str, Any] = {
            "Image": self.settings.sandbox_image, "Hostname": cfg.hostname[:63],
            "Labels": labels, "ExposedPorts": {k: {} for k in ports},
            "HostConfig": {
                "NetworkMode": self.settings.network, "IpcMode": "shareable",
                "Dns": cfg.dns_servers, "DnsSearch": cfg.dns_searches,
                "DnsOptions": cfg.dns_options, "PortBindings": ports,
                "LogConfig": {"Type": "none"}, "Sysctls": cfg.sysctls or None,
            },
        }
        name = _name("POD", cfg.metadata, cfg.metadata)
        created = await self.containers.create(name, body)
        pod_id = str(created["Id"])
        try:
            await self.containers.start(pod_id)
        except HbdError:
            with contextlib.suppress(HbdError):
                await self.containers.remove(pod_id, force=True)
            raise
        return pod_id

    def _of_kind(self, kind: str, ref: str, what: str) -> Container:
        """The CRI object `ref` of `kind`; anything else (an Engine API
        container, one of the other kind) is not found."""
        try:
            c = self.containers.get(ref)
        except NotFound:
            c = None
        if c is None or _labels_of(c).get(KIND) != kind:
            raise NotFound(f"{what} {ref} not found")
        return c

    def _all_of_kind(self, kind: str) -> list[Container]:
        return [c for c in self.containers.containers.values()
                if _labels_of(c).get(KIND) == kind]

    def _pod(self, pod_id: str) -> Container:
        return self._of_kind("pod", pod_id, "pod sandbox")

    def _pod_containers(self, pod_id: str) -> list[Container]:
        return [c for c in self.containers.containers.values()
                if _labels_of(c).get(POD_ID) == pod_id]

    async def stop_pod(self, pod_id: str) -> None:
        """Every container of the pod, then its guest; a pod already gone is stopped."""
        try:
            pod = self._pod(pod_id)
        except NotFound:
            return
        await asyncio.gather(*(self._stop_quietly(c.id, POD_STOP_TIMEOUT)
                               for c in self._pod_containers(pod.id)))
        await self._stop_quietly(pod.id, 0)

    async def _stop_quietly(self, ref: str, timeout: int) -> None:
        with contextlib.suppress(NotFound):
            c = self.containers.get(ref)
            if c.state.running:
                await self.containers.stop(ref, timeout)

    async def remove_pod(self, pod_id: str) -> None:
        """The pod and its containers, whatever their state; idempotent."""
        try:
            pod = self._pod(pod_id)
        except NotFound:
            return
        for c in [*self._pod_containers(pod.id), pod]:
            with contextlib.suppress(NotFound):
                await self.containers.remove(c.id, force=True)

    def pod_status(self, pod_id: str) -> m.PodStatus:
        return self._pod_view(self._pod(pod_id))

    def list_pods(self) -> list[m.PodStatus]:
        return [self._pod_view(c) for c in self._all_of_kind("pod")]

    def _pod_view(self, c: Container) -> m.PodStatus:
        labels = _labels_of(c)
        modes = _namespace_modes(labels)
        ip, more = "", []
        if c.state.running and c.run_network is not None:
            endpoint = c.run_network.endpoints.get(self.settings.network)
            if endpoint is not None:
                ip = endpoint.ip
                more = [endpoint.ip6] if endpoint.ip6 else []
        return m.PodStatus(
            id=c.id, metadata=_metadata(labels), ready=c.state.running,
            created_ns=parse_rfc3339_ns(c.created), ip=ip, additional_ips=more,
            labels=_user_labels(labels), annotations=_annotations(labels),
            network_mode=modes[0], pid_mode=modes[1], ipc_mode=modes[2])

    # -- containers -----------------------------------------------------------------------

    async def create_container(self, pod_id: str, cfg: m.ContainerConfig,
                               pod_config: m.PodConfig | None) -> str:
        pod = self._pod(pod_id)
        if not pod.state.running:
            raise Conflict(f"pod sandbox {pod_id} is not ready")
        pod_labels = _labels_of(pod)
        pod_md = _metadata(pod_labels)
        log_path = ""
        log_dir = pod_config.log_directory if pod_config is not None else ""
        if cfg.log_path and log_dir:
            log_path = str(Path(log_dir) / cfg.log_path)
        labels = {**cfg.labels, KIND: "container", POD_ID: pod.id,
                  METADATA: json.dumps(asdict(cfg.metadata)),
                  ANNOTATIONS: json.dumps(cfg.annotations), IMAGE: cfg.image,
                  LOG_PATH: log_path}
        body = self._container_body(pod, cfg, labels, log_path)
        created = await self.containers.create(_name(cfg.metadata.name, cfg.metadata, pod_md),
                                               body, groups_strict=cfg.security.groups_strict)
        return str(created["Id"])

    def _container_body(self, pod: Container, cfg: m.ContainerConfig,
                        labels: dict[str, str], log_path: str) -> dict[str, Any]:
        modes = _namespace_modes(_labels_of(pod))
        sec, res = cfg.security, cfg.resources
        for mount in cfg.mounts:
            _check_image_volume(mount)
            _check_recursive_read_only(mount)
        binds = [mt for mt in cfg.mounts if not mt.image]
        pod_ref = f"container:{pod.id}"
        pid_mode = ""
        if sec.pid_mode == m.TARGET and sec.target_id:
            pid_mode = f"container:{sec.target_id}"
        elif modes[1] == m.POD or sec.pid_mode == m.POD:
            pid_mode = pod_ref
        security_opt = ["no-new-privileges"] if sec.no_new_privs else []
        security_opt += self._seccomp_opt(sec)
        host_config: dict[str, Any] = {
            "NetworkMode": pod_ref, "IpcMode": pod_ref if modes[2] == m.POD else "",
            "PidMode": pid_mode,
            "Binds": [f"{mt.host_path}:{mt.container_path}{_bind_propagation(mt, ':')}"
                      for mt in binds if not mt.readonly],
            "Mounts": [_read_only_bind(mt) for mt in binds if mt.readonly] +
                      [_image_mount(mt) for mt in cfg.mounts if mt.image],
            "Devices": [{"PathOnHost": d.host_path, "PathInContainer": d.container_path,
                         "CgroupPermissions": d.permissions} for d in cfg.devices] or None,
            "ReadonlyRootfs": sec.readonly_rootfs, "Privileged": sec.privileged,
            "CapAdd": sec.cap_add or None, "CapDrop": sec.cap_drop or None,
            "GroupAdd": [str(g) for g in sec.supplemental_groups] or None,
            "SecurityOpt": security_opt or None,
            "MaskedPaths": sec.masked_paths or None, "ReadonlyPaths": sec.readonly_paths or None,
            "Memory": res.memory_limit_bytes, "CpuShares": res.cpu_shares,
            "CpuPeriod": res.cpu_period, "CpuQuota": res.cpu_quota,
            "CpusetCpus": res.cpuset_cpus, "OomScoreAdj": res.oom_score_adj,
            "LogConfig": ({"Type": "cri", "Config": {"path": log_path}} if log_path
                          else {"Type": "none"}),
        }
        return {
            "Image": cfg.image, "Entrypoint": cfg.command or None, "Cmd": cfg.args or None,
            "Env": [f"{k}={v}" for k, v in cfg.envs], "WorkingDir": cfg.working_dir,
            "User": _user(sec), "Labels": labels, "Tty": cfg.tty, "OpenStdin": cfg.stdin,
            "StdinOnce": cfg.stdin_once, "AttachStdin": cfg.stdin,
            "HostConfig": {k: v for k, v in host_config.items() if v not in (None, "", 0)},
        }

    @staticmethod
    def _seccomp_opt(sec: m.SecurityContext) -> list[str]:
        """The SecurityOpt of the CRI's seccomp profile (Docker's default profile
        is the runtime's default)."""
        if sec.seccomp == "Unconfined":
            return ["seccomp=unconfined"]
        if sec.seccomp != "Localhost":
            return []
        try:
            profile = Path(sec.seccomp_localhost_path).read_text()
        except (OSError, ValueError) as e:
            raise InvalidParameter(f"cannot load seccomp profile "
                                   f"{sec.seccomp_localhost_path!r}: {e}") from None
        return [f"seccomp={profile}"]

    def _container(self, container_id: str) -> Container:
        return self._of_kind("container", container_id, "container")

    async def start_container(self, container_id: str) -> None:
        c = self._container(container_id)
        pod = self._pod(_labels_of(c)[POD_ID])
        if not pod.state.running:
            raise Conflict(f"pod sandbox {pod.id} is not ready")
        await self.containers.start(c.id)

    async def stop_container(self, container_id: str, timeout: int) -> None:
        """Idempotent, as the CRI asks: a container already gone is stopped
        (kubelet retries a stop whose answer it lost; containerd says OK)."""
        try:
            c = self._container(container_id)
        except NotFound:
            return
        if c.state.running:
            await self.containers.stop(c.id, timeout)

    async def remove_container(self, container_id: str) -> None:
        """Idempotent, as the CRI asks: a container already gone is removed."""
        try:
            c = self._container(container_id)
        except NotFound:
            return
        await self.containers.remove(c.id, force=True)

    def container_status(self, container_id: str) -> m.ContainerStatus:
        return self._container_view(self._container(container_id))

    def list_containers(self) -> list[m.ContainerStatus]:
        return [self._container_view(c) for c in self._all_of_kind("container")]

    def _container_view(self, c: Container) -> m.ContainerStatus:
        labels = _labels_of(c)
        state, started, finished = c.state, parse_rfc3339_ns(c.state.started_at), 0
        if state.running:
            phase = m.RUNNING
        elif started:
            phase, finished = m.EXITED, parse_rfc3339_ns(state.finished_at)
        else:
            phase = m.CREATED
        reason = ""
        if phase == m.EXITED:
            reason = "OOMKilled" if state.oom_killed else (
                "Completed" if state.exit_code == 0 else "Error")
        image_ref = c.image_id
        with contextlib.suppress(NotFound):
            digests = self.images.get(c.image_id).repo_digests
            image_ref = digests[0] if digests else c.image_id
        return m.ContainerStatus(
            id=c.id, pod_id=labels.get(POD_ID, ""), metadata=_metadata(labels), state=phase,
            created_ns=parse_rfc3339_ns(c.created), started_ns=started, finished_ns=finished,
            exit_code=state.exit_code, image=labels.get(IMAGE, ""), image_id=c.image_id,
            image_ref=image_ref, reason=reason, message=state.error,
            labels=_user_labels(labels), annotations=_annotations(labels),
            mounts=[_mount_status(mp) for mp in c.mounts],
            log_path=labels.get(LOG_PATH, ""), pid=state.pid,
            user=m.ContainerUser(state.uid, state.gid, list(state.groups))
            if state.uid >= 0 else None)

    # -- processes --------------------------------------------------------------------------

    async def exec_sync(self, container_id: str, cmd: list[str],
                        timeout: float) -> m.ExecResult:
        """Run a command to its end; its output and exit code (kubelet's probes)."""
        c = self._container(container_id)
        exec_id = self.execs.create(c.id, {"Cmd": cmd, "AttachStdout": True,
                                           "AttachStderr": True})
        instance = await self.execs.start(exec_id, detach=False)
        out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

        async def collect() -> None:
            async for stream, data in instance.output():
                out.setdefault(stream, bytearray()).extend(data)
            await instance.done.wait()

        try:
            await asyncio.wait_for(collect(), timeout if timeout > 0 else None)
        except TimeoutError:
            # As runc's exec under containerd: the process goes with the deadline.
            await self.execs.kill(instance)
            raise DeadlineExceeded(f"command {cmd!r} timed out after {timeout:g}s") from None
        return m.ExecResult(bytes(out[1]), bytes(out[2]), int(instance.exit_code or 0))

    def _running_container(self, container_id: str) -> Container:
        c = self._container(container_id)
        if not c.state.running:
            raise Conflict(f"container {container_id} is not running")
        return c

    def check_streamable(self, container_id: str) -> None:
        """Exec and attach need a running container (checked again when the
        client connects to the streaming server)."""
        self._running_container(container_id)

    async def exec_streams(self, container_id: str, cmd: list[str], tty: bool,
                           stdin: bool, stdout: bool, stderr: bool) -> ExecStreams:
        """A process started for a streaming client (kubectl exec)."""
        c = self._running_container(container_id)
        exec_id = self.execs.create(c.id, {"Cmd": cmd, "Tty": tty, "AttachStdin": stdin,
                                           "AttachStdout": stdout, "AttachStderr": stderr})
        return ExecStreams(self.execs, await self.execs.start(exec_id, detach=False))

    def attach_streams(self, container_id: str, stdout: bool, stderr: bool) -> AttachStreams:
        """A streaming client of the container's main process (kubectl attach)."""
        c, attachment = self.containers.attach(self._running_container(container_id).id,
                                               stdout, stderr)
        return AttachStreams(self.containers, c, attachment)

    def check_forwardable(self, pod_id: str) -> None:
        if not self._pod_view(self._pod(pod_id)).ip:
            raise Conflict(f"pod sandbox {pod_id} is not ready")

    async def connect_port(self, pod_id: str, port: int
                           ) -> GuestPortConnection | TcpPortConnection:
        """A TCP connection to `port` of the pod (kubectl port-forward): to
        the pod's own 127.0.0.1, opened inside its guest, as containerd
        dials inside the pod's network namespace; by the pod's address from
        the host when the guest's init is older than that."""
        pod = self._pod(pod_id)
        if pod.run is None or not pod.state.running:
            raise Conflict(f"pod sandbox {pod_id} is not ready")
        if FEATURE_CONNECT in pod.run.guest.features:
            return await GuestPortConnection.open(pod.run.guest, port)
        ip = self._pod_view(pod).ip
        if not ip:
            raise Conflict(f"pod sandbox {pod_id} is not ready")
        return await TcpPortConnection.open(ip, port)

    def reopen_log(self, container_id: str) -> None:
        c = self._container(container_id)
        if c.run is None or not c.state.running:
            raise Conflict(f"container {container_id} is not running")
        if c.run.log.log is not None:
            c.run.log.log.reopen()

    async def update_resources(self, container_id: str, res: m.Resources) -> None:
        c = self._container(container_id)
        body: dict[str, Any] = {"CpuShares": res.cpu_shares, "CpuPeriod": res.cpu_period,
                                "CpuQuota": res.cpu_quota, "Memory": res.memory_limit_bytes,
                                "CpusetCpus": res.cpuset_cpus}
        await self.containers.update(c.id, {k: v for k, v in body.items() if v})

    # -- events -------------------------------------------------------------------------

    async def container_events(self) -> AsyncIterator[m.ContainerEvent]:
        """Pods' and their containers' lifecycle as it happens (kubelet's
        evented PLEG), from the event bus the container service publishes on:
        with the pod's status and its containers' as they are when the event
        is taken, as containerd sends them."""
        _, live = self.containers.store.events.subscribe_with_history()
        async with contextlib.aclosing(live):
            async for message in live:
                event = self._container_event(message)
                if event is not None:
                    yield event

    def _container_event(self, message: dict[str, Any]) -> m.ContainerEvent | None:
        kind = EVENT_KINDS.get(str(message.get("Action")))
        attributes = message["Actor"]["Attributes"]
        if message.get("Type") != "container" or kind is None:
            return None
        actor = str(message["Actor"]["ID"])
        if attributes.get(KIND) == "pod":
            pod_id = actor
        elif attributes.get(KIND) == "container":
            pod_id = attributes.get(POD_ID, "")
        else:
            return None  # the Engine API's own containers
        pod = self.containers.containers.get(pod_id)
        return m.ContainerEvent(
            container_id=actor, kind=kind, created_ns=int(message["timeNano"]),
            pod=self._pod_view(pod) if pod is not None else None,
            containers=[self._container_view(c) for c in self._pod_containers(pod_id)])

    # -- stats ----------------------------------------------------------------------------

    async def container_stats(self, container_id: str) -> m.ContainerStats:
        return await self._stats_of(self._container(container_id))

    async def _stats_of(self, c: Container) -> m.ContainerStats:
        labels = _labels_of(c)
        sample = await stats.stats_sample(c) or {}
        cpu, memory = sample.get("cpu") or {}, sample.get("memory") or {}
        usage = int(memory.get("usage", 0))
        usage_now = m.Usage(
            timestamp_ns=time.time_ns(), cpu_ns=int(cpu.get("usage_ns", 0)),
            memory_usage=usage,
            memory_working_set=max(0, usage - int(memory.get("inactive_file", 0))),
            writable_bytes=await asyncio.to_thread(self.containers.size_rw, c))
        return m.ContainerStats(c.id, labels.get(POD_ID, ""), _metadata(labels),
                                _user_labels(labels), _annotations(labels), usage_now)

    async def list_container_stats(self) -> list[m.ContainerStats]:
        return [await self._stats_of(c) for c in self._all_of_kind("container")]

    async def pod_stats(self, pod_id: str) -> m.PodStats:
        pod = self._pod(pod_id)
        members = [await self._stats_of(c) for c in self._pod_containers(pod.id)]
        total = m.Usage(timestamp_ns=time.time_ns())
        for s in members:
            total.cpu_ns += s.usage.cpu_ns
            total.memory_usage += s.usage.memory_usage
            total.memory_working_set += s.usage.memory_working_set
            total.writable_bytes += s.usage.writable_bytes
        return m.PodStats(self._pod_view(pod), total, members)

    async def list_pod_stats(self) -> list[m.PodStats]:
        return [await self.pod_stats(p.id) for p in self.list_pods()]
