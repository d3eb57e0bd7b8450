"""Issue 5: networks (bridges, IPAM, DNS, isolation, ports) and volumes, with real guests."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_fixture import RunningDaemon, hbd_daemon
from tests.loopdev import loop_device
from tests.registry_fixture import free_port


def inspect(hbd: RunningDaemon, *ref: str) -> dict:  # type: ignore[type-arg]
    return json.loads(hbd.docker("inspect", *ref).stdout)[0]


@pytest.fixture
def two_networks(hbd: RunningDaemon) -> Iterator[tuple[str, str]]:
    suffix = str(free_port())
    a, b = f"neta{suffix}", f"netb{suffix}"
    hbd.docker("network", "create", "--subnet", "10.231.0.0/24", a)
    hbd.docker("network", "create", b)
    yield a, b
    for container in hbd.docker("ps", "-aq").stdout.split():
        hbd.docker("rm", "-f", container.decode(), check=False)
    hbd.docker("network", "rm", a, b, check=False)


def test_network_crud_and_errors(hbd: RunningDaemon, two_networks: tuple[str, str]) -> None:
    a, _ = two_networks
    info = json.loads(hbd.docker("network", "inspect", a).stdout)[0]
    assert info["IPAM"]["Config"] == [{"Subnet": "10.231.0.0/24", "Gateway": "10.231.0.1"}]
    assert info["Driver"] == "bridge" and info["Scope"] == "local"
    overlap = hbd.docker("network", "create", "--subnet", "10.231.0.128/25", "overlapping",
                         check=False)
    assert overlap.returncode != 0 and b"overlaps" in overlap.stderr
    dup = hbd.docker("network", "create", a, check=False)
    assert b"already exists" in dup.stderr
    hbd.docker("run", "-d", "--name", "holder", "--network", a, "busybox", "sleep", "600")
    in_use = hbd.docker("network", "rm", a, check=False)
    assert in_use.returncode != 0 and b"active endpoints" in in_use.stderr
    names = hbd.docker("network", "ls", "--format", "{{.Name}}").stdout.decode().split()
    assert {"bridge", "host", "none", a} <= set(names)
    predefined = hbd.docker("network", "rm", "bridge", check=False)
    assert b"pre-defined network" in predefined.stderr


def test_static_ip_aliases_hosts_dns_and_isolation(hbd: RunningDaemon,
                                                  two_networks: tuple[str, str]) -> None:
    a, b = two_networks
    hbd.docker("run", "-d", "--name", "server", "--network", a, "--ip", "10.231.0.50",
               "--network-alias", "db", "busybox", "sleep", "600")
    hbd.docker("run", "-d", "--name", "stranger", "--network", b, "busybox", "sleep", "600")
    settings = inspect(hbd, "server")["NetworkSettings"]["Networks"][a]
    assert settings["IPAddress"] == "10.231.0.50"
    assert settings["Gateway"] == "10.231.0.1"
    assert "db" in settings["Aliases"]
    out = hbd.docker("run", "--rm", "--network", a, "--add-host", "extra.example:10.9.8.7",
                     "--hostname", "probe", "busybox", "sh", "-c",
                     "nslookup server; nslookup db; cat /etc/hosts; "
                     "cat /etc/resolv.conf; hostname; ping -c1 -W2 server >/dev/null && "
                     "echo reachable").stdout.decode()
    assert out.count("10.231.0.50") >= 2
    assert "10.9.8.7\textra.example" in out
    assert "nameserver 10.231.0.1" in out
    assert "probe" in out and "reachable" in out
    # Another network: neither the name nor the address are reachable.
    out = hbd.docker("run", "--rm", "--network", b, "busybox", "sh", "-c",
                     "nslookup server >/dev/null 2>&1 && echo resolved; "
                     "ping -c1 -W2 10.231.0.50 >/dev/null 2>&1 && echo reached; echo done"
                     ).stdout.decode()
    assert out.strip() == "done"
    # --dns replaces the resolver the guest is given.
    out = hbd.docker("run", "--rm", "--network", a, "--dns", "10.1.2.3", "busybox", "cat",
                     "/etc/resolv.conf").stdout.decode()
    assert "nameserver 10.1.2.3" in out


def test_several_networks_and_connect_before_start(hbd: RunningDaemon,
                                                   two_networks: tuple[str, str]) -> None:
    a, b = two_networks
    hbd.docker("create", "--name", "multi", "--network", a, "busybox", "sh", "-c",
               "ip -4 -o addr show | grep -v ' lo '; sleep 600")
    hbd.docker("network", "connect", b, "multi")
    hbd.docker("start", "multi")
    time.sleep(1)
    addresses = hbd.docker("logs", "multi").stdout.decode()
    assert "eth0" in addresses and "eth1" in addresses and "10.231.0." in addresses
    members = json.loads(hbd.docker("network", "inspect", b).stdout)[0]["Containers"]
    assert any(m["Name"] == "multi" for m in members.values())
    # Disconnecting the running container takes the interface out at once.
    hbd.docker("network", "disconnect", b, "multi")
    left = hbd.docker("exec", "multi", "ip", "-4", "-o", "addr", "show").stdout.decode()
    assert "eth0" in left and "eth1" not in left
    members = json.loads(hbd.docker("network", "inspect", b).stdout)[0]["Containers"]
    assert not any(m["Name"] == "multi" for m in members.values())


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"host-side\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def host_address() -> str:
    """An address of this host that is not loopback (reached through NAT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent
        return str(s.getsockname()[0])


def test_outbound_traffic_is_masqueraded(hbd: RunningDaemon) -> None:
    port = free_port()
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = hbd.docker("run", "--rm", "busybox", "wget", "-q", "-O-",
                         f"http://{host_address()}:{port}/").stdout
        assert out == b"host-side\n"
    finally:
        server.shutdown()


def fetch(url: str, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                body: bytes = r.read()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_published_ports(hbd: RunningDaemon) -> None:
    port = free_port()
    web = hbd.docker("run", "-d", "-p", f"127.0.0.1:{port}:80", "--expose", "81", "-P",
                     "busybox", "sh", "-c",
                     "mkdir /w; echo published > /w/i; httpd -f -p 80 -h /w & "
                     "httpd -f -p 81 -h /w").stdout.decode().strip()
    try:
        assert fetch(f"http://127.0.0.1:{port}/i") == b"published\n"
        mapping = hbd.docker("port", web).stdout.decode()
        assert f"80/tcp -> 127.0.0.1:{port}" in mapping
        ephemeral = [line for line in mapping.splitlines() if line.startswith("81/tcp")]
        assert ephemeral
        eport = int(ephemeral[0].rsplit(":", 1)[1])
        assert fetch(f"http://{host_address()}:{eport}/i") == b"published\n"
        taken = hbd.docker("run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox", "true",
                           check=False)
        assert taken.returncode != 0 and b"port is already allocated" in taken.stderr
        listing = hbd.docker("ps", "--filter", f"id={web}", "--format", "{{.Ports}}").stdout
        assert f"127.0.0.1:{port}->80/tcp".encode() in listing
    finally:
        hbd.docker("rm", "-f", web)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/i", timeout=2)


def test_block_volumes(hbd: RunningDaemon) -> None:
    """`-o type=block`: a disk of its own size, one running container at a time."""
    name = f"vol{free_port()}"
    hbd.docker("volume", "create", "--label", "team=x", "-o", "type=block", "-o", "size=64m",
               name)
    info = json.loads(hbd.docker("volume", "inspect", name).stdout)[0]
    assert info["Labels"] == {"team": "x"} and info["Driver"] == "local"
    hbd.docker("run", "--rm", "-v", f"{name}:/data", "busybox", "sh", "-c",
               "echo persisted > /data/f")
    out = hbd.docker("run", "--rm", "-v", f"{name}:/data:ro", "busybox", "sh", "-c",
                     "cat /data/f; df -m /data | tail -1; touch /data/g || echo ro").stdout
    lines = out.decode().splitlines()
    assert lines[0] == "persisted" and lines[-1] == "ro"
    assert 40 <= int(lines[1].split()[1]) <= 64  # the size given at create
    holder = hbd.docker("run", "-d", "-v", f"{name}:/data", "busybox", "sleep", "600"
                        ).stdout.decode().strip()
    try:
        busy = hbd.docker("volume", "rm", name, check=False)
        assert busy.returncode != 0 and b"volume is in use" in busy.stderr
        second = hbd.docker("run", "--rm", "-v", f"{name}:/data", "busybox", "true",
                            check=False)
        assert second.returncode != 0 and b"one guest at a time" in second.stderr
    finally:
        hbd.docker("rm", "-f", holder)
    assert name in hbd.docker("volume", "ls", "-q", "--filter", "label=team=x").stdout.decode()
    hbd.docker("volume", "rm", name)


def test_binds_tmpfs_readonly_anonymous_and_volumes_from(hbd: RunningDaemon,
                                                        tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "in").write_text("from host\n")
    (tmp_path / "one.conf").write_text("a single file\n")
    out = hbd.docker(
        "run", "--rm", "-v", f"{tmp_path / 'dir'}:/mnt/dir",
        "--mount", f"type=bind,source={tmp_path / 'one.conf'},target=/etc/one.conf,readonly",
        "--tmpfs", "/scratch:size=8m", "--read-only", "busybox", "sh", "-c",
        "cat /mnt/dir/in /etc/one.conf; echo out > /mnt/dir/out; "
        "echo t > /scratch/t && echo tmpfs-ok; touch /rootfs-file 2>/dev/null || echo rofs; "
        "echo x > /etc/one.conf 2>/dev/null || echo ro-file; grep /scratch /proc/mounts"
    ).stdout.decode()
    assert "from host" in out and "a single file" in out
    assert "tmpfs-ok" in out and "rofs" in out and "ro-file" in out
    assert "tmpfs" in out
    assert (tmp_path / "dir" / "out").read_text() == "out\n"
    missing = hbd.docker("run", "--rm", "--mount", "type=bind,source=/no/such/dir,target=/x",
                         "busybox", "true", check=False)
    assert missing.returncode != 0 and b"bind source path does not exist" in missing.stderr
    # Image-style anonymous volumes and --volumes-from.
    hbd.docker("run", "--name", "vol-source", "-v", "/shared", "busybox", "sh", "-c",
               "echo shared-data > /shared/f")
    out = hbd.docker("run", "--rm", "--volumes-from", "vol-source", "busybox", "cat",
                     "/shared/f").stdout
    assert out == b"shared-data\n"
    anonymous = [m for m in inspect(hbd, "vol-source")["Mounts"] if m["Type"] == "volume"]
    assert len(anonymous) == 1 and len(anonymous[0]["Name"]) == 64
    hbd.docker("rm", "-v", "vol-source")
    assert anonymous[0]["Name"] not in hbd.docker("volume", "ls", "-q").stdout.decode()


def test_volumes_survive_a_daemon_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    with hbd_daemon(base=tmp_path_factory.mktemp("volrestart")) as daemon:
        daemon.docker("run", "--rm", "-v", "keep:/data", "busybox", "sh", "-c",
                      "echo survives > /data/f")
        daemon.crash_and_restart()
        out = daemon.docker("run", "--rm", "-v", "keep:/data", "busybox", "cat", "/data/f")
        assert out.stdout == b"survives\n"
        assert "keep" in daemon.docker("volume", "ls", "-q").stdout.decode().split()


def test_a_new_volume_takes_what_the_image_has_there(hbd: RunningDaemon) -> None:
    """dockerd's copy-up: an empty volume over a path with content starts as a copy of it."""
    name, plain, private = (f"{kind}{free_port()}" for kind in ("cu", "nc", "pr"))
    try:
        out = hbd.docker("run", "--rm", "-v", f"{name}:/etc", "busybox", "sh", "-c",
                         "ls /etc; stat -c '%u:%g:%a' /etc; echo extra >> /etc/group"
                         ).stdout.decode().split()
        assert {"group", "passwd", "shadow", "hosts", "hostname", "resolv.conf"} <= set(out)
        assert "0:0:755" in out
        # The copy is made once: what a container changed in the volume stays.
        again = hbd.docker("run", "--rm", "-v", f"{name}:/etc", "busybox", "tail", "-1",
                           "/etc/group").stdout
        assert again == b"extra\n"
        listing = hbd.docker("run", "--rm", "-v", f"{plain}:/etc:nocopy", "busybox", "ls",
                             "/etc").stdout.decode().split()
        assert "passwd" not in listing and "hosts" in listing
        mode = hbd.docker("run", "--rm", "--mount", f"type=volume,src={private},dst=/root",
                          "busybox", "stat", "-c", "%a", "/root").stdout
        assert mode == b"700\n"
        # An image's VOLUME: the anonymous volume holds what the image put there.
        seeded = hbd.docker("run", "-d", "busybox", "sh", "-c",
                            "mkdir -p /srv/app && echo seed > /srv/app/f").stdout.decode().strip()
        hbd.docker("wait", seeded)
        hbd.docker("commit", "--change", "VOLUME /srv/app", seeded, f"{name}:seeded")
        hbd.docker("rm", seeded)
        assert hbd.docker("run", "--rm", f"{name}:seeded", "cat", "/srv/app/f").stdout == \
            b"seed\n"
    finally:
        hbd.docker("rmi", f"{name}:seeded", check=False)
        hbd.docker("volume", "rm", name, plain, private, check=False)


def test_a_host_block_device_with_docker_run_device(hbd: RunningDaemon,
                                                    tmp_path: Path) -> None:
    """`--device` of a host block device: a disk of the container's guest (the
    guest it boots with), its node at the path asked; `:r` attaches it
    read-only; a character device is still refused."""
    image = tmp_path / "dev.img"
    with loop_device(image, size_mib=16) as device:
        out = hbd.docker("run", "--rm", "--device", f"{device}:/dev/xvdb", "busybox", "sh",
                         "-c", "printf engine-dev | dd of=/dev/xvdb bs=512 conv=sync,fsync "
                         "2>/dev/null && stat -c '%F' /dev/xvdb").stdout
        assert out == b"block special file\n"
        assert image.read_bytes()[:10] == b"engine-dev"
        out = hbd.docker("run", "--rm", "--device", f"{device}:/dev/xvdb:r", "busybox", "sh",
                         "-c", "head -c 10 /dev/xvdb; echo; "
                         "printf x | dd of=/dev/xvdb conv=fsync 2>/dev/null || echo refused"
                         ).stdout
        assert out == b"engine-dev\nrefused\n"
        assert image.read_bytes()[:10] == b"engine-dev"
    refused = hbd.docker("run", "--rm", "--device", "/dev/null:/dev/n", "busybox", "true",
                         check=False)
    assert refused.returncode != 0
    assert b"/dev/null is not a block device" in refused.stderr
