"""Tenants' address spaces (hbd/services/network/spaces.py): which rules go
to which network namespace, how subnets are chosen per space, and the
network service's overlap checks per space (its host work stubbed out)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hbd.drivers import net, nftrules
from hbd.drivers.nftrules import BridgeRules, PortForward, PortPin, Rule, Ruleset
from hbd.errors import Forbidden
from hbd.events import EventBus
from hbd.services.network import spaces
from hbd.services.network.service import POOLS, NetworkService
from hbd.services.network.spaces import HOST, AddressSpace, SpaceRules
from hbd.services.scope import Scope
from hbd.store import StateStore

ROOT = Path(__file__).resolve().parents[2]
A = AddressSpace("proj-a", "hbdffff-aaaaaaaa", "huffffaaaaaaaa", "100.64.0.0/30")
B = AddressSpace("proj-b", "hbdffff-bbbbbbbb", "huffffbbbbbbbb", "100.64.0.4/30")


def exprs(rules: list[Rule], chain: str) -> list[str]:
    return [json.dumps(r.expr, sort_keys=True) for r in rules if r.chain == chain]


def test_space_names_are_per_daemon_and_project_and_fit_an_interface_name() -> None:
    namespace, uplink = spaces.space_names("ffff", "0123456789abcdef0123456789abcdef")
    assert namespace.startswith("hbdffff-") and uplink.startswith("huffff")
    assert len(uplink) <= 15  # IFNAMSIZ - 1
    assert spaces.space_names("ffff", "other")[0] != namespace
    assert spaces.space_names("eeee", "0123456789abcdef0123456789abcdef")[0] != namespace
    assert (A.host_address, A.inner_address) == ("100.64.0.1", "100.64.0.2")


def test_each_namespace_gets_its_own_bridges_pins_and_forwards() -> None:
    same = "172.18.0.0/16"
    parts = SpaceRules(
        spaces=[A, B],
        bridges=[(HOST, BridgeRules("hbffff0", "172.17.0.0/16")),
                 (A.namespace, BridgeRules("hbffffa", same)),
                 (B.namespace, BridgeRules("hbffffb", same))],
        forwards=[(HOST, PortForward("tcp", "127.0.0.1", 8000, "172.17.0.2", 80)),
                  (A.namespace, PortForward("tcp", "127.0.0.1", 8001, "172.18.0.2", 80))],
        pins=[(A.namespace, PortPin("htffff1", "02:42:ac:12:00:02", ["172.18.0.2"])),
              (B.namespace, PortPin("htffff2", "02:42:ac:12:00:02", ["172.18.0.2"]))],
        transfer_range="100.64.0.0/10")
    out = spaces.rulesets(parts)
    assert set(out) == {HOST, A.namespace, B.namespace}
    assert [b.name for b in out[HOST].bridges] == ["hbffff0"]
    assert [b.name for b in out[A.namespace].bridges] == ["hbffffa"]
    assert [b.name for b in out[B.namespace].bridges] == ["hbffffb"]
    assert [p.port for p in out[A.namespace].pins] == ["htffff1"]
    assert [p.port for p in out[B.namespace].pins] == ["htffff2"]
    assert out[HOST].pins == []
    assert [u.name for u in out[HOST].uplinks] == [A.uplink, B.uplink]
    assert (out[A.namespace].uplink, out[HOST].uplink) == (A.uplink, "")
    # The operator's port as ever; the tenant's DNATed twice, by the uplink.
    assert out[HOST].forwards == [
        PortForward("tcp", "127.0.0.1", 8000, "172.17.0.2", 80),
        PortForward("tcp", "127.0.0.1", 8001, A.inner_address, 8001)]
    assert out[A.namespace].forwards == [
        PortForward("tcp", A.inner_address, 8001, "172.18.0.2", 80)]
    assert out[B.namespace].forwards == []


def test_the_host_isolates_uplinks_like_bridges_and_keeps_each_to_its_own_address() -> None:
    host = spaces.rulesets(SpaceRules(spaces=[A, B], bridges=[
        (HOST, BridgeRules("hbffff0", "172.17.0.0/16"))], transfer_range="100.64.0.0/10"))[HOST]
    rules = nftrules.rules(host)
    forward = exprs(rules, "forward")
    # From each uplink to every other hbd interface: dropped.
    for name, others in ((A.uplink, {B.uplink, "hbffff0"}), (B.uplink, {A.uplink, "hbffff0"}),
                         ("hbffff0", {A.uplink, B.uplink})):
        rule = next(json.loads(e) for e in forward if f'"right": "{name}"' in e)
        assert set(rule[1]["match"]["right"]["set"]) == others
    # What leaves an uplink's subnet for elsewhere is masqueraded.
    post = exprs(rules, "postrouting")
    assert any('"addr": "100.64.0.0", "len": 30' in e and '"op": "!="' in e and
               A.uplink in e for e in post)
    # To the host, each uplink reaches its own host end only of the transfer range.
    inputs = [json.loads(e) for e in exprs(rules, "input")]
    assert len(inputs) == 2
    a_input = next(e for e in inputs if e[0]["match"]["right"] == A.uplink)
    assert a_input[1]["match"]["right"] == {"prefix": {"addr": "100.64.0.0", "len": 10}}
    assert a_input[2]["match"] == {"op": "!=", "left": {"payload": {
        "protocol": "ip", "field": "daddr"}}, "right": A.host_address}
    assert a_input[-1] == {"drop": None}
    # No transfer range, no input rules (a daemon without tenants).
    assert exprs(nftrules.rules(Ruleset()), "input") == []


def test_a_namespace_lets_in_by_its_uplink_only_published_ports_and_answers() -> None:
    inside = spaces.rulesets(SpaceRules(spaces=[A], bridges=[
        (A.namespace, BridgeRules("hbffffa", "172.18.0.0/16"))]))[A.namespace]
    rules = nftrules.rules(inside)
    inbound = [json.loads(e) for e in exprs(rules, "forward") if A.uplink in e]
    assert inbound == [[
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": A.uplink}},
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
        {"match": {"op": "!", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
        {"drop": None}]]
    # Its guard, masquerade and anti-spoofing are the host's, in its own tables.
    assert len(exprs(rules, "guard")) == 2 and len(exprs(rules, "antispoof")) == 5
    assert any("172.18.0.0" in e and "masquerade" in e for e in exprs(rules, "postrouting"))


def test_default_pools_are_chosen_per_space() -> None:
    routed = [ipaddress.IPv4Network("172.17.0.0/16")]
    first = spaces.free_subnet(POOLS, routed)
    assert first == ipaddress.IPv4Network("172.18.0.0/16")
    # Another space with the same routes gets the same subnet; its own networks move it on.
    assert spaces.free_subnet(POOLS, routed) == first
    assert spaces.free_subnet(POOLS, [*routed, first]) == ipaddress.IPv4Network("172.19.0.0/16")
    assert spaces.free_subnet(POOLS[:1], [ipaddress.IPv4Network("172.16.0.0/12")]) is None


def test_uplink_subnets_avoid_each_other_and_what_the_host_routes() -> None:
    transfer = ipaddress.IPv4Network("100.64.0.0/28")
    used = [ipaddress.IPv4Network("100.64.0.0/30"), ipaddress.IPv4Network("100.64.0.4/31"),
            ipaddress.IPv4Network("10.0.0.0/8")]
    assert spaces.transfer_subnet(transfer, used) == ipaddress.IPv4Network("100.64.0.8/30")
    assert spaces.transfer_subnet(transfer, [transfer]) is None
    assert spaces.transfer_subnet(ipaddress.IPv4Network("100.64.0.0/31"), []) is None


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NetworkService:
    """A network service whose host work (namespaces, links, rules) is recorded, not done."""
    made: list[tuple[str, str]] = []

    async def ensure_uplink(namespace: str, host_end: str, inner_end: str,
                            subnet: ipaddress.IPv4Network) -> None:
        made.append(("uplink", namespace))

    async def ensure_bridge(name: str, *args: Any, namespace: str = "", **kwargs: Any) -> None:
        made.append(("bridge", namespace))

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    async def routed() -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network("172.17.0.0/16")]

    monkeypatch.setattr(net, "ensure_uplink", ensure_uplink)
    monkeypatch.setattr(net, "ensure_bridge", ensure_bridge)
    monkeypatch.setattr(net, "remove_uplink", nothing)
    monkeypatch.setattr(net, "delete_link", nothing)
    monkeypatch.setattr(net, "routed_networks", routed)
    monkeypatch.setattr(net.RuleTable, "apply", nothing)
    svc = NetworkService(StateStore(tmp_path), EventBus(), "ffff", "100.64.0.0/24")
    svc.made = made  # type: ignore[attr-defined]
    return svc


def subnet_body(name: str, subnet: str = "") -> dict[str, Any]:
    return {"Name": name, "IPAM": {"Config": [{"Subnet": subnet}] if subnet else []}}


async def test_two_tenants_may_take_one_subnet_but_not_one_tenant_twice(
        service: NetworkService) -> None:
    a, b = Scope("proj-a"), Scope("proj-b")
    await service.create(subnet_body("front", "10.231.7.0/24"))  # the operator's
    await service.create(subnet_body("front", "10.231.7.0/24"), a)
    await service.create(subnet_body("front", "10.231.7.0/24"), b)
    with pytest.raises(Forbidden, match="Pool overlaps"):
        await service.create(subnet_body("back", "10.231.0.0/16"), a)
    with pytest.raises(Forbidden, match="Pool overlaps"):
        await service.create(subnet_body("back", "10.231.7.128/25"))
    # Nor its own uplink's subnet.
    uplink = service.spaces["proj-a"].subnet
    with pytest.raises(Forbidden, match="Pool overlaps"):
        await service.create(subnet_body("up", uplink), a)
    namespaces = {n.name: n.namespace for n in service.networks.values()}
    assert namespaces["front"] == HOST
    assert namespaces["front@proj-a"] == service.spaces["proj-a"].namespace
    assert namespaces["front@proj-b"] == service.spaces["proj-b"].namespace
    assert namespaces["front@proj-a"] != namespaces["front@proj-b"]
    assert service.spaces["proj-a"].subnet != service.spaces["proj-b"].subnet


async def test_tenants_default_bridges_share_the_first_free_pool(
        service: NetworkService) -> None:
    for project in ("proj-a", "proj-b"):
        await service.ensure_default_bridge(Scope(project))
    subnets = {n.name: n.subnet for n in service.networks.values() if n.driver == "bridge"}
    assert subnets == {"bridge@proj-a": "172.18.0.0/16", "bridge@proj-b": "172.18.0.0/16"}
    await service.create(subnet_body("more"), Scope("proj-a"))
    assert service.get("more@proj-a").subnet == "172.19.0.0/16"


async def test_a_space_goes_with_its_last_network_and_comes_back_after_a_restart(
        service: NetworkService, tmp_path: Path) -> None:
    a = Scope("proj-a")
    await service.create(subnet_body("front"), a)
    await service.create(subnet_body("back"), a)
    space = service.spaces["proj-a"]
    again = NetworkService(service.state, EventBus(), "ffff", "100.64.0.0/24")
    assert again.spaces == {"proj-a": space}
    assert set(again.space_rules) == {space.namespace}
    await service.remove("front", a)
    assert "proj-a" in service.spaces
    await service.remove("back", a)
    assert service.spaces == {} and service.space_rules == {}
    assert list(service.state.load("address_spaces")) == []


KERNEL_SCRIPT = """
import asyncio
from hbd.drivers import net
from hbd.services.network import spaces
from hbd.services.network.spaces import AddressSpace, SpaceRules, HOST
async def main():
    a = AddressSpace("p", "hbdffff-aaaaaaaa", "huffffaaaaaaaa", "100.64.0.0/30")
    parts = SpaceRules([a], [(HOST, net.BridgeRules("hbx0", "172.30.0.0/16")),
                             (a.namespace, net.BridgeRules("hbx1", "172.30.0.0/16"))],
                       [(a.namespace, net.PortForward("tcp", "", 8080, "172.30.0.2", 80))])
    for namespace, ruleset in spaces.rulesets(parts).items():
        table = net.RuleTable("%(table)s_" + (namespace[-1] if namespace else "h"))
        await table.apply(ruleset)
        assert table.handles, namespace
        await table.remove()
    print("ok")
asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a network namespace")
def test_the_kernel_takes_the_host_and_space_rules() -> None:
    result = subprocess.run(["unshare", "-n", sys.executable, "-c",
                             KERNEL_SCRIPT % {"table": "spaces_test"}],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


async def test_a_tenant_network_made_before_namespaces_stays_in_the_hosts(
        service: NetworkService) -> None:
    """A stored record without a namespace (an hbd before this one made it)
    is the host's; the tenant's next network goes to its space all the same."""
    service.state.put("networks", "old", {"id": "old", "name": "front@proj-a",
                                          "driver": "bridge", "created": "",
                                          "bridge": "hbffffold", "subnet": "172.18.0.0/16",
                                          "gateway": "172.18.0.1"})
    again = NetworkService(service.state, EventBus(), "ffff", "100.64.0.0/24")
    assert again.get("front@proj-a").namespace == HOST
    await again.create(subnet_body("back", "172.18.0.0/16"), Scope("proj-a"))
    assert again.get("back@proj-a").namespace == again.spaces["proj-a"].namespace
