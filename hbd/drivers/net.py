"""Host networking for guests: Linux bridges and taps (pyroute2), NAT and
filtering rules (nftables). Knows nothing of Docker.

Every nftables rule a daemon owns lives in its own two tables, `ip` and
`bridge` of one name (nftrules.py says what they hold), written through
libnftables' JSON API (libnftables.py), one transaction per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import struct

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hbd.drivers import libnftables, nftrules
from hbd.drivers.nftrules import BridgeRules, PortForward, PortPin, Ruleset

__all__ = ["BridgeRules", "NetError", "PortForward", "PortPin", "RuleTable", "Ruleset"]

log = logging.getLogger(__name__)

MAIN_TABLE = 254


class NetError(Exception):
    pass


async def _index(ipr: AsyncIPRoute, name: str) -> int | None:
    found = await ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


async def ensure_bridge(name: str, gateway: ipaddress.IPv4Interface | None,
                        gateway6: ipaddress.IPv6Interface | None = None,
                        mtu: int = 1500) -> None:
    """A bridge named `name`, up, holding `gateway` and `gateway6` (and no
    other address of either family, link-local ones aside)."""
    async with AsyncIPRoute() as ipr:
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
        if os.path.exists(f"/proc/sys/net/ipv6/conf/{name}"):
            _sysctl(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "0")
        # A port published on 127.0.0.1 is DNATed to a guest by the host's own
        # output path: the packet leaves this bridge with a loopback source
        # (masqueraded later) and its replies come back to a loopback
        # address, both martians unless the bridge allows them. Here only, not
        # on conf/all (CVE-2020-8558); nftrules.guard_rules drops any 127/8
        # packet that really arrives from outside.
        _sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
        if gateway is not None:
            await _own_address(ipr, idx, gateway)
        if gateway6 is not None:
            _sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "0")
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


async def delete_link(name: str) -> None:
    async with AsyncIPRoute() as ipr:
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


async def plug_tap(name: str, bridge: str, mtu: int = 1500) -> None:
    """Make the tap a port of `bridge`, up."""
    async with AsyncIPRoute() as ipr:
        bridge_idx = await _index(ipr, bridge)
        idx = await _index(ipr, name)
        if bridge_idx is None:
            raise NetError(f"bridge {bridge} does not exist")
        if idx is None:
            raise NetError(f"tap {name} does not exist")
        await ipr.link("set", index=idx, master=bridge_idx, mtu=mtu, state="up")


async def unplug_tap(name: str) -> None:
    """Take the tap off its bridge, down (a spare NIC slot again)."""
    async with AsyncIPRoute() as ipr:
        idx = await _index(ipr, name)
        if idx is not None:
            with contextlib.suppress(NetlinkError):
                await ipr.link("set", index=idx, master=0, state="down")


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

    def __init__(self, name: str) -> None:
        self.name = name
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
            echoed = await asyncio.to_thread(libnftables.run, commands, echo)
            added = nftrules.added_handles(commands, echoed)
        except (libnftables.NftError, ValueError) as e:
            raise NetError(f"nftables: {e}") from e
        self.handles = kept | added
        self.elements = elements

    async def remove(self) -> None:
        await remove_ruleset(self.name)
        self.handles = None
        self.elements = set()


async def remove_ruleset(table: str) -> None:
    """The daemon's tables gone (there or not)."""
    try:
        await asyncio.to_thread(libnftables.run, nftrules.remove_commands(table))
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
