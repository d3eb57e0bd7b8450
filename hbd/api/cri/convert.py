"""CRI messages to and from hbd's pod model (hbd/services/pod/model.py)."""

from __future__ import annotations

from hbd.api.cri.gen import runtime_v1_pb2 as pb
from hbd.services.pod import model as m

PROTOCOLS = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}


def _text(value: str | bytes) -> str:
    """KeyValue.value: bytes in this spec's proto, a string in older ones."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _mode(mode: int) -> pb.NamespaceMode:
    return pb.NamespaceMode.Name(mode)  # type: ignore[return-value]


def metadata(md: pb.PodSandboxMetadata | pb.ContainerMetadata) -> m.Metadata:
    if isinstance(md, pb.PodSandboxMetadata):
        return m.Metadata(md.name, md.uid, md.namespace, md.attempt)
    return m.Metadata(md.name, attempt=md.attempt)


def pod_config(cfg: pb.PodSandboxConfig) -> m.PodConfig:
    ns = cfg.linux.security_context.namespace_options
    return m.PodConfig(
        metadata=metadata(cfg.metadata), hostname=cfg.hostname,
        log_directory=cfg.log_directory,
        dns_servers=list(cfg.dns_config.servers), dns_searches=list(cfg.dns_config.searches),
        dns_options=list(cfg.dns_config.options),
        port_mappings=[m.PortMapping(PROTOCOLS.get(p.protocol, "tcp"), p.container_port,
                                     p.host_port, p.host_ip) for p in cfg.port_mappings],
        labels=dict(cfg.labels), annotations=dict(cfg.annotations),
        network_mode=ns.network, pid_mode=ns.pid, ipc_mode=ns.ipc,
        sysctls=dict(cfg.linux.sysctls))


def container_config(cfg: pb.ContainerConfig) -> m.ContainerConfig:
    linux = cfg.linux
    res, sec = linux.resources, linux.security_context
    return m.ContainerConfig(
        metadata=m.Metadata(cfg.metadata.name, attempt=cfg.metadata.attempt),
        image=cfg.image.image, command=list(cfg.command), args=list(cfg.args),
        working_dir=cfg.working_dir, envs=[(kv.key, _text(kv.value)) for kv in cfg.envs],
        mounts=[m.Mount(mt.container_path, mt.host_path, mt.readonly, mt.recursive_read_only,
                        mt.propagation, image=mt.image.image if mt.HasField("image") else "",
                        image_sub_path=mt.image_sub_path) for mt in cfg.mounts],
        devices=[m.Device(d.container_path, d.host_path, d.permissions or "rwm")
                 for d in cfg.devices],
        labels=dict(cfg.labels), annotations=dict(cfg.annotations), log_path=cfg.log_path,
        stdin=cfg.stdin, stdin_once=cfg.stdin_once, tty=cfg.tty,
        resources=m.Resources(res.cpu_period, res.cpu_quota, res.cpu_shares,
                              res.memory_limit_in_bytes, res.oom_score_adj, res.cpuset_cpus),
        security=m.SecurityContext(
            privileged=sec.privileged, readonly_rootfs=sec.readonly_rootfs,
            run_as_user=sec.run_as_user.value if sec.HasField("run_as_user") else None,
            run_as_group=sec.run_as_group.value if sec.HasField("run_as_group") else None,
            run_as_username=sec.run_as_username,
            supplemental_groups=list(sec.supplemental_groups),
            groups_strict=sec.supplemental_groups_policy == pb.Strict,
            cap_add=list(sec.capabilities.add_capabilities),
            cap_drop=list(sec.capabilities.drop_capabilities),
            no_new_privs=sec.no_new_privs,
            seccomp=(pb.SecurityProfile.ProfileType.Name(sec.seccomp.profile_type)
                     if sec.HasField("seccomp") else "Unconfined"),
            seccomp_localhost_path=sec.seccomp.localhost_ref,
            masked_paths=list(sec.masked_paths), readonly_paths=list(sec.readonly_paths),
            pid_mode=sec.namespace_options.pid, target_id=sec.namespace_options.target_id))


def resources(res: pb.LinuxContainerResources) -> m.Resources:
    return m.Resources(res.cpu_period, res.cpu_quota, res.cpu_shares,
                       res.memory_limit_in_bytes, res.oom_score_adj, res.cpuset_cpus)


def pod_metadata(md: m.Metadata) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(name=md.name, uid=md.uid, namespace=md.namespace,
                                 attempt=md.attempt)


def container_metadata(md: m.Metadata) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=md.name, attempt=md.attempt)


def pod_state(pod: m.PodStatus) -> pb.PodSandboxState:
    return pb.SANDBOX_READY if pod.ready else pb.SANDBOX_NOTREADY


def pod_status(pod: m.PodStatus) -> pb.PodSandboxStatus:
    return pb.PodSandboxStatus(
        id=pod.id, metadata=pod_metadata(pod.metadata), state=pod_state(pod),
        created_at=pod.created_ns,
        network=pb.PodSandboxNetworkStatus(
            ip=pod.ip, additional_ips=[pb.PodIP(ip=ip) for ip in pod.additional_ips]),
        linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=pb.NamespaceOption(
            network=_mode(pod.network_mode), pid=_mode(pod.pid_mode),
            ipc=_mode(pod.ipc_mode)))),
        labels=pod.labels, annotations=pod.annotations)


def pod_summary(pod: m.PodStatus) -> pb.PodSandbox:
    return pb.PodSandbox(id=pod.id, metadata=pod_metadata(pod.metadata),
                         state=pod_state(pod), created_at=pod.created_ns,
                         labels=pod.labels, annotations=pod.annotations)


def container_state(c: m.ContainerStatus) -> pb.ContainerState:
    return pb.ContainerState.Name(c.state)  # type: ignore[return-value]


def mount_status(mt: m.Mount) -> pb.Mount:
    mount = pb.Mount(container_path=mt.container_path, host_path=mt.host_path,
                     readonly=mt.readonly, recursive_read_only=mt.recursive_read_only,
                     propagation=pb.MountPropagation.Name(mt.propagation),
                     image_sub_path=mt.image_sub_path)
    if mt.image:
        mount.image.CopyFrom(pb.ImageSpec(image=mt.image, image_ref=mt.image))
    return mount


def container_status(c: m.ContainerStatus) -> pb.ContainerStatus:
    return pb.ContainerStatus(
        id=c.id, metadata=container_metadata(c.metadata), state=container_state(c),
        created_at=c.created_ns, started_at=c.started_ns, finished_at=c.finished_ns,
        exit_code=c.exit_code, image=pb.ImageSpec(image=c.image),
        image_ref=c.image_ref, image_id=c.image_id, reason=c.reason, message=c.message,
        labels=c.labels, annotations=c.annotations,
        mounts=[mount_status(mt) for mt in c.mounts],
        log_path=c.log_path,
        user=pb.ContainerUser(linux=pb.LinuxContainerUser(
            uid=c.user.uid, gid=c.user.gid, supplemental_groups=c.user.supplemental_groups))
        if c.user is not None else None)


def container_summary(c: m.ContainerStatus) -> pb.Container:
    return pb.Container(
        id=c.id, pod_sandbox_id=c.pod_id, metadata=container_metadata(c.metadata),
        image=pb.ImageSpec(image=c.image), image_ref=c.image_ref, image_id=c.image_id,
        state=container_state(c), created_at=c.created_ns, labels=c.labels,
        annotations=c.annotations)


def container_event(e: m.ContainerEvent) -> pb.ContainerEventResponse:
    return pb.ContainerEventResponse(
        container_id=e.container_id,
        container_event_type=pb.ContainerEventType.Name(e.kind),
        created_at=e.created_ns,
        pod_sandbox_status=pod_status(e.pod) if e.pod is not None else None,
        containers_statuses=[container_status(c) for c in e.containers])


def selected(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _uint(value: int) -> pb.UInt64Value:
    return pb.UInt64Value(value=max(0, value))


def _cpu(u: m.Usage) -> pb.CpuUsage:
    return pb.CpuUsage(timestamp=u.timestamp_ns, usage_core_nano_seconds=_uint(u.cpu_ns))


def _memory(u: m.Usage) -> pb.MemoryUsage:
    return pb.MemoryUsage(timestamp=u.timestamp_ns, usage_bytes=_uint(u.memory_usage),
                          working_set_bytes=_uint(u.memory_working_set))


def container_stats(s: m.ContainerStats) -> pb.ContainerStats:
    return pb.ContainerStats(
        attributes=pb.ContainerAttributes(id=s.id, metadata=container_metadata(s.metadata),
                                          labels=s.labels, annotations=s.annotations),
        cpu=_cpu(s.usage), memory=_memory(s.usage),
        writable_layer=pb.FilesystemUsage(timestamp=s.usage.timestamp_ns,
                                          used_bytes=_uint(s.usage.writable_bytes)))


def pod_stats(s: m.PodStats) -> pb.PodSandboxStats:
    pod = s.pod
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(id=pod.id, metadata=pod_metadata(pod.metadata),
                                           labels=pod.labels, annotations=pod.annotations),
        linux=pb.LinuxPodSandboxStats(cpu=_cpu(s.usage), memory=_memory(s.usage),
                                      containers=[container_stats(c) for c in s.containers]))
