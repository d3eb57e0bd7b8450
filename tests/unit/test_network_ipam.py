"""IPAM rules: allocation order per family, static addresses, link-local ones; and
the records that keep them."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import asdict

import pytest

from hbd.errors import Forbidden, InvalidParameter, SystemError_
from hbd.services.container.model import Container, Link
from hbd.services.container.network import run_from_record, run_record
from hbd.services.container.sandbox import Slot
from hbd.services.network import ipam
from hbd.services.network.model import Endpoint, Network, RunNetworking


def message_of(error: type[Exception], call: Callable[[], object]) -> str:
    with pytest.raises(error) as e:
        call()
    return str(e.value)


def lease_all(subnet: str, ip_range: str, gateway: str, count: int) -> list[str]:
    leases: dict[str, str] = {}
    for _ in range(count):
        address = ipam.lease(ipaddress.ip_network(subnet), ip_range, gateway, leases, "")
        leases[address] = "c"
    return list(leases)


def test_ipv4_skips_the_range_and_subnet_edges() -> None:
    # dockerd 20.10: --ip-range 10.231.10.128/25 gives .129 first.
    assert lease_all("10.231.10.0/24", "10.231.10.128/25", "10.231.10.1", 2) == \
        ["10.231.10.129", "10.231.10.130"]
    assert lease_all("10.0.0.0/30", "", "10.0.0.1", 1) == ["10.0.0.2"]
    assert "no available IPv4 addresses" in message_of(
        SystemError_, lambda: lease_all("10.0.0.0/30", "", "10.0.0.1", 2))


def test_ipv6_starts_at_the_range_and_skips_the_gateway() -> None:
    assert lease_all("2001:db8::/64", "", "2001:db8::1", 2) == ["2001:db8::2", "2001:db8::3"]
    assert lease_all("2001:db8::/64", "2001:db8::100/120", "2001:db8::fe", 1) == \
        ["2001:db8::100"]


def test_wanted_addresses() -> None:
    subnet = ipaddress.ip_network("2001:db8::/64")
    leases = {"2001:db8::5": "other"}
    assert ipam.lease(subnet, "", "2001:db8::1", leases, "2001:db8:0::6") == "2001:db8::6"
    for taken in ("2001:db8::5", "2001:db8::1", "2001:db8::"):
        assert message_of(Forbidden, lambda address=taken: ipam.lease(
            subnet, "", "2001:db8::1", leases, address)) == "Address already in use"
    assert message_of(InvalidParameter, lambda: ipam.lease(
        subnet, "", "2001:db8::1", leases, "2001:db9::5")) == \
        "Invalid address 2001:db9::5: It does not belong to any of this network's subnets"
    assert message_of(InvalidParameter, lambda: ipam.lease(
        subnet, "", "2001:db8::1", leases, "10.0.0.1")) == "invalid IPv6 address: 10.0.0.1"


def test_link_local_addresses_get_dockerds_prefixes() -> None:
    assert ipam.link_local_cidrs(["169.254.1.2", "fe80::7"]) == \
        ["169.254.1.2/16", "fe80::7/64"]
    assert message_of(SystemError_, lambda: ipam.link_local_cidrs(["zz", "169.254.1.1"])) == \
        "Invalid link-local IP address: [zz 169.254.1.1]"
    assert message_of(SystemError_, lambda: ipam.link_local_cidrs(["2001:db8::1"])) == \
        "invalid link local IP address: 2001:db8::1"


def test_one_subnet_per_family() -> None:
    v4, v6 = ipam.family_configs([{"Subnet": "2001:db8::/64"}, {"Subnet": "10.1.0.0/16"}])
    assert v4 == {"Subnet": "10.1.0.0/16"} and v6 == {"Subnet": "2001:db8::/64"}
    assert ipam.family_configs([]) == ({}, None)
    assert message_of(Forbidden, lambda: ipam.family_configs(
        [{"Subnet": "10.1.0.0/16"}, {"Subnet": "10.2.0.0/16"}])) == \
        "bridge driver doesn't support multiple subnets"


def test_records_round_trip_and_older_ones_load() -> None:
    """Network, endpoint, slot and container records written now load again;
    those written before IPv6, link-local addresses and links load too."""
    n = Network("id", "v6", "bridge", "now", subnet="10.1.0.0/16", gateway="10.1.0.1",
                enable_ipv6=True, subnet6="2001:db8::/64")
    assert Network(**asdict(n)) == n and n.ipv6_gateway == "2001:db8::1"
    old_network = {k: v for k, v in asdict(n).items()
                   if k not in ("enable_ipv6", "subnet6", "gateway6", "ip_range6")}
    assert not Network(**old_network).ipv6
    e = Endpoint("n", "e", "10.1.0.2", 16, "10.1.0.1", "02:42:0a:01:00:02", "eth0", [], ["c"],
                 ip6="2001:db8::2", prefix6=64, gateway6="2001:db8::1",
                 link_local=["169.254.1.1/16"], links={"db": "web"})
    run = RunNetworking("10.1.0.1", {"v6": e})
    assert run_from_record(run_record(run)) == run
    old_endpoint = {k: v for k, v in asdict(e).items()
                    if k not in ("ip6", "prefix6", "gateway6", "link_local", "links")}
    assert Endpoint.from_record(old_endpoint).cidrs == ["10.1.0.2/16"]
    slot = Slot(0, "tap", "02:68:62:00:00:01", gateway6="2001:db8::1")
    assert Slot(**asdict(slot)) == slot
    assert Slot(**{k: v for k, v in asdict(slot).items() if k != "gateway6"}).gateway6 == ""
    c = Container("id", "/p", "now", "img", {}, {}, "sh", [], links=[Link("cid", "db", "/c")])
    assert Container.from_record(c.record()).links == c.links
    older = {k: v for k, v in c.record().items() if k != "links"}
    assert Container.from_record(older).links == []
