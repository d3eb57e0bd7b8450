"""The DNS server guests use: one listener on each network's gateway address.

It answers the names of containers (container name, short ID, network
aliases, hence compose service names) on the asking container's networks:
those on that network, and on every other network the asker is on (it asks
its first network's gateway, and may have joined more since), as dockerd's
embedded resolver does. A container on a network the asker is not on does
not resolve. Everything else is forwarded
to the host's resolvers (hbd runs on the host, so even a loopback resolver
such as systemd-resolved's works). dockerd does the same with its embedded
server at 127.0.0.11; names on the default bridge network are not served,
as in dockerd.

A tenant's networks are in its own network namespace (network/spaces.py),
where its gateways may be another tenant's addresses too: a listener is
bound in its network's namespace, and a view is known by its namespace
and gateway (a ListenerKey), never by the gateway alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from hbd.drivers import netns
from hbd.tasks import spawn

log = logging.getLogger(__name__)

TTL = 600
FORWARD_TIMEOUT = 3.0


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    servers = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1])
    except OSError:
        pass
    return servers or ["8.8.8.8"]


# Where a listener is: the host network namespace ("": the host's) and the gateway.
ListenerKey = tuple[str, str]


@dataclass(frozen=True)
class NetworkView:
    """What one listener serves: the network's gateway and its names."""

    gateway: str
    network: str
    names: dict[str, list[str]]  # lower-case name -> addresses (IPv4 and IPv6)
    # A container's address on this network -> the listeners of its other networks.
    clients: dict[str, list[ListenerKey]] = field(default_factory=dict)
    # Legacy links on this network: any address of the linking container ->
    # {lower-case alias: the name it stands for}; only that container resolves them.
    links: dict[str, dict[str, str]] = field(default_factory=dict)
    namespace: str = ""  # the network's host network namespace ("": the host's)

    @property
    def key(self) -> ListenerKey:
        return (self.namespace, self.gateway)


class _Forwarder:
    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams = upstreams

    async def resolve(self, query: dns.message.Message) -> dns.message.Message:
        wire = query.to_wire()
        loop = asyncio.get_running_loop()
        for server in self.upstreams:
            try:
                sock = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET,
                                     socket.SOCK_DGRAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (server, 53))
                    await loop.sock_sendall(sock, wire)
                    data = await asyncio.wait_for(loop.sock_recv(sock, 65535),
                                                  FORWARD_TIMEOUT)
                finally:
                    sock.close()
                reply = dns.message.from_wire(data)
                if reply.flags & dns.flags.TC:
                    reply = await self._tcp(server, wire)
                return reply
            except (OSError, TimeoutError, dns.exception.DNSException) as e:
                log.debug("upstream %s failed: %s", server, e)
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.SERVFAIL)
        return response

    async def _tcp(self, server: str, wire: bytes) -> dns.message.Message:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(server, 53),
                                                FORWARD_TIMEOUT)
        try:
            writer.write(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(await reader.readexactly(2), "big")
            return dns.message.from_wire(await reader.readexactly(size))
        finally:
            writer.close()


class _Listener:
    def __init__(self, server: DnsServer, key: ListenerKey) -> None:
        self.server = server
        self.key = key
        self.namespace, self.gateway = key
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        listener = self

        class Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                spawn(listener._answer_udp(data, addr))

        udp = await netns.bound_socket(self.namespace, socket.SOCK_DGRAM, (self.gateway, 53))
        transport, _ = await loop.create_datagram_endpoint(Udp, sock=udp)
        self.udp = transport
        tcp = await netns.bound_socket(self.namespace, socket.SOCK_STREAM, (self.gateway, 53))
        self.tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)

    async def _answer_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.server.answer(self.key, data, addr[0])
        if reply is not None and self.udp is not None:
            self.udp.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                peer = writer.get_extra_info("peername") or ("", 0)
                reply = await self.server.answer(self.key, await reader.readexactly(size),
                                                 str(peer[0]),
                                                 tcp=True)
                if reply is None:
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()


class DnsServer:
    def __init__(self, views: Callable[[], list[NetworkView]],
                 upstreams: list[str] | None = None) -> None:
        self._views_source = views
        self._views: dict[ListenerKey, NetworkView] = {}
        self._listeners: dict[ListenerKey, _Listener] = {}
        self._forwarder = _Forwarder(upstreams or host_resolvers())

    async def reconcile(self) -> None:
        """Listen on exactly the current gateways, serving the current names."""
        self._views = {v.key: v for v in self._views_source()}
        for key in list(self._listeners):
            if key not in self._views:
                self._listeners.pop(key).close()
        for key in list(self._views):
            if key not in self._listeners:
                listener = _Listener(self, key)
                try:
                    await listener.start()
                except OSError as e:
                    log.warning("DNS cannot listen on %s:53 (namespace %r): %s", key[1],
                                key[0], e)
                    listener.close()
                    continue
                self._listeners[key] = listener

    def refresh(self) -> None:
        """Names changed (a container started or stopped): serve the new view."""
        spawn(self.reconcile())

    def _lookup(self, key: ListenerKey, name: str, client: str) -> list[str] | None:
        """The addresses of `name` on the listener's network, else on the
        client's other networks; the client's link aliases come first, as in
        dockerd."""
        view = self._views.get(key)
        if view is None:
            return None
        candidates = [v for v in (self._views.get(k) for k in
                                  [key, *view.clients.get(client, [])]) if v is not None]
        for candidate in candidates:
            target = candidate.links.get(client, {}).get(self._short(name, candidate))
            if target is not None and target.lower() in candidate.names:
                return candidate.names[target.lower()]
        for candidate in candidates:
            short = self._short(name, candidate)
            if short in candidate.names:
                return candidate.names[short]
        return None

    @staticmethod
    def _short(name: str, view: NetworkView) -> str:
        """"web" and "web.<network>" both name the container, as in dockerd."""
        suffix = "." + view.network.lower()
        return name[: -len(suffix)] if name.endswith(suffix) else name

    async def answer(self, key: ListenerKey, data: bytes, client: str = "",
                     tcp: bool = False) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        addresses = self._lookup(key, name, client)
        if addresses is not None and question.rdclass == dns.rdataclass.IN:
            return self._local_answer(query, addresses)
        reply = await self._forwarder.resolve(query)
        reply.id = query.id
        with contextlib.suppress(dns.exception.DNSException):
            return reply.to_wire(max_size=65535 if tcp else 512)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.TC
        return response.to_wire()

    @staticmethod
    def _local_answer(query: dns.message.Message, addresses: list[str]) -> bytes:
        """A for the IPv4 addresses, AAAA for the IPv6 ones; a name without
        addresses of the asked family gets an empty answer (not forwarded)."""
        question = query.question[0]
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        for rdtype, family in ((dns.rdatatype.A, [a for a in addresses if ":" not in a]),
                               (dns.rdatatype.AAAA, [a for a in addresses if ":" in a])):
            if family and question.rdtype in (rdtype, dns.rdatatype.ANY):
                response.answer.append(dns.rrset.from_text_list(
                    question.name, TTL, "IN", dns.rdatatype.to_text(rdtype), family))
        return response.to_wire()

    def close(self) -> None:
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
