"""Docker networks on Linux bridges: IPAM, endpoints, published ports, isolation.

One bridge per network; a container's NIC on it is a tap of its guest
(the sandbox plugs it in). Addresses are assigned by hbd and configured by
the guest init (no DHCP). Each network's gateway
address also serves DNS (network/dns.py) for the names on that network.
Networks are isolated from each other, as Docker's bridge networks are.
The operator's bridges are in the host's network namespace; each tenant's
are in a namespace of its own, its address space (network/spaces.py), where
its subnets may be anybody else's too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import logging
import secrets
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hbd.drivers import net, netns
from hbd.errors import (
    Conflict,
    Forbidden,
    HbdError,
    InvalidParameter,
    NotFound,
    SystemError_,
)
from hbd.events import EventBus
from hbd.services.network import ipam as ipam_rules
from hbd.services.network import spaces as address_spaces
from hbd.services.network.filters import NetworkFilter
from hbd.services.network.model import (
    DEFAULT_BRIDGE,
    PREDEFINED,
    SHARED,
    Endpoint,
    Network,
    NetworkUsers,
    PublishedPort,
    RunNetworking,
    is_default_bridge,
    network_not_found,
    parse_link,
)
from hbd.services.network.spaces import HOST, AddressSpace, SpaceRules
from hbd.services.scope import OPERATOR, OWNER_MARK, Scope, owner_of, split_owner
from hbd.services.timefmt import rfc3339_nano
from hbd.store import StateStore

log = logging.getLogger(__name__)

# Candidate subnets, in dockerd's default-address-pools order.
POOLS = [ipaddress.IPv4Network(f"172.{n}.0.0/16") for n in range(17, 32)] + \
    [ipaddress.IPv4Network(f"192.168.{n}.0/20") for n in range(0, 256, 16)]
EPHEMERAL_PORTS = range(32768, 61000)


def instance_tag(data_root: Path) -> str:
    """4 hex digits naming one daemon's bridges, taps and nftables table."""
    return hashlib.sha256(str(data_root.resolve()).encode()).hexdigest()[:4]


async def remove_host_state(tag: str) -> None:
    """Delete every bridge, tap, uplink, namespace and rule of the daemon with
    `tag` (it must be stopped).

    dockerd leaves docker0 behind when it stops, and so does hbd; this is for
    uninstalling, and for tests that create throwaway daemons."""
    for prefix in ("ht", "hb", "hu"):
        for name in await net.links_with_prefix(f"{prefix}{tag}"):
            await net.delete_link(name)
    for namespace in netns.names_with_prefix(f"hbd{tag}-"):
        await net.remove_namespace(namespace)
    await net.remove_ruleset(f"hbd_{tag}")


def mac_for(ip: str) -> str:
    """dockerd's generated MAC: 02:42 followed by the IPv4 address."""
    octets = [int(x) for x in ip.split(".")]
    return "02:42:" + ":".join(f"{o:02x}" for o in octets)


class _NoUsers:
    """Until the container service is wired in: no container uses any network."""

    def configured_on(self, network_name: str) -> list[str]:
        return []

    def network_members(self, network_name: str) -> dict[str, dict[str, Any]]:
        return {}


_NO_USERS = _NoUsers()


def network_ref_in(scope: Scope, ref: str) -> str:
    """A network reference as the asker means it: `host` and `none` are
    everyone's, `bridge` (and the `default` mode) a tenant's own default
    bridge, any other the asker's own network."""
    if ref in SHARED or (not scope.is_tenant and ref == "default"):
        return ref
    return scope.qualify(DEFAULT_BRIDGE if ref == "default" else ref)


class NetworkService:
    def __init__(self, state: StateStore, events: EventBus, tag: str,
                 transfer_range: str = address_spaces.DEFAULT_TRANSFER_RANGE) -> None:
        """`tag` (4 hex digits, from the data root) keeps the bridges, taps,
        namespaces and nftables tables of two daemons on one host apart;
        tenants' uplinks are addressed from `transfer_range`."""
        self.state = state
        self.events = events
        self.tag = tag
        # remove_host_state() below knows these three names too.
        self.tap_prefix = f"ht{tag}"
        self.bridge_prefix = f"hb{tag}"
        self.nft_table = f"hbd_{tag}"
        self.networks: dict[str, Network] = {}
        # network id -> {ip: container id}
        self.leases: dict[str, dict[str, str]] = {}
        # container id -> its endpoints and published ports while it runs
        self.runs: dict[str, RunNetworking] = {}
        self._reservations: dict[tuple[str, str, int], socket.socket] = {}
        self._lock = asyncio.Lock()
        self.rules = net.RuleTable(self.nft_table)
        self.transfer_range = ipaddress.IPv4Network(transfer_range)
        # Tenant project -> its address space; namespace -> the rules there.
        self.spaces: dict[str, AddressSpace] = {
            rec["project"]: AddressSpace.from_dict(rec)
            for _, rec in state.load("address_spaces")}
        self.space_rules: dict[str, net.RuleTable] = {
            s.namespace: net.RuleTable(self.nft_table, s.namespace)
            for s in self.spaces.values()}
        # tap -> what the guest behind it may send as (anti-spoofing), and
        # the namespace of the bridge it is plugged into
        self.pins: dict[str, net.PortPin] = {}
        self._pin_namespaces: dict[str, str] = {}
        # From start() until settle_rules(): the tables are left as they are.
        self._rules_held = False
        self.on_change: list[Any] = []  # callbacks (no arguments): DNS reloads its view
        self.users: NetworkUsers = _NO_USERS
        for _, rec in state.load("networks"):
            n = Network(**rec)
            self.networks[n.id] = n
            self.leases[n.id] = {}

    # -- lookup ----------------------------------------------------------------

    def get(self, ref: str) -> Network:
        """By full ID, full name, or unique ID prefix, as dockerd's FindNetwork.
        A reference qualified with an owner (`X@project`, hbd.services.scope)
        finds that owner's networks and the predefined ones only."""
        base, owner = split_owner(ref)
        candidates = list(self.networks.values()) if owner is None else \
            [n for n in self.networks.values() if n.shared or owner_of(n.name) == owner]
        by_id = [n for n in candidates if n.id == base]
        if by_id:
            return by_id[0]
        by_name = [n for n in candidates if n.name == ref or (n.shared and n.name == base)]
        if by_name:
            return by_name[0]
        by_prefix = [n for n in candidates if n.id.startswith(base)]
        if len(by_prefix) == 1 and base:
            return by_prefix[0]
        if len(by_prefix) > 1:
            raise InvalidParameter(f"network {ref} is ambiguous ({len(by_prefix)} matches "
                                   "found based on ID prefix)")
        raise network_not_found(ref)

    def _save(self, n: Network) -> None:
        self.state.put("networks", n.id, asdict(n))

    def namespace_of(self, network_id: str) -> str:
        """Where the network's bridge is (Network.namespace: its tenant's
        namespace, or the host's, HOST, for the operator's and for a
        tenant's made before tenants had namespaces); HOST for a network
        that is gone."""
        n = self.networks.get(network_id)
        return n.namespace if n is not None else HOST

    async def _space(self, project: str) -> AddressSpace:
        """The project's address space, made (namespace, uplink) at its first network."""
        space = self.spaces.get(project)
        if space is None:
            namespace, uplink = address_spaces.space_names(self.tag, project)
            if any(s.namespace == namespace for s in self.spaces.values()):
                raise SystemError_(f"address space {namespace} is another project's")
            used = [s.network for s in self.spaces.values()] + await net.routed_networks()
            subnet = address_spaces.transfer_subnet(self.transfer_range, used)
            if subnet is None:
                raise SystemError_(f"no free /30 left in the tenant transfer range "
                                   f"{self.transfer_range} (hbd.toml: network)")
            space = AddressSpace(project, namespace, uplink, str(subnet))
            self.spaces[project] = space
            self.state.put("address_spaces", project, space.to_dict())
            self.space_rules[namespace] = net.RuleTable(self.nft_table, namespace)
        try:
            await net.ensure_uplink(space.namespace, space.uplink, space.uplink, space.network)
        except net.NetError as e:
            raise SystemError_(str(e)) from e
        return space

    async def _drop_space_if_empty(self, namespace: str) -> None:
        """A tenant's last network is gone: so are its namespace and uplink."""
        if namespace == HOST or any(n.namespace == namespace
                                    for n in self.networks.values()):
            return
        space = next(s for s in self.spaces.values() if s.namespace == namespace)
        del self.spaces[space.project]
        self.space_rules.pop(namespace, None)
        self.state.delete("address_spaces", space.project)
        await net.remove_uplink(space.namespace, space.uplink)

    # -- start-up ----------------------------------------------------------------

    async def start(self) -> None:
        """Create the predefined networks once, then bring every bridge up; the
        rules follow once the guests are known (settle_rules)."""
        net.open_rule_channel()
        net.enable_forwarding()
        self._rules_held = True
        names = {n.name for n in self.networks.values()}
        if "none" not in names:
            self._add(Network(secrets.token_hex(32), "none", "null", rfc3339_nano()))
        if "host" not in names:
            self._add(Network(secrets.token_hex(32), "host", "host", rfc3339_nano()))
        if DEFAULT_BRIDGE not in names:
            subnet = await self._free_subnet(HOST)
            self._add(Network(
                secrets.token_hex(32), DEFAULT_BRIDGE, "bridge", rfc3339_nano(),
                bridge=f"{self.bridge_prefix}0", subnet=str(subnet),
                gateway=str(next(subnet.hosts())),
                options={"com.docker.network.bridge.default_bridge": "true",
                         "com.docker.network.bridge.enable_icc": "true",
                         "com.docker.network.bridge.enable_ip_masquerade": "true",
                         "com.docker.network.bridge.name": f"{self.bridge_prefix}0",
                         "com.docker.network.driver.mtu": "1500"}))
        for project in list(self.spaces):
            await self._space(project)
        for n in self.networks.values():
            if n.driver == "bridge":
                await self._bring_up(n)
        # The rules wait for the guests: see settle_rules. (Taps of guests
        # that are gone went with their QEMU.)

    def _add(self, n: Network) -> None:
        self.networks[n.id] = n
        self.leases[n.id] = {}
        self._save(n)

    async def _bring_up(self, n: Network) -> None:
        gateway = ipaddress.IPv4Interface(f"{n.gateway}/{n.network.prefixlen}") \
            if n.network is not None and n.gateway else None
        gateway6 = ipaddress.IPv6Interface(f"{n.ipv6_gateway}/{n.network6.prefixlen}") \
            if n.network6 is not None and n.ipv6 else None
        await net.ensure_bridge(n.bridge, gateway, gateway6, namespace=n.namespace)

    def _space_networks(self, namespace: str) -> list[Network]:
        return [n for n in self.networks.values() if n.namespace == namespace]

    def _uplink_subnets(self, namespace: str) -> list[ipaddress.IPv4Network]:
        return [s.network for s in self.spaces.values() if s.namespace == namespace]

    async def _free_subnet(self, namespace: str) -> ipaddress.IPv4Network:
        """A default pool free in the address space: clear of its networks
        (and its uplink), and of what the host routes (the host's own
        networks, in the host's space, excepted: the host routes them
        because they are ours), so that its containers still reach those."""
        own = [n.network for n in self._space_networks(namespace) if n.network is not None]
        routed = await net.routed_networks()
        if namespace == HOST:
            routed = [r for r in routed if r not in own]
        used = own + self._uplink_subnets(namespace) + routed
        subnet = address_spaces.free_subnet(POOLS, used)
        if subnet is None:
            raise Forbidden("could not find an available, non-overlapping IPv4 address pool "
                            "among the defaults to assign to the network")
        return subnet

    async def settle_rules(self) -> None:
        """The running guests have been adopted again (adopt_run, pin_ports):
        the tables made afresh with exactly their rules, a pin of a guest
        that ended while hbd was down gone with the rest.

        Until then (from start()) the tables stay as the last hbd left them:
        the pins of guests that outlived it stay in force while hbd finds them
        again, instead of a rebuild without them letting those guests send
        as anyone for as long as the restore takes."""
        async with self._lock:
            self._rules_held = False
            await self.apply_rules()

    async def apply_rules(self) -> None:
        """Bring nftables in line with the networks and published ports (no
        transaction at all when nothing changed: most containers publish no port)."""
        if self._rules_held:
            return
        rulesets = address_spaces.rulesets(self._space_rules())
        try:
            await self.rules.apply(rulesets[HOST])
            for namespace, table in self.space_rules.items():
                await table.apply(rulesets[namespace])
        except net.NetError as e:
            raise SystemError_(str(e)) from e

    def _space_rules(self) -> SpaceRules:
        """The networks, published ports and pins, each with its namespace."""
        parts = SpaceRules(list(self.spaces.values()), transfer_range=str(self.transfer_range))
        parts.bridges = [(n.namespace, net.BridgeRules(n.bridge, n.subnet, n.internal))
                         for n in self.networks.values() if n.driver == "bridge"]
        for run in self.runs.values():
            if not run.endpoints or not run.ports:
                continue
            primary = run.endpoints[self._primary(run)]
            namespace = self.namespace_of(primary.network_id)
            parts.forwards += [(namespace, net.PortForward(p.protocol, p.host_ip, p.host_port,
                                                           primary.ip, p.container_port))
                               for p in run.ports]
        parts.pins = [(self._pin_namespaces.get(tap, HOST), pin)
                      for tap, pin in self.pins.items()]
        return parts

    async def pin_ports(self, ports: dict[str, Endpoint]) -> None:
        """The guest behind each tap (a port of its endpoint's bridge) may send
        only as the endpoint: its MAC, its addresses. Call before the tap is
        plugged into the bridge; `unpin_ports` once it is unplugged. One
        transaction for all of them."""
        if not ports:
            return
        async with self._lock:
            for tap, endpoint in ports.items():
                self.pins[tap] = self._pin(tap, endpoint)
                self._pin_namespaces[tap] = self.namespace_of(endpoint.network_id)
            await self.apply_rules()

    @staticmethod
    def _pin(tap: str, endpoint: Endpoint) -> net.PortPin:
        ips = [endpoint.ip] + [c.split("/")[0] for c in endpoint.link_local if ":" not in c]
        ips6 = [a for a in [endpoint.ip6] if a] + \
            [c.split("/")[0] for c in endpoint.link_local if ":" in c]
        return net.PortPin(tap, endpoint.mac, ips, ips6)

    async def unpin_ports(self, taps: list[str]) -> None:
        """The taps' pins gone (those that have none are no change)."""
        async with self._lock:
            removed = [self.pins.pop(tap) for tap in taps if tap in self.pins]
            for tap in taps:
                self._pin_namespaces.pop(tap, None)
            if removed:
                await self.apply_rules()

    @staticmethod
    def _primary(run: RunNetworking) -> str:
        return next(iter(run.endpoints))

    # -- create / remove -----------------------------------------------------------

    async def create(self, body: dict[str, Any], scope: Scope = OPERATOR) -> dict[str, str]:
        if not isinstance(body, dict):
            raise InvalidParameter("invalid JSON: network config must be an object")
        name = body.get("Name")
        if not name or not isinstance(name, str):
            raise InvalidParameter("network name must not be empty")
        if scope.is_tenant:
            if OWNER_MARK in name:
                raise InvalidParameter(f"network name {name} must not hold "
                                       f"\"{OWNER_MARK}\": it marks a tenant's names")
            if name in PREDEFINED:
                raise Forbidden(f"{name} is a pre-defined network and cannot be created")
            name = scope.qualify(name)
        driver = body.get("Driver") or "bridge"
        if driver != "bridge":
            if driver in ("host", "null"):
                raise Forbidden(f"only one instance of \"{driver}\" network is allowed")
            raise NotFound(f"plugin \"{driver}\" not found")
        async with self._lock:
            if any(n.name == name for n in self.networks.values()):
                raise Conflict(f"network with name {scope.shown(name)} already exists")
            project = owner_of(name)
            namespace = HOST if project is None else (await self._space(project)).namespace
            try:
                n = await self._new_network(name, body, namespace)
            except BaseException:
                await self._drop_space_if_empty(namespace)
                raise
            self._add(n)
            await self.apply_rules()
        self.events.publish("network", "create", n.id, {"name": n.name, "type": n.driver})
        self._changed()
        return {"Id": n.id, "Warning": ""}

    async def _new_network(self, name: str, body: dict[str, Any], namespace: str) -> Network:
        """The network `body` asks for, its bridge up in `namespace`."""
        ipam = body.get("IPAM") or {}
        v4, v6 = await self._ipam(ipam.get("Config") or [], bool(body.get("EnableIPv6")),
                                  namespace)
        nid = secrets.token_hex(32)
        options = {str(k): str(v) for k, v in (body.get("Options") or {}).items()}
        n = Network(
            id=nid, name=name, driver="bridge", created=rfc3339_nano(), namespace=namespace,
            bridge=options.get("com.docker.network.bridge.name") or
            f"{self.bridge_prefix}{nid[:8]}",
            subnet=str(v4.subnet), gateway=v4.gateway or ipam_rules.first_host(v4.subnet),
            ip_range=v4.ip_range, enable_ipv6=bool(body.get("EnableIPv6")),
            subnet6=str(v6.subnet) if v6 else "", gateway6=v6.gateway if v6 else "",
            ip_range6=v6.ip_range if v6 else "",
            internal=bool(body.get("Internal")), attachable=bool(body.get("Attachable")),
            labels={str(k): str(v) for k, v in (body.get("Labels") or {}).items()},
            options=options,
            ipam_options={str(k): str(v) for k, v in (ipam.get("Options") or {}).items()},
        )
        self._check_auxiliary_addresses(n, ipam.get("Config") or [])
        try:
            await self._bring_up(n)
        except net.NetError as e:
            raise SystemError_(str(e)) from e
        return n

    async def ensure_default_bridge(self, scope: Scope) -> None:
        """A tenant's own default bridge (`bridge` as it sees it), made at its
        first need: tenants share no bridge, so no tenant reaches another's
        containers (nothing is forwarded between two networks)."""
        if not scope.is_tenant:
            return
        name = scope.qualify(DEFAULT_BRIDGE)
        if any(n.name == name for n in self.networks.values()):
            return
        with contextlib.suppress(Conflict):  # made meanwhile by another request
            await self.create({"Name": name})

    async def _ipam(self, configs: list[Any], enable_ipv6: bool, namespace: str
                    ) -> tuple[ipam_rules.Pool, ipam_rules.Pool | None]:
        """The network's IPv4 pool (from the default pools when no subnet is
        given) and its IPv6 one, if configured, unique in its address space."""
        config4, config6 = ipam_rules.family_configs(configs)
        ipam_rules.require_ipv6_pool(enable_ipv6, config6)
        raw = str(config4.get("Subnet") or "")
        if raw:
            subnet: ipam_rules.IPNetwork = ipam_rules.parse_subnet(raw, 4)
            self._check_overlap(subnet, namespace)
        else:
            subnet = await self._free_subnet(namespace)
        v4 = ipam_rules.check_pool(subnet, config4)
        if config6 is None:
            return v4, None
        raw = str(config6.get("Subnet") or "")
        if not raw:
            raise NotFound(ipam_rules.NO_IPV6_POOL)
        subnet = ipam_rules.parse_subnet(raw, 6)
        self._check_overlap(subnet, namespace)
        return v4, ipam_rules.check_pool(subnet, config6)

    def _check_overlap(self, subnet: ipam_rules.IPNetwork, namespace: str) -> None:
        """The subnet overlaps no other network of its address space, nor the
        space's uplink (other tenants' subnets are none of its business)."""
        taken: list[ipam_rules.IPNetwork] = list(self._uplink_subnets(namespace))
        for other in self._space_networks(namespace):
            taken += [u for u in (other.network, other.network6) if u is not None]
        if any(u.version == subnet.version and u.overlaps(subnet) for u in taken):
            raise Forbidden("Pool overlaps with other one on this address space")

    def in_use(self, n: Network) -> list[str]:
        return sorted({cid for cid in self.leases.get(n.id, {}).values()})

    async def remove(self, ref: str, scope: Scope = OPERATOR) -> None:
        """A network that containers are configured on (running or not) stays.
        A tenant's default bridge is predefined for it; the operator may
        remove it (a new one is made at the tenant's next need)."""
        n = self.get(network_ref_in(scope, ref))
        if n.builtin and (scope.is_tenant or n.name in PREDEFINED):
            raise Forbidden(f"{n.name} is a pre-defined network and cannot be removed")
        active = self.in_use(n)
        if active or self.users.configured_on(n.name):
            raise Forbidden(f"error while removing network: network {n.name} id {n.id} has "
                            "active endpoints")
        async with self._lock:
            namespace = n.namespace
            del self.networks[n.id]
            self.leases.pop(n.id, None)
            self.state.delete("networks", n.id)
            await net.delete_link(n.bridge, namespace)
            await self._drop_space_if_empty(namespace)
            await self.apply_rules()
        self.events.publish("network", "destroy", n.id, {"name": n.name, "type": n.driver})
        self._changed()

    async def prune(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                    ) -> dict[str, Any]:
        """`network prune`: the custom networks no container is configured on."""
        matches = NetworkFilter(filters, self.users, prune=True)
        deleted = []
        for n in list(self.networks.values()):
            if n.builtin or not scope.sees(n.name) or not matches(n) or \
                    self.users.configured_on(n.name) or self.in_use(n):
                continue
            await self.remove(n.id)
            deleted.append(n.name)
        return {"NetworksDeleted": scope.shown(deleted) or None}

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    @staticmethod
    def _check_auxiliary_addresses(n: Network, configs: list[Any]) -> None:
        v4, v6 = ipam_rules.family_configs(configs)
        if n.network is not None:
            n.aux = ipam_rules.auxiliary_addresses(n.network, n.gateway, v4, n.name)
        if v6 is not None and n.network6 is not None:
            n.aux6 = ipam_rules.auxiliary_addresses(n.network6, n.ipv6_gateway, v6, n.name)

    # -- endpoints for a container run ---------------------------------------------

    def _lease(self, n: Network, container_id: str, version: int, wanted: str) -> str:
        """An address of the network's IPv4 (or IPv6) pool for the container."""
        if version == 4:
            assert n.network is not None
            subnet: ipam_rules.IPNetwork = n.network
            ip_range, gateway, aux = n.ip_range, n.gateway, n.aux
        else:
            assert n.network6 is not None
            subnet, ip_range, gateway, aux = n.network6, n.ip_range6, n.ipv6_gateway, n.aux6
        leases = self.leases.setdefault(n.id, {})
        try:
            address = ipam_rules.lease(subnet, ip_range, gateway, leases, wanted,
                                       set(aux.values()))
        except SystemError_ as e:
            raise SystemError_(f"{e.message}: {n.name} ({n.id})") from None
        leases[address] = container_id
        return address

    def _endpoint(self, n: Network, container_id: str, settings: dict[str, Any],
                  names: list[str], ifname: str) -> Endpoint:
        """A new endpoint with its addresses leased. What dockerd checks only
        when it makes the endpoint (MAC, link-local addresses, links) fails the
        start, with its messages."""
        ipam = settings.get("IPAMConfig") or {}
        raw_mac = str(settings.get("MacAddress") or "")
        mac = ipam_rules.parse_mac(raw_mac, ifname) if raw_mac else ""
        link_local = ipam_rules.link_local_cidrs(ipam.get("LinkLocalIPs") or [])
        links = {alias: name for name, alias in
                 (parse_link(str(link)) for link in settings.get("Links") or [])}
        ip = self._lease(n, container_id, 4, str(ipam.get("IPv4Address") or ""))
        ip6 = ""
        if n.ipv6:  # dockerd ignores --ip6 on a network without IPv6
            try:
                ip6 = self._lease(n, container_id, 6, str(ipam.get("IPv6Address") or ""))
            except BaseException:
                del self.leases[n.id][ip]
                raise
        aliases = [a for a in settings.get("Aliases") or [] if a]
        return Endpoint(
            n.id, secrets.token_hex(32), ip, n.network.prefixlen if n.network else 32,
            n.gateway, mac or mac_for(ip), ifname, aliases,
            list(dict.fromkeys([*names, *aliases])),
            ip6=ip6, prefix6=n.network6.prefixlen if ip6 and n.network6 else 0,
            gateway6=n.ipv6_gateway if ip6 else "", link_local=link_local, links=links)

    async def connect_run(self, container_id: str, attachments: dict[str, dict[str, Any]],
                          names: list[str], publish: list[PublishedPort]) -> RunNetworking:
        """Endpoints (addresses) and port forwards for a container that is starting.

        `attachments` maps network name to the container's EndpointSettings.
        """
        run = RunNetworking("")
        try:
            async with self._lock:
                for net_name, settings in attachments.items():
                    n = self.get(net_name)
                    if n.driver != "bridge":
                        continue
                    run.endpoints[n.name] = self._endpoint(n, container_id, settings, names,
                                                           run.next_ifname())
                    if not run.nameserver:
                        run.nameserver = n.gateway
                if publish and run.endpoints:
                    run.ports = self._reserve_ports(publish)
                self.runs[container_id] = run
                await self.apply_rules()
        except BaseException:
            await self._release(container_id, run)
            raise
        self._changed()
        return run

    async def add_endpoint(self, container_id: str, run: RunNetworking, network: str,
                           settings: dict[str, Any], names: list[str]) -> Endpoint:
        """A running container joins one more network (`docker network connect`)."""
        async with self._lock:
            n = self.get(network)
            endpoint = self._endpoint(n, container_id, settings, names, run.next_ifname())
            run.endpoints[n.name] = endpoint
            if not run.nameserver:
                run.nameserver = n.gateway
            await self.apply_rules()
        self._changed()
        return endpoint

    async def remove_endpoint(self, container_id: str, run: RunNetworking,
                              network: str) -> None:
        """A running container leaves one of its networks."""
        async with self._lock:
            endpoint = run.endpoints.pop(network, None)
            if endpoint is not None:
                self._release_addresses(container_id, endpoint)
            await self.apply_rules()
        self._changed()

    def _reserve_ports(self, publish: list[PublishedPort]) -> list[PublishedPort]:
        """Bind each host port (as docker-proxy would) so nobody else takes it.

        The traffic itself is DNATed to the guest by nftables; the bound socket
        only holds the port and reports a conflict with whatever has it.
        """
        out = []
        for p in publish:
            kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
            host_ip = p.host_ip or "0.0.0.0"
            candidates = [p.host_port] if p.host_port else list(EPHEMERAL_PORTS)
            for port in candidates:
                sock = socket.socket(socket.AF_INET, kind)
                try:
                    sock.bind((host_ip, port))
                except OSError as e:
                    sock.close()
                    if p.host_port:
                        detail = "port is already allocated" if e.errno == errno.EADDRINUSE \
                            else e.strerror
                        raise SystemError_(
                            "driver failed programming external connectivity on endpoint: "
                            f"Bind for {host_ip}:{port} failed: {detail}") from e
                    continue
                self._reservations[(p.protocol, host_ip, port)] = sock
                out.append(PublishedPort(p.container_port, p.protocol, host_ip, port))
                break
            else:
                raise SystemError_("no free host port for publishing")
        return out

    async def disconnect_run(self, container_id: str) -> None:
        run = self.runs.pop(container_id, None)
        if run is None:
            return
        async with self._lock:
            await self._release(container_id, run)
            await self.apply_rules()
        self._changed()

    def _release_addresses(self, container_id: str, endpoint: Endpoint) -> None:
        leases = self.leases.get(endpoint.network_id, {})
        for address in endpoint.addresses:
            if leases.get(address) == container_id:
                del leases[address]

    async def _release(self, container_id: str, run: RunNetworking) -> None:
        for endpoint in run.endpoints.values():
            self._release_addresses(container_id, endpoint)
        for p in run.ports:
            sock = self._reservations.pop((p.protocol, p.host_ip, p.host_port), None)
            if sock is not None:
                sock.close()
        self.runs.pop(container_id, None)

    async def adopt_run(self, container_id: str, run: RunNetworking) -> None:
        """After an hbd restart: a surviving guest's endpoints become ours again."""
        for endpoint in run.endpoints.values():
            for address in endpoint.addresses:
                self.leases.setdefault(endpoint.network_id, {})[address] = container_id
        with contextlib.suppress(HbdError):
            run.ports = self._reserve_ports(run.ports)
        self.runs[container_id] = run
        await self.apply_rules()
        self._changed()

    # -- API views -----------------------------------------------------------------

    def list_views(self, filters: dict[str, list[str]], scope: Scope = OPERATOR
                   ) -> list[dict[str, Any]]:
        """`network ls`, oldest first; the list leaves out Containers, as dockerd's
        does. A tenant sees the predefined networks and its own."""
        matches = NetworkFilter(filters, self.users)
        return scope.shown([self._view(n, {}) for n in sorted(self.networks.values(),
                                                              key=lambda n: n.created)
                            if (n.shared or scope.sees(n.name)) and matches(n)])

    def inspect(self, ref: str, scope: Scope = OPERATOR) -> dict[str, Any]:
        n = self.get(network_ref_in(scope, ref))
        members = self.users.network_members(n.name)
        if n.shared:  # everyone's network: a tenant sees its own containers on it
            members = {cid: m for cid, m in members.items() if scope.sees(m["Name"])}
        return scope.shown(self._view(n, members))

    def _view(self, n: Network, containers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        # Keys in dockerd's order (Subnet, IPRange, Gateway); an IPv6 gateway
        # is shown only when it was configured, as dockerd shows it.
        ipam_config = []
        for subnet, ip_range, gateway, aux in ((n.subnet, n.ip_range, n.gateway, n.aux),
                                               (n.subnet6, n.ip_range6, n.gateway6, n.aux6)):
            if subnet:
                entry: dict[str, Any] = {"Subnet": subnet}
                if ip_range:
                    entry["IPRange"] = ip_range
                if gateway:
                    entry["Gateway"] = gateway
                if aux:
                    entry["AuxiliaryAddresses"] = aux
                ipam_config.append(entry)
        return {
            "Name": n.name, "Id": n.id, "Created": n.created, "Scope": "local",
            "Driver": n.driver, "EnableIPv6": n.enable_ipv6,
            "IPAM": {"Driver": "default", "Options": n.ipam_options or None,
                     "Config": ipam_config},
            "Internal": n.internal, "Attachable": n.attachable, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
            "Containers": containers, "Options": n.options, "Labels": n.labels,
        }

    def endpoint_view(self, n: Network, settings: dict[str, Any],
                      endpoint: Endpoint | None) -> dict[str, Any]:
        """EndpointSettings as a container's inspect shows them."""
        return {
            "IPAMConfig": settings.get("IPAMConfig"),
            "Links": settings.get("Links"),
            "Aliases": settings.get("Aliases"),
            "MacAddress": endpoint.mac if endpoint else settings.get("MacAddress", ""),
            "DriverOpts": settings.get("DriverOpts"),
            "NetworkID": n.id,
            "EndpointID": endpoint.endpoint_id if endpoint else "",
            "Gateway": endpoint.gateway if endpoint else "",
            "IPAddress": endpoint.ip if endpoint else "",
            "IPPrefixLen": endpoint.prefix if endpoint else 0,
            "IPv6Gateway": endpoint.gateway6 if endpoint else "",
            "GlobalIPv6Address": endpoint.ip6 if endpoint else "",
            "GlobalIPv6PrefixLen": endpoint.prefix6 if endpoint else 0,
            "DNSNames": endpoint.dns_names if endpoint and not is_default_bridge(n.name)
            else None,
        }
