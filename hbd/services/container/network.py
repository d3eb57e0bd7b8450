"""A container's view of networking: which networks it joins, which ports it
publishes, its /etc/hosts and /etc/resolv.conf, and the NetworkSettings that
`inspect` shows. Translation between Docker's container config and the
network service."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from hbd.errors import InvalidParameter, NotFound
from hbd.services.container import config as cc
from hbd.services.network.ipam import parse_address
from hbd.services.network.model import (
    DEFAULT_BRIDGE,
    Endpoint,
    PublishedPort,
    RunNetworking,
    default_bridge_in,
    is_default_bridge,
)
from hbd.services.network.service import NetworkService

_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$")


MAC_DEPRECATED = ("The container-wide MacAddress field is now deprecated. It should be "
                  "specified in EndpointsConfig instead.")


def endpoints_config(networking: Any) -> dict[str, dict[str, Any]]:
    """NetworkingConfig.EndpointsConfig, checked and copied, `default` as `bridge`."""
    if networking is not None and not isinstance(networking, dict):
        raise InvalidParameter("invalid NetworkingConfig: must be an object")
    raw = (networking or {}).get("EndpointsConfig") or {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict | None) for v in raw.values()):
        raise InvalidParameter("invalid EndpointsConfig: must map networks to objects")
    return {DEFAULT_BRIDGE if name == "default" else name: dict(settings or {})
            for name, settings in raw.items()}


def migrate_mac_address(config: dict[str, Any], host_config: dict[str, Any],
                        endpoints: dict[str, dict[str, Any]], api_version: str) -> list[str]:
    """dockerd's handleMACAddressBC: the container-wide Config.MacAddress is
    the MAC of the endpoint on the NetworkMode network; API 1.44 moved it to
    EndpointSettings.MacAddress. Updates `endpoints` (and `config`), returns
    the warnings for the client."""
    mac = str(config.get("MacAddress") or "")
    mode = str(host_config.get("NetworkMode") or "default")
    network = DEFAULT_BRIDGE if mode == "default" else mode
    on_network = mode not in ("host", "none") and not mode.startswith("container:")
    if cc.api_older_than(api_version, (1, 44)):
        for settings in endpoints.values():
            settings["MacAddress"] = mac  # what an older API gave per endpoint was ignored
        if mac and not on_network:
            raise InvalidParameter("conflicting options: mac-address and the network mode")
        if mac and not endpoints:
            endpoints[network] = {"MacAddress": mac}
        return []
    if not mac:
        return []
    if on_network:
        if endpoints and network not in endpoints:
            raise InvalidParameter("if a container-wide MAC address is supplied, "
                                   "HostConfig.NetworkMode must match the identity of a "
                                   "network in NetworkSettings.Networks")
        settings = endpoints.setdefault(network, {})
        if settings.get("MacAddress") and settings["MacAddress"] != mac:
            raise InvalidParameter("the container-wide MAC address must match the "
                                   "endpoint-specific MAC address for the main network, or "
                                   "be left empty")
        settings["MacAddress"] = mac
    del config["MacAddress"]
    return [MAC_DEPRECATED]


def desired_mac(host_config: dict[str, Any], attachments: dict[str, dict[str, Any]]) -> str:
    """The MAC configured for the NetworkMode network: inspect's Config.MacAddress."""
    mode = str(host_config.get("NetworkMode") or "default")
    settings = attachments.get(DEFAULT_BRIDGE if mode == "default" else mode) or {}
    return str(settings.get("MacAddress") or "")


def attachments_for_create(host_config: dict[str, Any], endpoints: dict[str, dict[str, Any]],
                           networks: NetworkService) -> dict[str, dict[str, Any]]:
    """The networks a new container joins, each with its EndpointSettings
    (`endpoints`: the request's, from endpoints_config)."""
    mode = host_config.get("NetworkMode") or "default"
    if mode == "default":
        mode = DEFAULT_BRIDGE
    if mode == "host":
        raise InvalidParameter("hbd runs each container in its own virtual machine: host "
                               "networking (--network host) is not available")
    if mode.startswith("container:"):
        return {}  # it lives in the other container's network namespace
    if mode == "none":
        if any(name != "none" for name in endpoints):
            raise InvalidParameter("container cannot be disconnected from host network or "
                                   "connected to host network")
        return {}
    ordered = [mode, *[name for name in endpoints if name != mode]]
    out: dict[str, dict[str, Any]] = {}
    for ref in ordered:
        try:
            n = networks.get(ref)
        except NotFound:
            raise NotFound(f"network {ref} not found") from None
        if n.driver != "bridge":
            raise InvalidParameter(f"container cannot be connected to network {n.name} "
                                   f"together with others")
        settings = dict(endpoints.get(ref) or endpoints.get(n.name) or {})
        aliases = settings.get("Aliases") or []
        if aliases and is_default_bridge(n.name):
            raise InvalidParameter("network-scoped alias is supported only for containers "
                                   "in user defined networks")
        _check_ipam_config(settings, n.name)
        out[n.name] = settings
    return out


def _check_ipam_config(settings: dict[str, Any], network: str) -> None:
    """The static addresses of EndpointSettings.IPAMConfig, as dockerd checks
    them at create (link-local ones are checked at start, as in dockerd)."""
    ipam = settings.get("IPAMConfig") or {}
    if not isinstance(ipam, dict):
        raise InvalidParameter("invalid IPAMConfig: must be an object")
    wanted = {4: str(ipam.get("IPv4Address") or ""), 6: str(ipam.get("IPv6Address") or "")}
    if any(wanted.values()) and is_default_bridge(network):
        raise InvalidParameter("user specified IP address is supported on user defined "
                               "networks only")
    for version, address in wanted.items():
        if address:
            parse_address(address, version)


def parse_port(spec: str) -> tuple[int, int, str]:
    m = _PORT.match(spec)
    if not m:
        raise InvalidParameter(f"invalid port specification: \"{spec}\"")
    start = int(m.group(1))
    end = int(m.group(2) or start)
    if not (0 < start <= end <= 65535):
        raise InvalidParameter(f"invalid port specification: \"{spec}\"")
    return start, end, m.group(3) or "tcp"


def published_ports(config: dict[str, Any], host_config: dict[str, Any]) -> list[PublishedPort]:
    """PortBindings, plus every ExposedPort on an ephemeral port with PublishAllPorts."""
    out: list[PublishedPort] = []
    bindings = host_config.get("PortBindings") or {}
    for spec, binds in bindings.items():
        start, end, proto = parse_port(spec)
        if proto == "sctp":
            raise InvalidParameter("hbd does not publish sctp ports")
        for bind in binds or [{}]:
            host_ip = (bind or {}).get("HostIp") or ""
            raw = (bind or {}).get("HostPort") or ""
            if raw:
                h_start, h_end, _ = parse_port(raw)
            else:
                h_start = h_end = 0
            for offset, port in enumerate(range(start, end + 1)):
                host_port = h_start + offset if h_start and h_end >= h_start + offset else 0
                out.append(PublishedPort(port, proto, host_ip, host_port))
    if host_config.get("PublishAllPorts"):
        for spec in config.get("ExposedPorts") or {}:
            start, end, proto = parse_port(spec)
            for port in range(start, end + 1):
                if not any(p.container_port == port and p.protocol == proto for p in out):
                    out.append(PublishedPort(port, proto, "", 0))
    return out


def hosts_file(hostname: str, run: RunNetworking | None, extra_hosts: list[str],
               link_lines: list[str]) -> bytes:
    """Extra hosts, then legacy links' lines, then the container's own, as
    dockerd orders them."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes",
             "ff02::2\tip6-allrouters"]
    for entry in extra_hosts:
        name, sep, address = entry.partition(":")
        if not sep or not name:
            raise InvalidParameter(f"invalid IP address in add-host: \"{address}\"")
        lines.append(f"{address}\t{name}")
    lines += link_lines
    # dockerd writes the container's addresses (IPv4, then IPv6) on each of its networks.
    for endpoint in (run.endpoints.values() if run is not None else []):
        lines += [f"{address}\t{hostname}" for address in endpoint.addresses]
    return ("\n".join(lines) + "\n").encode()


def resolv_conf(run: RunNetworking | None, host_config: dict[str, Any],
                host_resolv: list[str]) -> bytes:
    """hbd's DNS on the network gateway, or --dns servers, plus search/options."""
    servers = list(host_config.get("Dns") or [])
    if not servers and run is not None and run.nameserver:
        servers = [run.nameserver]
    if not servers:
        servers = host_resolv
    lines = [f"nameserver {s}" for s in servers]
    if host_config.get("DnsSearch"):
        lines.append("search " + " ".join(host_config["DnsSearch"]))
    if host_config.get("DnsOptions"):
        lines.append("options " + " ".join(host_config["DnsOptions"]))
    return ("\n".join(lines) + "\n").encode()


def ports_view(config: dict[str, Any], run: RunNetworking | None) -> dict[str, Any]:
    """NetworkSettings.Ports: exposed ports, with their host bindings while running."""
    view: dict[str, Any] = {}
    for spec in config.get("ExposedPorts") or {}:
        view[spec] = None
    if run is not None:
        for p in run.ports:
            key = f"{p.container_port}/{p.protocol}"
            entries = view.get(key) or []
            entries.append({"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
            view[key] = entries
    return view


def network_settings(networks: NetworkService, attachments: dict[str, dict[str, Any]],
                     config: dict[str, Any], run: RunNetworking | None) -> dict[str, Any]:
    per_network: dict[str, Any] = {}
    for name, settings in attachments.items():
        try:
            n = networks.get(name)
        except NotFound:
            continue
        endpoint = run.endpoints.get(name) if run is not None else None
        per_network[name] = networks.endpoint_view(n, settings, endpoint)
    bridge_name = default_bridge_in(run.endpoints) if run is not None else None
    bridge = run.endpoints.get(bridge_name) if run is not None and bridge_name else None
    return {
        "Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0, "Ports": ports_view(config, run), "SandboxKey": "",
        "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
        "EndpointID": bridge.endpoint_id if bridge else "",
        "Gateway": bridge.gateway if bridge else "",
        "GlobalIPv6Address": bridge.ip6 if bridge else "",
        "GlobalIPv6PrefixLen": bridge.prefix6 if bridge else 0,
        "IPAddress": bridge.ip if bridge else "",
        "IPPrefixLen": bridge.prefix if bridge else 0,
        "IPv6Gateway": bridge.gateway6 if bridge else "",
        "MacAddress": bridge.mac if bridge else "",
        "Networks": per_network,
    }


def summary_ports(run: RunNetworking | None, config: dict[str, Any]) -> list[dict[str, Any]]:
    """`docker ps` PORTS: published bindings, and exposed ports without one."""
    out: list[dict[str, Any]] = []
    published = set()
    if run is not None:
        for p in run.ports:
            published.add((p.container_port, p.protocol))
            out.append({"IP": p.host_ip or "0.0.0.0", "PrivatePort": p.container_port,
                        "PublicPort": p.host_port, "Type": p.protocol})
    for spec in config.get("ExposedPorts") or {}:
        start, end, proto = parse_port(spec)
        for port in range(start, end + 1):
            if (port, proto) not in published:
                out.append({"PrivatePort": port, "Type": proto})
    return out


def run_record(run: RunNetworking) -> dict[str, Any]:
    return {"endpoints": {k: asdict(v) for k, v in run.endpoints.items()},
            "ports": [asdict(p) for p in run.ports], "nameserver": run.nameserver}


def run_from_record(rec: dict[str, Any]) -> RunNetworking:
    return RunNetworking(
        nameserver=rec.get("nameserver", ""),
        endpoints={k: Endpoint.from_record(v) for k, v in rec.get("endpoints", {}).items()},
        ports=[PublishedPort(**p) for p in rec.get("ports", [])],
    )
