"""Issue 11: what a container cannot reach on the host or on other networks.

Each attack is paired with what does work by the same path, so that a test
whose attack fails for an unrelated reason (no route, no tool) fails too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    """Packets the loopback guards (nftrules.guard_rules) have dropped so far:
    this daemon's and any other hbd's on the host, whose guard chains hook in
    at the same priority and may see (and drop) the packet first."""
    ours = f"hbd_{instance_tag(hbd.data_root)}"
    tables = [obj["table"]["name"] for obj in libnftables.run([{"list": {"tables": {}}}])
              if "table" in obj and obj["table"]["family"] == "ip"
              and obj["table"]["name"].startswith("hbd_")]
    assert ours in tables, tables
    total = 0
    for table in tables:
        try:
            listed = libnftables.run([{"list": {"chain": {"family": "ip", "table": table,
                                                          "name": "guard"}}}])
        except libnftables.NftError:  # gone meanwhile, or another hbd's without a guard
            assert table != ours
            continue
        total += sum(stmt["counter"]["packets"] for obj in listed if "rule" in obj
                     for stmt in obj["rule"]["expr"] if "counter" in stmt)
    return total


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


# -- anti-spoofing: a guest sends on its tap only as its endpoint ------------------------------


@dataclass(frozen=True)
class Frame:
    """An ICMP echo request or an ARP packet the host saw: who it claims to be
    from, and (an echo's) payload size, by which each step of a test tags its
    pings."""

    kind: str  # "icmp" | "arp"
    mac: str
    ip: str
    size: int = 0


def parse_frame(frame: bytes) -> Frame | None:
    mac = frame[6:12].hex(":")
    ethertype = frame[12:14]
    if ethertype == b"\x08\x06" and len(frame) >= 32:  # ARP: sender MAC and IP
        return Frame("arp", frame[22:28].hex(":"), socket.inet_ntoa(frame[28:32]))
    if ethertype != b"\x08\x00" or len(frame) < 34:
        return None
    header = (frame[14] & 0x0F) * 4
    total = int.from_bytes(frame[16:18], "big")
    if frame[23] != 1 or frame[14 + header] != 8:  # not ICMP, or not an echo request
        return None
    return Frame("icmp", mac, socket.inet_ntoa(frame[26:30]), total - header - 8)


class Sniffer:
    """What the host's interfaces carry, from now until stop(): on a guest's
    tap, what its bridge delivers to that guest; on a bridge, what reaches the
    host. Only frames that got past the sender's own tap show up here."""

    def __init__(self, *interfaces: str) -> None:
        self.frames: dict[str, list[Frame]] = {name: [] for name in interfaces}
        self._stopping = threading.Event()
        self._threads = []
        for name in interfaces:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            sock.bind((name, 0))
            sock.settimeout(0.2)
            thread = threading.Thread(target=self._read, args=(name, sock), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, name: str, sock: socket.socket) -> None:
        with sock:
            while True:
                try:
                    frame = parse_frame(sock.recv(65536))
                except TimeoutError:
                    if self._stopping.is_set():
                        return  # and nothing more queued
                    continue
                except OSError:
                    return  # the interface went
                if frame is not None:
                    self.frames[name].append(frame)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join()

    def echoes(self, interface: str, size: int) -> list[Frame]:
        return [f for f in self.frames[interface] if f.kind == "icmp" and f.size == size]

    def arps(self, interface: str) -> list[Frame]:
        return [f for f in self.frames[interface] if f.kind == "arp"]


def host_links() -> list[dict[str, object]]:
    result = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, check=True)
    found: list[dict[str, object]] = json.loads(result.stdout)
    return found


def ports_of(bridge: str) -> list[str]:
    return sorted(str(link["ifname"]) for link in host_links() if link.get("master") == bridge)


def plugged_taps(hbd: RunningDaemon) -> set[str]:
    """The daemon's guest taps that are ports of a bridge (spare NIC slots are not)."""
    prefix = f"ht{instance_tag(hbd.data_root)}"
    return {str(link["ifname"]) for link in host_links()
            if str(link["ifname"]).startswith(prefix) and link.get("master")}


def pin_set(hbd: RunningDaemon, name: str) -> list[object]:
    """The elements of one of the daemon's pin sets, as the kernel has them."""
    table = f"hbd_{instance_tag(hbd.data_root)}"
    listed = libnftables.run([{"list": {"set": {"family": "bridge", "table": table,
                                                "name": name}}}])
    elements = next(obj["set"] for obj in listed if "set" in obj).get("elem", [])
    return list(elements) if isinstance(elements, list) else [elements]


def pinned_ports(hbd: RunningDaemon) -> dict[str, str]:
    """Tap -> the MAC it is pinned to ("" for a port checked with no MAC allowed)."""
    macs = dict(tuple(e["concat"]) for e in pin_set(hbd, "pin_macs"))  # type: ignore[index]
    ports = {str(port) for port in pin_set(hbd, "pinned")}
    return {port: macs.get(port, "") for port in ports | set(macs)}


def ports_in_pin_sets(hbd: RunningDaemon) -> set[str]:
    """Every port any element of any pin set names."""
    return {str(e["concat"][0] if isinstance(e, dict) else e)
            for name in ("pinned", "pin_macs", "pin_ips", "pin_ips6")
            for e in pin_set(hbd, name)}


def assert_pins_follow_taps(hbd: RunningDaemon, timeout: float = 30) -> dict[str, str]:
    """Every plugged tap pinned to a MAC, no element of any pin set without
    its tap (guests power off in the background of rm and stop: until
    `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        pins, named, taps = pinned_ports(hbd), ports_in_pin_sets(hbd), plugged_taps(hbd)
        if set(pins) == named == taps and all(pins.values()):
            return pins
        if time.monotonic() > deadline:
            raise AssertionError(f"pinned {pins}, in pin sets {sorted(named)}, "
                                 f"plugged {sorted(taps)}")
        time.sleep(0.2)


def bridge_of(hbd: RunningDaemon, network: str) -> str:
    network_id = json.loads(hbd.docker("network", "inspect", network).stdout)[0]["Id"]
    bridge = f"hb{instance_tag(hbd.data_root)}{network_id[:8]}"
    assert Path(f"/sys/class/net/{bridge}").exists(), bridge
    return bridge


def endpoint(hbd: RunningDaemon, container: str, network: str) -> dict[str, str]:
    settings: dict[str, str] = json.loads(hbd.docker("inspect", container).stdout)[0][
        "NetworkSettings"]["Networks"][network]
    return settings


def other_address(ip: str, prefix: int, taken: set[str]) -> str:
    """A free-looking address of the same subnet: the highest host address not taken."""
    subnet = ipaddress.IPv4Interface(f"{ip}/{prefix}").network
    return next(str(a) for a in reversed(list(subnet.hosts())[-16:]) if str(a) not in taken)


# Run by a container with NET_ADMIN on the victim's network. Static neighbour
# entries for the victim and the gateway make each forged ping leave the guest
# whatever ARP does (so a ping that is not seen was dropped on the way, not
# never sent); each step tags its pings by their size.
ATTACK = """
own_ip=$(ip -o -4 addr show dev eth0 | awk '{{print $4}}' | cut -d/ -f1)
own_mac=$(cat /sys/class/net/eth0/address)
echo "own $own_ip $own_mac"
neighbours() {{ arp -s {victim} {victim_mac}; arp -s {gateway} {gateway_mac}; }}
readdress() {{ ip addr flush dev eth0; ip addr add $1/{prefix} dev eth0;
              ip route add default via {gateway}; }}
remac() {{ ip link set eth0 down; ip link set eth0 address $1; ip link set eth0 up;
          ip route add default via {gateway}; }}
probe() {{ ping -c1 -W2 -s $1 {victim} >/dev/null 2>&1 && echo "$2-peer-ok";
          ping -c1 -W2 -s $1 {gateway} >/dev/null 2>&1 && echo "$2-host-ok"; }}
probe 101 before
arping -U -c1 -I eth0 $own_ip >/dev/null 2>&1; echo own-arp-sent
readdress {other}; neighbours; probe 105 other-ip
readdress {victim}; arp -s {gateway} {gateway_mac}
ping -c1 -W2 -s 109 {gateway} >/dev/null 2>&1 && echo victim-ip-host-ok
arping -U -c2 -I eth0 {victim} >/dev/null 2>&1; arping -A -c2 -I eth0 {victim} >/dev/null 2>&1
echo victim-arp-sent
readdress $own_ip; remac {fake_mac}; neighbours; probe 107 other-mac
arping -U -c1 -I eth0 $own_ip >/dev/null 2>&1
remac $own_mac; probe 103 after
ip -o link show dev eth0; ip -o -4 addr show dev eth0
"""


FAKE_MAC = "02:42:de:ad:be:ef"


def test_a_guest_sends_only_as_itself(hbd: RunningDaemon, cleanup: list[str]) -> None:
    """Root of a guest with NET_ADMIN takes another address of its network,
    the victim's address, another MAC, and claims the victim's address in
    ARP: none of it reaches the victim or the host; its own traffic flows
    before and after. (dockerd + runc lets all of it through.)"""
    suffix = str(free_port())
    network, victim = f"netsecnetspoof{suffix}", f"netsec-victim-{suffix}"
    attacker = f"netsec-attacker-{suffix}"
    cleanup.extend([attacker, victim, network])
    hbd.docker("network", "create", network)
    bridge = bridge_of(hbd, network)
    hbd.docker("run", "-d", "--name", victim, "--network", network, "busybox",
               "sleep", "600")
    (victim_tap,) = ports_of(bridge)
    target = endpoint(hbd, victim, network)
    gateway_mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    prefix = int(target["IPPrefixLen"])
    other = other_address(target["IPAddress"], prefix, {target["IPAddress"], target["Gateway"]})
    script = ATTACK.format(
        victim=target["IPAddress"], victim_mac=target["MacAddress"],
        gateway=target["Gateway"], gateway_mac=gateway_mac, prefix=prefix,
        other=other,
        fake_mac=FAKE_MAC)
    sniffer = Sniffer(victim_tap, bridge)
    try:
        out = hbd.docker("run", "--name", attacker, "--network", network,
                         "--cap-add", "NET_ADMIN", "busybox", "sh", "-c", script,
                         timeout=240).stdout.decode()
    finally:
        sniffer.stop()
    _, own_ip, own_mac = next(line for line in out.splitlines()
                              if line.startswith("own ")).split()
    # Its own traffic, before and after, by ARP and by ping, reaches both.
    for step in ("before", "after"):
        assert f"{step}-peer-ok" in out and f"{step}-host-ok" in out, out
    for size in (101, 103):
        assert sniffer.echoes(victim_tap, size) and sniffer.echoes(bridge, size), out
    assert Frame("arp", own_mac, own_ip) in sniffer.arps(bridge), sniffer.frames[bridge]
    assert "own-arp-sent" in out and "victim-arp-sent" in out, out
    # Nothing forged got past the attacker's tap.
    for step in ("other-ip-peer-ok", "other-ip-host-ok", "victim-ip-host-ok",
                 "other-mac-peer-ok", "other-mac-host-ok"):
        assert step not in out, out
    for size in (105, 107, 109):
        assert sniffer.echoes(victim_tap, size) == [] == sniffer.echoes(bridge, size), size
    forged_arps = [f for f in sniffer.arps(bridge) + sniffer.arps(victim_tap)
                   if (f.ip == target["IPAddress"] and f.mac != target["MacAddress"])
                   or f.mac == FAKE_MAC or f.ip == other]
    assert forged_arps == [], forged_arps
    # Its address and MAC as they were (the last lines): the steps undid theirs.
    assert own_mac in out.splitlines()[-2] and own_ip in out.splitlines()[-1], out


def test_shared_namespaces_and_two_networks_keep_working(hbd: RunningDaemon,
                                                         cleanup: list[str]) -> None:
    """A container on two networks (the second joined while it runs) and one
    in its network namespace reach a server on each; each plugged tap has its
    pin, and a network left takes its pin along."""
    suffix = str(free_port())
    one, two = f"netsecnetone{suffix}", f"netsecnettwo{suffix}"
    server_one, server_two = f"netsec-srv1-{suffix}", f"netsec-srv2-{suffix}"
    both, joined = f"netsec-both-{suffix}", f"netsec-joined-{suffix}"
    cleanup.extend([joined, both, server_one, server_two, one, two])
    for network, server in ((one, server_one), (two, server_two)):
        hbd.docker("network", "create", network)
        hbd.docker("run", "-d", "--name", server, "--network", network, "busybox", "sh", "-c",
                   WEB)
    hbd.docker("run", "-d", "--name", both, "--network", one, "busybox", "sleep", "600")
    hbd.docker("network", "connect", two, both)
    hbd.docker("run", "-d", "--name", joined, "--network", f"container:{both}", "busybox",
               "sleep", "600")
    ips = {server: endpoint(hbd, server, network)["IPAddress"]
           for network, server in ((one, server_one), (two, server_two))}
    fetch = "; ".join(f"timeout 8 wget -q -O- http://{ip}:8000/i && echo {server}-ok"
                      for server, ip in ips.items())
    for container in (both, joined):
        out = hbd.docker("exec", container, "sh", "-c", fetch + "; echo done").stdout.decode()
        assert f"{server_one}-ok" in out and f"{server_two}-ok" in out, (container, out)
    pins = assert_pins_follow_taps(hbd)
    macs = {endpoint(hbd, both, network)["MacAddress"] for network in (one, two)}
    assert macs <= set(pins.values()), (macs, pins)
    # Both of its taps: a port of each network's bridge, pinned to its MAC there.
    for network in (one, two):
        taps = [t for t in ports_of(bridge_of(hbd, network)) if pins.get(t) ==
                endpoint(hbd, both, network)["MacAddress"]]
        assert len(taps) == 1, (network, taps, pins)
    left_mac = endpoint(hbd, both, two)["MacAddress"]
    hbd.docker("network", "disconnect", two, both)
    pins = assert_pins_follow_taps(hbd)
    assert left_mac not in pins.values(), pins
    out = hbd.docker("exec", joined, "sh", "-c", fetch + "; echo done").stdout.decode()
    assert f"{server_one}-ok" in out and f"{server_two}-ok" not in out and "done" in out, out


def test_pins_follow_guests_through_rm_and_a_crash(hbd: RunningDaemon,
                                                   cleanup: list[str]) -> None:
    """hbd killed with guests running, one of which dies while it is down:
    the next hbd pins the survivor's tap again (and its forged frames stay
    out), the dead one's pin is gone; rm takes the survivor's."""
    suffix = str(free_port())
    network = f"netsecnetcrash{suffix}"
    survivor, doomed = f"netsec-survivor-{suffix}", f"netsec-doomed-{suffix}"
    cleanup.extend([survivor, doomed, network])
    hbd.docker("network", "create", network)
    for name in (survivor, doomed):
        hbd.docker("run", "-d", "--name", name, "--network", network, "--cap-add", "NET_ADMIN",
                   "busybox", "sleep", "600")
    mac = {name: endpoint(hbd, name, network)["MacAddress"] for name in (survivor, doomed)}
    pins = assert_pins_follow_taps(hbd)
    assert set(mac.values()) <= set(pins.values()), pins
    doomed_pid = json.loads(hbd.docker("inspect", doomed).stdout)[0]["State"]["Pid"]
    hbd.process.kill()
    hbd.process.wait()
    os.kill(doomed_pid, signal.SIGKILL)
    hbd.crash_and_restart()
    pins = assert_pins_follow_taps(hbd)
    assert mac[survivor] in pins.values() and mac[doomed] not in pins.values(), pins
    # The survivor's pin holds: a forged source does not reach the host, its
    # own does.
    bridge = bridge_of(hbd, network)
    target = endpoint(hbd, survivor, network)
    other = other_address(target["IPAddress"], int(target["IPPrefixLen"]),
                          {target["IPAddress"], target["Gateway"]})
    gateway_mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    sniffer = Sniffer(bridge)
    try:
        out = hbd.docker("exec", survivor, "sh", "-c",
                         f"ping -c1 -W2 -s 111 {target['Gateway']} >/dev/null && echo own-ok; "
                         f"ip addr add {other}/32 dev eth0; "
                         f"arp -s {target['Gateway']} {gateway_mac}; "
                         f"ping -c1 -W2 -s 113 -I {other} {target['Gateway']} >/dev/null "
                         "&& echo forged-ok; echo done").stdout.decode()
    finally:
        sniffer.stop()
    assert "own-ok" in out and "forged-ok" not in out and "done" in out, out
    assert sniffer.echoes(bridge, 111) and sniffer.echoes(bridge, 113) == [], out
    hbd.docker("rm", "-f", survivor)
    pins = assert_pins_follow_taps(hbd)
    assert mac[survivor] not in pins.values(), pins
