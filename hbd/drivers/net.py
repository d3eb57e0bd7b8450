"""Host networking for guests: Linux bridges and taps (pyroute2), NAT and
filtering rules (nftables). Knows nothing of Docker.

Every nftables rule a daemon owns lives in one table of its own, which is rebuilt
whole from the caller's description on each change (`nft -f`, atomic), so a
crash or restart can never leave a stale rule behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import struct
from dataclasses import dataclass, field

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

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


@dataclass
class PortForward:
    protocol: str  # tcp | udp
    host_ip: str  # "" or "0.0.0.0" = every address
    host_port: int
    guest_ip: str
    guest_port: int


@dataclass
class BridgeRules:
    name: str
    subnet: str
    internal: bool = False


@dataclass
class Ruleset:
    bridges: list[BridgeRules] = field(default_factory=list)
    forwards: list[PortForward] = field(default_factory=list)

    def render(self, table: str) -> str:
        """The whole `ip <table>` table.

        - masquerade what leaves a (non-internal) bridge for elsewhere;
        - drop traffic between two different hbd bridges (networks are isolated);
        - DNAT published ports, from outside and from the host itself
          (127.0.0.1 needs route_localnet on the loopback interface).
        """
        lines = [f"table ip {table} {{"]
        lines.append("  chain postrouting { type nat hook postrouting priority srcnat; "
                     "policy accept;")
        for b in self.bridges:
            if not b.internal:
                lines.append(f'    ip saddr {b.subnet} oifname != "{b.name}" masquerade')
        # Published ports reached over 127.0.0.1 arrive with a loopback source
        # the guest cannot answer: give them the bridge address instead.
        for b in self.bridges:
            lines.append(f'    ip saddr 127.0.0.0/8 oifname "{b.name}" masquerade')
        lines.append("  }")
        lines.append("  chain forward { type filter hook forward priority filter; "
                     "policy accept;")
        names = [b.name for b in self.bridges]
        for b in self.bridges:
            others = [n for n in names if n != b.name]
            if others:
                quoted = ", ".join(f'"{n}"' for n in others)
                lines.append(f'    iifname "{b.name}" oifname {{ {quoted} }} drop')
            if b.internal:
                lines.append(f'    iifname "{b.name}" oifname != "{b.name}" drop')
                lines.append(f'    oifname "{b.name}" iifname != "{b.name}" drop')
        lines.append("  }")
        for chain, hook in (("prerouting", "prerouting"), ("output", "output")):
            lines.append(f"  chain {chain} {{ type nat hook {hook} priority -100; "
                         "policy accept;")
            for f in self.forwards:
                match = "fib daddr type local" if f.host_ip in ("", "0.0.0.0") else \
                    f"ip daddr {f.host_ip}"
                lines.append(f"    {match} {f.protocol} dport {f.host_port} "
                             f"dnat to {f.guest_ip}:{f.guest_port}")
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"


async def apply_ruleset(table: str, ruleset: Ruleset) -> None:
    script = f"table ip {table}\ndelete table ip {table}\n" + ruleset.render(table)
    proc = await asyncio.create_subprocess_exec(
        "nft", "-f", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        raise NetError(f"nft failed: {err.decode(errors='replace').strip()}\n{script}")


async def remove_ruleset(table: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "nft", "delete", "table", "ip", table, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    await proc.wait()


def enable_forwarding() -> None:
    """Guests reach the outside through the host: IPv4 forwarding on, and
    DNAT of 127.0.0.1 allowed (route_localnet) for ports published on loopback.
    IPv6 is never forwarded: containers of a network reach each other on its
    bridge, and the host on its address."""
    for path in ("/proc/sys/net/ipv4/ip_forward",
                 "/proc/sys/net/ipv4/conf/all/route_localnet"):
        _sysctl(path, "1")


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        log.warning("cannot set %s: %s", path, e)
