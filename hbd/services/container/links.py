"""Legacy links (`--link name:alias`), as dockerd keeps them on the default
bridge: registered at create (the child must exist), checked at start (the
child must run, on the default bridge), and giving the parent /etc/hosts
lines and environment variables for each child (daemon/links, registerLinks,
setupLinkedContainers).

On a user-defined network a link is only a name: the alias resolves, by DNS
and for the linking container alone, to the container it names. That lives
in the endpoint (EndpointSettings.Links, network/service.py); dockerd does
not register such links, nor check them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hbd.errors import InvalidParameter, NotFound, SystemError_
from hbd.services.container.model import Container, Link
from hbd.services.container.namespaces import peer_ref
from hbd.services.container.network import parse_port
from hbd.services.container.store import ContainerStore
from hbd.services.network.model import (
    Endpoint,
    default_bridge_in,
    is_default_bridge,
    parse_link,
)

# Network modes that are no user-defined network: dockerd registers links for these.
_PREDEFINED_MODES = ("", "default", "bridge", "host", "none")


def register(host_config: dict[str, Any], store: ContainerStore) -> list[Link]:
    """HostConfig.Links of a container being created, each child found (a
    child sharing another's network namespace stands for that one)."""
    mode = str(host_config.get("NetworkMode") or "")
    if mode not in _PREDEFINED_MODES and not is_default_bridge(mode) and not peer_ref(mode):
        return []
    links: dict[str, Link] = {}
    for text in host_config.get("Links") or []:
        name, alias = parse_link(str(text))
        child = _find(store, name)
        while peer_ref(str(child.host_config.get("NetworkMode") or "")):
            child = _find(store, peer_ref(str(child.host_config["NetworkMode"])))
        links[alias] = Link(child.id, alias, child.name)
    return list(links.values())


def _find(store: ContainerStore, ref: str) -> Container:
    try:
        return store.get(ref)
    except NotFound as e:
        # 400, not 404: the CLI would say the image was not found (moby#39823).
        raise InvalidParameter(f"could not get container for {ref}: {e.message}") from None


def check_children(c: Container, store: ContainerStore) -> None:
    """At start, on the default bridge: every child is on it too, and runs."""
    if default_bridge_in(c.networks) is None:
        return
    for link in c.links:
        child = store.containers.get(link.child_id)
        if child is not None and default_bridge_in(child.networks) is None:
            raise SystemError_(f"Cannot link to {child.name}, as it does not belong to the "
                               "default network")
    for link in c.links:
        if _bridge_endpoint(store, link) is None:
            child = store.containers.get(link.child_id)
            name = child.name if child is not None else link.child_name
            raise SystemError_(f"Cannot link to a non running container: {name} AS "
                               f"{c.name}/{link.alias}")


def _running_children(c: Container, store: ContainerStore
                      ) -> Iterable[tuple[Link, Container, Endpoint]]:
    """The children that run on the default bridge, with their endpoint there."""
    if default_bridge_in(c.networks) is None:
        return
    for link in c.links:
        endpoint = _bridge_endpoint(store, link)
        if endpoint is not None:
            yield link, store.containers[link.child_id], endpoint


def _bridge_endpoint(store: ContainerStore, link: Link) -> Endpoint | None:
    child = store.containers.get(link.child_id)
    if child is None or not child.state.running or child.run_network is None:
        return None
    bridge = default_bridge_in(child.run_network.endpoints)
    return child.run_network.endpoints.get(bridge) if bridge is not None else None


def hosts_lines(c: Container, store: ContainerStore) -> list[str]:
    """/etc/hosts lines of the parent: each child by alias, hostname and name."""
    lines = []
    for link, child, endpoint in _running_children(c, store):
        names = f"{link.alias} {child.hostname}"
        if link.alias != child.own_name:
            names += f" {child.own_name}"
        lines += [f"{address}\t{names}" for address in endpoint.addresses]
    return lines


def environment(c: Container, store: ContainerStore) -> list[str]:
    """ALIAS_NAME, ALIAS_PORT_…, ALIAS_ENV_… for each running child."""
    out = []
    for link, child, endpoint in _running_children(c, store):
        out += link_env(endpoint.ip, f"/{c.own_name}/{link.alias}", child.config.get("Env") or [],
                        child.config.get("ExposedPorts") or {})
    return out


def remove(ref: str, store: ContainerStore) -> Container:
    """`docker rm --link /parent/alias`: the parent forgets that link (dockerd's
    rmLink). Returns the parent, to be saved; its running guest keeps the
    /etc/hosts lines it has, as a running container keeps them in dockerd."""
    name = ref if ref.startswith("/") else "/" + ref
    parent_name, _, alias = name.rpartition("/")
    parent = store.containers.get(store.names.get(parent_name, "")) if parent_name else None
    link = next((li for li in parent.links if li.alias == alias), None) if parent else None
    if parent is None or link is None:
        if not parent_name and name in store.names:
            raise SystemError_("Conflict, cannot remove the default link name of the container")
        raise NotFound(f"No such container: {ref}")
    parent.links.remove(link)
    return parent


def parents(child: Container, store: ContainerStore) -> list[Container]:
    """The running containers that link to `child`."""
    return [c for c in store.containers.values()
            if c.state.running and any(link.child_id == child.id for link in c.links)]


def view(c: Container, store: ContainerStore) -> list[str] | None:
    """HostConfig.Links as inspect shows them: `/child:/parent/alias`."""
    out = []
    for link in c.links:
        child = store.containers.get(link.child_id)
        out.append(f"{child.name if child else link.child_name}:{c.name}/{link.alias}")
    return out or None


def link_env(child_ip: str, name: str, env: list[str], exposed: Iterable[str]) -> list[str]:
    """dockerd's Link.ToEnv: `name` is /parent/alias."""
    alias = name.rsplit("/", 1)[-1].upper().replace("-", "_")
    ports = _sorted_ports(exposed)
    out = []
    if ports:
        out.append(f"{alias}_PORT={ports[0][1]}://{child_ip}:{ports[0][0]}")
    out += _range_env(alias, child_ip, ports)
    for number, proto in ports:
        key = f"{alias}_PORT_{number}_{proto.upper()}"
        out += [f"{key}={proto}://{child_ip}:{number}", f"{key}_ADDR={child_ip}",
                f"{key}_PORT={number}", f"{key}_PROTO={proto}"]
    out.append(f"{alias}_NAME={name}")
    for entry in env:
        key, sep, value = entry.partition("=")
        # What a build sets is not the child's to tell.
        if sep and key not in ("HOME", "PATH"):
            out.append(f"{alias}_ENV_{key}={value}")
    # A range's first port is listed twice; a process sees it once (Go's exec dedups).
    return list(dict.fromkeys(out))


def _sorted_ports(exposed: Iterable[str]) -> list[tuple[int, str]]:
    """By number, tcp before another protocol on the same number."""
    ports = []
    for spec in exposed:
        start, end, proto = parse_port(spec)
        ports += [(number, proto) for number in range(start, end + 1)]
    return sorted(ports, key=lambda p: (p[0], p[1] != "tcp"))


def _range_env(alias: str, ip: str, ports: list[tuple[int, str]]) -> list[str]:
    """_START/_END variables for each run of consecutive port numbers."""
    out = []
    i = 0
    while i < len(ports):
        j = _last_contiguous(ports, i)
        if j <= i + 1:
            i += 1
            continue
        number, proto = ports[i]
        end, end_proto = ports[j]
        key = f"{alias}_PORT_{number}_{proto.upper()}"
        end_key = f"{alias}_PORT_{number}_{end_proto.upper()}"
        out += [f"{key}_START={proto}://{ip}:{number}", f"{key}_ADDR={ip}",
                f"{key}_PROTO={proto}", f"{key}_PORT_START={number}",
                f"{end_key}_END={end_proto}://{ip}:{end}", f"{end_key}_PORT_END={end}"]
        i = j + 1
    return out


def _last_contiguous(ports: list[tuple[int, str]], index: int) -> int:
    """dockerd's nextContiguous: where the run of numbers from `index` ends."""
    value = ports[index][0]
    for i in range(index + 1, len(ports)):
        if ports[i][0] > value + 1:
            return i - 1
        value += 1
    return len(ports) - 1
