"""runtime.v1.RuntimeService: requests translated into calls on the pod
service (hbd/services/pod), answers built from what it returns. Exec,
Attach and PortForward register what their stream will do with the
streaming server (hbd/api/kubestream.py) and answer its URL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from hbd import __version__
from hbd.api.cri import convert
from hbd.api.cri.gen import runtime_v1_pb2 as pb
from hbd.api.kubestream import (
    PodConnection,
    PortForward,
    Process,
    RemoteCommand,
    StreamingServer,
    StreamOptions,
)
from hbd.errors import InvalidParameter
from hbd.services.pod.service import PodService

RUNTIME_NAME = "hbd"
CRI_VERSION = "v1"
Context = grpc.aio.ServicerContext[object, object]


class RuntimeServicer:
    def __init__(self, pods: PodService, streaming: StreamingServer,
                 network_ready: bool = True) -> None:
        self.pods = pods
        self.streaming = streaming
        self.network_ready = network_ready

    async def Version(self, request: pb.VersionRequest, context: Context) -> pb.VersionResponse:
        return pb.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                  runtime_version=__version__,
                                  runtime_api_version=CRI_VERSION)

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        conditions = [
            pb.RuntimeCondition(type="RuntimeReady", status=True),
            pb.RuntimeCondition(type="NetworkReady", status=self.network_ready,
                                reason="" if self.network_ready else "NetworkNotReady"),
        ]
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions),
                                 runtime_handlers=[pb.RuntimeHandler(
                                     name="", features=pb.RuntimeHandlerFeatures(
                                         recursive_read_only_mounts=True))],
                                 features=pb.RuntimeFeatures(supplemental_groups_policy=True))

    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest,
                            context: Context) -> pb.RuntimeConfigResponse:
        return pb.RuntimeConfigResponse(
            linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))

    async def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest,
                                  context: Context) -> pb.UpdateRuntimeConfigResponse:
        # The pod CIDR kubelet passes here: hbd's pod network has its own IPAM.
        return pb.UpdateRuntimeConfigResponse()

    # -- pods -------------------------------------------------------------------------------

    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest,
                            context: Context) -> pb.RunPodSandboxResponse:
        if request.runtime_handler:
            raise InvalidParameter(f"unknown runtime handler {request.runtime_handler!r}")
        pod_id = await self.pods.run_pod(convert.pod_config(request.config))
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest,
                             context: Context) -> pb.StopPodSandboxResponse:
        await self.pods.stop_pod(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest,
                               context: Context) -> pb.RemovePodSandboxResponse:
        await self.pods.remove_pod(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest,
                               context: Context) -> pb.PodSandboxStatusResponse:
        pod = self.pods.pod_status(request.pod_sandbox_id)
        return pb.PodSandboxStatusResponse(status=convert.pod_status(pod),
                                           timestamp=pod.created_ns)

    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest,
                             context: Context) -> pb.ListPodSandboxResponse:
        f = request.filter
        items = []
        for pod in self.pods.list_pods():
            if f.id and not pod.id.startswith(f.id):
                continue
            if f.HasField("state") and convert.pod_state(pod) != f.state.state:
                continue
            if not convert.selected(pod.labels, dict(f.label_selector)):
                continue
            items.append(convert.pod_summary(pod))
        return pb.ListPodSandboxResponse(items=items)

    # -- containers -------------------------------------------------------------------------

    async def CreateContainer(self, request: pb.CreateContainerRequest,
                              context: Context) -> pb.CreateContainerResponse:
        pod_config = (convert.pod_config(request.sandbox_config)
                      if request.HasField("sandbox_config") else None)
        container_id = await self.pods.create_container(
            request.pod_sandbox_id, convert.container_config(request.config), pod_config)
        return pb.CreateContainerResponse(container_id=container_id)

    async def StartContainer(self, request: pb.StartContainerRequest,
                             context: Context) -> pb.StartContainerResponse:
        await self.pods.start_container(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(self, request: pb.StopContainerRequest,
                            context: Context) -> pb.StopContainerResponse:
        await self.pods.stop_container(request.container_id, int(request.timeout))
        return pb.StopContainerResponse()

    async def RemoveContainer(self, request: pb.RemoveContainerRequest,
                              context: Context) -> pb.RemoveContainerResponse:
        await self.pods.remove_container(request.container_id)
        return pb.RemoveContainerResponse()

    async def ContainerStatus(self, request: pb.ContainerStatusRequest,
                              context: Context) -> pb.ContainerStatusResponse:
        status = self.pods.container_status(request.container_id)
        return pb.ContainerStatusResponse(status=convert.container_status(status))

    async def ListContainers(self, request: pb.ListContainersRequest,
                             context: Context) -> pb.ListContainersResponse:
        f = request.filter
        items = []
        for c in self.pods.list_containers():
            if f.id and not c.id.startswith(f.id):
                continue
            if f.pod_sandbox_id and not c.pod_id.startswith(f.pod_sandbox_id):
                continue
            if f.HasField("state") and c.state != f.state.state:
                continue
            if not convert.selected(c.labels, dict(f.label_selector)):
                continue
            items.append(convert.container_summary(c))
        return pb.ListContainersResponse(containers=items)

    async def UpdateContainerResources(self, request: pb.UpdateContainerResourcesRequest,
                                       context: Context
                                       ) -> pb.UpdateContainerResourcesResponse:
        await self.pods.update_resources(request.container_id,
                                         convert.resources(request.linux))
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(self, request: pb.ReopenContainerLogRequest,
                                 context: Context) -> pb.ReopenContainerLogResponse:
        self.pods.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request: pb.ExecSyncRequest,
                       context: Context) -> pb.ExecSyncResponse:
        if not request.cmd:
            raise InvalidParameter("ExecSync needs a command")
        result = await self.pods.exec_sync(request.container_id, list(request.cmd),
                                           float(request.timeout))
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                   exit_code=result.exit_code)

    # -- streams ----------------------------------------------------------------------------

    async def Exec(self, request: pb.ExecRequest, context: Context) -> pb.ExecResponse:
        if not request.cmd:
            raise InvalidParameter("Exec needs a command")
        options = _stream_options(request)
        self.pods.check_streamable(request.container_id)
        cid, cmd = request.container_id, list(request.cmd)

        async def start() -> Process:
            return await self.pods.exec_streams(cid, cmd, options.tty, options.stdin,
                                                options.stdout, options.stderr)
        return pb.ExecResponse(url=self.streaming.register("exec",
                                                           RemoteCommand(options, start)))

    async def Attach(self, request: pb.AttachRequest, context: Context) -> pb.AttachResponse:
        options = _stream_options(request)
        self.pods.check_streamable(request.container_id)
        cid = request.container_id

        async def start() -> Process:
            return self.pods.attach_streams(cid, options.stdout, options.stderr)
        return pb.AttachResponse(url=self.streaming.register("attach",
                                                             RemoteCommand(options, start)))

    async def PortForward(self, request: pb.PortForwardRequest,
                          context: Context) -> pb.PortForwardResponse:
        self.pods.check_forwardable(request.pod_sandbox_id)
        pod_id = request.pod_sandbox_id

        async def connect(port: int) -> PodConnection:
            return await self.pods.connect_port(pod_id, port)
        return pb.PortForwardResponse(url=self.streaming.register("portforward",
                                                                  PortForward(connect)))

    async def GetContainerEvents(self, request: pb.GetEventsRequest,
                                 context: Context) -> AsyncIterator[pb.ContainerEventResponse]:
        async for event in self.pods.container_events():
            yield convert.container_event(event)

    # -- stats ------------------------------------------------------------------------------

    async def ContainerStats(self, request: pb.ContainerStatsRequest,
                             context: Context) -> pb.ContainerStatsResponse:
        stats = await self.pods.container_stats(request.container_id)
        return pb.ContainerStatsResponse(stats=convert.container_stats(stats))

    async def ListContainerStats(self, request: pb.ListContainerStatsRequest,
                                 context: Context) -> pb.ListContainerStatsResponse:
        f = request.filter
        chosen = [s for s in await self.pods.list_container_stats()
                  if (not f.id or s.id.startswith(f.id))
                  and (not f.pod_sandbox_id or s.pod_id.startswith(f.pod_sandbox_id))
                  and convert.selected(s.labels, dict(f.label_selector))]
        return pb.ListContainerStatsResponse(
            stats=[convert.container_stats(s) for s in chosen])

    async def PodSandboxStats(self, request: pb.PodSandboxStatsRequest,
                              context: Context) -> pb.PodSandboxStatsResponse:
        stats = await self.pods.pod_stats(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=convert.pod_stats(stats))

    async def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest,
                                  context: Context) -> pb.ListPodSandboxStatsResponse:
        f = request.filter
        chosen = [s for s in await self.pods.list_pod_stats()
                  if (not f.id or s.pod.id.startswith(f.id))
                  and convert.selected(s.pod.labels, dict(f.label_selector))]
        return pb.ListPodSandboxStatsResponse(stats=[convert.pod_stats(s) for s in chosen])


def _stream_options(request: pb.ExecRequest | pb.AttachRequest) -> StreamOptions:
    """kubelet's streaming server's checks of an exec or attach request."""
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidParameter("one of stdin, stdout, or stderr must be set")
    if request.tty and request.stderr:
        raise InvalidParameter("tty and stderr cannot both be true")
    return StreamOptions(request.stdin, request.stdout, request.stderr, request.tty)
