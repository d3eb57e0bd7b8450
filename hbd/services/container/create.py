"""Creating containers (config from the request merged with the image's,
name, networks, mounts, scratch disk) and renaming them."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from hbd.errors import Conflict, HbdError, InvalidParameter, NotFound, no_such_image
from hbd.services.container import config as cc
from hbd.services.container import hostconfig, links, tenancy
from hbd.services.container import namespaces as ns
from hbd.services.container import network as cn
from hbd.services.container.model import Container
from hbd.services.container.mounts import MountPoint, resolve_mounts
from hbd.services.container.scratch import ScratchDisks
from hbd.services.container.store import ContainerStore
from hbd.services.image.reference import parse_reference
from hbd.services.image.store import ImageStore
from hbd.services.network.service import NetworkService
from hbd.services.quota import QuotaGuard
from hbd.services.scope import OPERATOR, Scope
from hbd.services.timefmt import rfc3339_nano
from hbd.services.volume.service import VolumeService


@dataclass
class Creator:
    store: ContainerStore
    images: ImageStore
    networks: NetworkService
    volumes: VolumeService
    scratch: ScratchDisks
    quota: QuotaGuard = field(default_factory=QuotaGuard)
    publish: tenancy.PublishPolicy = field(default_factory=tenancy.PublishPolicy)

    async def create(self, name: str | None, body: dict[str, Any],
                     api_version: str = "", scope: Scope = OPERATOR,
                     groups_strict: bool = False) -> dict[str, Any]:
        """`api_version`: the client's ("" for the latest), for what older
        API versions meant by a field; `scope`: the asker, whose container it
        is and whose objects it may name; `groups_strict`: no supplementary
        groups from the image's /etc/group (the CRI's, not in a body)."""
        if not isinstance(body, dict):
            raise InvalidParameter("invalid JSON: container config must be an object")
        config = cc.normalize_config(body)
        requested = cc.host_config_of(body)
        if isinstance(requested, dict):  # policy first: 403 before any 400 of a field
            tenancy.check_policy(requested, scope)
        host_config = cc.normalize_host_config(requested)
        self.publish.check(cn.published_ports(config, host_config), scope)
        ns.check_network_mode(body, host_config)
        endpoints = tenancy.qualify_references(
            host_config, cn.endpoints_config(body.get("NetworkingConfig")), scope)
        ns.resolve_pid_and_ipc_modes(host_config, self.store)
        ns.resolve_network_mode(host_config, self.store)
        if not config["Image"]:
            raise InvalidParameter("No image was specified")
        self.quota.check_container(scope, host_config,
                                   (c.host_config for c in self.store.visible(scope)))
        try:
            img = self.images.get(config["Image"], scope)
        except NotFound:
            raise no_such_image(_familiar_or_raw(config["Image"])) from None
        if name:
            name = scope.qualify(cc.validate_name(name))
            self._check_name_free(name, scope)
        else:
            name = scope.qualify("/" + cc.generate_name(
                {scope.shown(n).lstrip("/") for n in self.store.names if scope.sees(n)}))
        cc.merge_image_config(config, img.container_config)
        args = cc.command_of(config)
        warnings = cn.migrate_mac_address(config, host_config, endpoints, api_version)
        await self.networks.ensure_default_bridge(scope)
        attachments = cn.attachments_for_create(host_config, endpoints, self.networks)
        cn.published_ports(config, host_config)  # reject bad port specs now, not at start
        legacy_links = links.register(host_config, self.store)
        volumes_from = [self._volumes_from(spec) for spec in
                        host_config.get("VolumesFrom") or []]
        mounts = await resolve_mounts(config, host_config, self.volumes, volumes_from, scope)
        await self._resolve_image_mounts(mounts, api_version, scope)
        cid = secrets.token_hex(32)
        if not config["Hostname"]:
            config["Hostname"] = cid[:12]
        c = Container(
            id=cid, name=name, created=rfc3339_nano(), image_id=img.id, config=config,
            host_config=host_config, path=args[0], args=args[1:], networks=attachments,
            mounts=mounts, links=legacy_links, groups_strict=groups_strict,
        )
        directory = self.store.dir(c)
        directory.mkdir(parents=True)
        try:
            await self.scratch.create(directory / "scratch.qcow2",
                                      hostconfig.storage_size(host_config))
            self.store.add(c)
        except BaseException:
            self.store.names.pop(name, None)
            self.store.containers.pop(cid, None)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.store.event(c, "create")
        return {"Id": cid, "Warnings": warnings}

    async def _resolve_image_mounts(self, mounts: list[MountPoint], api_version: str,
                                    scope: Scope) -> None:
        """Image mounts name their image by id from now on; the image is
        there, and so is the subpath asked for. API 1.48 brought them: an
        older client's request is refused as dockerd's of its version was."""
        for mp in mounts:
            if mp.type != "image":
                continue
            if cc.api_older_than(api_version, (1, 48)):
                raise InvalidParameter('mount type unknown: "image"')
            try:
                img = self.images.get(mp.source, scope)
            except NotFound:
                raise no_such_image(_familiar_or_raw(mp.source)) from None
            if mp.subpath and not await self.images.has_path(img, mp.subpath):
                raise InvalidParameter(f'invalid mount config for type "image": subpath '
                                       f"{mp.subpath} does not exist in image "
                                       f"{_familiar_or_raw(mp.source)}")
            mp.source = img.id

    def _volumes_from(self, spec: str) -> list[MountPoint]:
        ref, _, mode = spec.partition(":")
        if mode not in ("", "ro", "rw"):
            raise InvalidParameter(f"invalid mode for volumes-from: {mode}")
        source = self.store.get(ref)
        out = []
        for mp in source.mounts:
            if mp.type == "tmpfs":
                continue
            copy = MountPoint(**asdict(mp))
            if mode:
                copy.rw = mode == "rw"
            out.append(copy)
        return out

    def _check_name_free(self, name: str, scope: Scope) -> None:
        try:
            self.store.check_name_free(name)
        except Conflict as e:
            raise Conflict(scope.shown(e.message)) from None

    def rename(self, ref: str, new_name: str, scope: Scope = OPERATOR) -> None:
        """`ref`: qualified already; `new_name`: as the asker names it."""
        c = self.store.get(ref)
        if not new_name:
            raise InvalidParameter("Neither old nor new names may be empty")
        name = scope.qualify(cc.validate_name(new_name))
        if name == c.name:
            raise InvalidParameter("Renaming a container with the same name as its current "
                                   "name")
        self._check_name_free(name, scope)
        old = c.name
        self.store.rename(c, name)
        self.store.event(c, "rename", oldName=old)


def _familiar_or_raw(ref: str) -> str:
    try:
        return parse_reference(ref).with_default_tag().familiar
    except HbdError:
        return ref
