"""A Kubernetes pod through the CRI, in a real guest: two containers sharing
the pod's localhost, hostname and DNS settings, a published port, ExecSync,
a security context, CRI-format logs at kubelet's path, and clean removal;
streaming exec (stdin, tty, resize, exit codes), attach and port-forward
through hbd's streaming server with a SPDY client of our own
(tests/kubestream_client.py); container events as they happen."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from hbd.api.cri import stubs
from tests import kubestream_client as ks
from tests.daemon_fixture import REPO, RunningDaemon, hbd_daemon
from tests.loopdev import host_mounts, loop_device

stubs.load()

from hbd.api.cri.gen import runtime_v1_pb2 as pb  # noqa: E402
from hbd.api.cri.gen import runtime_v1_pb2_grpc as rpc  # noqa: E402


@dataclass
class Node:
    daemon: RunningDaemon
    runtime: Any
    images: Any


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    endpoint = f"unix:///run/hbd-cri-{secrets.token_hex(4)}.sock"
    with hbd_daemon(("--cri-endpoint", endpoint)) as daemon:
        channel = grpc.insecure_channel(endpoint)
        grpc.channel_ready_future(channel).result(timeout=30)
        yield Node(daemon, rpc.RuntimeServiceStub(channel), rpc.ImageServiceStub(channel))
        channel.close()
    Path(endpoint[len("unix://"):]).unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exec_sync(node: Node, container_id: str, *cmd: str) -> tuple[int, str]:
    r = node.runtime.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd),
                                                 timeout=60), timeout=120)
    return r.exit_code, (r.stdout + r.stderr).decode()


def start_container(node: Node, pod_id: str, pod: pb.PodSandboxConfig, name: str,
                    script: str, **extra: Any) -> str:
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                                image=pb.ImageSpec(image="busybox"),
                                command=["sh", "-c", script], log_path=f"{name}.log", **extra)
    cid = node.runtime.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=120).container_id
    node.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
    return str(cid)


def test_a_pod_of_two_containers(node: Node, tmp_path: Path) -> None:
    port = free_port()
    pod = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="web", uid="uid-web", namespace="default"),
        hostname="web", log_directory=str(tmp_path),
        dns_config=pb.DNSConfig(servers=["10.96.0.10"], searches=["default.svc.cluster.local"],
                                options=["ndots:5"]),
        port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=8080, host_port=port,
                                      host_ip="127.0.0.1")])
    pod_id = node.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod),
                                        timeout=180).pod_sandbox_id
    status = node.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert status.status.state == pb.SANDBOX_READY and status.status.network.ip
    server = start_container(
        node, pod_id, pod, "server",
        "mkdir /w && echo pod-ok > /w/index.html && exec httpd -f -p 8080 -h /w")
    user = pb.LinuxContainerSecurityContext()
    user.run_as_user.value = 1000
    client = start_container(node, pod_id, pod, "client", "echo started; exec sleep 100000",
                             linux=pb.LinuxContainerConfig(security_context=user))

    # One network namespace, hostname and resolv.conf for the pod.
    deadline = time.monotonic() + 60
    while True:
        code, out = exec_sync(node, client, "wget", "-qO-", "http://127.0.0.1:8080/")
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (code, out) == (0, "pod-ok\n")
    assert exec_sync(node, client, "hostname") == (0, "web\n")
    assert exec_sync(node, client, "id", "-u") == (0, "1000\n")
    _, resolv = exec_sync(node, client, "cat", "/etc/resolv.conf")
    assert "nameserver 10.96.0.10" in resolv and "search default.svc.cluster.local" in resolv
    assert "ndots:5" in resolv
    assert exec_sync(node, server, "sh", "-c", "exit 7")[0] == 7

    # The pod's port mapping, from the host.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
        assert response.read() == b"pod-ok\n"

    # Figures of the guest's cgroups, not zeros.
    stats = node.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=server)).stats
    assert stats.memory.working_set_bytes.value > 0 and stats.cpu.usage_core_nano_seconds.value > 0
    pod_stats = node.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id))
    assert len(pod_stats.stats.linux.containers) == 2
    # The pod's figure is its containers' together, in the same answer (a
    # separate ContainerStats call is another moment: memory moves between).
    pod_memory = pod_stats.stats.linux.memory.working_set_bytes.value
    members = {s.attributes.id: s.memory.working_set_bytes.value
               for s in pod_stats.stats.linux.containers}
    assert server in members and members[server] > 0
    assert pod_memory == sum(members.values())

    log = (tmp_path / "client.log").read_bytes().splitlines()
    assert log and log[0].split(b" ", 3)[1:] == [b"stdout", b"F", b"started"]
    listed = node.runtime.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(pod_sandbox_id=pod_id))).containers
    assert {c.id for c in listed} == {server, client}
    assert all(c.state == pb.CONTAINER_RUNNING for c in listed)

    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    states = {c.id: c.state for c in node.runtime.ListContainers(
        pb.ListContainersRequest()).containers}
    assert states == {server: pb.CONTAINER_EXITED, client: pb.CONTAINER_EXITED}
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                  timeout=120)
    assert not node.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not node.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert not list(node.daemon.exec_root.glob("*/qemu.pid"))
    # The Engine API sees the same: nothing left.
    assert node.daemon.docker("ps", "-aq").stdout.strip() == b""


@dataclass
class StreamingPod:
    pod_id: str
    web: str       # httpd on 8080
    shell: str     # reads a line from its stdin, then sleeps
    config: Any = None  # the pod's config, for containers a test adds


@pytest.fixture(scope="module")
def streaming_pod(node: Node, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[StreamingPod]:
    pod = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="streams", uid="uid-streams", namespace="default"),
        hostname="streams", log_directory=str(tmp_path_factory.mktemp("streams")))
    pod_id = node.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod),
                                        timeout=180).pod_sandbox_id
    web = start_container(node, pod_id, pod, "web",
                          "mkdir /w && echo forwarded > /w/index.html && "
                          "exec httpd -f -p 8080 -h /w")
    shell = start_container(node, pod_id, pod, "shell",
                            "read line; echo attached: $line; exec sleep 100000", stdin=True)
    yield StreamingPod(pod_id, web, shell, pod)
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                  timeout=120)


def test_streaming_exec_stdin_and_exit_codes(node: Node, streaming_pod: StreamingPod) -> None:
    url = node.runtime.Exec(pb.ExecRequest(
        container_id=streaming_pod.web, cmd=["sh", "-c", "tr a-z A-Z; echo to-err >&2; exit 7"],
        stdin=True, stdout=True, stderr=True), timeout=60).url
    result = asyncio.run(ks.remote_command(url, stdin=b"through the guest\n"))
    assert (result.stdout, result.stderr) == (b"THROUGH THE GUEST\n", b"to-err\n")
    assert result.exit_code == 7
    url = node.runtime.Exec(pb.ExecRequest(container_id=streaming_pod.web, cmd=["hostname"],
                                           stdout=True), timeout=60).url
    result = asyncio.run(ks.remote_command(url, stderr=False))
    assert (result.stdout, result.exit_code) == (b"streams\n", 0)


def test_streaming_exec_over_websocket_v5(node: Node, streaming_pod: StreamingPod) -> None:
    """kubectl 1.29+'s exec: v5.channel.k8s.io over WebSocket, stdin closed
    by v5's close signal."""
    url = node.runtime.Exec(pb.ExecRequest(
        container_id=streaming_pod.web, cmd=["sh", "-c", "tr a-z A-Z; exit 3"],
        stdin=True, stdout=True, stderr=True), timeout=60).url

    async def run() -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        async with aiohttp.ClientSession() as client, client.ws_connect(
                url.replace("http://", "ws://"), protocols=["v5.channel.k8s.io"]) as ws:
            await ws.send_bytes(b"\x00over websocket\n")
            await ws.send_bytes(b"\xff\x00")
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY and message.data[0] != 255:
                    out[message.data[0]] = out.get(message.data[0], b"") + message.data[1:]
        return out
    out = asyncio.run(run())
    assert out[1] == b"OVER WEBSOCKET\n"
    assert ks.CommandResult(b"", b"", out[3]).exit_code == 3


def test_streaming_exec_with_a_tty_follows_resizes(node: Node,
                                                   streaming_pod: StreamingPod) -> None:
    # The shell waits for the size the client sets (no race with the resize).
    script = 'until [ "$(stty size)" = "33 101" ]; do sleep 0.1; done; echo resized; tty'
    url = node.runtime.Exec(pb.ExecRequest(container_id=streaming_pod.web,
                                           cmd=["sh", "-c", script], tty=True, stdout=True),
                            timeout=60).url
    result = asyncio.run(ks.remote_command(url, tty=True, resizes=[(101, 33)]))
    lines = result.stdout.split(b"\r\n")  # a tty's line discipline: CRLF
    assert lines[0] == b"resized" and lines[1].startswith(b"/dev/pts/"), result
    assert result.exit_code == 0


def test_a_streaming_exec_dies_with_its_client(node: Node,
                                              streaming_pod: StreamingPod) -> None:
    url = node.runtime.Exec(pb.ExecRequest(
        container_id=streaming_pod.web, cmd=["sh", "-c", "echo started; exec sleep 43219"],
        stdout=True, stderr=True), timeout=60).url
    assert asyncio.run(ks.exec_and_hang_up(url)) == b"started\n"

    def still_there() -> str:
        return exec_sync(node, streaming_pod.web, "sh", "-c", "ps | grep 'sleep 4321[9]'")[1]
    deadline = time.monotonic() + 60
    while still_there() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert still_there() == ""


def test_streaming_attach(node: Node, streaming_pod: StreamingPod) -> None:
    url = node.runtime.Attach(pb.AttachRequest(container_id=streaming_pod.shell, stdin=True,
                                               stdout=True, stderr=True), timeout=60).url
    assert asyncio.run(ks.attach_and_say(url, b"over spdy\n")) == b"attached: over spdy\n"


def test_port_forward_to_a_container_port(node: Node, streaming_pod: StreamingPod) -> None:
    def forward(port: int) -> tuple[bytes, bytes]:
        url = node.runtime.PortForward(pb.PortForwardRequest(
            pod_sandbox_id=streaming_pod.pod_id, port=[port]), timeout=60).url
        return asyncio.run(ks.port_forward(url, port, b"GET / HTTP/1.0\r\n\r\n"))
    deadline = time.monotonic() + 60
    while True:  # httpd may still be starting
        answer, error = forward(8080)
        if answer or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.startswith(b"HTTP/1.") and answer.endswith(b"forwarded\n")
    assert error == b""
    answer, error = forward(8081)  # nothing listens there
    assert answer == b"" and b"8081" in error and b"refused" in error.lower()


def test_port_forward_reaches_the_pods_own_loopback(node: Node,
                                                   streaming_pod: StreamingPod) -> None:
    """As containerd dials inside the pod's network namespace: a server
    bound to 127.0.0.1 only is reached (the guest opens the connection), and
    2 MiB come back whole through the guest's relay."""
    local = start_container(
        node, streaming_pod.pod_id, streaming_pod.config, "local",
        "mkdir /l && yes loopback-only | head -c 2097152 > /l/big && "
        "exec httpd -f -p 127.0.0.1:8090 -h /l")

    def forward() -> tuple[bytes, bytes]:
        url = node.runtime.PortForward(pb.PortForwardRequest(
            pod_sandbox_id=streaming_pod.pod_id, port=[8090]), timeout=60).url
        return asyncio.run(ks.port_forward(url, 8090, b"GET /big HTTP/1.0\r\n\r\n"))
    deadline = time.monotonic() + 60
    while True:  # httpd may still be starting
        answer, error = forward()
        if answer or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and error == b"", (head, error)
    assert body == (b"loopback-only\n" * 149797)[:2097152]
    node.runtime.StopContainer(pb.StopContainerRequest(container_id=local, timeout=0),
                               timeout=120)


def test_stream_requests_for_what_is_not_there(node: Node) -> None:
    for call, request in [
        (node.runtime.Exec, pb.ExecRequest(container_id="nope", cmd=["true"], stdout=True)),
        (node.runtime.Attach, pb.AttachRequest(container_id="nope", stdout=True)),
        (node.runtime.PortForward, pb.PortForwardRequest(pod_sandbox_id="nope", port=[80])),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def run_pod(node: Node, name: str, log_dir: Path) -> tuple[str, pb.PodSandboxConfig]:
    pod = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=name, log_directory=str(log_dir))
    pod_id = node.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod),
                                        timeout=180).pod_sandbox_id
    return str(pod_id), pod


def remove_pod(node: Node, pod_id: str) -> None:
    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                  timeout=120)


def held_exclusively(device: str) -> bool:
    """Whether something (a QEMU) holds the device open exclusively."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL)
    except OSError as e:
        if e.errno == errno.EBUSY:
            return True
        raise
    os.close(fd)
    return False


def test_a_raw_block_device_shared_by_the_containers_of_a_pod(node: Node,
                                                              tmp_path: Path) -> None:
    """Kubernetes' volumeMode: Block: the host device attached to the pod's
    guest, its node where each container asked, written by one and read by
    the other; let go when the pod goes."""
    image = tmp_path / "raw.img"
    with loop_device(image, size_mib=16) as device:
        pod_id, pod = run_pod(node, "rawblock", tmp_path)
        try:
            writer = start_container(
                node, pod_id, pod, "writer",
                "printf block-data-1 | dd of=/dev/xvdb bs=512 conv=sync,fsync 2>/dev/null; "
                "exec sleep 100000",
                devices=[pb.Device(container_path="/dev/xvdb", host_path=device,
                                   permissions="rwm")])
            # The other way kubelet hands a device over: a hostPath of type
            # BlockDevice, read-only.
            reader = start_container(
                node, pod_id, pod, "reader", "exec sleep 100000",
                mounts=[pb.Mount(container_path="/mnt/disk", host_path=device,
                                 readonly=True)])
            assert exec_sync(node, writer, "stat", "-c", "%F %a", "/dev/xvdb") == \
                (0, "block special file 600\n")
            assert exec_sync(node, reader, "stat", "-c", "%F %a", "/mnt/disk") == \
                (0, "block special file 400\n")
            deadline = time.monotonic() + 60
            while True:
                code, out = exec_sync(node, reader, "head", "-c", "12", "/mnt/disk")
                if out == "block-data-1" or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert (code, out) == (0, "block-data-1")
            # The guest has it, and nobody else may: not even the host's mount.
            assert held_exclusively(device)
        finally:
            remove_pod(node, pod_id)
        assert not held_exclusively(device)
        assert image.read_bytes()[:12] == b"block-data-1"


def test_a_direct_assigned_volume_is_mounted_in_the_guest_only(node: Node,
                                                               tmp_path: Path) -> None:
    """A storage driver registers the volume's device instead of mounting it
    (python3 -m hbd.tools.direct_volume, as kata-runtime direct-volume): the
    pod's guest mounts it; the host never has it mounted meanwhile; what the
    pod wrote is on the disk after."""
    image = tmp_path / "fs.img"
    volume_path = str(tmp_path / "pods" / "uid" / "volumes" / "pv1" / "mount")
    with loop_device(image, size_mib=32, ext4=True) as device:
        info = json.dumps({"volume-type": "block", "device": device, "fstype": "ext4",
                           "options": ["noatime"]})
        subprocess.run([sys.executable, "-m", "hbd.tools.direct_volume", "add",
                        "--volume-path", volume_path, "--mount-info", info], check=True,
                       cwd=REPO)
        pod_id, pod = run_pod(node, "directvol", tmp_path)
        try:
            app = start_container(
                node, pod_id, pod, "app",
                "echo persisted > /data/hello && sync && exec sleep 100000",
                mounts=[pb.Mount(container_path="/data", host_path=volume_path)])
            viewer = start_container(
                node, pod_id, pod, "viewer", "exec sleep 100000",
                mounts=[pb.Mount(container_path="/ro", host_path=volume_path, readonly=True)])
            deadline = time.monotonic() + 60
            while True:
                code, out = exec_sync(node, viewer, "cat", "/ro/hello")
                if code == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert (code, out) == (0, "persisted\n")
            code, out = exec_sync(node, viewer, "touch", "/ro/other")
            assert code != 0 and "Read-only file system" in out
            _, mounts = exec_sync(node, app, "cat", "/proc/mounts")
            [line] = [m for m in mounts.splitlines() if m.split()[1] == "/data"]
            assert line.split()[2] == "ext4" and "noatime" in line.split()[3]
            # Not mounted on the host, and it cannot be while the guest has it.
            assert host_mounts(device) == []
            mountpoint = tmp_path / "mnt"
            mountpoint.mkdir()
            tried = subprocess.run(["mount", "-o", "ro", device, str(mountpoint)],
                                   capture_output=True, text=True)
            if tried.returncode == 0:
                subprocess.run(["umount", str(mountpoint)], check=True)
            assert tried.returncode != 0
        finally:
            remove_pod(node, pod_id)
            subprocess.run([sys.executable, "-m", "hbd.tools.direct_volume", "remove",
                            "--volume-path", volume_path], check=False, cwd=REPO)
        assert not held_exclusively(device)
        # What the pod wrote is on the image.
        subprocess.run(["mount", "-o", "ro", device, str(mountpoint)], check=True)
        try:
            assert (mountpoint / "hello").read_text() == "persisted\n"
            assert not (mountpoint / "other").exists()
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)


def test_containers_with_net_admin_make_bridges(node: Node, tmp_path: Path) -> None:
    """critest's CAP_NET_ADMIN and privileged specs run `brctl addbr`: the
    guest kernel has bridges (kernels/config/guest.config)."""
    pod_id, pod = run_pod(node, "bridges", tmp_path)
    try:
        net_admin = pb.LinuxContainerSecurityContext(
            capabilities=pb.Capability(add_capabilities=["NET_ADMIN"]))
        admin = start_container(node, pod_id, pod, "admin", "exec sleep 100000",
                                linux=pb.LinuxContainerConfig(security_context=net_admin))
        code, out = exec_sync(node, admin, "sh", "-c",
                              "brctl addbr foobar && ls -d /sys/class/net/foobar/bridge")
        assert code == 0 and "foobar" in out, out
        # Without the capability, the kernel's answer, not a missing feature.
        plain = start_container(node, pod_id, pod, "plain", "exec sleep 100000")
        code, out = exec_sync(node, plain, "brctl", "addbr", "other")
        assert code != 0 and "Operation not permitted" in out, out
    finally:
        node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=120)


def test_read_only_mounts_recursive_or_not(node: Node, tmp_path: Path) -> None:
    """critest's readonly mounts: a host directory with a tmpfs of its own
    beneath; read-only at the top only (the CRI's default, runc's "ro"
    bind) leaves that tmpfs writable, recursive_read_only does not."""
    host = tmp_path / "shared"
    (host / "tmpfs").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(host / "tmpfs")], check=True)
    pod_id, pod = run_pod(node, "romounts", tmp_path)
    try:
        mounts = [pb.Mount(host_path=str(host), container_path="/top", readonly=True),
                  pb.Mount(host_path=str(host), container_path="/all", readonly=True,
                           recursive_read_only=True)]
        cid = start_container(node, pod_id, pod, "ro", "exec sleep 100000", mounts=mounts)
        assert exec_sync(node, cid, "touch", "/top/tmpfs/file") == (0, "")
        assert (host / "tmpfs" / "file").exists()
        for path in ("/top/file", "/all/tmpfs/other", "/all/file"):
            code, out = exec_sync(node, cid, "touch", path)
            assert code != 0 and "Read-only file system" in out, (path, out)
        assert not (host / "tmpfs" / "other").exists() and not (host / "file").exists()
        # critest's clean-up, while the pod still runs: the host unmounts its
        # tmpfs and removes the directories (EBUSY while the shares lived in
        # the host's mount namespace, holding a copy of that tmpfs).
        subprocess.run(["umount", str(host / "tmpfs")], check=True)
        shutil.rmtree(host)
        assert not host.exists()
    finally:
        node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=120)
        subprocess.run(["umount", "-l", str(host / "tmpfs")], check=False,
                       capture_output=True)


def test_an_image_volume(node: Node, tmp_path: Path) -> None:
    """KEP 4639 (critest's Image Volume specs): another image mounted
    read-only, its root or a subpath, executable; a missing subpath refused."""
    # An image of its own (not the container's: its disk is attached apart).
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM busybox\nLABEL volume=yes\n")
    node.daemon.docker("build", "-q", "-t", "imgvol:1", str(tmp_path / "ctx"), timeout=300)
    image = node.daemon.docker("image", "inspect", "-f", "{{.Id}}", "imgvol:1"
                               ).stdout.decode().strip()
    pod_id, pod = run_pod(node, "imgvol", tmp_path)
    try:
        mounts = [pb.Mount(container_path="/img", readonly=True, image=pb.ImageSpec(image=image)),
                  pb.Mount(container_path="/etc-of-img", readonly=True,
                           image=pb.ImageSpec(image=image), image_sub_path="etc")]
        cid = start_container(node, pod_id, pod, "app", "exec sleep 100000", mounts=mounts)
        assert exec_sync(node, cid, "ls", "-A", "/img/bin/sh") == (0, "/img/bin/sh\n")
        code, out = exec_sync(node, cid, "touch", "/img/test-write")
        assert code != 0 and "Read-only file system" in out, out
        code, out = exec_sync(node, cid, "/img/bin/ls", "/etc-of-img")
        assert code == 0 and "passwd" in out.split(), out
        assert exec_sync(node, cid, "ls", "/etc-of-img/etc/passwd")[0] != 0
        status = node.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                              timeout=60).status
        assert {m.container_path: m.image.image_ref for m in status.mounts} == \
            {"/img": image, "/etc-of-img": image}
        missing = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="missing"), image=pb.ImageSpec(image="busybox"),
            command=["sleep", "1"], mounts=[pb.Mount(
                container_path="/x", readonly=True, image=pb.ImageSpec(image=image),
                image_sub_path="not-existing")])
        with pytest.raises(grpc.RpcError) as info:
            node.runtime.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=missing, sandbox_config=pod), timeout=120)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        remove_pod(node, pod_id)
        node.daemon.docker("rmi", "imgvol:1")


def test_host_to_container_propagation(node: Node, tmp_path: Path) -> None:
    """critest's rslave: what the host mounts beneath a shared host path
    after the container started shows in the container; a private mount of
    the same path does not take it."""
    host = tmp_path / "shared"
    (host / "later").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(host), str(host)], check=True)
    subprocess.run(["mount", "--make-rshared", str(host)], check=True)
    pod_id, pod = run_pod(node, "propagation", tmp_path)
    try:
        mounts = [pb.Mount(host_path=str(host), container_path="/slave",
                           propagation=pb.PROPAGATION_HOST_TO_CONTAINER),
                  pb.Mount(host_path=str(host), container_path="/private")]
        cid = start_container(node, pod_id, pod, "prop", "exec sleep 100000", mounts=mounts)
        subprocess.run(["mount", "-t", "tmpfs", "none", str(host / "later")], check=True)
        (host / "later" / "flag").touch()
        assert exec_sync(node, cid, "ls", "/slave/later") == (0, "flag\n")
        assert exec_sync(node, cid, "ls", "/private/later") == (0, "")
    finally:
        node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=120)
        subprocess.run(["umount", "-R", "-l", str(host)], check=True)


def test_supplemental_groups_policy_and_the_identity_reported(node: Node,
                                                               tmp_path: Path) -> None:
    """critest's SupplementalGroupsPolicy specs: the image lists its user in
    a group of its own; Merge (the default) adds it to the groups asked for,
    Strict does not; ContainerStatus.user tells what the first process got."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN echo 'default-user:x:1000:1000::/home/default-user:/bin/sh' >> /etc/passwd && "
        "echo 'default-user:x:1000:' >> /etc/group && "
        "echo 'group-defined-in-image:x:50000:default-user' >> /etc/group\n"
        "USER 1000\n")
    node.daemon.docker("build", "-q", "-t", "groups:1", str(tmp_path / "ctx"), timeout=300)
    pod_id, pod = run_pod(node, "groups", tmp_path)
    try:
        seen = {}
        for policy in (pb.Merge, pb.Strict):
            name = f"app{int(policy)}"
            config = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image="groups:1"),
                command=["sh", "-c", "id -G; exec sleep 100000"], log_path=f"{name}.log",
                linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                    run_as_user=pb.Int64Value(value=1000), supplemental_groups=[1234],
                    supplemental_groups_policy=policy)))
            cid = node.runtime.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod),
                timeout=120).container_id
            node.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
            user = node.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                                timeout=60).status.user.linux
            code, out = exec_sync(node, cid, "id", "-G")
            assert code == 0, out
            seen[policy] = (user.uid, user.gid, sorted(user.supplemental_groups), out)
        assert seen == {pb.Merge: (1000, 1000, [1000, 1234, 50000], "1000 1234 50000\n"),
                        pb.Strict: (1000, 1000, [1000, 1234], "1000 1234\n")}
    finally:
        remove_pod(node, pod_id)
        node.daemon.docker("rmi", "groups:1")
