"""Host networking for guests: Linux bridges and taps (pyroute2), NAT and
filtering rules (nftables). Knows nothing of Docker.

Every nftables rule a daemon owns lives in its own two tables, `ip` and
`bridge` of one name (nftrules.py says what they hold), written through
libnftables' JSON API (libnftables.py), one transaction per change.

Bridges, taps and rules may also live in a network namespace of their own
(netns.py), joined to the host by an uplink (a veth pair): every function
here that takes a `namespace` works there ("": the host's).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hbd.drivers import libnftables, netns, nftrules
from hbd.drivers.nftrules import BridgeRules, PortForward, PortPin, Ruleset, Uplink

__all__ = ["BridgeRules", "NetError", "PortForward", "PortPin", "RuleTable", "Ruleset",
           "Uplink"]

log = logging.getLogger(__name__)

MAIN_TABLE = 254
NETLINK_ROUTE = 0


class NetError(Exception):
    pass


@contextlib.asynccontextmanager
async def _ipr(namespace: str) -> AsyncIterator[AsyncIPRoute]:
    """pyroute2 on a netlink socket of the namespace (see netns.py: not its
    own `netns` argument, which forks)."""
    if not namespace:
        async with AsyncIPRoute() as ipr:
            yield ipr
        return
    sock = await netns.socket_in(namespace, socket.AF_NETLINK, socket.SOCK_DGRAM,
                                 NETLINK_ROUTE)
    async with AsyncIPRoute(fileno=sock.detach()) as ipr:
        yield ipr


async def _index(ipr: AsyncIPRoute, name: str) -> int | None:
    found = await ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


async def ensure_bridge(name: str, gateway: ipaddress.IPv4Interface | None,
                        gateway6: ipaddress.IPv6Interface | None = None,
                        mtu: int = 1500, namespace: str = "") -> None:
    """A bridge named `name`, up, holding `gateway` and `gateway6` (and no
    other address of either family, link-local ones aside)."""
    async with _ipr(namespace) as ipr:
        idx = await _index(ipr, name)
        if idx is None:
            try:
                await ipr.link("add", ifname=name, kind="bridge")
            except NetlinkError as e:
                raise NetError(f"cannot create bridge {name}: {e}") from e
            idx = await _index(ipr, name)
            assert idx is not None
        await ipr.link("set", index=idx, mtu=mtu)
        # The host does not forward IPv6, so it would take router advertisements
        # from a guest on the bridge as its own routes: it takes none.
        # A port published on 127.0.0.1 is DNATed to a guest by the host's own
        # output path: the packet leaves this bridge with a loopback source
        # (masqueraded later) and its replies come back to a loopback
        # address, both martians unless the bridge allows them. Here only, not
        # on conf/all (CVE-2020-8558); nftrules.guard_rules drops any 127/8
        # packet that really arrives from outside.
        settings = {f"ipv6/conf/{name}/accept_ra": "0",
                    f"ipv4/conf/{name}/route_localnet": "1"}
        if gateway6 is not None:
            settings[f"ipv6/conf/{name}/disable_ipv6"] = "0"
        await set_sysctls(namespace, settings)
        if gateway is not None:
            await _own_address(ipr, idx, gateway)
        if gateway6 is not None:
            await _own_address(ipr, idx, gateway6)
        await ipr.link("set", index=idx, state="up")


async def _own_address(ipr: AsyncIPRoute, idx: int,
                       want: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
    """`want` becomes the link's one global address of its family. An IPv6 one
    skips duplicate address detection (as dockerd's bridge address does), so
    that guests reach it at once."""
    family = 2 if want.version == 4 else 10
    have = {(a.get("address"), a["prefixlen"])
            async for a in await ipr.get_addr(index=idx, family=family)
            if a["scope"] == 0}  # universe: link-local addresses stay
    wanted = (str(want.ip), want.network.prefixlen)
    for address, prefix in have - {wanted}:
        await ipr.addr("del", index=idx, address=address, prefixlen=prefix)
    if wanted not in have:
        flags = {} if want.version == 4 else {"flags": IFA_F_NODAD}
        try:
            await ipr.addr("add", index=idx, address=wanted[0], prefixlen=wanted[1], **flags)
        except NetlinkError as e:
            raise NetError(f"cannot add {want} to the bridge: {e}") from e


async def delete_link(name: str, namespace: str = "") -> None:
    async with _ipr(namespace) as ipr:
        idx = await _index(ipr, name)
        if idx is not None:
            with contextlib.suppress(NetlinkError):
                await ipr.link("del", index=idx)


IFA_F_NODAD = 0x02
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def open_tap(name: str) -> int:
    """A new tap named `name`, as an open file descriptor for QEMU.

    Not persistent: the tap exists while a descriptor of it is open, so it
    goes when QEMU goes, whatever happens to hbd. With a virtio-net header,
    so that QEMU can offload checksums and segmentation."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        request = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as e:
        os.close(fd)
        raise NetError(f"cannot create tap {name}: {e.strerror}") from e
    return fd


async def plug_tap(name: str, bridge: str, mtu: int = 1500, namespace: str = "") -> None:
    """Make the tap a port of `bridge` (in `namespace`, where a spare tap in
    the host's is moved first: its open descriptors stay good), up."""
    if namespace:
        await _move_link(name, "", namespace)
    async with _ipr(namespace) as ipr:
        bridge_idx = await _index(ipr, bridge)
        idx = await _index(ipr, name)
        if bridge_idx is None:
            raise NetError(f"bridge {bridge} does not exist")
        if idx is None:
            raise NetError(f"tap {name} does not exist")
        await ipr.link("set", index=idx, master=bridge_idx, mtu=mtu, state="up")


async def unplug_tap(name: str, namespace: str = "") -> None:
    """Take the tap off its bridge, down, and back into the host's namespace
    (a spare NIC slot again: a spare tap is always there)."""
    async with _ipr(namespace) as ipr:
        idx = await _index(ipr, name)
        if idx is not None:
            with contextlib.suppress(NetlinkError):
                await ipr.link("set", index=idx, master=0, state="down")
    if namespace:
        with contextlib.suppress(NetError):
            await _move_link(name, namespace, "")


def _namespace_path(namespace: str) -> str:
    """What IFLA_NET_NS_FD is opened from: a named namespace, or hbd's own
    (its main thread never leaves the host's)."""
    return str(netns.NETNS_DIR / namespace) if namespace else f"/proc/{os.getpid()}/ns/net"


async def _move_link(name: str, source: str, target: str) -> None:
    """The link `name` moved from namespace `source` to `target` (no change
    when it is not in `source`)."""
    async with _ipr(source) as ipr:
        idx = await _index(ipr, name)
        if idx is None:
            return
        try:
            await ipr.link("set", index=idx, net_ns_fd=_namespace_path(target))
        except NetlinkError as e:
            raise NetError(f"cannot move {name} to namespace {target or 'of the host'}: "
                           f"{e}") from e


async def ensure_uplink(namespace: str, host_end: str, inner_end: str,
                        subnet: ipaddress.IPv4Network) -> None:
    """The namespace, with a veth pair to the host: `host_end` in the host's
    namespace with the subnet's first address, `inner_end` in `namespace` with
    its second and the default route through the first; the namespace
    forwards IPv4. (Made only where missing: after an hbd restart all of it
    is there already.)"""
    host_ip, inner_ip = list(subnet.hosts())[:2]
    await netns.ensure(namespace)
    async with AsyncIPRoute() as ipr:
        idx = await _index(ipr, host_end)
        if idx is None:
            try:
                await ipr.link("add", ifname=host_end, kind="veth",
                               peer={"ifname": inner_end,
                                     "net_ns_fd": _namespace_path(namespace)})
            except NetlinkError as e:
                raise NetError(f"cannot create uplink {host_end}: {e}") from e
            idx = await _index(ipr, host_end)
            assert idx is not None
        # Ports published on 127.0.0.1 leave by the uplink too (see ensure_bridge).
        await set_sysctls("", {f"ipv4/conf/{host_end}/route_localnet": "1",
                               f"ipv6/conf/{host_end}/disable_ipv6": "1"})
        await _own_address(ipr, idx, ipaddress.IPv4Interface(f"{host_ip}/{subnet.prefixlen}"))
        await ipr.link("set", index=idx, state="up")
    await set_sysctls(namespace, {"ipv4/ip_forward": "1",
                                  f"ipv6/conf/{inner_end}/disable_ipv6": "1"})
    async with _ipr(namespace) as ipr:
        for name in ("lo", inner_end):
            idx = await _index(ipr, name)
            if idx is None:
                raise NetError(f"{name} is missing in namespace {namespace}")
            if name == inner_end:
                await _own_address(ipr, idx,
                                   ipaddress.IPv4Interface(f"{inner_ip}/{subnet.prefixlen}"))
            await ipr.link("set", index=idx, state="up")
        try:
            await ipr.route("replace", dst="0.0.0.0/0", gateway=str(host_ip))
        except NetlinkError as e:
            raise NetError(f"cannot route namespace {namespace} to the host: {e}") from e


async def remove_uplink(namespace: str, host_end: str) -> None:
    """The uplink and the namespace gone, with every link in it."""
    await delete_link(host_end)
    await remove_namespace(namespace)


async def remove_namespace(namespace: str) -> None:
    """The namespace gone, with every link in it (and this process's
    nftables context there, whose socket would keep it alive)."""
    libnftables.forget_context(namespace)
    await netns.remove(namespace)


async def links_with_prefix(prefix: str) -> list[str]:
    async with AsyncIPRoute() as ipr:
        names = [str(link.get("ifname")) async for link in await ipr.get_links()]
    return [n for n in names if n.startswith(prefix)]


async def routed_networks() -> list[ipaddress.IPv4Network]:
    """Networks the host already routes (to pick subnets that do not collide)."""
    out = []
    async with AsyncIPRoute() as ipr:
        async for route in await ipr.get_routes(family=2, table=MAIN_TABLE):
            dst = route.get("dst")
            if dst and route["dst_len"] > 0:
                with contextlib.suppress(ValueError):
                    out.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
    return out


class RuleTable:
    """The daemon's nftables tables, kept in line with a Ruleset.

    The first change (and any after a failure) rebuilds the tables whole, in
    one transaction; later ones delete exactly the rules that went, by the
    handle the kernel gave them, and the set elements that went, and add the
    new ones, in one transaction too. So a crash or restart never leaves a
    stale rule behind, a container publishing a port changes two rules, not
    the table, and pinning a guest's port adds a few set elements."""

    def __init__(self, name: str, namespace: str = "") -> None:
        self.name = name
        self.namespace = namespace  # "" : the host's
        self.handles: dict[nftrules.Rule, int] | None = None  # None: rebuild next
        self.elements: set[nftrules.Element] = set()

    async def apply(self, ruleset: Ruleset) -> None:
        wanted = nftrules.rules(ruleset)
        wanted_elements = nftrules.elements(ruleset)
        if self.handles is not None:
            commands = nftrules.update_commands(self.name, self.handles, wanted) + \
                nftrules.element_commands(self.name, self.elements, wanted_elements)
            if not commands:
                return
            try:
                still = set(wanted)
                await self._run(commands, {r: h for r, h in self.handles.items()
                                           if r in still}, wanted_elements)
                return
            except NetError as e:
                # Someone changed the table under us: make it afresh.
                log.warning("nftables table %s: %s; rebuilding it", self.name, e)
        self.handles = None
        await self._run(nftrules.rebuild_commands(self.name, wanted, wanted_elements), {},
                        wanted_elements)

    async def _run(self, commands: list[nftrules.Command],
                   kept: dict[nftrules.Rule, int],
                   elements: set[nftrules.Element]) -> None:
        # Only added rules need their handles echoed (an echo makes
        # libnftables read the whole ruleset first).
        echo = any("rule" in c.get("add", {}) for c in commands)
        try:
            echoed = await netns.run_in(self.namespace, libnftables.run, commands, echo,
                                        self.namespace)
            added = nftrules.added_handles(commands, echoed)
        except (libnftables.NftError, ValueError) as e:
            raise NetError(f"nftables: {e}") from e
        self.handles = kept | added
        self.elements = elements

    async def remove(self) -> None:
        await remove_ruleset(self.name, self.namespace)
        self.handles = None
        self.elements = set()


async def remove_ruleset(table: str, namespace: str = "") -> None:
    """The daemon's tables gone (there or not)."""
    try:
        await netns.run_in(namespace, libnftables.run, nftrules.remove_commands(table),
                           False, namespace)
    except libnftables.NftError as e:
        raise NetError(f"nftables: {e}") from e


def open_rule_channel() -> None:
    """Open the channel to nftables now, while the daemon holds few
    descriptors (libnftables.open_context says why that matters). Should it
    fail, the first rule change says why."""
    try:
        libnftables.open_context()
    except libnftables.NftError as e:
        log.warning("nftables: %s", e)


def enable_forwarding() -> None:
    """Guests reach the outside through the host: IPv4 forwarding on.
    IPv6 is never forwarded: containers of a network reach each other on its
    bridge, and the host on its address. (route_localnet is set on hbd's
    bridges only: see ensure_bridge.)"""
    _sysctl("/proc/sys/net/ipv4/ip_forward", "1")


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        log.warning("cannot set %s: %s", path, e)


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        path = f"/proc/sys/net/{key}"
        # A bridge without IPv6 (ipv6.disable=1 on the host) has no conf of it.
        if os.path.exists(os.path.dirname(path)):
            _sysctl(path, value)


async def set_sysctls(namespace: str, values: dict[str, str]) -> None:
    """/proc/sys/net/KEY = value for each, in the namespace (its own sysctls)."""
    if not namespace:
        _write_sysctls(values)
        return
    await netns.run_in(namespace, _write_sysctls, values)
