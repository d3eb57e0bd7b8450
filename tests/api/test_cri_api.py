"""The CRI v1 over its real unix socket (gRPC stubs generated from the spec),
on a daemon with the fake guest driver: the RPCs kubelet and critest use,
their answers and their errors."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest

from hbd.api.cri import stubs
from tests.api.conftest import ApiDaemon, serve_api_daemon

stubs.load()

from hbd.api.cri.gen import runtime_v1_pb2 as pb  # noqa: E402
from hbd.api.cri.gen import runtime_v1_pb2_grpc as rpc  # noqa: E402
from hbd.api.cri.images import ImageServicer  # noqa: E402
from hbd.api.cri.runtime import RuntimeServicer  # noqa: E402
from hbd.api.cri.server import serve  # noqa: E402
from hbd.api.kubestream import StreamingServer  # noqa: E402
from hbd.services.volume import direct  # noqa: E402
from tests import kubestream_client as ks  # noqa: E402
from tests.loopdev import loop_device  # noqa: E402

# The fake driver runs processes on the host, so the infrastructure
# container's image is one whose command the host has.
FAKE_PAUSE = "crifake/pause:1"


@dataclass
class Cri:
    api: ApiDaemon
    runtime: Any
    images: Any
    log_dir: Path


@pytest.fixture(scope="module")
def cri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cri]:
    base = tmp_path_factory.mktemp("hbd-cri")
    # Guests are clones where they may be, as with real templates.
    with serve_api_daemon(base, clones=True) as api:
        client = docker.APIClient(base_url=api.host, version="1.47")
        dockerfile = b'FROM busybox\nCMD ["sleep", "100000"]\n'
        list(client.build(fileobj=io.BytesIO(dockerfile), tag=FAKE_PAUSE, rm=True))
        client.close()
        daemon = api.daemon
        daemon.config.cri.sandbox_image = FAKE_PAUSE
        daemon.config.cri.network = "k8s-pods"
        socket = api.socket.parent / "cri.sock"

        streaming = StreamingServer()

        async def start() -> grpc.aio.Server:
            await daemon.pods.prepare()
            await streaming.start()
            return await serve(f"unix://{socket}", RuntimeServicer(daemon.pods, streaming),
                               ImageServicer(daemon.images, daemon.distribution))

        server = api.call(start())
        channel = grpc.insecure_channel(f"unix://{socket}")
        yield Cri(api, rpc.RuntimeServiceStub(channel), rpc.ImageServiceStub(channel),
                  base / "pods")
        channel.close()
        api.call(server.stop(1.0))
        api.call(streaming.stop())


def pod_config(name: str, log_dir: Path, **extra: Any) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=name, log_directory=str(log_dir / name), labels={"app": name},
        annotations={"note": "hbd"}, **extra)


def container_config(name: str, *command: str) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image="busybox"),
        command=list(command), labels={"part": name}, log_path=f"{name}.log",
        envs=[pb.KeyValue(key="GREETING", value=b"hello")])


def refusal(call: Any, *args: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code(), str(info.value.details())


def code_of(call: Any, *args: Any) -> grpc.StatusCode:
    return refusal(call, *args)[0]


def test_runtime_identity_and_status(cri: Cri) -> None:
    version = cri.runtime.Version(pb.VersionRequest())
    assert (version.runtime_name, version.runtime_api_version) == ("hbd", "v1")
    status = cri.runtime.Status(pb.StatusRequest()).status
    assert {c.type: c.status for c in status.conditions} == {
        "RuntimeReady": True, "NetworkReady": True}
    config = cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
    assert config.linux.cgroup_driver == pb.CGROUPFS
    features = cri.runtime.Status(pb.StatusRequest()).features
    assert features.supplemental_groups_policy


def test_supplemental_groups_policy_reaches_the_guest(cri: Cri) -> None:
    """Strict: the guest leaves the image's /etc/group memberships out;
    Merge (the default) keeps them. The guest tells the identity it set."""
    pod_id, config = run_pod(cri, "groups")
    try:
        asked = {}
        for policy in (pb.Merge, pb.Strict):
            app = container_config("app", "sleep", "100000")
            app.linux.security_context.supplemental_groups.append(1234)
            app.linux.security_context.supplemental_groups_policy = policy
            app.metadata.attempt = int(policy)
            app_id = create(cri, pod_id, config, app)
            cri.runtime.StartContainer(pb.StartContainerRequest(container_id=app_id))
            sb = cri.api.daemon.containers.sandboxes.holding(app_id)
            assert sb is not None
            member = sb.member(app_id)
            assert member is not None
            setup = sb.guest.containers[member.guest_id]  # type: ignore[attr-defined]
            asked[policy] = (setup.groups_strict, setup.group_add)
            # The fake guest runs a host process: it cannot tell the identity.
            status = cri.runtime.ContainerStatus(
                pb.ContainerStatusRequest(container_id=app_id)).status
            assert not status.HasField("user")
        assert asked == {pb.Merge: (False, ["1234"]), pb.Strict: (True, ["1234"])}
    finally:
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_images_are_the_engine_api_store(cri: Cri) -> None:
    listed = cri.images.ListImages(pb.ListImagesRequest()).images
    # Full names, as containerd lists them to kubelet.
    busybox = next(i for i in listed if "docker.io/library/busybox:latest" in i.repo_tags)
    assert busybox.id.startswith("sha256:") and busybox.size > 0
    status = cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="busybox")))
    assert status.image.id == busybox.id
    absent = cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image="no-such-image:1")))
    assert not absent.HasField("image")
    # Removing an absent image succeeds; pulling one from nowhere is an error.
    cri.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="no-such-image:1")))
    code = code_of(cri.images.PullImage,
                   pb.PullImageRequest(image=pb.ImageSpec(image="127.0.0.1:9/nothing:1")))
    assert code not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL)
    fs = cri.images.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems[0]
    assert fs.used_bytes.value >= busybox.size


def test_pod_and_container_lifecycle(cri: Cri) -> None:
    rt = cri.runtime
    config = pod_config("web", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == pb.SANDBOX_READY
    assert status.metadata.name == "web" and status.metadata.namespace == "default"
    assert status.labels == {"app": "web"} and status.annotations == {"note": "hbd"}
    assert status.network.ip.count(".") == 3
    by_label = rt.ListPodSandbox(pb.ListPodSandboxRequest(
        filter=pb.PodSandboxFilter(label_selector={"app": "web"}))).items
    assert [p.id for p in by_label] == [pod_id]
    assert not rt.ListPodSandbox(pb.ListPodSandboxRequest(
        filter=pb.PodSandboxFilter(label_selector={"app": "other"}))).items

    container_id = rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config,
        config=container_config("app", "sh", "-c", "echo $GREETING; sleep 100000"),
    )).container_id
    state = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id)).status
    assert state.state == pb.CONTAINER_CREATED and state.image.image == "busybox"
    rt.StartContainer(pb.StartContainerRequest(container_id=container_id))
    state = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id)).status
    assert state.state == pb.CONTAINER_RUNNING and state.started_at > 0
    assert state.labels == {"part": "app"}
    listed = rt.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(pod_sandbox_id=pod_id))).containers
    assert [c.id for c in listed] == [container_id]

    result = rt.ExecSync(pb.ExecSyncRequest(container_id=container_id,
                                            cmd=["sh", "-c", "echo out; echo err >&2; exit 3"],
                                            timeout=20))
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)

    stats = rt.ContainerStats(pb.ContainerStatsRequest(container_id=container_id)).stats
    assert stats.attributes.id == container_id and stats.attributes.labels == {"part": "app"}
    assert stats.cpu.timestamp > 0
    listed_stats = rt.ListContainerStats(pb.ListContainerStatsRequest(
        filter=pb.ContainerStatsFilter(pod_sandbox_id=pod_id))).stats
    assert [s.attributes.id for s in listed_stats] == [container_id]
    pod_stats = rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert pod_stats.attributes.id == pod_id
    assert [c.attributes.id for c in pod_stats.linux.containers] == [container_id]

    log_path = Path(state.log_path)
    assert log_path == cri.log_dir / "web" / "app.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and b"hello" not in log_path.read_bytes():
        time.sleep(0.1)
    line = log_path.read_bytes().splitlines()[0].split(b" ", 3)
    assert line[1:] == [b"stdout", b"F", b"hello"]

    rt.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=1))
    state = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id)).status
    assert state.state == pb.CONTAINER_EXITED and state.finished_at >= state.started_at
    assert state.reason == "Error" and state.exit_code != 0

    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == pb.SANDBOX_NOTREADY
    # A container cannot be made in a pod that is not ready.
    assert code_of(rt.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config("late", "true"),
    )) == grpc.StatusCode.FAILED_PRECONDITION
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert code_of(rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
                   ) == grpc.StatusCode.NOT_FOUND
    assert code_of(rt.ContainerStatus, pb.ContainerStatusRequest(container_id=container_id)
                   ) == grpc.StatusCode.NOT_FOUND
    # Stop and remove are idempotent.
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    rt.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=1))
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))


def test_a_container_with_a_bind_mount_joins_its_pod(cri: Cri, tmp_path: Path) -> None:
    """kubelet hands every volume (and /etc/hosts, the termination log) over as
    a host path: the pod's guest must have a shared filesystem to take them."""
    rt = cri.runtime
    config = pod_config("mounts", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    try:
        (tmp_path / "data").write_text("from the host")
        app = container_config("app", "sleep", "100000")
        app.mounts.append(pb.Mount(container_path="/data", host_path=str(tmp_path),
                                   readonly=True))
        container_id = rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=config, config=app)).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=container_id))
        status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id))
        assert status.status.state == pb.CONTAINER_RUNNING
        assert [(mt.container_path, mt.host_path, mt.readonly)
                for mt in status.status.mounts] == [("/data", str(tmp_path), True)]
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_exec_sync_past_its_timeout_kills_the_command(cri: Cri) -> None:
    """kubelet's probes run with a timeout: one that hangs must not pile up."""
    rt = cri.runtime
    config = pod_config("probe", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    try:
        container_id = rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=config,
            config=container_config("app", "sleep", "100000"))).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=container_id))
        # The fake driver runs the command on this host: pgrep finds it there.
        marker = "sleep 43217"
        assert code_of(rt.ExecSync, pb.ExecSyncRequest(
            container_id=container_id, cmd=marker.split(), timeout=1,
        )) == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(
                ["pgrep", "-f", marker], capture_output=True).returncode == 0:
            time.sleep(0.1)
        assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_security_context_seccomp_and_paths(cri: Cri, tmp_path: Path) -> None:
    """The CRI's seccomp profiles (none is unconfined, as in containerd; a
    Localhost one is a JSON file on this host), masked and read-only paths."""
    rt = cri.runtime
    config = pod_config("secure", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id

    def host_config(sec: pb.LinuxContainerSecurityContext) -> dict[str, Any]:
        app = container_config("app", "sleep", "100000")
        app.linux.security_context.CopyFrom(sec)
        container_id = rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=config, config=app)).container_id
        inspected = cri.api.docker("inspect", container_id).stdout
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
        return dict(json.loads(inspected)[0]["HostConfig"])

    try:
        assert host_config(pb.LinuxContainerSecurityContext())["SecurityOpt"] == [
            "seccomp=unconfined"]
        profile = '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}'
        (tmp_path / "profile.json").write_text(profile)
        localhost = pb.LinuxContainerSecurityContext(
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost,
                                       localhost_ref=str(tmp_path / "profile.json")),
            masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"])
        hc = host_config(localhost)
        assert hc["SecurityOpt"] == [f"seccomp={profile}"]
        assert (hc["MaskedPaths"], hc["ReadonlyPaths"]) == (["/proc/kcore"], ["/proc/sys"])
        default = pb.LinuxContainerSecurityContext(
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault))
        assert not host_config(default).get("SecurityOpt")

        app = container_config("app", "true")
        app.linux.security_context.seccomp.profile_type = pb.SecurityProfile.Localhost
        app.linux.security_context.seccomp.localhost_ref = str(tmp_path / "absent.json")
        assert code_of(rt.CreateContainer, pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=config, config=app,
        )) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_bad_input_gets_a_status_not_a_traceback(cri: Cri) -> None:
    rt = cri.runtime
    assert code_of(rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id="nope")
                   ) == grpc.StatusCode.NOT_FOUND
    assert code_of(rt.StartContainer, pb.StartContainerRequest(container_id="nope")
                   ) == grpc.StatusCode.NOT_FOUND
    assert code_of(rt.ExecSync, pb.ExecSyncRequest(container_id="nope", cmd=["true"])
                   ) == grpc.StatusCode.NOT_FOUND
    assert code_of(rt.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id="nope", config=container_config("x", "true"),
    )) == grpc.StatusCode.NOT_FOUND
    # An Engine API container is not a CRI container, nor a pod.
    engine = cri.api.docker("create", "busybox", "true").stdout.decode().strip()
    try:
        assert code_of(rt.ContainerStatus, pb.ContainerStatusRequest(container_id=engine)
                       ) == grpc.StatusCode.NOT_FOUND
        assert code_of(rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=engine)
                       ) == grpc.StatusCode.NOT_FOUND
    finally:
        cri.api.docker("rm", "-f", engine)
    config = pod_config("bad", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    try:
        missing = container_config("x", "true")
        missing.image.image = "no-such-image:1"
        code, details = refusal(rt.CreateContainer,
                                pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=missing))
        assert code == grpc.StatusCode.NOT_FOUND
        assert "no-such-image" in details
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    # A group without a user (the CRI's run_as_group alone) is refused.
    config = pod_config("group", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    try:
        grouped = container_config("x", "true")
        grouped.linux.security_context.run_as_group.value = 1000
        code, details = refusal(rt.CreateContainer, pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=config, config=grouped))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "without user" in details
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    host = pod_config("host", cri.log_dir)
    host.linux.security_context.namespace_options.network = pb.NODE
    assert code_of(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=host)
                   ) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rt.Attach, pb.AttachRequest(container_id="x", stdout=True)
                   ) == grpc.StatusCode.NOT_FOUND
    assert code_of(rt.Exec, pb.ExecRequest(container_id="x", cmd=["true"], stdout=True)
                   ) == grpc.StatusCode.NOT_FOUND
    assert code_of(rt.PortForward, pb.PortForwardRequest(pod_sandbox_id="x", port=[80])
                   ) == grpc.StatusCode.NOT_FOUND


@dataclass
class RunningPod:
    pod_id: str
    container_id: str


@pytest.fixture
def running(cri: Cri) -> Iterator[RunningPod]:
    rt = cri.runtime
    config = pod_config("streams", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    app = container_config("app", "sh", "-c", "read line; echo got $line; sleep 100000")
    app.stdin = True
    container_id = rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config, config=app)).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=container_id))
    yield RunningPod(pod_id, container_id)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def exec_url(cri: Cri, container_id: str, *cmd: str, **streams: bool) -> str:
    return str(cri.runtime.Exec(pb.ExecRequest(container_id=container_id, cmd=list(cmd),
                                               **streams)).url)


def test_streaming_exec_with_stdin_and_exit_code(cri: Cri, running: RunningPod) -> None:
    url = exec_url(cri, running.container_id, "sh", "-c", "cat; echo err >&2; exit 3",
                   stdin=True, stdout=True, stderr=True)
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    result = asyncio.run(ks.remote_command(url, stdin=b"to cat\n"))
    assert (result.stdout, result.stderr) == (b"to cat\n", b"err\n")
    assert result.status["reason"] == "NonZeroExitCode" and result.exit_code == 3
    url = exec_url(cri, running.container_id, "echo", "fine", stdout=True)
    result = asyncio.run(ks.remote_command(url, stderr=False))
    assert (result.stdout, result.status) == (b"fine\n", {"metadata": {}, "status": "Success"})
    # v3 and older say nothing on the error stream when the command succeeds.
    url = exec_url(cri, running.container_id, "true", stdout=True)
    result = asyncio.run(ks.remote_command(url, stderr=False, protocol="v3.channel.k8s.io"))
    assert result.error == b""


def test_streaming_attach_to_the_main_process(cri: Cri, running: RunningPod) -> None:
    url = str(cri.runtime.Attach(pb.AttachRequest(
        container_id=running.container_id, stdin=True, stdout=True, stderr=True)).url)
    assert "/attach/" in url
    assert asyncio.run(ks.attach_and_say(url, b"hello\n")) == b"got hello\n"
    # Without StdinOnce the client's end of stdin ends its attach, not the container.
    url = str(cri.runtime.Attach(pb.AttachRequest(
        container_id=running.container_id, stdin=True, stdout=True, stderr=True)).url)
    result = asyncio.run(ks.remote_command(url, stdin=b""))
    assert (result.stdout, result.status["status"]) == (b"", "Success")
    state = cri.runtime.ContainerStatus(pb.ContainerStatusRequest(
        container_id=running.container_id)).status.state
    assert state == pb.CONTAINER_RUNNING


def test_streaming_urls_are_single_use_and_checked(cri: Cri, running: RunningPod) -> None:
    url = exec_url(cri, running.container_id, "true", stdout=True)
    asyncio.run(ks.remote_command(url, stderr=False))

    async def answer(target: str, protocols: list[str]) -> ks.Upgrade:
        client, upgrade = await ks.Client.open(target, protocols)
        await client.close()
        return upgrade
    for target in (url, url.rsplit("/", 1)[0] + "/nosuchtoken",
                   url.replace("/exec/", "/attach/")):
        again = asyncio.run(answer(target, ["v4.channel.k8s.io"]))
        assert again.status == 404
        assert "unknown or expired" in json.loads(again.body)["message"]
    # A protocol hbd does not speak: 403, and the token is spent.
    url = exec_url(cri, running.container_id, "true", stdout=True)
    refused = asyncio.run(answer(url, ["v9.channel.k8s.io"]))
    assert refused.status == 403 and "negotiate" in json.loads(refused.body)["message"]
    assert refused.headers["x-accept-protocol-version"].startswith("v4.channel.k8s.io")
    # Bad requests are refused before the stream.
    rt = cri.runtime
    assert code_of(rt.Exec, pb.ExecRequest(container_id=running.container_id, cmd=["true"])
                   ) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rt.Exec, pb.ExecRequest(container_id=running.container_id, cmd=["true"],
                                           tty=True, stdout=True, stderr=True)
                   ) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rt.Exec, pb.ExecRequest(container_id=running.container_id, stdout=True)
                   ) == grpc.StatusCode.INVALID_ARGUMENT


def test_exec_of_a_missing_command_fails_on_the_error_stream(cri: Cri,
                                                             running: RunningPod) -> None:
    url = exec_url(cri, running.container_id, "/no/such/binary", stdout=True)
    result = asyncio.run(ks.remote_command(url, stderr=False))
    assert result.status["status"] == "Failure"
    assert "no/such/binary" in result.status["message"]


def test_container_events_as_they_happen(cri: Cri) -> None:
    rt = cri.runtime
    stream = rt.GetContainerEvents(pb.GetEventsRequest())
    seen: list[Any] = []
    done = threading.Event()

    def collect() -> None:
        for event in stream:
            seen.append(event)
            if (event.container_event_type == pb.CONTAINER_DELETED_EVENT
                    and event.container_id == pod_holder[0]):
                done.set()
                return

    pod_holder: list[str] = [""]
    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    config = pod_config("events", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    pod_holder[0] = pod_id
    cid = rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config,
        config=container_config("ev", "sh", "-c", "exit 4"))).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    deadline = time.monotonic() + 30
    while (rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status.state
           != pb.CONTAINER_EXITED and time.monotonic() < deadline):
        time.sleep(0.1)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert done.wait(60)
    stream.cancel()
    ours = [(e.container_id, e.container_event_type) for e in seen
            if e.container_id in (pod_id, cid)]
    assert ours == [
        (pod_id, pb.CONTAINER_CREATED_EVENT), (pod_id, pb.CONTAINER_STARTED_EVENT),
        (cid, pb.CONTAINER_CREATED_EVENT), (cid, pb.CONTAINER_STARTED_EVENT),
        (cid, pb.CONTAINER_STOPPED_EVENT), (pod_id, pb.CONTAINER_STOPPED_EVENT),
        (cid, pb.CONTAINER_DELETED_EVENT), (pod_id, pb.CONTAINER_DELETED_EVENT)]
    stopped = next(e for e in seen if e.container_id == cid
                   and e.container_event_type == pb.CONTAINER_STOPPED_EVENT)
    assert stopped.pod_sandbox_status.id == pod_id
    assert stopped.pod_sandbox_status.metadata.name == "events"
    assert [(c.id, c.state, c.exit_code) for c in stopped.containers_statuses] == [
        (cid, pb.CONTAINER_EXITED, 4)]
    assert all(e.created_at > 0 for e in seen)


def guest_mounts(cri: Cri, container_id: str) -> list[Any]:
    """The mounts the container's guest was asked for (the fake guest keeps them)."""
    sb = cri.api.daemon.containers.sandboxes.holding(container_id)
    assert sb is not None
    member = sb.member(container_id)
    assert member is not None
    return list(sb.guest.containers[member.guest_id].mounts)  # type: ignore[attr-defined]


def guest_disks(cri: Cri, container_id: str) -> list[Any]:
    sb = cri.api.daemon.containers.sandboxes.holding(container_id)
    assert sb is not None
    return list(sb.guest.disks.values())  # type: ignore[attr-defined]


def run_pod(cri: Cri, name: str) -> tuple[str, pb.PodSandboxConfig]:
    config = pod_config(name, cri.log_dir)
    return cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id, \
        config


def create(cri: Cri, pod_id: str, config: pb.PodSandboxConfig, app: pb.ContainerConfig) -> str:
    return str(cri.runtime.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config, config=app)).container_id)


def test_raw_block_devices_attach_once_per_pod_and_to_one_pod(cri: Cri,
                                                              tmp_path: Path) -> None:
    rt = cri.runtime
    with loop_device(tmp_path / "raw.img") as device:
        pod_a, config_a = run_pod(cri, "rawblock-a")
        pod_b, config_b = run_pod(cri, "rawblock-b")
        try:
            writer = container_config("writer", "sleep", "100000")
            writer.devices.append(pb.Device(container_path="/dev/xvdb", host_path=device,
                                            permissions="rwm"))
            reader = container_config("reader", "sleep", "100000")
            reader.devices.append(pb.Device(container_path="/dev/ro", host_path=device,
                                            permissions="r"))
            writer_id, reader_id = (create(cri, pod_a, config_a, c) for c in (writer, reader))
            for cid in (writer_id, reader_id):
                rt.StartContainer(pb.StartContainerRequest(container_id=cid))
            # One disk of the guest for both containers: the host device, raw.
            [disk] = [d for d in guest_disks(cri, writer_id) if d.host_device]
            assert (str(disk.path), disk.format, disk.readonly) == (device, "raw", False)
            nodes = [(mt.type, mt.target, mt.source, mt.mode)
                     for c in (writer_id, reader_id) for mt in guest_mounts(cri, c)
                     if mt.type == "device"]
            # The host's loop nodes are 0600: read-only takes the write bit away.
            assert nodes == [("device", "/dev/xvdb", disk.serial, 0o600),
                             ("device", "/dev/ro", disk.serial, 0o400)]

            # Another pod's guest cannot have it while this one does.
            other = container_config("other", "sleep", "100000")
            other.devices.append(pb.Device(container_path="/dev/xvdb", host_path=device))
            other_id = create(cri, pod_b, config_b, other)
            code, details = refusal(rt.StartContainer,
                                    pb.StartContainerRequest(container_id=other_id))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert f"device {device} is attached to another guest" in details

            # The last container using it gone, the guest lets it go.
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=writer_id))
            assert [d for d in guest_disks(cri, reader_id) if d.host_device]
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=reader_id))
            sb = cri.api.daemon.containers.sandboxes.holding(pod_a)
            assert sb is not None and not sb.record.devices
            assert not [d for d in sb.guest.disks.values()  # type: ignore[attr-defined]
                        if d.host_device]
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_a))
            rt.StartContainer(pb.StartContainerRequest(container_id=other_id))
            assert [str(d.path) for d in guest_disks(cri, other_id) if d.host_device] == [device]
        finally:
            for pod in (pod_a, pod_b):
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))


def test_a_direct_assigned_volume_is_a_disk_the_guest_mounts(cri: Cri, tmp_path: Path) -> None:
    rt = cri.runtime
    volume_path = str(tmp_path / "kubelet-volume")
    registry = cri.api.daemon.volumes.direct
    with loop_device(tmp_path / "fs.img", ext4=True) as device:
        registry.add(volume_path, direct.parse_mount_info(json.dumps(
            {"volume-type": "block", "device": device, "fstype": "ext4",
             "options": ["noatime", "errors=remount-ro"]})))
        pod_id, config = run_pod(cri, "direct")
        try:
            app = container_config("app", "sleep", "100000")
            app.mounts.append(pb.Mount(container_path="/data", host_path=volume_path,
                                       readonly=True))
            app_id = create(cri, pod_id, config, app)

            # Never in the guest while the host has it mounted.
            mountpoint = tmp_path / "mnt"
            mountpoint.mkdir()
            subprocess.run(["mount", device, str(mountpoint)], check=True)
            try:
                code, details = refusal(rt.StartContainer,
                                        pb.StartContainerRequest(container_id=app_id))
            finally:
                subprocess.run(["umount", str(mountpoint)], check=True)
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert f"is mounted on the host at {mountpoint}" in details

            rt.StartContainer(pb.StartContainerRequest(container_id=app_id))
            [mount] = [mt for mt in guest_mounts(cri, app_id) if mt.target == "/data"]
            assert (mount.type, mount.fstype, mount.fs_flags, mount.fs_options,
                    mount.readonly) == ("disk", "ext4", 1024, "errors=remount-ro", True)
            [disk] = [d for d in guest_disks(cri, app_id) if d.host_device]
            assert (str(disk.path), disk.serial) == (device, mount.source)
        finally:
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
            registry.remove(volume_path)


def test_bad_block_volumes_get_a_status(cri: Cri, tmp_path: Path) -> None:
    rt = cri.runtime
    pod_id, config = run_pod(cri, "badblock")
    registry = cri.api.daemon.volumes.direct
    volume_path = str(tmp_path / "broken")
    try:
        not_a_device = tmp_path / "file"
        not_a_device.write_text("x")
        app = container_config("app", "sleep", "100000")
        app.devices.append(pb.Device(container_path="/dev/x", host_path=str(not_a_device)))
        code, details = refusal(create, cri, pod_id, config, app)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{not_a_device} is not a block device" in details

        broken = Path(registry.root) / direct.volume_key(volume_path) / "mountInfo.json"
        broken.parent.mkdir(parents=True)
        broken.write_text('{"volume-type": "nfs", "device": "/dev/x"}')
        app = container_config("broken", "sleep", "100000")
        app.mounts.append(pb.Mount(container_path="/data", host_path=volume_path))
        app_id = create(cri, pod_id, config, app)
        code, details = refusal(rt.StartContainer, pb.StartContainerRequest(container_id=app_id))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown volume-type 'nfs'" in details
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        registry.remove(volume_path)


def test_a_device_attached_read_only_cannot_be_written_by_another_container(
        cri: Cri, tmp_path: Path) -> None:
    rt = cri.runtime
    with loop_device(tmp_path / "ro.img") as device:
        pod_id, config = run_pod(cri, "rodevice")
        try:
            reader = container_config("reader", "sleep", "100000")
            reader.devices.append(pb.Device(container_path="/dev/r", host_path=device,
                                            permissions="r"))
            rt.StartContainer(pb.StartContainerRequest(
                container_id=create(cri, pod_id, config, reader)))
            [disk] = [d for d in guest_disks(cri, pod_id) if d.host_device]
            assert disk.readonly
            writer = container_config("writer", "sleep", "100000")
            writer.devices.append(pb.Device(container_path="/dev/w", host_path=device,
                                            permissions="rw"))
            writer_id = create(cri, pod_id, config, writer)
            code, details = refusal(rt.StartContainer,
                                    pb.StartContainerRequest(container_id=writer_id))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert "attached read-only to the guest" in details
        finally:
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_an_exec_dies_when_its_streaming_client_hangs_up(cri: Cri, running: RunningPod) -> None:
    """As containerd's: the client's end is the exec's (kubectl exec, ^C)."""
    marker = "sleep 43218"  # the fake driver runs it on this host: pgrep finds it
    url = exec_url(cri, running.container_id, "sh", "-c", f"echo started; exec {marker}",
                   stdout=True, stderr=True)
    assert asyncio.run(ks.exec_and_hang_up(url)) == b"started\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and subprocess.run(
            ["pgrep", "-f", marker], capture_output=True).returncode == 0:
        time.sleep(0.1)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


def test_recursive_read_only_mounts_as_the_cri_words_them(cri: Cri, tmp_path: Path) -> None:
    rt = cri.runtime
    handlers = rt.Status(pb.StatusRequest()).runtime_handlers
    assert [h.features.recursive_read_only_mounts for h in handlers] == [True]
    config = pod_config("rro", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    try:
        def create(mount: pb.Mount) -> str:
            app = container_config("app", "sleep", "100000")
            app.mounts.append(mount)
            return str(rt.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, sandbox_config=config, config=app)).container_id)
        for bad in [pb.Mount(host_path=str(tmp_path), container_path="/m",
                             recursive_read_only=True),
                    pb.Mount(host_path=str(tmp_path), container_path="/m", readonly=True,
                             recursive_read_only=True,
                             propagation=pb.PROPAGATION_HOST_TO_CONTAINER)]:
            assert code_of(create, bad) == grpc.StatusCode.INVALID_ARGUMENT
        container_id = create(pb.Mount(host_path=str(tmp_path), container_path="/m",
                                       readonly=True, recursive_read_only=True))
        status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id))
        assert [(mt.container_path, mt.readonly) for mt in status.status.mounts] == [
            ("/m", True)]
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_mount_propagation_a_guest_can_give(cri: Cri, tmp_path: Path) -> None:
    """Host to container (rslave) is kept and reported; bidirectional is
    refused: a mount made in the guest is the guest kernel's."""
    rt = cri.runtime
    config = pod_config("propagation", cri.log_dir)
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    try:
        def create(propagation: int) -> str:
            app = container_config("app", "sleep", "100000")
            app.mounts.append(pb.Mount(host_path=str(tmp_path), container_path="/m",
                                       propagation=propagation))
            return str(rt.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, sandbox_config=config, config=app)).container_id)
        code, details = refusal(create, pb.PROPAGATION_BIDIRECTIONAL)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot reach the host" in details
        for propagation in (pb.PROPAGATION_HOST_TO_CONTAINER, pb.PROPAGATION_PRIVATE):
            status = rt.ContainerStatus(pb.ContainerStatusRequest(
                container_id=create(propagation))).status
            assert [mt.propagation for mt in status.mounts] == [propagation]
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=status.id))
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def image_volume(target: str, image: str, readonly: bool = True,
                 sub_path: str = "") -> pb.Mount:
    return pb.Mount(container_path=target, readonly=readonly,
                    image=pb.ImageSpec(image=image), image_sub_path=sub_path)


def test_an_image_volume_is_the_images_disk_mounted_read_only(cri: Cri) -> None:
    """KEP 4639: the image kubelet pulled, mounted read-only (its subpath
    or its root), the image's own disk in the guest, shared with a container
    of that image; ContainerStatus names it by PullImage's image_ref."""
    rt = cri.runtime
    client = docker.APIClient(base_url=cri.api.host, version="1.47")
    list(client.build(fileobj=io.BytesIO(b"FROM busybox\nLABEL volume=yes\n"),
                      tag="crifake/imgvol:1", rm=True))
    client.close()
    ref = cri.api.daemon.images.get("crifake/imgvol:1").id  # what PullImage answers
    pause = cri.api.daemon.images.get(FAKE_PAUSE).id
    pod_id, config = run_pod(cri, "imgvol")
    try:
        app = container_config("app", "sleep", "100000")
        app.mounts.extend([image_volume("/whole", ref),
                           image_volume("/etc2", ref, sub_path="etc"),
                           image_volume("/pause", pause)])
        app_id = create(cri, pod_id, config, app)
        status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=app_id)).status
        mounts = {mt.container_path: mt for mt in status.mounts}
        assert mounts["/whole"].image.image_ref == ref and mounts["/whole"].readonly
        assert not mounts["/whole"].host_path and mounts["/etc2"].image_sub_path == "etc"

        rt.StartContainer(pb.StartContainerRequest(container_id=app_id))
        seen = {mt.target: mt for mt in guest_mounts(cri, app_id)}
        whole, etc = seen["/whole"], seen["/etc2"]
        assert (whole.type, whole.readonly, whole.subpath, whole.fs_flags) == \
            ("disk", True, "", 1)
        assert (etc.source, etc.subpath) == (whole.source, "etc")
        # The pod's own image is in the guest already: its disk serves.
        assert seen["/pause"].source == "image"
        # One disk for both mounts, read-only: the image's, not the app's own image.
        disks = {d.serial: d for d in guest_disks(cri, app_id)}
        image = cri.api.daemon.images.images[ref]
        assert disks[whole.source].readonly
        assert disks[whole.source].path == cri.api.daemon.images.disk_path(image)
        # The image is in use while a container mounts it.
        assert code_of(cri.images.RemoveImage,
                       pb.RemoveImageRequest(image=pb.ImageSpec(image=ref))) in (
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_bad_image_volumes_get_a_status(cri: Cri) -> None:
    rt = cri.runtime
    pod_id, config = run_pod(cri, "badimgvol")
    try:
        for mount, code, words in [
                (image_volume("/v", "busybox", readonly=False),
                 grpc.StatusCode.INVALID_ARGUMENT, "must be read-only"),
                (image_volume("/v", "busybox", sub_path="not-existing"),
                 grpc.StatusCode.INVALID_ARGUMENT, "subpath not-existing does not exist"),
                (image_volume("/v", "busybox", sub_path="../etc"),
                 grpc.StatusCode.INVALID_ARGUMENT, "relative path within the image"),
                (image_volume("/v", "nothere:1"), grpc.StatusCode.NOT_FOUND,
                 "No such image: nothere:1")]:
            app = container_config("app", "sleep", "100000")
            app.mounts.append(mount)
            refused, details = refusal(create, cri, pod_id, config, app)
            assert (refused, words in details) == (code, True), details
    finally:
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_image_mounts_need_api_1_48_on_the_engine_api(cri: Cri) -> None:
    """The Engine API took image mounts in 1.48; hbd speaks 1.47, so a
    client's request is refused as dockerd 27's was."""
    client = docker.APIClient(base_url=cri.api.host, version="1.47")
    try:
        with pytest.raises(docker.errors.APIError) as info:
            client.create_container("busybox", host_config={"Mounts": [
                {"Type": "image", "Source": "busybox", "Target": "/i", "ReadOnly": True}]})
        assert info.value.status_code == 400
        assert info.value.explanation == 'mount type unknown: "image"'
    finally:
        client.close()
