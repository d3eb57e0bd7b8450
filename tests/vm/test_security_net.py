"""Issue 11: what a container cannot reach on the host or on other networks.

Each attack is paired with what does work by the same path, so that a test
whose attack fails for an unrelated reason (no route, no tool) fails too.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hbd.drivers import libnftables
from hbd.services.network.service import instance_tag
from tests.daemon_fixture import RunningDaemon
from tests.registry_fixture import free_port

WEB = "mkdir -p /w; echo served > /w/i; httpd -f -p 8000 -h /w"


class LoopbackService:
    """A host service on 127.0.0.1 only, not published: it answers a secret and
    remembers who connected."""

    def __init__(self) -> None:
        self.secret = f"netsec-secret-{secrets.token_hex(8)}"
        self.peers: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            with conn:
                conn.sendall(self.secret.encode() + b"\n")

    def close(self) -> None:
        # shutdown wakes the accept() that close alone would leave blocked.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def loopback_service() -> Iterator[LoopbackService]:
    service = LoopbackService()
    yield service
    service.close()


@pytest.fixture
def cleanup(hbd: RunningDaemon) -> Iterator[list[str]]:
    """Names of containers and networks (prefixed netsec) the test made; all go."""
    made: list[str] = []
    yield made
    containers = [m for m in made if not m.startswith("netsecnet")]
    if containers:
        hbd.docker("rm", "-f", *containers, check=False)
    for network in (m for m in made if m.startswith("netsecnet")):
        hbd.docker("network", "rm", network, check=False)


def guard_drops(hbd: RunningDaemon) -> int:
    """Packets hbd's loopback guard (nftrules.guard_rules) has dropped so far."""
    table = f"hbd_{instance_tag(hbd.data_root)}"
    listed = libnftables.run([{"list": {"chain": {"family": "ip", "table": table,
                                                  "name": "guard"}}}])
    return sum(stmt["counter"]["packets"] for obj in listed if "rule" in obj
               for stmt in obj["rule"]["expr"] if "counter" in stmt)


def run(hbd: RunningDaemon, *args: str) -> str:
    return hbd.docker("run", "--rm", *args, timeout=180).stdout.decode()


# (busybox's `wget -T` crashes in these guests: `timeout` bounds it instead.)
# Root of a guest with NET_ADMIN sends to 127.0.0.1 through the host: the
# guest's own 127/8 routes go, loopback may leave eth0, and 127/8 is routed
# via the gateway. Without hbd's guard that reaches the host's loopback
# services (route_localnet is on on hbd's bridges).
CRAFTED_ROUTE = """
gw=$(ip route | awk '/^default/ {print $3}')
ip addr flush dev lo
for c in all eth0; do echo 1 > /proc/sys/net/ipv4/conf/$c/route_localnet; done
ip route add 127.0.0.0/8 via $gw dev eth0
ip route get 127.0.0.1
"""


def crafted(port: int) -> str:
    return CRAFTED_ROUTE + f'echo probe | nc -w 3 127.0.0.1 {port}; echo "crafted: $?"'



def test_a_host_loopback_service_is_out_of_reach(hbd: RunningDaemon,
                                                 loopback_service: LoopbackService) -> None:
    port = str(loopback_service.port)
    plain = run(hbd, "busybox", "sh", "-c",
                "gw=$(ip route | awk '/^default/ {print $3}'); "
                f"echo x | nc -w 3 $gw {port}; echo x | nc -w 3 127.0.0.1 {port}; "
                # The host's other addresses are reached (masquerade): not this one.
                "echo done")
    assert loopback_service.secret not in plain and "done" in plain
    before = guard_drops(hbd)
    for privilege in ("--cap-add=NET_ADMIN", "--privileged"):
        out = run(hbd, privilege, "busybox", "sh", "-c", crafted(loopback_service.port))
        assert "via" in out and "crafted:" in out, out  # the route was in place
        assert loopback_service.secret not in out, out
    assert loopback_service.peers == []
    # The crafted packets reached the host and the guard dropped them (else
    # the guest never sent them, and this test proved nothing).
    assert guard_drops(hbd) > before


def test_a_port_published_on_loopback_is_not_reachable_from_guests(
        hbd: RunningDaemon, cleanup: list[str]) -> None:
    """`-p 127.0.0.1:P:80` is for the host only (as in dockerd); a port
    published on every address is reached from guests by the gateway
    (hairpin)."""
    loop_port, any_port = free_port(), free_port()
    name = f"netsec-web-{loop_port}"
    cleanup.append(name)
    hbd.docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{loop_port}:8000",
               "-p", f"{any_port}:8000", "busybox", "sh", "-c", WEB)
    out = run(hbd, "busybox", "sh", "-c",
              "gw=$(ip route | awk '/^default/ {print $3}'); sleep 1; "
              f"timeout 8 wget -q -O- http://$gw:{any_port}/i && echo hairpin-ok; "
              f"timeout 8 wget -q -O- http://$gw:{loop_port}/i && echo loopback-reached; echo done")
    assert "hairpin-ok" in out, out
    assert "loopback-reached" not in out and "done" in out, out
    # Nor by a crafted route to the host's 127.0.0.1 (its DNAT rule is there
    # for the host's own connections).
    before = guard_drops(hbd)
    out = run(hbd, "--privileged", "busybox", "sh", "-c",
              CRAFTED_ROUTE + f"timeout 8 wget -q -O- http://127.0.0.1:{loop_port}/i; echo done")
    assert "via" in out and "served" not in out and "done" in out, out
    assert guard_drops(hbd) > before


def test_other_networks_are_out_of_reach(hbd: RunningDaemon, cleanup: list[str]) -> None:
    suffix = str(free_port())
    a, b = f"netsecneta{suffix}", f"netsecnetb{suffix}"
    server = f"netsec-srv-{suffix}"
    cleanup.extend([a, b, server])
    hbd.docker("network", "create", a)
    hbd.docker("network", "create", b)
    hbd.docker("run", "-d", "--name", server, "--network", a, "busybox", "sh", "-c", WEB)
    ip = json.loads(hbd.docker("inspect", server).stdout)[0][
        "NetworkSettings"]["Networks"][a]["IPAddress"]
    probe = (f"sleep 1; ping -c1 -W3 {ip} >/dev/null 2>&1 && echo ping-ok; "
             f"timeout 8 wget -q -O- http://{ip}:8000/i && echo http-ok; echo done")
    same = run(hbd, "--network", a, "busybox", "sh", "-c", probe)
    assert "ping-ok" in same and "http-ok" in same, same
    other = run(hbd, "--network", b, "busybox", "sh", "-c", probe)
    assert "ping-ok" not in other and "http-ok" not in other and "done" in other, other
    # Root of the guest with NET_ADMIN: the server's subnet on-link on eth0.
    subnet = json.loads(hbd.docker("network", "inspect", a).stdout)[0]["IPAM"]["Config"][0][
        "Subnet"]
    crafted = run(hbd, "--network", b, "--cap-add=NET_ADMIN", "busybox", "sh", "-c",
                  f"ip route add {subnet} dev eth0; " + probe)
    assert "ping-ok" not in crafted and "http-ok" not in crafted and "done" in crafted, crafted


@pytest.fixture
def host_files() -> Iterator[tuple[Path, str]]:
    """A host directory holding `shared/` (to be bind-mounted) and, beside it,
    a marker file that no container may see."""
    token = secrets.token_hex(6)
    base = Path(f"/tmp/netsec-files-{token}")
    (base / "shared").mkdir(parents=True)
    (base / "shared" / f"visible-{token}").write_text("visible\n")
    (base / f"hidden-{token}").write_text("hidden\n")
    yield base, token
    shutil.rmtree(base, ignore_errors=True)


def test_host_files_outside_the_mounts_are_invisible(hbd: RunningDaemon,
                                                     host_files: tuple[Path, str]) -> None:
    base, token = host_files
    out = run(hbd, "-v", f"{base / 'shared'}:/data", "busybox", "sh", "-c",
              f"find / /proc/1/root/ -path /proc -prune -o -path /proc/1/root/proc -prune "
              f"-o -name '*-{token}' -print "
              "2>/dev/null; ls -a /data/.. /proc/1/root/; echo mounts:; cat /proc/mounts")
    found = [line for line in out.splitlines() if token in line]
    assert any(line.endswith(f"/data/visible-{token}") for line in found), out
    assert not any("hidden" in line for line in found), out
    mounts = out.split("mounts:", 1)[1]
    assert str(base) not in mounts and "/var/lib/hbd" not in mounts, mounts
