"""hbd's nftables rules as libnftables JSON: what each case builds (pure), and
that a real kernel takes it (in a network namespace of the test's own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hbd.drivers import nftrules
from hbd.drivers.nftrules import BridgeRules, Element, PortForward, Rule, Ruleset
from hbd.events import EventBus
from hbd.services.network.model import Endpoint
from hbd.services.network.service import NetworkService
from hbd.store import StateStore

REPO = Path(__file__).resolve().parent.parent.parent

ROOT = Path(__file__).resolve().parents[2]
TABLE = "netsec_test"


def exprs(rules: list[Rule], chain: str) -> list[list[dict]]:  # type: ignore[type-arg]
    return [r.expr for r in rules if r.chain == chain]


def test_loopback_is_guarded_from_every_interface_but_lo() -> None:
    guard = exprs(nftrules.rules(Ruleset()), "guard")
    not_lo = {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}
    loopback = {"prefix": {"addr": "127.0.0.0", "len": 8}}
    for direction in ("daddr", "saddr"):
        assert [not_lo, {"match": {"op": "==", "left": {"payload": {
            "protocol": "ip", "field": direction}}, "right": loopback}},
            {"counter": None}, {"drop": None}] in guard
    chain = next(c for c in nftrules.CHAINS if c.name == "guard")
    # Before conntrack's de-NAT (dstnat, -100), which gives replies a 127/8 address.
    assert (chain.hook, chain.prio) == ("prerouting", -300)


def test_masquerade_skips_internal_networks_but_not_loopback_sources() -> None:
    rules = nftrules.rules(Ruleset(bridges=[BridgeRules("hb0", "172.17.0.0/16"),
                                            BridgeRules("hbi", "10.9.0.0/24", internal=True)]))
    post = exprs(rules, "postrouting")
    outbound = [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "172.17.0.0", "len": 16}}}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "hb0"}},
                {"masquerade": None}]
    assert outbound in post
    assert not any("10.9.0.0" in json.dumps(e) and "daddr" not in json.dumps(e) for e in post)
    loopback_to = [json.dumps(e[1]) for e in post if "127.0.0.0" in json.dumps(e)]
    assert len(loopback_to) == 2 and any('"hbi"' in x for x in loopback_to)


def test_hairpin_connections_are_masqueraded_on_their_own_bridge() -> None:
    post = exprs(nftrules.rules(Ruleset(bridges=[BridgeRules("hb0", "172.17.0.0/16")])),
                 "postrouting")
    subnet = {"prefix": {"addr": "172.17.0.0", "len": 16}}
    assert [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": subnet}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": subnet}},
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "hb0"}},
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"masquerade": None}] in post


def test_networks_are_isolated_from_each_other_and_internal_ones_from_all() -> None:
    rules = nftrules.rules(Ruleset(bridges=[BridgeRules("hba", "10.1.0.0/24"),
                                            BridgeRules("hbb", "10.2.0.0/24"),
                                            BridgeRules("hbi", "10.3.0.0/24", internal=True)]))
    forward = exprs(rules, "forward")
    assert [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "hba"}},
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                       "right": {"set": ["hbb", "hbi"]}}},
            {"drop": None}] in forward
    internal = [e for e in forward if e[1]["match"]["op"] == "!="]
    assert len(internal) == 2 and all("hbi" in json.dumps(e) for e in internal)


def test_a_lone_network_has_no_isolation_rule() -> None:
    assert exprs(nftrules.rules(Ruleset(bridges=[BridgeRules("hb0", "10.1.0.0/24")])),
                 "forward") == []


def test_published_ports_are_dnated_from_outside_and_from_the_host() -> None:
    forwards = [PortForward("tcp", "", 8080, "10.1.0.2", 80),
                PortForward("udp", "127.0.0.1", 53, "10.1.0.3", 5353)]
    rules = nftrules.rules(Ruleset(forwards=forwards))
    for chain in ("prerouting", "output"):
        dnat = exprs(rules, chain)
        assert [{"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                           "right": "local"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                           "right": 8080}},
                {"dnat": {"addr": "10.1.0.2", "port": 80}}] in dnat
        assert [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": "127.0.0.1"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                           "right": 53}},
                {"dnat": {"addr": "10.1.0.3", "port": 5353}}] in dnat


def test_rebuild_replaces_only_the_own_tables_in_one_transaction() -> None:
    wanted = nftrules.rules(Ruleset())
    commands = nftrules.rebuild_commands(TABLE, wanted)
    ip, bridge = ({"table": {"family": f, "name": TABLE}} for f in ("ip", "bridge"))
    # Each added first so that the delete always finds it; nothing else is named.
    assert commands[:6] == [{"add": ip}, {"delete": ip}, {"add": bridge}, {"delete": bridge},
                            {"add": ip}, {"add": bridge}]
    chains = [c["add"]["chain"] for c in commands if "chain" in c.get("add", {})]
    assert {(c["family"], c["name"]) for c in chains} == \
        {(c.family, c.name) for c in nftrules.CHAINS}
    assert all(json.dumps(c).count(f'"table": "{TABLE}"') + json.dumps(c).count(
        f'"name": "{TABLE}"') == 1 for c in commands)
    assert len([c for c in commands if "rule" in c.get("add", {})]) == len(wanted)


def test_update_deletes_by_handle_and_adds_only_what_is_new() -> None:
    old = nftrules.rules(Ruleset(forwards=[PortForward("tcp", "", 80, "10.1.0.2", 80)]))
    applied = {rule: 10 + i for i, rule in enumerate(old)}
    new = nftrules.rules(Ruleset(forwards=[PortForward("tcp", "", 81, "10.1.0.2", 80)]))
    commands = nftrules.update_commands(TABLE, applied, new)
    deleted = sorted(c["delete"]["rule"]["handle"] for c in commands if "delete" in c)
    assert deleted == sorted(h for r, h in applied.items() if "10.1.0.2" in r.body)
    added = [c["add"]["rule"] for c in commands if "add" in c]
    assert len(added) == 2 and all('"right": 81' in json.dumps(a["expr"]) for a in added)
    assert nftrules.update_commands(TABLE, {r: 1 for r in new}, new) == []


def test_handles_come_back_from_the_echo_in_order() -> None:
    sent = nftrules.update_commands(TABLE, {}, nftrules.guard_rules())
    echoed = [{"add": {"rule": {**c["add"]["rule"], "handle": 7 + i}}}
              for i, c in enumerate(sent)]
    assert nftrules.added_handles(sent, echoed) == {r: 7 + i for i, r in
                                                    enumerate(nftrules.guard_rules())}
    with pytest.raises(ValueError):
        nftrules.added_handles(sent, echoed[:1])


def test_equal_rules_are_one_key_whatever_the_key_order() -> None:
    a = Rule.of("forward", [{"match": {"op": "==", "left": 1, "right": 2}}])
    b = Rule.of("forward", [{"match": {"right": 2, "left": 1, "op": "=="}}])
    assert a == b and len({a, b}) == 1


KERNEL_SCRIPT = """
import asyncio, json
from hbd.drivers import libnftables, net, nftrules
async def main():
    table = net.RuleTable("%(table)s")
    ruleset = net.Ruleset(bridges=[net.BridgeRules("hbx0", "172.30.0.0/16"),
                                   net.BridgeRules("hbx1", "10.30.0.0/24", True)],
                          forwards=[net.PortForward("tcp", "", 8080, "172.30.0.2", 80)])
    await table.apply(ruleset)
    def ip_handles():  # the bridge table's handles count apart
        return sorted(h for r, h in table.handles.items() if nftrules.FAMILY_OF[r.chain] == "ip")
    first = ip_handles()
    ruleset.forwards = [net.PortForward("udp", "127.0.0.1", 53, "172.30.0.3", 53)]
    await table.apply(ruleset)
    tracked = ip_handles()
    listed = libnftables.run([{"list": {"table": {"family": "ip", "name": "%(table)s"}}}])
    kernel = {o["rule"]["handle"]: o["rule"] for o in listed if "rule" in o}
    await table.remove()
    left = libnftables.run([{"list": {"ruleset": None}}])
    print(json.dumps({"first": first, "tracked": tracked, "kernel": kernel, "left": left}))
asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a network namespace")
def test_the_kernel_takes_the_rules_and_handles_match() -> None:
    """In a fresh network namespace: build, update by handle, remove."""
    result = subprocess.run(["unshare", "-n", sys.executable, "-c",
                             KERNEL_SCRIPT % {"table": TABLE}],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    kernel = {int(h): rule for h, rule in out["kernel"].items()}
    assert sorted(kernel) == out["tracked"]  # every rule tracked, none stale
    bodies = [json.dumps(rule["expr"]) for rule in kernel.values()]
    assert sum("172.30.0.3" in b for b in bodies) == 2
    assert not any("172.30.0.2" in b for b in bodies)
    # Unchanged rules kept their handles: only the DNAT ones were replaced.
    assert len(set(out["first"]) & set(out["tracked"])) == len(out["first"]) - 2
    assert [o for o in out["left"] if "table" in o] == []


def test_a_pinned_port_sends_only_as_its_endpoint() -> None:
    pin = nftrules.PortPin("ht0", "02:42:0a:01:00:02", ["10.1.0.2", "169.254.7.7"],
                           ["2001:db8::2"])
    assert nftrules.elements(Ruleset(pins=[pin])) == {
        Element("pinned", ("ht0",)), Element("pin_macs", ("ht0", "02:42:0a:01:00:02")),
        Element("pin_ips", ("ht0", "10.1.0.2")), Element("pin_ips", ("ht0", "169.254.7.7")),
        Element("pin_ips6", ("ht0", "2001:db8::2"))}
    # The rules are the same five with or without pins: a pin is set elements.
    spoof = exprs(nftrules.rules(Ruleset(pins=[pin])), "antispoof")
    assert spoof == exprs(nftrules.rules(Ruleset()), "antispoof") and len(spoof) == 5
    pinned = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@pinned"}}
    assert all(e[0] == pinned and e[-1] == {"drop": None} for e in spoof)
    lookups = {(json.dumps(e[-2]["match"]["left"]["concat"][1], sort_keys=True),
                e[-2]["match"]["right"], e[-2]["match"]["op"]) for e in spoof}
    assert lookups == {
        ('{"payload": {"field": "saddr", "protocol": "ether"}}', "@pin_macs", "!="),
        ('{"payload": {"field": "saddr ether", "protocol": "arp"}}', "@pin_macs", "!="),
        ('{"payload": {"field": "saddr ip", "protocol": "arp"}}', "@pin_ips", "!="),
        ('{"payload": {"field": "saddr", "protocol": "ip"}}', "@pin_ips", "!="),
        ('{"payload": {"field": "saddr", "protocol": "ip6"}}', "@pin_ips6", "!=")}
    assert nftrules.FAMILY_OF["antispoof"] == "bridge"
    pinned_elements = nftrules.elements(Ruleset(pins=[pin]))
    unpinned = nftrules.element_commands(TABLE, pinned_elements, set())
    assert [c["delete"]["element"]["name"] for c in unpinned] == \
        ["pinned", "pin_macs", "pin_ips", "pin_ips6"]
    assert unpinned[2]["delete"]["element"]["elem"] == [
        {"concat": ["ht0", "10.1.0.2"]}, {"concat": ["ht0", "169.254.7.7"]}]
    assert nftrules.element_commands(TABLE, pinned_elements, pinned_elements) == []


# A bridge with one port (a veth: frames sent on its peer enter the bridge as
# a guest's frames enter by its tap), pinned to 02:42:0a:4d:00:02 / 10.77.0.2.
# Broadcast UDP frames are sent on the peer; those the bridge lets in reach
# the bridge device itself, where a packet socket counts them.
SPOOF_SCRIPT = r"""
import asyncio, json, socket, struct, subprocess, time
from hbd.drivers import net
MAC = "02:42:0a:4d:00:02"
for cmd in ("link add hbx0 type bridge", "link add htx0 type veth peer name gx0",
            "link set htx0 master hbx0", "link set hbx0 up", "link set htx0 up",
            "link set gx0 up"):
    subprocess.run(["ip", *cmd.split()], check=True)
def frame(mac, src, tag):
    def csum(b):
        s = sum(struct.unpack("!10H", b))
        s = (s >> 16) + (s & 0xFFFF)
        return ~(s + (s >> 16)) & 0xFFFF
    payload = tag.encode()
    udp = struct.pack("!HHHH", 9, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton("255.255.255.255"))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) + b"\x08\x00" + ip + udp
async def main():
    table = net.RuleTable("%(table)s")
    await table.apply(net.Ruleset(pins=[net.PortPin("htx0", MAC, ["10.77.0.2"], [])]))
    seen = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    seen.bind(("hbx0", 0))
    seen.settimeout(0.2)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind(("gx0", 0))
    time.sleep(0.3)
    def passed():
        for mac, src, tag in ((MAC, "10.77.0.2", "own"), (MAC, "10.77.0.3", "other-ip"),
                              ("02:42:0a:4d:00:03", "10.77.0.3", "other-both"),
                              ("02:42:0a:4d:00:03", "10.77.0.2", "other-mac")):
            out.send(frame(mac, src, tag))
        got = []
        try:
            while True:
                got.append(seen.recv(2048)[42:].decode(errors="replace"))
        except socket.timeout:
            return got
    pinned = passed()
    await table.apply(net.Ruleset())  # unpinned: the port is not checked any more
    print(json.dumps({"pinned": pinned, "unpinned": passed()}))
asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or
                    not shutil.which("ip"), reason="needs root, unshare and ip")
def test_a_pinned_port_drops_spoofed_frames_in_the_kernel() -> None:
    result = subprocess.run(["unshare", "-n", sys.executable, "-c",
                             SPOOF_SCRIPT % {"table": TABLE}],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "pinned": ["own"], "unpinned": ["own", "other-ip", "other-both", "other-mac"]}


async def test_the_network_service_pins_and_unpins_a_port(tmp_path: Path) -> None:
    service = NetworkService(StateStore(tmp_path), EventBus(), "ffff")
    applied: list[Ruleset] = []

    async def record(ruleset: Ruleset) -> None:
        applied.append(ruleset)

    service.rules.apply = record  # type: ignore[method-assign]
    endpoint = Endpoint("n", "e", "10.1.0.2", 24, "10.1.0.1", "02:42:0a:01:00:02", "eth0",
                        [], [], ip6="2001:db8::2", prefix6=64,
                        link_local=["169.254.7.7/16", "fe80::7/64"])
    await service.pin_ports({"htffff0": endpoint})
    assert applied[-1].pins == [nftrules.PortPin("htffff0", "02:42:0a:01:00:02",
                                                 ["10.1.0.2", "169.254.7.7"],
                                                 ["2001:db8::2", "fe80::7"])]
    await service.unpin_ports(["htffff0"])
    assert applied[-1].pins == []
    count = len(applied)
    await service.unpin_ports(["htffff0"])  # not pinned: nothing to change
    assert len(applied) == count


async def test_a_guests_taps_are_pinned_and_unpinned_in_one_transaction(
        tmp_path: Path) -> None:
    service = NetworkService(StateStore(tmp_path), EventBus(), "ffff")
    applied: list[Ruleset] = []

    async def record(ruleset: Ruleset) -> None:
        applied.append(ruleset)

    service.rules.apply = record  # type: ignore[method-assign]
    endpoints = {f"htffff{i}": Endpoint("n", "e", f"10.{i}.0.2", 24, f"10.{i}.0.1",
                                        f"02:42:0a:0{i}:00:02", f"eth{i}", [], [])
                 for i in range(2)}
    await service.pin_ports(endpoints)
    assert len(applied) == 1
    assert sorted(pin.port for pin in applied[0].pins) == ["htffff0", "htffff1"]
    await service.unpin_ports(["htffff0", "htffff1", "htffff2"])
    assert len(applied) == 2 and applied[1].pins == []


def test_rules_still_apply_once_the_daemon_holds_over_1024_descriptors() -> None:
    """libnftables waits on its socket with select(): a context made after
    the daemon passed 1024 descriptors aborted the whole process (glibc's
    fortified FD_SET) at ~250 guests. The context is made at start-up."""
    script = (
        "import os\n"
        "from hbd.drivers import net, libnftables\n"
        "net.open_rule_channel()\n"
        "held = [os.open('/dev/null', os.O_RDONLY) for _ in range(1100)]\n"
        "assert max(held) > 1024\n"
        # A transaction: libnftables select()s on its socket for the answer.
        f"table = {{'family': 'ip', 'name': 'hbd_fds{os.getpid()}'}}\n"
        "libnftables.run([{'add': {'table': table}}, {'delete': {'table': table}}], echo=True)\n"
        "print('applied')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "applied"


def test_a_namespace_context_made_late_is_below_1024_and_applies_in_its_namespace() -> None:
    """A tenant's namespace comes after the daemon holds many descriptors:
    its context takes a number held for it since start-up, and its rules
    land in that namespace, not the host's."""
    namespace = f"hbdtest-fds{os.getpid()}"
    script = (
        "import asyncio, os\n"
        "from hbd.drivers import libnftables, net, netns\n"
        "net.open_rule_channel()\n"
        "held = [os.open('/dev/null', os.O_RDONLY) for _ in range(1100)]\n"
        f"ns = {namespace!r}\n"
        "table = {'family': 'ip', 'name': 'hbd_late'}\n"
        "def names(key):\n"
        "    return [o['table']['name'] for o in libnftables.run(\n"
        "        [{'list': {'tables': None}}], key=key) if 'table' in o]\n"
        "async def main():\n"
        "    await netns.ensure(ns)\n"
        "    try:\n"
        "        await netns.run_in(ns, libnftables.run, [{'add': {'table': table}}], True, ns)\n"
        "        inside = await netns.run_in(ns, names, ns)\n"
        "        assert inside == ['hbd_late'], inside\n"
        "        assert 'hbd_late' not in names('')\n"
        "    finally:\n"
        "        await net.remove_namespace(ns)\n"
        "    assert not netns.exists(ns)\n"
        "asyncio.run(main())\n"
        "print('applied')\n")
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                cwd=REPO, timeout=60)
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "applied"
