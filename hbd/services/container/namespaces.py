"""`--network container:X`, `--pid container:X`, `--ipc container:X`: a
container that shares namespaces with another runs in that one's sandbox.
Checked at create as dockerd checks them; resolved at start."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hbd.errors import (
    Conflict,
    HbdError,
    InvalidParameter,
    NotFound,
    SystemError_,
    no_such_container,
)
from hbd.services.container.model import Container
from hbd.services.container.store import ContainerStore

CONTAINER_PREFIX = "container:"
VM_MESSAGE = "hbd runs each container in its own virtual machine: "


def peer_ref(mode: str) -> str:
    """X of `container:X`, or ""."""
    return mode[len(CONTAINER_PREFIX):] if mode.startswith(CONTAINER_PREFIX) else ""


def check_network_mode(request: dict[str, Any], hc: dict[str, Any]) -> None:
    """dockerd's validateNetContainerMode, on the request's own config (before
    the image's is merged in)."""
    mode = str(hc.get("NetworkMode") or "")
    if not mode.startswith(CONTAINER_PREFIX):
        return
    if not peer_ref(mode):
        raise InvalidParameter("Invalid network mode: invalid container format "
                               "container:<name|id>")
    if request.get("Hostname"):
        raise InvalidParameter("conflicting options: hostname and the network mode")
    if hc.get("Links"):
        raise InvalidParameter("conflicting options: container type network can't be used "
                               "with links. This would result in undefined behavior")
    if hc.get("Dns"):
        raise InvalidParameter("conflicting options: dns and the network mode")
    if hc.get("ExtraHosts"):
        raise InvalidParameter("conflicting options: custom host-to-IP mapping and the "
                               "network mode")
    if request.get("MacAddress"):
        raise InvalidParameter("conflicting options: mac-address and the network mode")
    if hc.get("PortBindings") or hc.get("PublishAllPorts"):
        raise InvalidParameter("conflicting options: port publishing and the container type "
                               "network mode")
    if request.get("ExposedPorts"):
        raise InvalidParameter("conflicting options: port exposing and the container type "
                               "network mode")


def resolve_pid_and_ipc_modes(hc: dict[str, Any], store: ContainerStore) -> None:
    """At create: X of `--pid/--ipc container:X` must exist (dockerd answers
    400 otherwise); both are kept with X's full ID, as dockerd keeps them."""
    pid = str(hc.get("PidMode") or "")
    if pid == "host":
        raise InvalidParameter(VM_MESSAGE + "the host's pid namespace (--pid host) is not "
                                            "available")
    if pid and not pid.startswith(CONTAINER_PREFIX):
        raise InvalidParameter(f"invalid PID mode: {pid}")
    if peer_ref(pid):
        hc["PidMode"] = CONTAINER_PREFIX + _existing(store, peer_ref(pid)).id
    ipc = str(hc.get("IpcMode") or "")
    if ipc == "host":
        raise InvalidParameter(VM_MESSAGE + "the host's ipc namespace (--ipc host) is not "
                                            "available")
    if ipc not in ("", "private", "shareable", "none") and not ipc.startswith(CONTAINER_PREFIX):
        raise InvalidParameter(f"invalid IPC mode: {ipc}")
    if peer_ref(ipc):
        hc["IpcMode"] = CONTAINER_PREFIX + _existing(store, peer_ref(ipc)).id


def _existing(store: ContainerStore, ref: str) -> Container:
    try:
        return store.get(ref)
    except NotFound as e:
        raise InvalidParameter(e.message) from None


def resolve_network_mode(hc: dict[str, Any], store: ContainerStore) -> None:
    """`container:X` is kept with X's full ID when X exists (a missing X fails
    at start, as in dockerd)."""
    ref = peer_ref(str(hc.get("NetworkMode") or ""))
    if ref:
        with contextlib.suppress(NotFound):
            hc["NetworkMode"] = CONTAINER_PREFIX + store.get(ref).id


@dataclass
class SharedNamespaces:
    """Whose namespaces a starting container joins (container ids, "" for its own)."""

    network: Container | None = None
    pid: Container | None = None
    ipc: Container | None = None

    @property
    def peers(self) -> list[Container]:
        return [c for c in (self.network, self.pid, self.ipc) if c is not None]


def shared_namespaces(c: Container, store: ContainerStore) -> SharedNamespaces:
    """At start: the containers whose namespaces `c` joins; each must be
    running (dockerd's words and statuses when one is not)."""
    hc = c.host_config
    out = SharedNamespaces(
        network=_running_peer(store, hc.get("NetworkMode"), lambda peer: Conflict(
            f"cannot join network of a non running container: {peer.id}")),
        pid=_running_peer(store, hc.get("PidMode"), lambda peer: SystemError_(
            f"container {peer.id} is not running")),
        ipc=_running_peer(store, hc.get("IpcMode"), lambda peer: SystemError_(
            f"container {peer.id} is not running")),
    )
    if out.ipc is not None and out.ipc.host_config.get("IpcMode") != "shareable":
        raise SystemError_(f"can't join IPC of container {out.ipc.id}: non-shareable IPC "
                           "(hint: use IpcMode:shareable for the donor container)")
    return out


def _running_peer(store: ContainerStore, mode: object,
                  not_running: Callable[[Container], HbdError]) -> Container | None:
    ref = peer_ref(str(mode or ""))
    if not ref:
        return None
    try:
        peer = store.get(ref)
    except NotFound:
        raise no_such_container(ref) from None
    if not peer.state.running:
        raise not_running(peer)
    return peer
