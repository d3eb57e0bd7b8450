"""Legacy links' environment (as dockerd 20.10 printed it) and the DNS names
each container resolves (AAAA, link aliases of the asking container only)."""

from __future__ import annotations

import asyncio

import dns.message
import dns.rdatatype

from hbd.services.container.links import link_env
from hbd.services.network.dns import DnsServer, NetworkView

# `docker run --link n9lt:db` in real dockerd, n9lt exposing 80, 53/udp and 8000-8002.
ORACLE_ENV = """DB_ENV_FOO=bar
DB_ENV_MULTI=a=b
DB_NAME=/n9x/db
DB_PORT=udp://172.17.0.4:53
DB_PORT_53_UDP=udp://172.17.0.4:53
DB_PORT_53_UDP_ADDR=172.17.0.4
DB_PORT_53_UDP_PORT=53
DB_PORT_53_UDP_PROTO=udp
DB_PORT_8000_TCP=tcp://172.17.0.4:8000
DB_PORT_8000_TCP_ADDR=172.17.0.4
DB_PORT_8000_TCP_END=tcp://172.17.0.4:8002
DB_PORT_8000_TCP_PORT=8000
DB_PORT_8000_TCP_PORT_END=8002
DB_PORT_8000_TCP_PORT_START=8000
DB_PORT_8000_TCP_PROTO=tcp
DB_PORT_8000_TCP_START=tcp://172.17.0.4:8000
DB_PORT_8001_TCP=tcp://172.17.0.4:8001
DB_PORT_8001_TCP_ADDR=172.17.0.4
DB_PORT_8001_TCP_PORT=8001
DB_PORT_8001_TCP_PROTO=tcp
DB_PORT_8002_TCP=tcp://172.17.0.4:8002
DB_PORT_8002_TCP_ADDR=172.17.0.4
DB_PORT_8002_TCP_PORT=8002
DB_PORT_8002_TCP_PROTO=tcp
DB_PORT_80_TCP=tcp://172.17.0.4:80
DB_PORT_80_TCP_ADDR=172.17.0.4
DB_PORT_80_TCP_PORT=80
DB_PORT_80_TCP_PROTO=tcp"""


def test_link_env_is_dockerds() -> None:
    env = link_env("172.17.0.4", "/n9x/db", ["PATH=/bin", "FOO=bar", "MULTI=a=b", "HOME=/"],
                   ["80/tcp", "53/udp", "8000/tcp", "8001/tcp", "8002/tcp"])
    assert sorted(env) == ORACLE_ENV.splitlines()
    assert link_env("10.0.0.2", "/p/my-db", [], []) == ["MY_DB_NAME=/p/my-db"]


def answer(server: DnsServer, gateway: str, name: str, rdtype: str, client: str,
           namespace: str = "") -> list[str]:
    query = dns.message.make_query(name, rdtype).to_wire()
    wire = asyncio.run(server.answer((namespace, gateway), query, client))
    assert wire is not None
    reply = dns.message.from_wire(wire)
    return sorted(item.to_text() for rrset in reply.answer for item in rrset)


def test_aaaa_and_link_aliases() -> None:
    views = [
        NetworkView("10.1.0.1", "front", {"web": ["10.1.0.2", "2001:db8::2"]},
                    clients={"10.1.0.2": [], "10.1.0.3": [("", "10.2.0.1")], "10.1.0.4": []},
                    links={"10.1.0.3": {"db": "web"}, "10.2.0.3": {"db": "web"}}),
        NetworkView("10.2.0.1", "back", {"store": ["10.2.0.2"]},
                    clients={"10.2.0.3": [("", "10.1.0.1")]}),
    ]
    server = DnsServer(lambda: views, upstreams=["127.0.0.1"])
    server._views = {v.key: v for v in views}  # no listeners needed to answer
    assert answer(server, "10.1.0.1", "web", "AAAA", "10.1.0.4") == ["2001:db8::2"]
    assert answer(server, "10.1.0.1", "web.front", "A", "10.1.0.4") == ["10.1.0.2"]
    # The alias of the linking container, asked on either of its networks.
    assert answer(server, "10.1.0.1", "db", "AAAA", "10.1.0.3") == ["2001:db8::2"]
    assert answer(server, "10.2.0.1", "db", "A", "10.2.0.3") == ["10.1.0.2"]
    # A name without an address of the asked family: an empty answer, not forwarded.
    assert answer(server, "10.2.0.1", "store", "AAAA", "10.2.0.3") == []
    reply = asyncio.run(server.answer(("", "10.1.0.1"), dns.message.make_query(
        "db", dns.rdatatype.A).to_wire(), "10.1.0.4"))
    # Anyone else: not a local name (forwarded upstream, which fails here).
    assert reply is not None and not dns.message.from_wire(reply).answer


def test_two_tenants_on_one_gateway_address_have_their_own_names() -> None:
    """Two tenants' networks may share a subnet (each in its own namespace):
    a listener is known by namespace and gateway, and answers its own names."""
    views = [NetworkView("10.9.0.1", "front@a", {"web": ["10.9.0.2"]},
                         clients={"10.9.0.2": []}, namespace="hbdffff-aaaa"),
             NetworkView("10.9.0.1", "front@b", {"web": ["10.9.0.3"], "db": ["10.9.0.2"]},
                         clients={"10.9.0.2": [], "10.9.0.3": []}, namespace="hbdffff-bbbb")]
    server = DnsServer(lambda: views, upstreams=["127.0.0.1"])
    server._views = {v.key: v for v in views}
    assert len(server._views) == 2
    assert answer(server, "10.9.0.1", "web", "A", "10.9.0.2", "hbdffff-aaaa") == ["10.9.0.2"]
    assert answer(server, "10.9.0.1", "web", "A", "10.9.0.2", "hbdffff-bbbb") == ["10.9.0.3"]
    assert answer(server, "10.9.0.1", "db", "A", "10.9.0.2", "hbdffff-aaaa") == []
    assert answer(server, "10.9.0.1", "db", "A", "10.9.0.3", "hbdffff-bbbb") == ["10.9.0.2"]
    # The host's listener on that address (none here) serves neither.
    assert answer(server, "10.9.0.1", "web", "A", "10.9.0.2") == []
