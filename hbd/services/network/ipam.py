"""IPAM: a network's subnets (at most one IPv4 and one IPv6, as dockerd's
bridge driver) and the addresses of its endpoints, with dockerd's checks and
messages; and the other per-endpoint settings checked when an endpoint is
made (MAC address, link-local addresses)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from hbd.errors import Forbidden, InvalidParameter, NotFound, SystemError_

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NO_IPV6_POOL = ("could not find an available, non-overlapping IPv6 address pool among the "
                "defaults to assign to the network")
ALREADY_IN_USE = "Address already in use"
# What dockerd gives link-local addresses (--link-local-ip) on the interface.
LINK_LOCAL_PREFIX = {4: 16, 6: 64}

# Go's net.ParseMAC, for 6-byte addresses: 01:23:45:67:89:ab, 01-23-45-67-89-ab,
# 0123.4567.89ab.
_MAC_FORMS = (re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"),
              re.compile(r"^[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}$"),
              re.compile(r"^[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){2}$"))


@dataclass
class Pool:
    """One family's IPAM config of a network, checked."""

    subnet: IPNetwork
    gateway: str = ""    # as configured ("" when not given)
    ip_range: str = ""


def family_configs(configs: list[Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The IPv4 and the IPv6 entry of IPAM.Config (the IPv4 one may be empty:
    the subnet then comes from the default pools)."""
    v4: list[dict[str, Any]] = []
    v6: list[dict[str, Any]] = []
    for config in configs:
        if not isinstance(config, dict):
            raise InvalidParameter("invalid IPAM config: must be an object")
        family_of = config.get("Subnet") or config.get("Gateway") or config.get("IPRange")
        (v6 if ":" in str(family_of or "") else v4).append(config)
    if len(v4) > 1 or len(v6) > 1:
        raise Forbidden("bridge driver doesn't support multiple subnets")
    return (v4[0] if v4 else {}), (v6[0] if v6 else None)


def parse_subnet(raw: str, version: int) -> IPNetwork:
    try:
        subnet = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise InvalidParameter(f"invalid subnet {raw}") from None
    if subnet.version != version:
        raise InvalidParameter(f"invalid subnet {raw}")
    if ipaddress.ip_interface(raw).ip != subnet.network_address:
        raise InvalidParameter(f"invalid subnet {raw}: it should be {subnet}")
    if subnet.num_addresses < 4:
        raise InvalidParameter(f"subnet {subnet} is too small")
    return subnet


def check_pool(subnet: IPNetwork, config: dict[str, Any]) -> Pool:
    """The gateway and ip-range of `config`, on `subnet`."""
    raw_gateway = str(config.get("Gateway") or "")
    if raw_gateway:
        try:
            gateway = ipaddress.ip_address(raw_gateway)
        except ValueError:
            raise InvalidParameter(f"invalid gateway {raw_gateway}") from None
        if gateway not in subnet:
            raise Forbidden(f"no matching subnet for gateway {raw_gateway}")
        if gateway == subnet.network_address:
            raise SystemError_(f"failed to allocate gateway ({raw_gateway}): "
                               f"{ALREADY_IN_USE}")
    ip_range = str(config.get("IPRange") or "")
    if ip_range:
        try:
            rng = ipaddress.ip_network(ip_range, strict=False)
        except ValueError:
            raise InvalidParameter(f"invalid ip-range {ip_range}") from None
        if rng.version != subnet.version or not rng.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidParameter(f"ip-range {ip_range} is not within subnet {subnet}")
    return Pool(subnet, raw_gateway, ip_range)


def auxiliary_addresses(subnet: IPNetwork, gateway: str, config: dict[str, Any],
                        network: str) -> dict[str, str]:
    """IPAM.Config[].AuxiliaryAddresses: addresses of the subnet that no
    container gets (hosts the network already has), checked as dockerd does."""
    aux = config.get("AuxiliaryAddresses") or {}
    if not isinstance(aux, dict):
        raise InvalidParameter("invalid IPAM config: AuxiliaryAddresses must be an object")
    out: dict[str, str] = {}
    for key, raw in aux.items():
        try:
            address = ipaddress.ip_address(str(raw))
        except ValueError:
            raise SystemError_(f"non parsable secondary ip address ({key}:{raw}) passed for "
                               f"network {network}") from None
        if address not in subnet:
            raise Forbidden(f"auxiliary address: ({key}:{raw}) must belong to the master "
                            f"pool: {subnet}")
        if str(address) == gateway or str(address) in out.values():
            raise SystemError_(f"failed to allocate secondary ip address ({key}:{raw}): "
                               f"{ALREADY_IN_USE}")
        out[str(key)] = str(address)
    return out


def first_host(subnet: IPNetwork) -> str:
    """The default gateway: the subnet's first address after its own."""
    return str(subnet.network_address + 1)


def _candidates(subnet: IPNetwork, ip_range: str) -> Iterator[IPAddress]:
    """Addresses in allocation order. IPv4 never hands out the range's own and
    broadcast addresses (hosts()); IPv6 starts at the range's first address,
    as dockerd's IPAM does (`--ip-range 2001:db8::100/120` gives ::100 first)."""
    pool = ipaddress.ip_network(ip_range) if ip_range else subnet
    if pool.version == 4:
        yield from pool.hosts()
        return
    for address in pool:  # lazily: a /64 is never walked through
        if address != subnet.network_address:
            yield address


def lease(subnet: IPNetwork, ip_range: str, gateway: str, leases: dict[str, str],
          wanted: str, reserved: Collection[str] = ()) -> str:
    """An address for a new endpoint (not yet recorded in `leases`): `wanted`
    if given, else the first free one; never a `reserved` (auxiliary) one."""
    if wanted:
        address = parse_address(wanted, subnet.version)
        if address not in subnet:
            raise InvalidParameter(f"Invalid address {wanted}: It does not belong to any of "
                                   "this network's subnets")
        text = str(address)
        if text in leases or text in reserved or text == gateway or \
                address == subnet.network_address:
            raise Forbidden(ALREADY_IN_USE)
        return text
    for address in _candidates(subnet, ip_range):
        text = str(address)
        if text != gateway and text not in leases and text not in reserved:
            return text
    family = "IPv4" if subnet.version == 4 else "IPv6"
    raise SystemError_(f"no available {family} addresses on this network's address pools")


def parse_address(raw: str, version: int) -> IPAddress:
    """IPAMConfig.IPv4Address / IPv6Address, as dockerd checks them at create."""
    family = "IPv4" if version == 4 else "IPv6"
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        raise InvalidParameter(f"invalid {family} address: {raw}") from None
    if address.version != version or address.is_unspecified:
        raise InvalidParameter(f"invalid {family} address: {raw}")
    return address


def link_local_cidrs(raw: list[Any]) -> list[str]:
    """IPAMConfig.LinkLocalIPs as addresses for the interface (dockerd checks
    them when the endpoint is made, with these messages)."""
    out = []
    for entry in raw:
        try:
            address = ipaddress.ip_address(str(entry))
        except ValueError:
            listed = " ".join(str(e) for e in raw)
            raise SystemError_(f"Invalid link-local IP address: [{listed}]") from None
        if not address.is_link_local:
            raise SystemError_(f"invalid link local IP address: {address}")
        out.append(f"{address}/{LINK_LOCAL_PREFIX[address.version]}")
    return out


def parse_mac(raw: str, ifname: str) -> str:
    """A MAC address given by the user, as the interface gets it (lower case,
    colons); dockerd's errors for one it cannot use."""
    if not any(form.match(raw) for form in _MAC_FORMS):
        raise SystemError_(f"address {raw}: invalid MAC address")
    digits = re.sub(r"[^0-9a-f]", "", raw.lower())
    mac = ":".join(digits[i:i + 2] for i in range(0, 12, 2))
    if int(digits[:2], 16) & 1:
        # A group address: the kernel refuses it for an interface.
        raise SystemError_(f"error setting interface \"{ifname}\" MAC to \"{mac}\": cannot "
                           "assign requested address")
    return mac


def require_ipv6_pool(enable_ipv6: bool, v6: dict[str, Any] | None) -> None:
    """dockerd has no default IPv6 pools: an IPv6 network needs its subnet."""
    if enable_ipv6 and not (v6 and v6.get("Subnet")):
        raise NotFound(NO_IPV6_POOL)
